"""Refusals: their reasons, and log lines about them bounded however fast they come (sans-IO).

One module for what every admission limit says when it says no (strelay's admission, the Aspia
relay's flood guard, the Aspia router's guard and request limits):

* :class:`Refusal` — the reason: a stable ``code`` for exact counters and metric labels (never
  containing an address), and the operator's text;
* :class:`LogLimiter` — at most ``burst`` lines per key per interval, and how many were left out
  (the Aspia relay and router log refusals at debug level through it);
* :class:`RefusalLog` — strelay's refusal lines: the first one at once with its address, the rest
  summed up per interval by code and busiest source.

Why: a flood of connections over a cap used to write one INFO line per refusal (over 100,000 a
minute), which costs more than the refusal itself and buries everything else in the log. The
exact numbers live in counters (``RelayStats.refusals``, ``PeerListener.refusals``, the router
guard's ``refused``); the log only needs to say that refusals happen, why, and from where.
The shell calls ``record`` and, at ``deadline()``, ``flush``.
"""

from __future__ import annotations

from collections import Counter

#: Distinct sources remembered per interval for the summary; past this they are only counted,
#: so a flood from many addresses cannot grow this object.
MAX_SOURCES = 256


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


class LogLimiter:
    """At most ``burst`` lines per key per ``interval``; says how many were left out meanwhile.

    Keys are a fixed set of names chosen by the code (reasons, kinds of line), never addresses,
    so the table stays small.
    """

    __slots__ = ("_skipped", "_window", "burst", "interval")

    def __init__(self, interval: float = 10.0, burst: int = 5) -> None:
        self.interval = interval
        self.burst = burst
        self._window: dict[str, tuple[float, int]] = {}
        self._skipped: Counter[str] = Counter()

    def allow(self, key: str, now: float) -> int | None:
        """None: stay quiet. Otherwise log now, mentioning the returned number of skipped lines."""
        start, count = self._window.get(key, (now, 0))
        if now - start >= self.interval or now < start:
            start, count = now, 0
        if count >= self.burst:
            self._skipped[key] += 1
            return None
        self._window[key] = (start, count + 1)
        return self._skipped.pop(key, 0)


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
