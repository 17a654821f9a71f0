"""Admission limits shared by every relay: connections and handshakes, in total and per source.

Why a separate object: the protocol shells decide *when* a connection starts or finishes a stage,
the limiter only answers "may it?" and keeps exact counts, so the same rules (and their log
messages) hold for every protocol family and can be tested without sockets.

Why per-source caps sit well below the totals: a cap per address only protects the others if
many addresses are needed to fill the total. With the defaults below, filling the connection
total takes 157 addresses, the handshake total 128, and the listener total (counted by the Offset
pairing, with ``max_listeners_per_ip``) 625; before, two addresses (2 x 256 connections, all in
their handshake) filled the 512 handshake slots. IPv6 sources are grouped by their /64 prefix,
because one subscriber usually holds a whole /64 and could otherwise pick a fresh address per
connection.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, fields


class Refusal(str):
    """Why a connection was refused: the text for logs, and ``code`` for counters.

    A ``str`` so that callers that only log or close with the text need not change; ``code`` is
    a short, stable label (``connections_per_ip``, ``handshakes``, ...) for counters and metrics,
    never containing an address.
    """

    code: str

    def __new__(cls, code: str, message: str) -> Refusal:
        self = super().__new__(cls, message)
        self.code = code
        return self


@dataclass(frozen=True)
class Limits:
    """Caps on what one relay process accepts. ``0`` means "no cap" for every field."""

    max_connections: int = 10_000
    max_per_ip: int = 64
    max_handshakes: int = 1_024
    max_handshakes_per_ip: int = 8
    max_listeners: int = 5_000
    max_listeners_per_ip: int = 8
    max_pending_per_listener: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ValueError(f"{f.name} must be >= 0 (0 = unlimited), got {value}")

    def weak_spots(self) -> list[str]:
        """Caps that leave no room for everyone else under a total (for a start-up warning)."""
        pairs = (("max_per_ip", "max_connections"), ("max_handshakes_per_ip", "max_handshakes"),
                 ("max_listeners_per_ip", "max_listeners"), ("max_listeners", "max_connections"))
        found = []
        for part, whole in pairs:
            p, w = getattr(self, part), getattr(self, whole)
            per_source = part.endswith("_per_ip")
            if w and (not p or (2 * p >= w if per_source else p >= w)):
                shown = "unlimited" if not p else str(p)
                who = "two source addresses" if per_source else "listeners alone"
                found.append(f"{part} ({shown}) leaves no room under {whole} ({w}): {who} could fill it")
        return found


def source_of(ip: str) -> str:
    """The source a per-address cap counts: the address, or the /64 of an IPv6 address."""
    if ":" not in ip:
        # IPv4 text (and anything that is no address) is returned as it is either way; the
        # parse cost two ``ipaddress`` objects per connection, admit and release.
        return ip
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return ip


class Admission:
    """Counts live connections and handshakes, and refuses new ones over a cap.

    Every successful ``admit`` must be matched by exactly one ``release``, and every successful
    ``begin_handshake`` by one ``end_handshake`` with the same ``ip``; the counts are exact so
    that tests (and operators) can see that nothing leaks.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.connections = 0
        self.handshakes = 0
        self._per_ip: Counter[str] = Counter()
        self._handshakes_per_ip: Counter[str] = Counter()

    def admit(self, ip: str) -> Refusal | None:
        """Take a connection slot for ``ip``; return ``None``, or why it is refused."""
        lim = self.limits
        if lim.max_connections and self.connections >= lim.max_connections:
            return Refusal("connections", f"connection limit reached ({lim.max_connections})")
        source = source_of(ip)
        if lim.max_per_ip and self._per_ip[source] >= lim.max_per_ip:
            return Refusal("connections_per_ip",
                           f"per-IP connection limit reached ({lim.max_per_ip}) for {source}")
        self.connections += 1
        self._per_ip[source] += 1
        return None

    def release(self, ip: str) -> None:
        """Give back the slot taken by ``admit``."""
        self.connections -= 1
        _decrement(self._per_ip, source_of(ip))

    def begin_handshake(self, ip: str | None = None) -> Refusal | None:
        """Take a handshake slot (also one of ``ip``'s, if given); return ``None``, or why not."""
        lim = self.limits
        if lim.max_handshakes and self.handshakes >= lim.max_handshakes:
            return Refusal("handshakes", f"concurrent handshake limit reached ({lim.max_handshakes})")
        if ip is not None:
            source = source_of(ip)
            cap = lim.max_handshakes_per_ip
            if cap and self._handshakes_per_ip[source] >= cap:
                return Refusal("handshakes_per_ip",
                               f"per-IP concurrent handshake limit reached ({cap}) for {source}")
            self._handshakes_per_ip[source] += 1
        self.handshakes += 1
        return None

    def end_handshake(self, ip: str | None = None) -> None:
        """Give back the slot taken by ``begin_handshake`` (with the same ``ip``)."""
        self.handshakes -= 1
        if ip is not None:
            _decrement(self._handshakes_per_ip, source_of(ip))

    def per_ip(self, ip: str) -> int:
        """Live connections from ``ip``'s source."""
        return self._per_ip.get(source_of(ip), 0)

    def handshakes_per_ip(self, ip: str) -> int:
        """Handshakes in progress from ``ip``'s source."""
        return self._handshakes_per_ip.get(source_of(ip), 0)

    @property
    def sources(self) -> int:
        """Sources with a live connection or handshake (0 once every slot is back)."""
        return len(self._per_ip) + len(self._handshakes_per_ip)


def _decrement(counter: Counter[str], key: str) -> None:
    left = counter[key] - 1
    if left > 0:
        counter[key] = left
    else:
        del counter[key]
