"""CPU time per operation of each process group taking part in a measure (relay, endpoints, openers).

A throughput or rate figure on a shared machine moves with everybody else's load; CPU time spent per
operation moves much less, and summing it per role shows a change that only shifts work from one
process to another (from the relay to the router, or to the nodes) instead of removing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from . import procstat

CpuReader = Callable[[Iterable[int]], float]


def per_op_us(cpu_seconds: float, operations: float) -> float | None:
    """CPU microseconds per operation; None when nothing was done (no figure rather than infinity)."""
    if operations <= 0:
        return None
    return cpu_seconds * 1e6 / operations


@dataclass
class CpuMeter:
    """CPU seconds spent by each role's process trees between ``start()`` and ``stop()``.

    Roles without pids (direct TCP has no relay) are left out, so they yield no figure at all.
    """

    roles: Mapping[str, list[int]]
    read: CpuReader = procstat.cpu_seconds
    _before: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._before = {role: self.read(pids) for role, pids in self.roles.items() if pids}

    def stop(self) -> dict[str, float]:
        """CPU seconds per role since ``start()`` (never negative: a restarted process counts as 0)."""
        return {role: max(0.0, self.read(self.roles[role]) - t0) for role, t0 in self._before.items()}


def figures(prefix: str, spent: Mapping[str, float], operations: float) -> dict[str, float]:
    """``{f"{prefix}_{role}": µs per operation}`` for every role that has a figure."""
    out: dict[str, float] = {}
    for role, seconds in spent.items():
        value = per_op_us(seconds, operations)
        if value is not None:
            out[f"{prefix}_{role}"] = value
    return out
