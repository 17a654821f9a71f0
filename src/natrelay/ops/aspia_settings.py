"""How an Aspia settings file (relay.json, router.json) is read, checked, reported and written.

:mod:`natrelay.ops.aspia_config` declares the two files' fields; this module is the machinery both
share: a reader that turns each key's text into a typed value or a :class:`ConfigProblem` naming the
key, the allowed values and the file, one :class:`ConfigError` listing every problem at once, the
load / create-without-overwriting cycle, and the exit code the CLIs use for a broken file. Kept apart
so the field tables read as a specification and the parsing rules are found in one place.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
import shlex
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Self

from natrelay.ops.addresses import AddressError, parse_host_port, parse_listen_address
from natrelay.ops.bandwidth import parse_rate
from natrelay.ops.jsonsettings import (
    KEY_SEPARATOR,
    JsonSettingsError,
    SettingsDocument,
    format_settings,
    read_settings,
    write_file_atomically,
)

_LOG = logging.getLogger(__name__)

CONFIG_DIR_ENV: Final = "ASPIA_CONFIG_DIR"
RELAY_CONFIG_NAME: Final = "relay.json"
ROUTER_CONFIG_NAME: Final = "router.json"
# sysexits.h EX_CONFIG; the systemd units list it in RestartPreventExitStatus so a broken file
# stops the service instead of restarting it every few seconds forever.
EXIT_CONFIG_ERROR: Final = 78

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DIGITS = re.compile(r"[0-9]{1,20}")
_HEX = re.compile(r"[0-9A-Fa-f]*")
DATABASE_URL_SCHEMES: Final = ("postgresql://", "postgres://")
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def default_config_path(
    name: str, env: Mapping[str, str] | None = None, *, platform: str = sys.platform
) -> Path:
    """Where ``name`` (``relay.json``/``router.json``) lives unless the caller says otherwise.

    ``ASPIA_CONFIG_DIR`` in ``env`` (default: the process environment) overrides the directory.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"not a plain file name: {name!r}")
    environ: Mapping[str, str] = os.environ if env is None else env
    override = environ.get(CONFIG_DIR_ENV, "").strip()
    if override:
        return Path(override) / name
    if platform == "win32":
        return Path(environ.get("ProgramData") or "C:\\ProgramData") / "aspia" / name
    return Path("/etc/aspia") / name


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file; ``key`` is empty for problems with the file as a whole."""

    key: str
    message: str


def problem_line(path: str | os.PathLike[str], problem: ConfigProblem, prefix: str = "") -> str:
    """``path: key: message`` (``path: message`` for the file as a whole), ``prefix`` before the key."""
    where = f"{problem.key}: " if problem.key else ""
    return f"{path}: {prefix}{where}{problem.message}"


def warning_lines(path: str | os.PathLike[str], warnings: Sequence[ConfigProblem]) -> list[str]:
    """One ``path: warning: key: message`` line per warning, for the CLI to print to stderr."""
    return [problem_line(path, w, "warning: ") for w in warnings]


class ConfigError(Exception):
    """Everything wrong with one config file, ready to print one line per problem.

    ``warnings`` carries what was merely suspicious in the same file (unknown keys, a private
    key readable by others), so the operator sees them next to the errors they may explain:
    a misspelled required key shows up as "required, but missing" *and* "did you mean".
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        problems: Sequence[ConfigProblem],
        warnings: Sequence[ConfigProblem] = (),
    ) -> None:
        self.path = str(path)
        self.problems = list(problems)
        self.warnings = list(warnings)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [problem_line(self.path, p) for p in self.problems]

    def warning_lines(self) -> list[str]:
        return warning_lines(self.path, self.warnings)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.problems if p.key]


class ConfigExistsError(ConfigError):
    """``--create-config`` found something at the target path and left it alone."""


@dataclass(frozen=True)
class FieldInfo:
    """A key of a config file and, in words, the values it allows (used in every message about it)."""

    key: str
    allowed: str
    required: bool = False


def _ip_literal(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_host(text: str) -> bool:
    """An IP literal or a syntactically valid DNS name (IDN allowed)."""
    if _ip_literal(text) is not None:
        return True
    try:
        name = text.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    # An all-numeric last label is a mistyped IP address (1.2.3.256), never a real host name.
    return all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _plain_ip(addr: IPAddress) -> IPAddress:
    # Dual-stack listeners report IPv4 peers as ::ffff:a.b.c.d; compare them as the IPv4 they are.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def address_allowed(white_list: Sequence[IPAddress], address: str | IPAddress) -> bool:
    """Router white-list rule: an empty list allows everyone, otherwise only the listed addresses."""
    if not white_list:
        return True
    try:
        addr = _plain_ip(ipaddress.ip_address(address))
    except ValueError:
        return False
    return addr in {_plain_ip(a) for a in white_list}


class SettingsReader:
    """Turns settings text into typed values, collecting every problem instead of stopping at the first."""

    def __init__(self, doc: SettingsDocument, fields: Sequence[FieldInfo]) -> None:
        self.doc = doc
        self.fields = {f.key: f for f in fields}
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def warn(self, key: str, what: str) -> None:
        """Something that does not stop the program but that the operator must hear about."""
        self.warnings.append(ConfigProblem(key, what))

    def _fail(self, key: str, what: str) -> None:
        self.problems.append(ConfigProblem(key, f"{what} (allowed: {self.fields[key].allowed})"))

    def _raw(self, key: str) -> str:
        """The trimmed text, '' meaning "not set"; a value JSON could not express is reported."""
        if key in self.doc.groups:
            # {"a": 1} where a value belongs: Aspia would store "Key/a" and use the default for Key.
            self._fail(key, "got a JSON object ({...}), which is not a value; write a string or a number")
            return ""
        if key in self.doc.rejected:
            self._fail(key, f"unusable value: {self.doc.rejected[key]}")
            return ""
        value = self.doc.values.get(key, "")
        if not value and self.fields[key].required:
            self._fail(key, "required, but missing or empty")
        return value

    def uint(self, key: str, default: int, low: int, high: int) -> int:
        raw = self._raw(key)
        if not raw:
            return default
        if _DIGITS.fullmatch(raw) is None or not low <= int(raw) <= high:
            self._fail(key, f"got {raw!r}")
            return default
        return int(raw)

    def boolean(self, key: str, default: bool) -> bool:
        raw = self._raw(key).lower()
        if not raw:
            return default
        if raw in ("true", "1"):
            return True
        if raw in ("false", "0"):
            return False
        self._fail(key, f"got {raw!r}")
        return default

    def hex_bytes(self, key: str, size: int) -> bytes:
        raw = self._raw(key)
        if not raw:
            return b""
        if _HEX.fullmatch(raw) is None:
            bad = next(c for c in raw if c not in "0123456789abcdefABCDEF")
            self._fail(key, f"contains {bad!r}, which is not a hexadecimal digit")
        elif len(raw) != 2 * size:
            self._fail(key, f"has {len(raw)} hexadecimal digits, needs {2 * size}")
        else:
            return bytes.fromhex(raw)
        return b""

    def host(self, key: str, *, reachable: bool = False) -> str:
        raw = self._raw(key)
        if raw and not _is_host(raw):
            self._fail(key, f"{raw!r} is neither an IP address nor a valid host name")
        elif reachable and (ip := _ip_literal(raw)) is not None and ip.is_unspecified:
            self._fail(key, f"{raw!r} is a wildcard address that peers cannot connect to")
        else:
            return raw
        return ""

    def interface(self, key: str) -> str:
        raw = self._raw(key)
        if raw and _ip_literal(raw) is None:
            self._fail(key, f"{raw!r} is not an IP address")
            return ""
        return raw

    def ip_list(self, key: str) -> tuple[IPAddress, ...]:
        entries = [e.strip(" \t\r\n\f\v") for e in self._raw(key).split(";")]
        parsed = [(e, _ip_literal(e)) for e in entries if e]
        bad = [e for e, ip in parsed if ip is None]
        if bad:
            self._fail(key, "not IP addresses: " + ", ".join(repr(e) for e in bad))
            return ()
        return tuple(_plain_ip(ip) for _, ip in parsed if ip is not None)

    def listen(self, key: str) -> str:
        """``HOST:PORT`` to listen on (an IP address, ``[IPv6]:PORT`` or a bare port), '' for off."""
        raw = self._raw(key)
        if raw:
            try:
                parse_listen_address(raw)
            except AddressError as exc:
                self._fail(key, str(exc))
                return ""
        return raw

    def rate(self, key: str) -> int:
        raw = self._raw(key)
        if not raw:
            return 0
        try:
            return parse_rate(raw, key)
        except ValueError:
            self._fail(key, f"got {raw!r}")
            return 0

    def host_port_list(self, key: str) -> tuple[tuple[str, int], ...]:
        entries = [e.strip(" \t\r\n\f\v") for e in self._raw(key).split(";")]
        parsed: list[tuple[str, int]] = []
        for entry in (e for e in entries if e):
            try:
                parsed.append(parse_host_port(entry, what=key))
            except AddressError as exc:
                self._fail(key, str(exc))
                return ()
        return tuple(parsed)

    def database(self, key: str) -> str:
        raw = self._raw(key)
        if raw and not raw.startswith(DATABASE_URL_SCHEMES) and not os.path.isabs(raw):
            self._fail(key, f"{raw!r} is neither a postgresql:// URL nor an absolute path")
            return ""
        return raw

    def report_unknown_keys(self) -> None:
        """Unknown keys do not stop the program (the original ignores them) but are usually typos."""
        for key in sorted(set(self.doc.values) | set(self.doc.rejected) | self.doc.groups):
            if key in self.fields or key.split(KEY_SEPARATOR, 1)[0] in self.fields:
                continue  # a known key, or inside an object given for one (reported as its error)
            if any(other.startswith(key + KEY_SEPARATOR) for other in self.doc.values):
                continue  # an unknown object: its entries are reported, one line each
            close = difflib.get_close_matches(key.split(KEY_SEPARATOR, 1)[0], list(self.fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.warn("", f"unknown key {key!r} ignored{hint}")


def ip_list_text(entries: Sequence[IPAddress]) -> str:
    # The original writes every entry followed by ';', so a non-empty list ends with ';'.
    return "".join(f"{entry};" for entry in entries)


class SettingsFile:
    """What relay.json and router.json share: load, validate, create without overwriting."""

    FILE_NAME: ClassVar[str]
    FILE_MODE: ClassVar[int]
    FIELDS: ClassVar[tuple[FieldInfo, ...]]

    @classmethod
    def _from_reader(cls, reader: SettingsReader) -> Self:
        raise NotImplementedError

    def to_settings(self) -> dict[str, str]:
        """The key/value text Aspia stores for this configuration."""
        raise NotImplementedError

    @classmethod
    def _check(cls, config: Self, reader: SettingsReader) -> None:
        """Warnings about values that are valid but almost certainly not what the operator wants."""

    @classmethod
    def from_settings(cls, doc: SettingsDocument, warnings: list[ConfigProblem] | None = None) -> Self:
        """Build and validate; raises :class:`ConfigError` listing every problem in ``doc``.

        Warnings (unknown keys, suspicious values) go into ``warnings`` when the caller passes a
        list, which a CLI then prints to stderr whatever the log level; without one they are
        logged. A :class:`ConfigError` carries them too.
        """
        reader = SettingsReader(doc, cls.FIELDS)
        config = cls._from_reader(reader)
        if not reader.problems:
            cls._check(config, reader)
        reader.report_unknown_keys()
        if reader.problems:
            raise ConfigError(doc.source, reader.problems, reader.warnings)
        if warnings is None:
            for line in warning_lines(doc.source, reader.warnings):
                _LOG.warning("%s", line)
        else:
            warnings.extend(reader.warnings)
        return config

    @classmethod
    def _file_warnings(cls, path: Path) -> list[ConfigProblem]:
        """The file's permissions: a private key others can read, or a config others can change."""
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            return []
        found: list[ConfigProblem] = []
        if cls.FILE_MODE & 0o077 == 0 and mode & 0o077:
            found.append(ConfigProblem("", (
                f"holds a private key but its mode is {mode:04o} (others can read it); "
                f"run: chmod {mode & ~0o077:o} {shlex.quote(str(path))}")))
        elif mode & 0o022:
            found.append(ConfigProblem("", (
                f"can be changed by other users (mode {mode:04o}); "
                f"run: chmod go-w {shlex.quote(str(path))}")))
        return found

    @classmethod
    def load(cls, path: Path | None = None, warnings: list[ConfigProblem] | None = None) -> Self:
        """Read and validate the file (default location if ``path`` is None); never creates it.

        ``warnings`` as in :meth:`from_settings`, plus one about the file's permissions.
        """
        path = default_config_path(cls.FILE_NAME) if path is None else path
        required = ", ".join(f.key for f in cls.FIELDS if f.required)
        try:
            doc = read_settings(path)
        except FileNotFoundError:
            hint = f"create it with --create-config, then fill in {required}"
            raise ConfigError(path, [ConfigProblem("", f"file does not exist; {hint}")]) from None
        except JsonSettingsError as exc:
            raise ConfigError(path, [ConfigProblem("", exc.reason)]) from None
        except OSError as exc:
            raise ConfigError(
                path, [ConfigProblem("", f"cannot read the file: {exc.strerror or exc}")]
            ) from None
        found = cls._file_warnings(path)
        try:
            config = cls.from_settings(doc, found)
        except ConfigError as exc:
            raise ConfigError(exc.path, exc.problems, found + exc.warnings) from None
        if warnings is None:
            for line in warning_lines(path, found):
                _LOG.warning("%s", line)
        else:
            warnings.extend(found)
        return config

    def problems(self, source: str = "<in memory>") -> list[ConfigProblem]:
        """Validate a configuration built in code, by the same rules as one read from a file.

        Going through the settings text means there is exactly one set of rules, the one that
        guards files, so code and files can never disagree about what is valid.
        """
        try:
            type(self).from_settings(SettingsDocument(source, self.to_settings()), [])
        except ConfigError as exc:
            return exc.problems
        return []

    def write_new(self, path: Path | None = None) -> Path:
        """Write this configuration to a file that must not exist yet; returns the path written."""
        path = default_config_path(self.FILE_NAME) if path is None else path
        data = format_settings(self.to_settings())
        try:
            write_file_atomically(path, data, exclusive=True, mode=self.FILE_MODE)
        except FileExistsError:
            message = "already exists; refusing to overwrite it (move it away first to create a new one)"
            raise ConfigExistsError(path, [ConfigProblem("", message)]) from None
        except OSError as exc:
            raise ConfigError(
                path, [ConfigProblem("", f"cannot create the file: {exc.strerror or exc}")]
            ) from None
        return path

    @classmethod
    def create_default(cls, path: Path | None = None) -> Path:
        """``--create-config``: every field at its default, parent directories made, nothing overwritten."""
        return cls().write_new(path)


