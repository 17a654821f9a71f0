"""ASPIA_LOG_* handling: ranges and clamping, level mapping, the line format, rotation and age limits."""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from natrelay.ops.aspia_logging import (
    AspiaFileHandler,
    AspiaFormatter,
    AspiaNullHandler,
    AspiaStreamHandler,
    parse_log_env,
    setup_aspia_logging,
)

DAY = 86400.0
NAME = re.compile(r"aspia_relay-\d{8}-\d{6}\.\d{3}\.\d+\.log")
LINE = re.compile(r"\d\d:\d\d:\d\d\.\d{3} \d+ [DIWEF] [\w.]+:\d+ [\w<>]+\] .*")


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A private logger per test, so the root logger and other tests are never touched."""
    log = logging.Logger(f"aspia-test-{id(object())}")
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def log_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if NAME.fullmatch(p.name))


# ---------------------------------------------------------------- parsing the environment


def test_linux_defaults() -> None:
    settings, warnings = parse_log_env({}, platform="linux")
    assert warnings == []
    assert (settings.level, settings.to_file, settings.to_stdout) == (2, False, True)
    assert (settings.max_file_size, settings.max_file_age_days) == (2 * 1024 * 1024, 14)
    assert settings.log_dir == Path(tempfile.gettempdir()) / "aspia"
    assert settings.python_level == logging.CRITICAL


def test_windows_release_defaults() -> None:
    settings, _ = parse_log_env({}, platform="win32")
    assert (settings.to_file, settings.to_stdout) == (True, False)


@pytest.mark.parametrize(
    ("name", "raw", "attr", "expected", "warned"),
    [
        ("ASPIA_LOG_LEVEL", "0", "level", 0, False),
        ("ASPIA_LOG_LEVEL", "5", "level", 2, True),
        ("ASPIA_LOG_LEVEL", "-1", "level", 0, True),
        ("ASPIA_LOG_LEVEL", "info", "level", 2, True),
        ("ASPIA_MAX_LOG_FILE_SIZE", "1024", "max_file_size", 1024, False),
        ("ASPIA_MAX_LOG_FILE_SIZE", "1023", "max_file_size", 1024, True),
        ("ASPIA_MAX_LOG_FILE_SIZE", "10485760", "max_file_size", 10485760, False),
        ("ASPIA_MAX_LOG_FILE_SIZE", "10485761", "max_file_size", 10485760, True),
        ("ASPIA_MAX_LOG_FILE_SIZE", "9" * 100, "max_file_size", 2097152, True),
        ("ASPIA_MAX_LOG_FILE_AGE", "0", "max_file_age_days", 0, False),
        ("ASPIA_MAX_LOG_FILE_AGE", "366", "max_file_age_days", 366, False),
        ("ASPIA_MAX_LOG_FILE_AGE", "367", "max_file_age_days", 366, True),
        ("ASPIA_MAX_LOG_FILE_AGE", "-3", "max_file_age_days", 0, True),
        ("ASPIA_MAX_LOG_FILE_AGE", " ", "max_file_age_days", 14, False),
    ],
)
def test_numbers_are_clamped_with_a_warning(
    name: str, raw: str, attr: str, expected: int, warned: bool
) -> None:
    settings, warnings = parse_log_env({name: raw}, platform="linux")
    assert getattr(settings, attr) == expected
    assert len(warnings) == int(warned)
    if warned:
        assert warnings[0].startswith(f"{name}=") and str(expected) in warnings[0]


@pytest.mark.parametrize(
    ("raw", "on"), [("1", True), ("7", True), ("yes", True), ("0", False), ("00", False)]
)
def test_switches_are_on_for_anything_but_zero(raw: str, on: bool) -> None:
    settings, warnings = parse_log_env(
        {"ASPIA_LOG_TO_FILE": raw, "ASPIA_LOG_TO_STDOUT": raw}, platform="linux"
    )
    assert (settings.to_file, settings.to_stdout) == (on, on)
    assert warnings == []


def test_log_dir_argument_beats_env_which_beats_temp(tmp_path: Path) -> None:
    env = {"ASPIA_LOG_DIR": str(tmp_path / "env")}
    assert parse_log_env(env)[0].log_dir == tmp_path / "env"
    assert parse_log_env(env, log_dir=tmp_path / "arg")[0].log_dir == tmp_path / "arg"


# ---------------------------------------------------------------- setup and levels


@pytest.mark.parametrize(
    ("level", "shown"),
    [("0", ["info", "error", "fatal"]), ("1", ["error", "fatal"]), ("2", ["fatal"])],
)
def test_lower_level_means_more_messages(logger: logging.Logger, level: str, shown: list[str]) -> None:
    out = io.StringIO()
    assert setup_aspia_logging("aspia_relay", {"ASPIA_LOG_LEVEL": level}, logger=logger, stream=out) == []
    logger.info("info")
    logger.error("error")
    logger.critical("fatal")
    assert [line.rsplit("] ", 1)[1] for line in out.getvalue().splitlines()] == shown


def test_warnings_are_returned_and_shown_despite_the_fatal_only_level(logger: logging.Logger) -> None:
    out = io.StringIO()
    env = {"ASPIA_LOG_LEVEL": "9", "ASPIA_MAX_LOG_FILE_AGE": "1000"}
    warnings = setup_aspia_logging("aspia_relay", env, logger=logger, stream=out)
    assert len(warnings) == 2
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == warnings
    assert all(" W " in line for line in lines)
    assert logger.level == logging.CRITICAL


def test_line_format(logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_aspia_logging("aspia_relay", {"ASPIA_LOG_LEVEL": "0"}, logger=logger, stream=out)
    logger.warning("careful %d", 7)
    try:
        raise KeyError("boom")
    except KeyError:
        logger.exception("failed")
    first, second, *trace = out.getvalue().splitlines()
    assert (
        LINE.fullmatch(first)
        and " W test_aspia_logging.py:" in first
        and "test_line_format] careful 7" in first
    )
    assert LINE.fullmatch(second) and " E " in second and second.endswith("] failed")
    assert trace[0].startswith("Traceback") and "KeyError: 'boom'" in trace[-1]


def test_letters_follow_severity() -> None:
    fmt = AspiaFormatter()
    letters = []
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL, 45):
        record = logging.LogRecord("x", level, "f.py", 1, "m", None, None, "fn")
        letters.append(fmt.format(record).split(" ")[2])
    assert letters == ["D", "I", "W", "E", "F", "E"]


def test_reconfiguring_replaces_only_our_handlers(logger: logging.Logger) -> None:
    foreign = logging.StreamHandler(io.StringIO())
    logger.addHandler(foreign)
    setup_aspia_logging("aspia_relay", {}, logger=logger, stream=io.StringIO())
    setup_aspia_logging("aspia_relay", {}, logger=logger, stream=io.StringIO())
    assert sum(isinstance(h, AspiaStreamHandler) for h in logger.handlers) == 1
    assert foreign in logger.handlers


def test_all_outputs_off_is_silent_even_for_fatal(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    env = {"ASPIA_LOG_TO_STDOUT": "0", "ASPIA_LOG_TO_FILE": "0"}
    setup_aspia_logging("aspia_relay", env, logger=logger, log_dir=tmp_path)
    logger.critical("nobody hears this")
    assert [type(h) for h in logger.handlers] == [AspiaNullHandler]
    assert capsys.readouterr().err == ""
    assert list(tmp_path.iterdir()) == []


def test_stdout_switch_really_writes_to_stderr(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_aspia_logging("aspia_relay", {"ASPIA_LOG_LEVEL": "0"}, logger=logger)
    logger.info("hello")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.endswith("] hello\n")


def test_unusable_log_dir_is_a_warning_not_a_crash(logger: logging.Logger, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    out = io.StringIO()
    warnings = setup_aspia_logging(
        "aspia_relay", {"ASPIA_LOG_TO_FILE": "1"}, logger=logger, stream=out, log_dir=blocker / "logs"
    )
    assert len(warnings) == 1 and "file logging is off" in warnings[0]
    assert warnings[0] in out.getvalue()


# ---------------------------------------------------------------- files


def test_file_logging_names_and_content(logger: logging.Logger, tmp_path: Path) -> None:
    env = {"ASPIA_LOG_TO_FILE": "1", "ASPIA_LOG_TO_STDOUT": "0", "ASPIA_LOG_LEVEL": "0"}
    setup_aspia_logging("aspia_relay", env, logger=logger, log_dir=tmp_path / "logs", clock=FakeClock())
    logger.info("written to the file")
    (path,) = log_files(tmp_path / "logs")
    assert path.name.endswith(".250.0.log")
    assert path.read_text().endswith("] written to the file\n")
    assert (path.stat().st_mode & 0o077) == 0


def test_rotation_starts_new_files_and_loses_nothing(tmp_path: Path) -> None:
    handler = AspiaFileHandler(tmp_path, "aspia_relay", max_bytes=1024, clock=FakeClock())
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        messages = [f"message {i:03d} " + "x" * 80 for i in range(40)]
        for text in messages:
            handler.handle(logging.LogRecord("x", logging.INFO, "f.py", 1, text, None, None))
    finally:
        handler.close()
    files = log_files(tmp_path)
    assert len(files) >= 4 and len({p.name for p in files}) == len(files)
    assert all(p.stat().st_size <= 1024 for p in files)
    ordered = sorted(files, key=lambda p: int(p.name.rsplit(".", 2)[1]))
    assert "".join(p.read_text() for p in ordered).splitlines() == messages


def test_a_record_larger_than_the_limit_gets_a_file_of_its_own(tmp_path: Path) -> None:
    handler = AspiaFileHandler(tmp_path, "aspia_relay", max_bytes=1024, clock=FakeClock())
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        for text in ("small", "y" * 3000, "after"):
            handler.handle(logging.LogRecord("x", logging.INFO, "f.py", 1, text, None, None))
    finally:
        handler.close()
    contents = sorted((p.read_text() for p in log_files(tmp_path)), key=len)
    assert contents == ["small\n", "after\n", "y" * 3000 + "\n"]


def _old_file(directory: Path, name: str, age_days: float, now: float) -> Path:
    path = directory / name
    path.write_text("old\n")
    os.utime(path, (now - age_days * DAY, now - age_days * DAY))
    return path


def test_old_files_of_this_program_are_deleted_and_nothing_else(tmp_path: Path) -> None:
    clock = FakeClock()
    expired = _old_file(tmp_path, "aspia_relay-20230101-000000.000.0.log", 15, clock.now)
    recent = _old_file(tmp_path, "aspia_relay-20230102-000000.000.0.log", 13, clock.now)
    other_program = _old_file(tmp_path, "aspia_router-20230101-000000.000.0.log", 100, clock.now)
    unrelated = _old_file(tmp_path, "aspia_relay-notes.log", 100, clock.now)
    handler = AspiaFileHandler(tmp_path, "aspia_relay", max_age_days=14, clock=clock)
    handler.close()
    assert not expired.exists()
    assert recent.exists() and other_program.exists() and unrelated.exists()


def test_age_zero_keeps_everything(tmp_path: Path) -> None:
    clock = FakeClock()
    ancient = _old_file(tmp_path, "aspia_relay-20000101-000000.000.0.log", 5000, clock.now)
    AspiaFileHandler(tmp_path, "aspia_relay", max_age_days=0, clock=clock).close()
    assert ancient.exists()


def test_a_long_running_process_expires_files_without_rotating(tmp_path: Path) -> None:
    clock = FakeClock()
    handler = AspiaFileHandler(tmp_path, "aspia_relay", max_age_days=1, clock=clock)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        first = handler.current_path
        assert first is not None
        stale = _old_file(tmp_path, "aspia_relay-20230101-000000.000.7.log", 0.5, clock.now)
        clock.now += DAY  # now 1.5 days old; our own open file is older still but must survive
        os.utime(first, (clock.now - 2 * DAY, clock.now - 2 * DAY))
        handler.handle(logging.LogRecord("x", logging.INFO, "f.py", 1, "tick", None, None))
        assert not stale.exists()
        assert first.exists() and handler.current_path == first
    finally:
        handler.close()


def test_name_collisions_take_the_next_counter(tmp_path: Path) -> None:
    clock = FakeClock()
    one = AspiaFileHandler(tmp_path, "aspia_relay", clock=clock)
    two = AspiaFileHandler(tmp_path, "aspia_relay", clock=clock)
    try:
        assert one.current_path is not None and two.current_path is not None
        assert one.current_path != two.current_path
        assert one.current_path.name.endswith(".0.log") and two.current_path.name.endswith(".1.log")
    finally:
        one.close()
        two.close()


def test_program_name_cannot_escape_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AspiaFileHandler(tmp_path, "../evil")
