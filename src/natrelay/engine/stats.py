"""Relay counters: cheap, exact, and readable by logs, tests and (later) metrics.

Each close of a connection is counted under a short reason string, so that every silent
close the protocol demands still leaves a trace an operator can read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class RelayStats:
    """Process-wide counters of one relay server instance."""

    accepted: int = 0
    """TCP connections accepted by the listening socket, refused or not."""
    refused: int = 0
    """Connections refused by a limit, on arrival or later (a Listen over a listener cap)."""
    active: int = 0
    """Connections holding a slot right now (never counts one refused on arrival)."""
    handshakes_done: int = 0
    tunnels_opened: int = 0
    tunnels_active: int = 0
    bytes_forwarded: int = 0
    closes: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    """Connections refused by a limit, by the limit's code (``Refusal.code``): exact, unlike the
    refusal log lines, which are summed up per interval."""

    def closed(self, reason: str) -> None:
        """Count one connection close under ``reason``."""
        self.closes[reason] += 1

    def refused_by(self, code: str) -> None:
        """Count one connection refused by the limit ``code``."""
        self.refused += 1
        self.refusals[code] += 1

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready copy for logs and status output."""
        return {
            "accepted": self.accepted,
            "refused": self.refused,
            "active": self.active,
            "handshakes_done": self.handshakes_done,
            "tunnels_opened": self.tunnels_opened,
            "tunnels_active": self.tunnels_active,
            "bytes_forwarded": self.bytes_forwarded,
            "closes": dict(self.closes),
            "refusals": dict(self.refusals),
        }
