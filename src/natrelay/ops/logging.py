"""Logging set-up shared by the command-line programs.

Verbosity is chosen like ``RUST_LOG`` in the original tools, so people who know those
can carry their habits over: a comma-separated list of directives, each either a bare
level (the default for everything) or ``logger.name=level`` for one subtree, e.g.
``info,natrelay.offset.server=debug``. The ``--log-level`` flag takes the same syntax
and wins over the environment variable, which wins over the program's default.

Unlike env_logger (which silently ignores a directive it cannot parse) a bad value is
an error: a typo in a level name should not quietly produce a silent server.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

__all__ = [
    "DEFAULT_ENV_VAR",
    "LEVELS",
    "LogSpec",
    "LoggingConfigError",
    "parse_log_spec",
    "setup_logging",
]

DEFAULT_ENV_VAR = "NATRELAY_LOG"

#: Level names accepted in a spec (case-insensitive). ``trace`` exists for RUST_LOG
#: habits and means DEBUG; ``off`` silences everything, even CRITICAL.
LEVELS: Mapping[str, int] = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}

_LOGGER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


class LoggingConfigError(ValueError):
    """A log-level spec that cannot be parsed; the message names its source and the bad part."""


@dataclass(frozen=True)
class LogSpec:
    """A parsed spec: an optional default level and per-logger levels, in spec order."""

    default: int | None
    loggers: tuple[tuple[str, int], ...] = ()


def _error(source: str, problem: str) -> LoggingConfigError:
    return LoggingConfigError(f"{source}: {problem}" if source else problem)


def _level(name: str, *, source: str, directive: str) -> int:
    name = name.strip()
    level = LEVELS.get(name.lower())
    if level is None:
        where = f" in {directive!r}" if directive != name else ""
        raise _error(source, f"unknown level {name!r}{where} (choose from {', '.join(LEVELS)})")
    return level


def parse_log_spec(text: str, *, source: str = "log level") -> LogSpec:
    """Parse ``"debug"`` or ``"info,natrelay.offset.server=debug"``.

    Empty directives (a trailing comma) are skipped, and a later directive for the same
    target overrides an earlier one, as with ``RUST_LOG``. ``source`` (e.g.
    ``"--log-level"`` or ``"$NATRELAY_LOG"``) prefixes error messages unless empty.
    """
    default: int | None = None
    loggers: dict[str, int] = {}
    directives = [part.strip() for part in text.split(",")]
    if not any(directives):
        raise _error(source, "empty; give a level such as 'info' or 'debug'")
    for directive in directives:
        if not directive:
            continue
        name, sep, level_text = directive.partition("=")
        if not sep:
            default = _level(directive, source=source, directive=directive)
            continue
        name = name.strip()
        if not _LOGGER_NAME.fullmatch(name):
            raise _error(source, f"{name!r} in {directive!r} is not a logger name")
        loggers.pop(name, None)  # keep the position of the last assignment
        loggers[name] = _level(level_text, source=source, directive=directive)
    return LogSpec(default=default, loggers=tuple(loggers.items()))


class _UtcFormatter(logging.Formatter):
    """ISO-8601 UTC timestamps with milliseconds, so logs from several hosts line up."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class _Handler(logging.StreamHandler[TextIO]):
    """Our stderr handler; remembers what it configured so a second set-up can undo it.

    Identifying our own handler by type lets a repeated ``setup_logging`` replace it
    without touching handlers that others installed (pytest's ``caplog``, for one).
    """

    def __init__(self, stream: TextIO, configured: tuple[str, ...]) -> None:
        super().__init__(stream)
        self.configured = configured


def setup_logging(
    level: str | None = None,
    *,
    env_var: str = DEFAULT_ENV_VAR,
    program: str = "natrelay",
    default_level: str = "warning",
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Send log records to stderr with a UTC timestamp, program, level and logger name.

    ``level`` is the ``--log-level`` value and wins; otherwise ``env_var`` is read from
    ``environ`` (default ``os.environ``; an empty value counts as unset); otherwise
    ``default_level``. Servers pass ``default_level="info"`` so that their start-up lines
    appear, one-shot tools keep ``"warning"``. Raises ``LoggingConfigError`` on a bad spec.
    Calling it again replaces the previous configuration.
    """
    env = os.environ if environ is None else environ
    base = parse_log_spec(default_level, source="default_level")
    if level is not None:
        spec = parse_log_spec(level, source="--log-level")
    elif env.get(env_var, "").strip():
        spec = parse_log_spec(env[env_var], source=f"${env_var}")
    else:
        spec = base

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        for name in old.configured:
            logging.getLogger(name).setLevel(logging.NOTSET)
        old.close()

    for name, value in spec.loggers:
        logging.getLogger(name).setLevel(value)
    root_level = spec.default if spec.default is not None else base.default
    root.setLevel(root_level if root_level is not None else logging.WARNING)

    handler = _Handler(sys.stderr if stream is None else stream, tuple(name for name, _ in spec.loggers))
    safe_program = program.replace("%", "%%")
    handler.setFormatter(_UtcFormatter(f"%(asctime)s {safe_program} %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
