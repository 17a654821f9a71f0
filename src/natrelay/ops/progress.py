"""Progress of a long transfer on stderr, as people know it from ``pv`` and ``curl``.

The display reads a transfer's live byte counters on a timer (twice a second); the data path
only increments integers, so progress costs nothing per byte. tqdm owns the terminal line
(redrawing, width, clearing it at the end), and formats sizes and times.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque
from typing import Protocol, TextIO

from tqdm import tqdm

#: Seconds between redraws, and the window the rates are averaged over.
INTERVAL = 0.5
RATE_WINDOW = 3.0


class Counters(Protocol):
    """What a display reads: bytes sent and received so far."""

    @property
    def sent(self) -> int: ...

    @property
    def received(self) -> int: ...


def size(n: float) -> str:
    return str(tqdm.format_sizeof(n, suffix="B", divisor=1024))


class RateMeter:
    """Rates in each direction over the last ``RATE_WINDOW`` seconds of samples."""

    def __init__(self, now: float) -> None:
        self.start = now
        self._samples: deque[tuple[float, int, int]] = deque([(now, 0, 0)])

    def sample(self, now: float, sent: int, received: int) -> tuple[float, float]:
        self._samples.append((now, sent, received))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        t0, s0, r0 = self._samples[0]
        span = now - t0
        if span <= 0:
            return 0.0, 0.0
        return (sent - s0) / span, (received - r0) / span


def summary(counters: Counters, elapsed: float) -> str:
    """The one-line summary printed at the end with ``-v``."""
    per = max(elapsed, 1e-9)
    return (f"sent {counters.sent} bytes ({size(counters.sent)}, {size(counters.sent / per)}/s), "
            f"received {counters.received} bytes ({size(counters.received)}, "
            f"{size(counters.received / per)}/s) in {tqdm.format_interval(elapsed)}")


class ProgressLine:
    """A live line on ``stream``: bytes and rate each way, and the elapsed time."""

    def __init__(self, counters: Counters, stream: TextIO | None = None) -> None:
        self.counters = counters
        self.meter = RateMeter(time.monotonic())
        self.bar = tqdm(total=None, file=stream or sys.stderr, bar_format="{postfix}", leave=False,
                        dynamic_ncols=True, mininterval=0)

    def render(self) -> str:
        c = self.counters
        now = time.monotonic()
        up, down = self.meter.sample(now, c.sent, c.received)
        return (f"sent {size(c.sent)} ({size(up)}/s) | received {size(c.received)} ({size(down)}/s) | "
                f"{tqdm.format_interval(now - self.meter.start)}")

    def update(self) -> None:
        self.bar.set_postfix_str(self.render(), refresh=True)

    async def run(self) -> None:
        """Redraw until cancelled, then clear the line."""
        try:
            while True:
                self.update()
                await asyncio.sleep(INTERVAL)
        finally:
            with contextlib.suppress(Exception):
                self.bar.close()


def progress_default(stderr: TextIO | None = None, stdout: TextIO | None = None) -> bool:
    """On by default only when a person watches stderr and the data goes elsewhere."""
    err, out = stderr or sys.stderr, stdout or sys.stdout
    try:
        return err.isatty() and not (out is not None and out.isatty())
    except (ValueError, AttributeError):
        return False
