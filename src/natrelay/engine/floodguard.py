"""Flood guard for connections that have not authenticated yet (the Aspia relay's pending peers).

Why: a relay has to accept a TCP connection before it can tell a peer from an attacker, and
until the peer's first message proves it holds a credential, the connection costs a slot and a
descriptor for nothing. Without limits a few hundred silent connections, even from one address,
hold every slot. This policy decides, sans-IO (connections are opaque hashable handles, time is
the caller's ``now``), which of those unauthenticated connections may stay; every mechanism is
an engine primitive (see :mod:`natrelay.engine.limits` for the map), this module only combines
them and holds the defaults:

* a deadline for the first message (short: a real peer sends it at once), kept as data for the
  caller's timer (:meth:`FloodGuard.next_deadline`, :meth:`FloodGuard.expired`);
* a rate of new connections per source per minute (:class:`~natrelay.engine.rates.KeyedRate`);
  a connection that authenticates gets its token back, so heavy *legitimate* use (a NAT address
  behind which many hosts open sessions) is limited only by the credentials it holds, while
  connections that never authenticate are rate limited;
* unauthenticated connections per source and in total as
  :class:`~natrelay.engine.slots.FairSlots`: when the total is full, a newcomer evicts the oldest
  unauthenticated connection among the other sources holding at least as many slots as its own,
  and is refused if there is none. As a real peer authenticates within a round trip while a
  flood's connections sit silent, the oldest connection is the one to go.

The guard keeps exact counts; every admitted connection must leave through exactly one of
:meth:`FloodGuard.authenticated`, :meth:`FloodGuard.remove`, :meth:`FloodGuard.expired` or an
eviction reported by :meth:`FloodGuard.admit`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from natrelay.engine.rates import KeyedRate
from natrelay.engine.slots import Admitted, FairSlots, SlotCaps, SlotReasons
from natrelay.engine.sources import source_key

__all__ = ["CLOSED_EVICTED", "CLOSED_FIRST_MESSAGE_TIMEOUT", "REFUSED_PENDING_PER_IP",
           "REFUSED_PENDING_TOTAL", "REFUSED_RATE", "Admitted", "FloodGuard", "FloodLimits"]

C = TypeVar("C", bound=Hashable)

# Reasons, as counted by the shells and exported as metric labels.
REFUSED_RATE = "rate_per_ip"
REFUSED_PENDING_PER_IP = "pending_per_ip"
REFUSED_PENDING_TOTAL = "pending_total"
CLOSED_EVICTED = "evicted"
CLOSED_FIRST_MESSAGE_TIMEOUT = "first_message_timeout"

PENDING = SlotReasons(REFUSED_PENDING_TOTAL, REFUSED_PENDING_PER_IP)


@dataclass(frozen=True)
class FloodLimits:
    """Caps on unauthenticated connections; ``0`` means "no cap" for every count and rate.

    Defaults follow Aspia's development branch (60 pending peers, 60 connections per minute per
    IP) with a per-source share well below the total, so two or three sources cannot fill it.
    """

    first_message_timeout: float = 5.0
    """Seconds from accept to the end of the first message."""
    max_pending: int = 60
    max_pending_per_source: int = 16
    connections_per_minute: int = 60
    """New connections per minute per source that do not authenticate (a token bucket)."""
    burst: int = 0
    """Bucket size; 0 means one minute's worth (``connections_per_minute``)."""
    max_sources: int = 65_536
    """Sources whose rate is remembered; the least recently seen is forgotten beyond this."""

    def __post_init__(self) -> None:
        if not self.first_message_timeout > 0:
            raise ValueError(f"first_message_timeout must be > 0, got {self.first_message_timeout}")
        for name in ("max_pending", "max_pending_per_source", "connections_per_minute", "burst"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = unlimited), got {getattr(self, name)}")
        if self.max_sources < 1:
            raise ValueError(f"max_sources must be >= 1, got {self.max_sources}")

    @property
    def bucket_size(self) -> int:
        return self.burst or self.connections_per_minute


class FloodGuard(Generic[C]):
    """Unauthenticated connections of one listener, bounded per source, in total and in time."""

    def __init__(self, limits: FloodLimits) -> None:
        self.limits = limits
        self._slots: FairSlots[C] = FairSlots(SlotCaps(limits.max_pending, limits.max_pending_per_source),
                                              PENDING)
        self._rate: KeyedRate[str] = KeyedRate(limits.connections_per_minute, limits.bucket_size,
                                               limits.max_sources)

    # ------------------------------------------------------------------ queries
    @property
    def pending(self) -> int:
        """Unauthenticated connections now."""
        return len(self._slots)

    def pending_from(self, source: str) -> int:
        return self._slots.held_by(source)

    @property
    def tracked_sources(self) -> int:
        """Sources whose rate bucket is remembered (bounded by ``max_sources``)."""
        return len(self._rate)

    def __contains__(self, conn: object) -> bool:
        return conn in self._slots

    # -------------------------------------------------------------- admission
    def admit(self, conn: C, ip: str, now: float) -> Admitted[C]:
        """A connection from ``ip`` was accepted: may it wait for its first message?

        ``evicted``, if set, is an older connection the guard has already forgotten and the
        caller must close (counted as :data:`CLOSED_EVICTED`).
        """
        source = source_key(ip)
        if not self._rate.allow(source, now):
            return Admitted(REFUSED_RATE)
        return self._slots.take(conn, source, now + self.limits.first_message_timeout)

    def authenticated(self, conn: C, now: float) -> bool:
        """``conn`` proved it holds a credential: it leaves the guard and its token is returned.

        Returns False if the guard did not know ``conn`` (already gone).
        """
        source = self._slots.remove(conn)
        if source is None:
            return False
        self._rate.refund(source, now)
        return True

    def remove(self, conn: C) -> bool:
        """``conn`` closed or failed before authenticating; True if the guard knew it."""
        return self._slots.remove(conn) is not None

    # -------------------------------------------------------------- deadlines
    def next_deadline(self) -> float | None:
        """When the earliest first-message deadline falls (None when nothing is pending)."""
        return self._slots.next_deadline()

    def expired(self, now: float) -> list[C]:
        """Connections whose first-message deadline passed; forgotten here, the caller closes them."""
        return self._slots.expired(now)
