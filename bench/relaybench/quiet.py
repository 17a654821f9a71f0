"""The machine's load average before each measure, and an optional bounded wait for a quieter moment.

On a shared machine the same command gives different figures depending on who else runs; recording
the load seen next to each figure says how far to trust it, and waiting (a bounded time) until the
1-minute load average drops under a threshold makes two runs more comparable. The wait never blocks
a run: past ``max_wait`` the measure proceeds and the record says it was not quiet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages from /proc/loadavg text ("0.52 0.58 0.59 1/467 12345")."""
    parts = text.split()
    if len(parts) < 3:
        raise ValueError(f"not a /proc/loadavg line: {text!r}")
    return float(parts[0]), float(parts[1]), float(parts[2])


def read_load1() -> float:
    with open("/proc/loadavg", encoding="ascii") as f:
        return parse_loadavg(f.read())[0]


@dataclass(frozen=True)
class LoadSeen:
    load_before: float  # 1-minute load average when the measure was due
    load_at_start: float  # when it started (after any wait)
    waited_s: float
    quiet: bool | None  # None: no threshold asked; False: gave up waiting after max_wait

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wait_quiet(
    threshold: float | None,
    max_wait: float,
    *,
    read: Callable[[], float] = read_load1,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    poll: float = 5.0,
) -> LoadSeen:
    """Wait until the 1-minute load is below ``threshold``, at most ``max_wait`` seconds.

    With ``threshold`` None only the load is read. The 1-minute average decays slowly (its time
    constant is a minute), so polling every few seconds costs nothing and misses nothing.
    """
    start = clock()
    first = read()
    if threshold is None:
        return LoadSeen(first, first, 0.0, None)
    load = first
    while load >= threshold:
        left = max_wait - (clock() - start)
        if left <= 0:
            return LoadSeen(first, load, clock() - start, False)
        sleep(min(poll, left))
        load = read()
    return LoadSeen(first, load, clock() - start, True)
