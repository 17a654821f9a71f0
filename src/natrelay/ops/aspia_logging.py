"""Logging for aspia_relay and aspia_router, configured by the ``ASPIA_LOG_*`` variables as in Aspia 2.7.0.

Operators of the original set these variables in service units and shells; honouring the same
names, ranges and defaults (spec section 10.2) lets them switch programs without relearning:

=========================  ==============================================  ==========================
variable                   meaning                                         range, default
=========================  ==============================================  ==========================
``ASPIA_LOG_LEVEL``        0 = info, 1 = errors, 2 = fatal only            0..2, default 2
``ASPIA_LOG_TO_FILE``      non-zero enables the log file                   default off (on: Windows)
``ASPIA_LOG_TO_STDOUT``    non-zero enables console output (to stderr)     default on (off: Windows)
``ASPIA_MAX_LOG_FILE_SIZE`` bytes before a new file is started             1024..10485760, 2097152
``ASPIA_MAX_LOG_FILE_AGE`` days to keep old files, 0 = keep forever        0..366, default 14
=========================  ==============================================  ==========================

Out-of-range numbers are clamped and unparsable ones replaced by the default, each with a warning
that is always emitted (a misconfigured log must not hide its own misconfiguration behind the log
level) and returned to the caller. Log files are named ``<program>-YYYYMMDD-HHMMSS.mmm.<n>.log``
like the original's and live in ``<temp dir>/aspia`` unless ``log_dir`` or ``ASPIA_LOG_DIR`` (our
addition, used by the systemd units because their private /tmp disappears with the service) says
otherwise. Unlike the original, a FATAL (``CRITICAL``) line does not abort the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

LEVEL_ENV: Final = "ASPIA_LOG_LEVEL"
TO_FILE_ENV: Final = "ASPIA_LOG_TO_FILE"
TO_STDOUT_ENV: Final = "ASPIA_LOG_TO_STDOUT"
MAX_FILE_SIZE_ENV: Final = "ASPIA_MAX_LOG_FILE_SIZE"
MAX_FILE_AGE_ENV: Final = "ASPIA_MAX_LOG_FILE_AGE"
LOG_DIR_ENV: Final = "ASPIA_LOG_DIR"

DEFAULT_LEVEL: Final = 2
MIN_FILE_SIZE: Final = 1024
MAX_FILE_SIZE: Final = 10 * 1024 * 1024
DEFAULT_FILE_SIZE: Final = 2 * 1024 * 1024
MAX_FILE_AGE_DAYS: Final = 366
DEFAULT_FILE_AGE_DAYS: Final = 14

# Aspia's severities, in its order: a higher ASPIA_LOG_LEVEL means fewer messages.
PYTHON_LEVELS: Final = {0: logging.INFO, 1: logging.ERROR, 2: logging.CRITICAL}
_DAY: Final = 86400.0
_CLEANUP_PERIOD: Final = 3600.0  # a long-running daemon that never rotates still expires old files


@dataclass(frozen=True)
class AspiaLogSettings:
    """The logging configuration after reading the environment."""

    level: int = DEFAULT_LEVEL
    to_file: bool = False
    to_stdout: bool = True
    max_file_size: int = DEFAULT_FILE_SIZE
    max_file_age_days: int = DEFAULT_FILE_AGE_DAYS
    log_dir: Path = Path("/tmp/aspia")

    @property
    def python_level(self) -> int:
        return PYTHON_LEVELS[self.level]


def _int_setting(
    env: Mapping[str, str], name: str, default: int, low: int, high: int, warnings: list[str]
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw, 10) if len(raw) <= 32 else None
    except ValueError:
        value = None
    if value is None:
        warnings.append(f"{name}={raw[:40]!r} is not an integer; using the default {default}")
        return default
    clamped = min(max(value, low), high)
    if clamped != value:
        warnings.append(f"{name}={value} is outside {low}..{high}; using {clamped}")
    return clamped


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    # The manual's rule: "a value other than 0" enables, so "00" disables and "yes" enables.
    try:
        return int(raw, 10) != 0 if len(raw) <= 32 else True
    except ValueError:
        return True


def parse_log_env(
    env: Mapping[str, str], *, platform: str = sys.platform, log_dir: Path | None = None
) -> tuple[AspiaLogSettings, list[str]]:
    """Read the ``ASPIA_LOG_*`` variables; returns the settings and the warnings about bad values."""
    warnings: list[str] = []
    windows = platform == "win32"  # defaults of the original's release builds
    if log_dir is None:
        override = env.get(LOG_DIR_ENV, "").strip()
        log_dir = Path(override) if override else Path(tempfile.gettempdir()) / "aspia"
    settings = AspiaLogSettings(
        level=_int_setting(env, LEVEL_ENV, DEFAULT_LEVEL, 0, 2, warnings),
        to_file=_switch(env, TO_FILE_ENV, windows),
        to_stdout=_switch(env, TO_STDOUT_ENV, not windows),
        max_file_size=_int_setting(
            env, MAX_FILE_SIZE_ENV, DEFAULT_FILE_SIZE, MIN_FILE_SIZE, MAX_FILE_SIZE, warnings
        ),
        max_file_age_days=_int_setting(
            env, MAX_FILE_AGE_ENV, DEFAULT_FILE_AGE_DAYS, 0, MAX_FILE_AGE_DAYS, warnings
        ),
        log_dir=log_dir,
    )
    return settings, warnings


# Highest first; custom levels in between take the letter of the level below them.
_LETTERS: Final = ((logging.CRITICAL, "F"), (logging.ERROR, "E"), (logging.WARNING, "W"), (logging.INFO, "I"))


class AspiaFormatter(logging.Formatter):
    """The original's line layout: ``HH:MM:SS.mmm <thread> <I|W|E|F> <file>:<line> <function>] message``."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        letter = next((mark for level, mark in _LETTERS if record.levelno >= level), "D")
        line = (
            f"{clock}.{int(record.msecs):03d} {record.thread} {letter} "
            f"{record.filename}:{record.lineno} {record.funcName}] {record.getMessage()}"
        )
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class AspiaStreamHandler(logging.StreamHandler[TextIO]):
    """Console output (stderr, as the original does despite the variable's name)."""


class AspiaNullHandler(logging.NullHandler):
    """Installed when both outputs are off, so Python's last-resort stderr handler stays quiet too."""


class AspiaFileHandler(logging.Handler):
    """Log files with size rotation and age-based deletion.

    Rotation starts a file with a new name rather than renaming old ones, so a reader tailing a
    file never sees it move, and files sort by creation time. Names are created with O_EXCL and
    a counter, so two processes (or a clock that stands still, as in tests) never share a file.
    Only files matching this program's name pattern are ever deleted. ``clock`` returns Unix time
    and is injectable so tests can age files without waiting.
    """

    def __init__(
        self,
        directory: Path,
        program: str,
        *,
        max_bytes: int = DEFAULT_FILE_SIZE,
        max_age_days: int = DEFAULT_FILE_AGE_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        if not program or "/" in program or "\\" in program:
            raise ValueError(f"not a usable program name for log files: {program!r}")
        self.directory = directory
        self.program = program
        self.max_bytes = max_bytes
        self.max_age_days = max_age_days
        self._clock = clock
        self._pattern = re.compile(re.escape(program) + r"-\d{8}-\d{6}\.\d{3}\.\d+\.log")
        self._counter = 0
        self._size = 0
        self._next_cleanup = 0.0
        self._file: TextIO | None = None
        self.current_path: Path | None = None
        # Private directory when we create it: log lines can name peers and users.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._open_new_file()

    def _file_name(self, now: float) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        millis = int((now % 1.0) * 1000)
        return f"{self.program}-{stamp}.{millis:03d}.{self._counter}.log"

    def _open_new_file(self) -> None:
        now = self._clock()
        flags = (
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        )
        while True:
            path = self.directory / self._file_name(now)
            self._counter += 1
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:
                continue
            break
        self._file = os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace", newline="\n")
        self.current_path = path
        self._size = 0
        self.remove_old_files()

    def remove_old_files(self) -> list[Path]:
        """Delete this program's log files older than the age limit; returns what was deleted."""
        now = self._clock()
        self._next_cleanup = now + _CLEANUP_PERIOD
        if self.max_age_days <= 0:
            return []
        cutoff = now - self.max_age_days * _DAY
        removed: list[Path] = []
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return removed
        for entry in entries:
            if not self._pattern.fullmatch(entry.name) or self.directory / entry.name == self.current_path:
                continue
            try:
                if (
                    entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < cutoff
                ):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                continue  # vanished or not ours to delete: never a reason to stop logging
        return removed

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            # Size accounting in encoded bytes without encoding twice for the common ASCII case.
            size = len(line) if line.isascii() else len(line.encode("utf-8", "backslashreplace"))
            if self._file is None or (self._size > 0 and self._size + size > self.max_bytes):
                self._rotate()
            elif self._clock() >= self._next_cleanup:
                self.remove_old_files()
            assert self._file is not None
            self._file.write(line)
            self._file.flush()
            self._size += size
        except Exception:
            self.handleError(record)

    def _rotate(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self._open_new_file()

    def close(self) -> None:
        self.acquire()
        try:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None
        finally:
            self.release()
        super().close()


_OUR_HANDLERS: Final = (AspiaStreamHandler, AspiaFileHandler, AspiaNullHandler)


def setup_aspia_logging(
    program: str,
    env: Mapping[str, str],
    *,
    log_dir: Path | None = None,
    logger: logging.Logger | None = None,
    stream: TextIO | None = None,
    platform: str = sys.platform,
    clock: Callable[[], float] = time.time,
) -> list[str]:
    """Configure ``logger`` (default: the root logger) from ``env``; returns the warnings emitted.

    Calling it again replaces the handlers a previous call installed (and only those), so a
    program can reconfigure without duplicating output.
    """
    settings, warnings = parse_log_env(env, platform=platform, log_dir=log_dir)
    target = logger if logger is not None else logging.getLogger()
    for old in [h for h in target.handlers if isinstance(h, _OUR_HANDLERS)]:
        target.removeHandler(old)
        old.close()
    handlers: list[logging.Handler] = []
    if settings.to_stdout:
        handlers.append(AspiaStreamHandler(stream if stream is not None else sys.stderr))
    if settings.to_file:
        try:
            handlers.append(
                AspiaFileHandler(
                    settings.log_dir,
                    program,
                    max_bytes=settings.max_file_size,
                    max_age_days=settings.max_file_age_days,
                    clock=clock,
                )
            )
        except OSError as exc:
            warnings.append(
                f"cannot write log files in {settings.log_dir}: {exc.strerror or exc}; file logging is off"
            )
    if not handlers:
        handlers.append(AspiaNullHandler())
    formatter = AspiaFormatter()
    for handler in handlers:
        handler.setFormatter(formatter)
        target.addHandler(handler)
    target.setLevel(settings.python_level)
    for text in warnings:
        # Straight to our handlers: the level (fatal-only by default) must not swallow these.
        record = target.makeRecord(
            target.name, logging.WARNING, __file__, 0, "%s", (text,), None, func="setup_aspia_logging"
        )
        for handler in handlers:
            handler.handle(record)
    return warnings


def report_always(
    program: str,
    lines: Sequence[str],
    *,
    level: int = logging.WARNING,
    logger: logging.Logger | None = None,
    stream: TextIO | None = None,
) -> None:
    """Print ``lines`` to stderr and copy them into the log files, whatever ``ASPIA_LOG_LEVEL`` says.

    For what an operator must always hear about (config errors, unknown keys, a private key others
    can read): the default level is fatal-only, which would swallow a warning, and a typo that
    silently falls back to a default is worse than a refusal to start. The console handler is
    skipped because the lines were just printed; file handlers get them so the log tells the same
    story as the terminal.
    """
    out = stream if stream is not None else sys.stderr
    target = logger if logger is not None else logging.getLogger()
    files = [h for h in target.handlers if isinstance(h, AspiaFileHandler)]
    for text in lines:
        print(f"{program}: {text}", file=out, flush=True)
        record = target.makeRecord(target.name, level, __file__, 0, "%s", (text,), None, func="report_always")
        for handler in files:
            handler.handle(record)
