"""The transfer progress line: rates over a sliding window, what it shows, when it is on."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from natrelay.ops.progress import RATE_WINDOW, ProgressLine, RateMeter, progress_default, summary


def test_rates_are_measured_over_the_recent_window_only() -> None:
    meter = RateMeter(0.0)
    assert meter.sample(1.0, 1000, 0) == (1000.0, 0.0)
    assert meter.sample(2.0, 2000, 500) == (1000.0, 250.0)
    # A long pause, sampled twice a second as the display does: the rate falls to what moved
    # within the window, not the average since the start.
    t = 2.0
    while t < 2.0 + RATE_WINDOW * 3:
        t += 0.5
        up, down = meter.sample(t, 2000, 500)
    assert up == 0.0 and down == 0.0
    for _ in range(int(RATE_WINDOW / 0.5) + 1):  # then 1000 bytes/s for longer than the window
        t += 0.5
        up, _ = meter.sample(t, 2000 + int((t - 2.0 - RATE_WINDOW * 3) * 1000), 500)
    assert up == pytest.approx(1000.0, rel=0.2)


@dataclass
class Counts:
    sent: int = 0
    received: int = 0


class Tty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_the_line_shows_bytes_and_rate_each_way_and_the_time() -> None:
    counts = Counts(5_000_000, 1000)
    out = Tty(True)
    line = ProgressLine(counts, out)
    text = line.render()
    assert text.startswith("sent 5.00MB") and "received 1.00kB" in text and text.endswith("00:00")
    line.update()
    line.bar.close()
    assert "\rsent 5.00MB" in out.getvalue()  # the line itself, nothing before it


def test_summary_names_both_directions_and_the_duration() -> None:
    text = summary(Counts(2000, 10), 2.0)
    assert text.startswith("sent 2000 bytes (2.00kB, 1.00kB/s), received 10 bytes")
    assert text.endswith("in 00:02")


@pytest.mark.parametrize(("err_tty", "out_tty", "expected"), [
    (True, False, True),    # a person watches stderr, the data goes to a file or pipe
    (True, True, False),    # the data is on the terminal: a progress line would mix with it
    (False, False, False),  # a script or a log: no live line
])
def test_on_by_default_only_when_stderr_is_a_terminal_and_stdout_is_not(err_tty: bool, out_tty: bool,
                                                                      expected: bool) -> None:
    assert progress_default(Tty(err_tty), Tty(out_tty)) is expected
