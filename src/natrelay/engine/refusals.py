"""Log lines for refused connections, bounded however fast refusals come (sans-IO).

Why: a flood of connections over a cap used to write one INFO line per refusal (over 100,000 a
minute), which costs more than the refusal itself and buries everything else in the log. The
exact numbers live in counters (``RelayStats.refusals``); the log only needs to say that refusals
happen, why, and from where. So the first refusal after a quiet interval is logged at once with
its address, and the rest of the interval is summed up in one line per interval: counts by
reason and the busiest sources. The shell calls ``record`` and, at ``deadline()``, ``flush``.
"""

from __future__ import annotations

from collections import Counter

#: Distinct sources remembered per interval for the summary; past this they are only counted,
#: so a flood from many addresses cannot grow this object.
MAX_SOURCES = 256


class RefusalLog:
    """At most one detailed line and one summary line per ``interval`` seconds."""

    def __init__(self, interval: float = 10.0, *, what: str = "connection") -> None:
        self.interval = interval
        self.what = what
        self._window_end: float | None = None
        self._codes: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()

    def record(self, code: str, source: str, message: str, now: float) -> str | None:
        """Count one refusal; return a line to log now, or ``None`` if it waits for the summary."""
        # Inside an interval, or past it with a summary the shell has not flushed yet: count.
        if self._window_end is not None and (now < self._window_end or self._codes):
            self._codes[code] += 1
            if source in self._sources or len(self._sources) < MAX_SOURCES:
                self._sources[source] += 1
            return None
        self._window_end = now + self.interval
        return (f"refused {self.what} from {source}: {message} "
                f"(further refusals are summed up every {self.interval:g} s)")

    def deadline(self) -> float | None:
        """When ``flush`` has a summary to give (``None``: nothing is waiting)."""
        return self._window_end if self._codes else None

    def flush(self, now: float) -> str | None:
        """The summary of refusals not logged one by one, once their interval is over."""
        if self._window_end is None or now < self._window_end:
            return None
        if not self._codes:
            self._window_end = None
            return None
        total = sum(self._codes.values())
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(self._codes.items()))
        top = ", ".join(f"{src} ({n})" for src, n in self._sources.most_common(3))
        line = (f"refused {total} more {self.what}{'s' if total != 1 else ''} in the last "
                f"{self.interval:g} s: {reasons}; most from {top}")
        self._codes.clear()
        self._sources.clear()
        self._window_end = now + self.interval  # refusals go on: keep summing them up
        return line
