"""Admission limits shared by every relay: total connections, per source IP, handshakes in flight.

Why a separate object: the protocol shells decide *when* a connection starts or finishes a stage,
the limiter only answers "may it?" and keeps exact counts, so the same rules (and their log
messages) hold for every protocol family and can be tested without sockets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Caps on what one relay process accepts. ``0`` means "no cap" for every field."""

    max_connections: int = 10_000
    max_per_ip: int = 256
    max_handshakes: int = 512
    max_listeners: int = 10_000
    max_pending_per_listener: int = 64

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_per_ip", "max_handshakes", "max_listeners",
                     "max_pending_per_listener"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0 = unlimited), got {value}")


class Admission:
    """Counts live connections and handshakes, and refuses new ones over a cap.

    Every successful ``admit`` must be matched by exactly one ``release``; the
    counts are exact so that tests (and operators) can see that nothing leaks.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.connections = 0
        self.handshakes = 0
        self._per_ip: Counter[str] = Counter()

    def admit(self, ip: str) -> str | None:
        """Take a connection slot for ``ip``; return ``None``, or why it is refused."""
        lim = self.limits
        if lim.max_connections and self.connections >= lim.max_connections:
            return f"connection limit reached ({lim.max_connections})"
        if lim.max_per_ip and self._per_ip[ip] >= lim.max_per_ip:
            return f"per-IP connection limit reached ({lim.max_per_ip}) for {ip}"
        self.connections += 1
        self._per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        """Give back the slot taken by ``admit``."""
        self.connections -= 1
        left = self._per_ip[ip] - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            del self._per_ip[ip]

    def begin_handshake(self) -> str | None:
        """Take a handshake slot; return ``None``, or why it is refused."""
        cap = self.limits.max_handshakes
        if cap and self.handshakes >= cap:
            return f"concurrent handshake limit reached ({cap})"
        self.handshakes += 1
        return None

    def end_handshake(self) -> None:
        """Give back the slot taken by ``begin_handshake``."""
        self.handshakes -= 1

    def per_ip(self, ip: str) -> int:
        """Live connections from ``ip``."""
        return self._per_ip.get(ip, 0)


def refusal_label(reason: str) -> str:
    """The metric label for a refusal text from :class:`Admission` (no addresses, no numbers)."""
    if reason.startswith("per-IP"):
        return "per_ip_limit"
    if reason.startswith("connection limit"):
        return "connection_limit"
    if reason.startswith("concurrent handshake"):
        return "handshake_limit"
    return "other"
