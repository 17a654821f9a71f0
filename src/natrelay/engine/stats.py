"""Relay counters: cheap, exact, and readable by logs, tests and the HTTP metrics.

Each close of a connection is counted under a short reason string, so that every silent
close the protocol demands still leaves a trace an operator can read. The counters are the
only bookkeeping: ``/metrics`` and ``/status`` (``natrelay.ops.http``) read them at scrape time
instead of keeping numbers of their own, so what an operator sees is what the relay counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Session lifetimes: a second to a day.
DURATION_BUCKETS: tuple[float, ...] = (1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 6 * 3600.0, 86400.0)
#: From the first peer's arrival to its pairing: a millisecond to the 30-second pending limit.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


@dataclass(slots=True)
class Histogram:
    """Exact counts of observations per bucket, as Prometheus histograms report them.

    ``counts[i]`` counts values ``<= bounds[i]`` and above the previous bound; the last
    entry counts everything above the largest bound. Observing is one bisection and two adds,
    cheap enough for every session end.
    """

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        lo, hi = 0, len(self.bounds)
        while lo < hi:
            mid = (lo + hi) // 2
            if value <= self.bounds[mid]:
                hi = mid
            else:
                lo = mid + 1
        self.counts[lo] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs ending with ``+inf``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    @classmethod
    def merged(cls, parts: Iterable[Histogram], bounds: tuple[float, ...]) -> Histogram:
        """One histogram summing ``parts`` (say, one per forwarding thread); all share ``bounds``."""
        total = cls(bounds)
        for part in parts:
            if part.bounds != bounds:
                raise ValueError("cannot merge histograms with different buckets")
            total.counts = [a + b for a, b in zip(total.counts, part.counts, strict=True)]
            total.sum += part.sum
        return total


@dataclass
class RelayStats:
    """Process-wide counters of one relay server instance.

    ``refusals`` and ``handshake_failures`` are keyed by a short label (a metric label:
    no addresses, no free text); ``refused`` stays their sum for the log line.
    """

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
    bytes_to_acceptor: int = 0
    """Of ``bytes_forwarded``: from the connecting node to the accepting one."""
    bytes_to_connector: int = 0
    logins_done: int = 0
    closes: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    """Connections refused by a limit, by the limit's code (``Refusal.code``): exact, unlike the
    refusal log lines, which are summed up per interval."""
    handshake_failures: Counter[str] = field(default_factory=Counter)
    login_failures: Counter[str] = field(default_factory=Counter)
    session_durations: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    pairing_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))

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
