"""The router's flood guard: who may connect, who may start a password login, and the counters.

Sans-IO (``now`` in, decisions out); the asyncio shell calls it at each stage of a connection.
This module is the router's *policy* only: which limits, their defaults and reason names. The
mechanisms are the engine's (see :mod:`natrelay.engine.limits` for the map): connections,
pending (unauthenticated) connections and SRP logins are three :class:`~natrelay.engine.slots.Slots`
(the logins with room kept for addresses holding none), new connections per address a
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
from dataclasses import dataclass
from typing import Final

from natrelay.engine.rates import KeyedRate
from natrelay.engine.refusals import LogLimiter
from natrelay.engine.slots import SlotCaps, SlotReasons, Slots
from natrelay.engine.sources import source_key

__all__ = ["REASONS", "FloodGuard", "GuardLimits", "LogLimiter", "describe"]

LOG_INTERVAL: Final = 10.0

# Reason names: stable, they become metric labels.
RATE: Final = "rate_per_ip"
CONNECTIONS: Final = "connections"
CONNECTIONS_PER_IP: Final = "connections_per_ip"
PENDING: Final = "pending"
PENDING_PER_IP: Final = "pending_per_ip"
BYTES_BEFORE_AUTH: Final = "bytes_before_auth"
LOGINS: Final = "logins"
LOGINS_PER_IP: Final = "logins_per_ip"
LOGIN_RESERVE: Final = "logins_reserved"
LOGIN_DEADLINE: Final = "login_deadline"
REASONS: Final = (RATE, CONNECTIONS, CONNECTIONS_PER_IP, PENDING, PENDING_PER_IP, BYTES_BEFORE_AUTH,
                  LOGINS, LOGINS_PER_IP, LOGIN_RESERVE, LOGIN_DEADLINE)


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
    """... and per address: 64 addresses are needed to fill the total, not two."""
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

    Each successful ``admit``/``begin_login`` is matched by exactly one ``release``/``end_login``
    and each ``admit`` by ``authenticated`` or ``release`` ending its pending state.
    """

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self.accepted = 0
        self.refused: Counter[str] = Counter({reason: 0 for reason in REASONS})
        self._connections = Slots(SlotCaps(limits.max_connections, limits.max_connections_per_ip),
                                  SlotReasons(CONNECTIONS, CONNECTIONS_PER_IP))
        self._pending = Slots(SlotCaps(limits.max_pending, limits.max_pending_per_ip),
                              SlotReasons(PENDING, PENDING_PER_IP))
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
        return self._pending.held

    @property
    def logins(self) -> int:
        return self._logins.held

    # ---------------------------------------------------------- connections
    def admit(self, ip: str, now: float) -> str | None:
        """A new connection from ``ip``: None (admitted, pending) or the reason it is refused.

        The rate is asked last, so a connection refused by a cap spends no token.
        """
        ip = source_key(ip)
        reason = self._connections.check(ip) or self._pending.check(ip)
        if reason is None and not self._rate.allow(ip, now):
            reason = RATE
        if reason is not None:
            self.refused[reason] += 1
            return reason
        self.accepted += 1
        self._connections.add(ip)
        self._pending.add(ip)
        return None

    def authenticated(self, ip: str) -> None:
        """The connection finished its handshake: it no longer holds a pending slot."""
        self._pending.give(source_key(ip))

    def release(self, ip: str, *, pending: bool) -> None:
        """An admitted connection closed; ``pending`` if it never authenticated."""
        self._connections.give(source_key(ip))
        if pending:
            self.authenticated(ip)

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
    def begin_login(self, ip: str) -> str | None:
        """A password login starts its expensive part: None (slot taken) or the refusal reason.

        The per-address cap is well below the total, and the last ``login_reserve`` slots go
        only to addresses with no login in progress, so a few addresses holding half-open
        logins leave room for everyone else.
        """
        reason = self._logins.take(source_key(ip))
        if reason is not None:
            self.refused[reason] += 1
        return reason

    def login_deadline(self, now: float) -> float | None:
        """When a login that starts at ``now`` must be finished (None: no deadline)."""
        timeout = self.limits.login_timeout
        return now + timeout if timeout else None

    def end_login(self, ip: str) -> None:
        self._logins.give(source_key(ip))

    def per_ip(self, ip: str) -> tuple[int, int, int]:
        """Connections, pending connections and logins of ``ip`` (for tests and status)."""
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
        BYTES_BEFORE_AUTH: f"sent more than {limits.max_bytes_before_auth} bytes before authenticating",
        LOGINS: f"login limit reached ({limits.max_logins})",
        LOGINS_PER_IP: f"per-IP login limit reached ({limits.max_logins_per_ip})",
        LOGIN_RESERVE: f"the last {limits.login_reserve} login slots are kept for other addresses",
        LOGIN_DEADLINE: f"login not finished within {limits.login_timeout:g} s",
    }
    return words.get(reason, reason)
