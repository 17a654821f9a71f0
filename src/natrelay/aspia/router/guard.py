"""The router's flood guard: who may connect, who may start a password login, and the counters.

Sans-IO (``now`` in, decisions out); the asyncio shell calls it at each stage of a connection.
This module is the router's *policy* only: which limits, their defaults and reason names. The
mechanisms are the engine's (see :mod:`natrelay.engine.limits` for the map): connections and SRP
logins are :class:`~natrelay.engine.slots.Slots` (the logins with room kept for addresses holding
none), pending (unauthenticated) connections :class:`~natrelay.engine.slots.FairSlots` (a full
total evicts the oldest pending connection of the address holding the most, if it holds more
than the newcomer's: 250 flooding addresses used to hold all 512 slots for the whole AuthTimeout and
reset every new login), new connections per address a
:class:`~natrelay.engine.rates.KeyedRate`, addresses keyed by
:func:`~natrelay.engine.sources.source_key` (IPv6 by /64), log lines bounded by
:class:`~natrelay.engine.refusals.LogLimiter`.
Why these rules (issues 8 and 9): a router is reachable from the whole internet, and the cheap
attacks found by probing were all about *holding* something: idle connections holding
handshake slots, half-open SRP logins holding login slots, a few addresses holding everything.
So every scarce thing has a total cap, a per-address cap well below the total (a few addresses
cannot exhaust it), and a short deadline, and new connections per address are rate limited.

Every refusal is counted under a fixed reason name in :attr:`FloodGuard.refused` (exact: one
increment per refused connection or login), which is what a metrics surface exports, and may
be logged at debug level at most once per :data:`LOG_INTERVAL` per reason (a flood must not
become a log flood).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

from natrelay.engine.rates import KeyedRate
from natrelay.engine.refusals import LogLimiter
from natrelay.engine.slots import Admitted, FairSlots, SlotCaps, SlotReasons, Slots
from natrelay.engine.sources import source_key

__all__ = ["REASONS", "Admitted", "FloodGuard", "GuardLimits", "LogLimiter", "describe"]

LOG_INTERVAL: Final = 10.0

# Reason names: stable, they become metric labels.
RATE: Final = "rate_per_ip"
CONNECTIONS: Final = "connections"
CONNECTIONS_PER_IP: Final = "connections_per_ip"
PENDING: Final = "pending"
PENDING_PER_IP: Final = "pending_per_ip"
EVICTED: Final = "evicted"
BYTES_BEFORE_AUTH: Final = "bytes_before_auth"
LOGINS: Final = "logins"
LOGINS_PER_IP: Final = "logins_per_ip"
LOGIN_RESERVE: Final = "logins_reserved"
LOGIN_DEADLINE: Final = "login_deadline"
REASONS: Final = (RATE, CONNECTIONS, CONNECTIONS_PER_IP, PENDING, PENDING_PER_IP, EVICTED,
                  BYTES_BEFORE_AUTH, LOGINS, LOGINS_PER_IP, LOGIN_RESERVE, LOGIN_DEADLINE)


@dataclass(frozen=True)
class GuardLimits:
    """The caps; ``0`` turns a cap off. Defaults follow Aspia's development branch where it has one."""

    max_connections: int = 10_000
    max_connections_per_ip: int = 256
    connections_per_minute_per_ip: int = 60
    """Sustained rate of new connections per address; the burst is the same number."""
    max_pending: int = 512
    """Connections not authenticated yet (hello, key exchange), in total..."""
    max_pending_per_ip: int = 8
    """... and per address: 64 addresses are needed to fill the total, not two; and a full total
    evicts the oldest pending connection of the address holding the most (if more than the
    newcomer's), so no number of addresses can keep a newcomer out."""
    max_bytes_before_auth: int = 16_384
    pending_timeout: float = 20.0
    """Seconds a connection may take to authenticate (the original waits 60)."""
    max_logins: int = 16
    """SRP (password) logins in progress at once: the expensive, lockable resource."""
    max_logins_per_ip: int = 2
    login_reserve: int = 4
    """Login slots an address that already has a login in progress may not take."""
    login_timeout: float = 10.0
    """Seconds from the user name (SrpIdentify) to a finished login; honest clients need ~1 s."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0 = no cap), got {value}")


class FloodGuard:
    """Exact counts of connections, pending handshakes and SRP logins, per address and in total.

    Connections are named by a hashable handle (the shell's connection object). Each admitted
    connection leaves through exactly one ``release``; its pending slot ends at ``authenticated``,
    at ``release``, or when a newcomer's ``admit`` reports it evicted. Each successful
    ``begin_login`` is matched by one ``end_login``. A connection whose password login has begun
    (``begin_login`` with its handle) is no longer evictable: it holds one of the few login slots,
    which have their own per-address caps, reserve and deadline, and a login under way is the
    legitimate work eviction exists to protect.
    """

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self.accepted = 0
        self.refused: Counter[str] = Counter({reason: 0 for reason in REASONS})
        self._connections = Slots(SlotCaps(limits.max_connections, limits.max_connections_per_ip),
                                  SlotReasons(CONNECTIONS, CONNECTIONS_PER_IP))
        pending = SlotCaps(limits.max_pending, limits.max_pending_per_ip)
        self._pending: FairSlots[Hashable] = FairSlots(pending, SlotReasons(PENDING, PENDING_PER_IP),
                                                       spare_equals=True)
        self._logging_in: set[Hashable] = set()
        """Pending connections whose login began: out of the evictable slots, still unauthenticated."""
        self._logins = Slots(SlotCaps(limits.max_logins, limits.max_logins_per_ip, limits.login_reserve),
                             SlotReasons(LOGINS, LOGINS_PER_IP, LOGIN_RESERVE))
        rate = limits.connections_per_minute_per_ip
        self._rate: KeyedRate[str] = KeyedRate(rate, rate)
        self.log = LogLimiter(LOG_INTERVAL)

    @property
    def connections(self) -> int:
        return self._connections.held

    @property
    def pending(self) -> int:
        """Connections not authenticated yet (evictable, or in a password login)."""
        return len(self._pending) + len(self._logging_in)

    @property
    def logins(self) -> int:
        return self._logins.held

    # ---------------------------------------------------------- connections
    def admit(self, conn: Hashable, ip: str, now: float) -> Admitted[Hashable]:
        """A new connection ``conn`` from ``ip``: admitted (``refused`` None) and pending, or refused.

        ``evicted``, if set, is an older pending connection already forgotten here (counted as
        :data:`EVICTED`); the caller closes it and later calls ``release`` for it as for any
        connection. The rate is asked last, so a connection refused by a cap spends no token.
        """
        source = source_key(ip)
        reason = self._connections.check(source)
        if reason is None and self.limits.max_pending_per_ip and \
                self._pending.held_by(source) >= self.limits.max_pending_per_ip:
            reason = PENDING_PER_IP
        if reason is None and not self._rate.allow(source, now):
            reason = RATE
        decision: Admitted[Hashable] = Admitted(reason)
        if reason is None:
            decision = self._pending.take(conn, source, now + (self.limits.pending_timeout or 60.0))
            reason = decision.refused
        if reason is not None:
            self.refused[reason] += 1
            return decision
        self.accepted += 1
        self._connections.add(source)
        if decision.evicted is not None:
            self.refused[EVICTED] += 1
        return decision

    def authenticated(self, conn: Hashable) -> bool:
        """The connection finished its handshake: it no longer holds a pending slot.

        False if it held none (already authenticated, or evicted)."""
        if conn in self._logging_in:
            self._logging_in.discard(conn)
            return True
        return self._pending.remove(conn) is not None

    def release(self, conn: Hashable, ip: str) -> None:
        """An admitted connection closed (its pending slot too, if it still held one)."""
        self._connections.give(source_key(ip))
        self.authenticated(conn)

    def too_many_bytes(self, received_before_auth: int) -> bool:
        cap = self.limits.max_bytes_before_auth
        if cap and received_before_auth > cap:
            self.refused[BYTES_BEFORE_AUTH] += 1
            return True
        return False

    def count(self, reason: str) -> None:
        """Count a refusal decided by the shell (e.g. the login deadline)."""
        self.refused[reason] += 1

    # --------------------------------------------------------------- logins
    def begin_login(self, ip: str, conn: Hashable | None = None) -> str | None:
        """A password login starts its expensive part: None (slot taken) or the refusal reason.

        The per-address cap is well below the total, and the last ``login_reserve`` slots go
        only to addresses with no login in progress, so a few addresses holding half-open
        logins leave room for everyone else. With ``conn``, that pending connection can no
        longer be evicted (its login slot and deadline bound it now).
        """
        reason = self._logins.take(source_key(ip))
        if reason is not None:
            self.refused[reason] += 1
        elif conn is not None and self._pending.remove(conn) is not None:
            self._logging_in.add(conn)
        return reason

    def login_deadline(self, now: float) -> float | None:
        """When a login that starts at ``now`` must be finished (None: no deadline)."""
        timeout = self.limits.login_timeout
        return now + timeout if timeout else None

    def end_login(self, ip: str) -> None:
        self._logins.give(source_key(ip))

    def per_ip(self, ip: str) -> tuple[int, int, int]:
        """Connections, evictable pending connections and logins of ``ip`` (for tests and status)."""
        ip = source_key(ip)
        return self._connections.held_by(ip), self._pending.held_by(ip), self._logins.held_by(ip)

    def prune(self, now: float) -> None:
        """Drop rate buckets that carry no state any more (call now and then)."""
        self._rate.prune(now)

    def status(self) -> dict[str, object]:
        return {"connections": self.connections, "pending": self.pending, "logins": self.logins,
                "accepted": self.accepted, "refused": dict(self.refused)}


def describe(reason: str, limits: GuardLimits) -> str:
    """The refusal in an operator's words, with the limit in force."""
    words = {
        RATE: f"more than {limits.connections_per_minute_per_ip} new connections per minute from it",
        CONNECTIONS: f"connection limit reached ({limits.max_connections})",
        CONNECTIONS_PER_IP: f"per-IP connection limit reached ({limits.max_connections_per_ip})",
        PENDING: f"unauthenticated connection limit reached ({limits.max_pending})",
        PENDING_PER_IP: f"per-IP unauthenticated connection limit reached ({limits.max_pending_per_ip})",
        EVICTED: f"evicted: its address held the most of the {limits.max_pending} unauthenticated "
                 f"connection slots, and its oldest made room for a newcomer",
        BYTES_BEFORE_AUTH: f"sent more than {limits.max_bytes_before_auth} bytes before authenticating",
        LOGINS: f"login limit reached ({limits.max_logins})",
        LOGINS_PER_IP: f"per-IP login limit reached ({limits.max_logins_per_ip})",
        LOGIN_RESERVE: f"the last {limits.login_reserve} login slots are kept for other addresses",
        LOGIN_DEADLINE: f"login not finished within {limits.login_timeout:g} s",
    }
    return words.get(reason, reason)
