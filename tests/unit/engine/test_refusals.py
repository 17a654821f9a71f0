"""Refusal log lines: bounded per interval however many refusals arrive."""

from __future__ import annotations

from natrelay.engine.refusals import MAX_SOURCES, LogLimiter, Refusal, RefusalLog


def test_first_refusal_is_logged_at_once_then_summed_up_per_interval() -> None:
    log = RefusalLog(10.0)
    first = log.record("connections_per_ip", "10.0.0.1", "per-IP connection limit reached (64)", 0.0)
    assert first is not None and "10.0.0.1" in first and "per-IP connection limit reached (64)" in first
    lines = [first]
    for i in range(100_000):  # a flood: 100,000 refusals in 60 s
        now = i * 0.0006
        if (when := log.deadline()) is not None and now >= when:
            line = log.flush(now)
            assert line is not None
            lines.append(line)
        code = "handshakes_per_ip" if i % 2 else "connections_per_ip"
        line = log.record(code, f"10.0.{i % 300}.1", "limit", now)
        if line is not None:
            lines.append(line)
    last = log.flush(60.0 + 10.0)
    assert last is not None
    lines.append(last)
    assert len(lines) <= 1 + 60 / 10 + 1
    summed = 0
    for line in lines[1:]:
        assert "most from" in line and "connections_per_ip" in line and "handshakes_per_ip" in line
        summed += int(line.split()[1])
    assert summed == 100_000  # every refusal is accounted for in some line


def test_quiet_interval_logs_the_next_refusal_at_once() -> None:
    log = RefusalLog(10.0)
    assert log.record("listeners", "a", "x", 0.0) is not None
    assert log.record("listeners", "a", "x", 1.0) is None
    assert log.deadline() == 10.0
    assert log.flush(5.0) is None  # not yet
    summary = log.flush(10.0)
    assert summary is not None and summary.startswith("refused 1 more connection in the last 10 s")
    assert log.deadline() is None  # nothing counted since
    assert log.record("listeners", "b", "y", 25.0) is not None  # quiet for a whole interval: at once


def test_sources_remembered_are_bounded() -> None:
    log = RefusalLog(10.0)
    log.record("c", "x", "m", 0.0)
    for i in range(10 * MAX_SOURCES):
        log.record("c", f"src{i}", "m", 1.0)
    assert len(log._sources) == MAX_SOURCES
    line = log.flush(10.0)
    assert line is not None and f"refused {10 * MAX_SOURCES} more connections" in line


def test_log_limiter_bounds_lines_per_key_and_says_how_many_it_skipped() -> None:
    limiter = LogLimiter(10.0, burst=2)
    assert limiter.allow("r", 0.0) == 0 and limiter.allow("r", 0.5) == 0
    assert limiter.allow("r", 1.0) is None and limiter.allow("r", 2.0) is None
    assert limiter.allow("other", 2.0) == 0  # each key has its own budget
    assert limiter.allow("r", 10.0) == 2  # the first line after the quiet spell reports the skipped
    assert limiter.allow("r", 10.1) == 0 and limiter.allow("r", 10.2) is None


def test_refusals_carry_a_code_and_stay_strings() -> None:
    refusal = Refusal("handshakes", "concurrent handshake limit reached (1)")
    assert refusal.code == "handshakes"
    assert f"refused: {refusal}" == "refused: concurrent handshake limit reached (1)"
