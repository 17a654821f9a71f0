"""The router's flood guard: who may connect, who may start a password login, and the counters.

Sans-IO (``now`` in, decisions out); the asyncio shell calls it at each stage of a connection.
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

import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Final

from natrelay.aspia.router.ratelimit import KeyedBuckets

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


def address_key(ip: str) -> str:
    """What per-address limits count: the IPv4 address, or the /64 network of an IPv6 one.

    One IPv6 subscriber routinely holds a whole /64 (2**64 addresses), so per-address caps keyed
    on the full address would not limit anyone there.
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return ip


class LogLimiter:
    """At most ``burst`` lines per reason per ``interval``; says how many were left out meanwhile.

    Reasons are a fixed set of names chosen by the code, never addresses, so the table is small.
    """

    def __init__(self, interval: float = LOG_INTERVAL, burst: int = 5) -> None:
        self.interval = interval
        self.burst = burst
        self._window: dict[str, tuple[float, int]] = {}
        self._skipped: Counter[str] = Counter()

    def allow(self, reason: str, now: float) -> int | None:
        """None: stay quiet. Otherwise log now, mentioning the returned number of skipped lines."""
        start, count = self._window.get(reason, (now, 0))
        if now - start >= self.interval or now < start:
            start, count = now, 0
        if count >= self.burst:
            self._skipped[reason] += 1
            return None
        self._window[reason] = (start, count + 1)
        return self._skipped.pop(reason, 0)


class FloodGuard:
    """Exact counts of connections, pending handshakes and SRP logins, per address and in total.

    Each successful ``admit``/``begin_login`` is matched by exactly one ``release``/``end_login``
    and each ``admit`` by ``authenticated`` or ``release`` ending its pending state.
    """

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self.connections = 0
        self.pending = 0
        self.logins = 0
        self.accepted = 0
        self.refused: Counter[str] = Counter({reason: 0 for reason in REASONS})
        self._per_ip: Counter[str] = Counter()
        self._pending_ip: Counter[str] = Counter()
        self._login_ip: Counter[str] = Counter()
        rate = limits.connections_per_minute_per_ip
        self._rate: KeyedBuckets[str] = KeyedBuckets(rate, rate)
        self.log = LogLimiter()

    # ---------------------------------------------------------- connections
    def admit(self, ip: str, now: float) -> str | None:
        """A new connection from ``ip``: None (admitted, pending) or the reason it is refused."""
        ip = address_key(ip)
        lim = self.limits
        reason: str | None = None
        if lim.max_connections and self.connections >= lim.max_connections:
            reason = CONNECTIONS
        elif lim.max_connections_per_ip and self._per_ip[ip] >= lim.max_connections_per_ip:
            reason = CONNECTIONS_PER_IP
        elif lim.max_pending and self.pending >= lim.max_pending:
            reason = PENDING
        elif lim.max_pending_per_ip and self._pending_ip[ip] >= lim.max_pending_per_ip:
            reason = PENDING_PER_IP
        elif not self._rate.allow(ip, now):
            reason = RATE
        if reason is not None:
            self.refused[reason] += 1
            return reason
        self.accepted += 1
        self.connections += 1
        self._per_ip[ip] += 1
        self.pending += 1
        self._pending_ip[ip] += 1
        return None

    def authenticated(self, ip: str) -> None:
        """The connection finished its handshake: it no longer holds a pending slot."""
        self.pending -= 1
        _decrement(self._pending_ip, address_key(ip))

    def release(self, ip: str, *, pending: bool) -> None:
        """An admitted connection closed; ``pending`` if it never authenticated."""
        self.connections -= 1
        _decrement(self._per_ip, address_key(ip))
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
        ip = address_key(ip)
        lim = self.limits
        held = self._login_ip[ip]
        reason: str | None = None
        if lim.max_logins and self.logins >= lim.max_logins:
            reason = LOGINS
        elif lim.max_logins_per_ip and held >= lim.max_logins_per_ip:
            reason = LOGINS_PER_IP
        elif held and lim.max_logins and self.logins >= lim.max_logins - lim.login_reserve:
            reason = LOGIN_RESERVE
        if reason is not None:
            self.refused[reason] += 1
            return reason
        self.logins += 1
        self._login_ip[ip] += 1
        return None

    def end_login(self, ip: str) -> None:
        self.logins -= 1
        _decrement(self._login_ip, address_key(ip))

    def per_ip(self, ip: str) -> tuple[int, int, int]:
        """Connections, pending connections and logins of ``ip`` (for tests and status)."""
        ip = address_key(ip)
        return self._per_ip.get(ip, 0), self._pending_ip.get(ip, 0), self._login_ip.get(ip, 0)

    def prune(self, now: float) -> None:
        """Drop rate buckets that carry no state any more (call now and then)."""
        self._rate.prune(now)

    def status(self) -> dict[str, object]:
        return {"connections": self.connections, "pending": self.pending, "logins": self.logins,
                "accepted": self.accepted, "refused": dict(self.refused)}


def _decrement(counter: Counter[str], key: str) -> None:
    left = counter[key] - 1
    if left > 0:
        counter[key] = left
    else:
        del counter[key]


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
