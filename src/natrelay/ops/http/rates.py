"""Transfer rates over the windows strelaysrv's ``/status`` reports (10 s to 60 min).

One sample of the byte total every 10 seconds, kept for an hour (361 numbers); a rate is the
difference between the newest sample and the one a window ago, so it is exact over that window
and costs nothing per byte. Until an hour has passed, long windows use the history there is.
"""

from __future__ import annotations

from collections import deque

SAMPLE_INTERVAL = 10.0
#: Windows in samples: 10 s, 1, 5, 15, 30 and 60 min.
WINDOWS = (1, 6, 30, 90, 180, 360)


class RateWindows:
    """Byte totals sampled every :data:`SAMPLE_INTERVAL` seconds; the caller drives :meth:`sample`."""

    def __init__(self, first_total: int, now: float) -> None:
        self._samples: deque[tuple[float, int]] = deque([(now, first_total)], maxlen=WINDOWS[-1] + 1)

    def sample(self, total: int, now: float) -> None:
        self._samples.append((now, total))

    def kbps(self, total: int, now: float) -> list[int]:
        """Kilobits per second over each window, ending now with ``total`` bytes moved so far."""
        samples = list(self._samples)
        out = []
        for n in WINDOWS:
            then, before = samples[max(0, len(samples) - n)] if samples else (now, total)
            elapsed = now - then
            out.append(int((total - before) * 8 / 1000 / elapsed) if elapsed > 0 else 0)
        return out
