"""Log-level specs (RUST_LOG-style) and the stderr handler set-up."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from natrelay.ops.logging import LEVELS, LoggingConfigError, LogSpec, parse_log_spec, setup_logging

TOUCHED = ("natrelay.test_a", "natrelay.test_b", "natrelay.test_a.child")
LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<program>\S+) (?P<level>[A-Z]+) (?P<name>\S+): (?P<msg>.*)$"
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """setup_logging changes process-wide logging state; put it back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name in TOUCHED:
        logging.getLogger(name).setLevel(logging.NOTSET)


def _lines(stream: io.StringIO) -> list[re.Match[str]]:
    matches = [LINE.match(line) for line in stream.getvalue().splitlines()]
    assert all(matches), stream.getvalue()
    return [m for m in matches if m is not None]


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "default"),
    [("debug", logging.DEBUG), ("INFO", logging.INFO), ("warn", logging.WARNING), (" error ", logging.ERROR),
     ("trace", logging.DEBUG), ("critical", logging.CRITICAL)],
)
def test_bare_level(text: str, default: int) -> None:
    assert parse_log_spec(text) == LogSpec(default=default)


def test_off_is_above_every_level() -> None:
    off = parse_log_spec("off").default
    assert off is not None and off > logging.CRITICAL


def test_directives_with_loggers() -> None:
    spec = parse_log_spec("info,natrelay.offset.server=debug, asyncio = error")
    assert spec == LogSpec(
        default=logging.INFO,
        loggers=(("natrelay.offset.server", logging.DEBUG), ("asyncio", logging.ERROR)),
    )


def test_later_directives_win_and_empty_ones_are_skipped() -> None:
    spec = parse_log_spec("debug,a=info,,error,a=warn,")
    assert spec == LogSpec(default=logging.ERROR, loggers=(("a", logging.WARNING),))


def test_logger_only_spec_leaves_default_unset() -> None:
    assert parse_log_spec("natrelay=debug") == LogSpec(default=None, loggers=(("natrelay", logging.DEBUG),))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        (" , ", "empty"),
        ("verbose", "unknown level 'verbose'"),
        ("info,natrelay=loud", "unknown level 'loud' in 'natrelay=loud'"),
        ("=debug", "is not a logger name"),
        ("natrelay..x=debug", "is not a logger name"),
        ("nat relay=debug", "is not a logger name"),
        ("natrelay/offset=debug", "is not a logger name"),
        ("5", "unknown level"),
    ],
)
def test_invalid_specs_name_source_and_problem(text: str, fragment: str) -> None:
    with pytest.raises(LoggingConfigError) as info:
        parse_log_spec(text, source="$NATRELAY_LOG")
    assert str(info.value).startswith("$NATRELAY_LOG: ")
    assert fragment in str(info.value)


def test_error_lists_the_choices() -> None:
    with pytest.raises(LoggingConfigError) as info:
        parse_log_spec("loud")
    assert all(name in str(info.value) for name in LEVELS)


# ----------------------------------------------------------------------------- set-up


def test_default_level_applies_without_flag_or_env() -> None:
    stream = io.StringIO()
    setup_logging(program="strelay", default_level="info", stream=stream, environ={})
    log = logging.getLogger("natrelay.test_a")
    log.debug("hidden")
    log.info("listening on %s", "127.0.0.1:1337")
    (line,) = _lines(stream)
    assert line["program"] == "strelay"
    assert line["level"] == "INFO"
    assert line["name"] == "natrelay.test_a"
    assert line["msg"] == "listening on 127.0.0.1:1337"


def test_env_var_overrides_default_and_flag_overrides_env() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, environ={"NATRELAY_LOG": "error"}, default_level="info")
    logging.getLogger("natrelay.test_a").warning("hidden by env")
    assert stream.getvalue() == ""
    setup_logging("debug", stream=stream, environ={"NATRELAY_LOG": "error"}, default_level="info")
    logging.getLogger("natrelay.test_a").debug("shown by flag")
    assert [m["msg"] for m in _lines(stream)] == ["shown by flag"]


def test_custom_env_var_and_empty_value_counts_as_unset() -> None:
    stream = io.StringIO()
    setup_logging(env_var="MY_LOG", stream=stream, environ={"MY_LOG": "  ", "NATRELAY_LOG": "debug"})
    logging.getLogger("natrelay.test_a").info("hidden: default is warning")
    logging.getLogger("natrelay.test_a").warning("shown")
    assert [m["msg"] for m in _lines(stream)] == ["shown"]


def test_per_logger_levels() -> None:
    stream = io.StringIO()
    setup_logging("warning,natrelay.test_a=debug", stream=stream, environ={})
    logging.getLogger("natrelay.test_a.child").debug("child of a")
    logging.getLogger("natrelay.test_b").info("b is at warning")
    assert [m["msg"] for m in _lines(stream)] == ["child of a"]


def test_repeated_setup_replaces_handler_and_resets_logger_levels() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("error,natrelay.test_a=debug", stream=first, environ={})
    setup_logging("info", stream=second, environ={})
    logging.getLogger("natrelay.test_a").debug("a is no longer at debug")
    logging.getLogger("natrelay.test_a").info("once")
    assert first.getvalue() == ""
    assert [m["msg"] for m in _lines(second)] == ["once"]
    assert logging.getLogger("natrelay.test_a").level == logging.NOTSET


def test_setup_keeps_foreign_handlers(caplog: pytest.LogCaptureFixture) -> None:
    setup_logging("info", stream=io.StringIO(), environ={})
    logging.getLogger("natrelay.test_a").info("seen by caplog too")
    assert "seen by caplog too" in caplog.messages


def test_off_silences_everything() -> None:
    stream = io.StringIO()
    setup_logging("off", stream=stream, environ={})
    logging.getLogger("natrelay.test_a").critical("nothing")
    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    ("kwargs", "source"),
    [
        ({"level": "loud", "environ": {}}, "--log-level"),
        ({"environ": {"NATRELAY_LOG": "loud"}}, "$NATRELAY_LOG"),
        ({"env_var": "X_LOG", "environ": {"X_LOG": "a b=info"}}, "$X_LOG"),
        ({"default_level": "loud", "environ": {}}, "default_level"),
    ],
)
def test_invalid_values_raise_naming_their_source(kwargs: dict[str, object], source: str) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    with pytest.raises(LoggingConfigError, match=re.escape(source)):
        setup_logging(stream=io.StringIO(), **kwargs)  # type: ignore[arg-type]
    assert root.handlers == before  # nothing half-configured


def test_percent_in_program_name_is_literal() -> None:
    stream = io.StringIO()
    setup_logging("info", program="odd%(name)s", stream=stream, environ={})
    logging.getLogger("natrelay.test_a").info("x")
    assert _lines(stream)[0]["program"] == "odd%(name)s"
