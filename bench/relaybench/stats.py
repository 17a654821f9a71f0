"""Summaries over interleaved rounds: median with min-max, and ratios against the reference subjects."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.low, "max": self.high, "rounds": self.n}


def summarize(values: Sequence[float | None]) -> Summary | None:
    """Median and range of the rounds that produced a value; None when no round did."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Summary(statistics.median(present), min(present), max(present), len(present))


def ratio(value: Summary | None, reference: Summary | None) -> float | None:
    """value / reference of the medians; None when either is missing or the reference is zero."""
    if value is None or reference is None or reference.median == 0:
        return None
    return value.median / reference.median


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in [0, 1]) of an already sorted, non-empty sequence."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= p <= 1.0:
        raise ValueError("p must be within [0, 1]")
    return sorted_values[int(p * (len(sorted_values) - 1) + 0.5)]


def rotate(items: Sequence[str], round_index: int) -> list[str]:
    """Round r starts with the r-th subject, so no subject always runs first (warm caches, cool CPU)."""
    if not items:
        return []
    k = round_index % len(items)
    return [*items[k:], *items[:k]]
