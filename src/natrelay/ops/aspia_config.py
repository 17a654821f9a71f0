"""relay.json and router.json: the Aspia configuration models, their validation and ``--create-config``.

Field names, types and defaults follow the Aspia 2.7.0 manual and the spec (sections 6.10, 7.6).
Where the original quietly falls back to a default for a value it cannot use (``"PeerPort":
"70000"``) or starts and then idles (spec section 12, item 4), we refuse to start instead and
say why: every problem in the file is collected and reported at once, by key, with the allowed
values and the file path, as one :class:`ConfigError` the CLI prints before exiting with
:data:`EXIT_CONFIG_ERROR`. An operator fixing a fresh file therefore sees the whole to-do list in
one run rather than one complaint per restart.

Deliberate differences from the original, all harmless to files it wrote:

* ``--create-config`` also writes ``ListenInterface`` (empty) so every field is visible, and
  leaves ``RouterAddress`` empty instead of ``127.0.0.1`` so that loading the fresh file names all
  three fields the operator has to fill in.
* Invalid entries in a router white list are errors, not silently dropped: dropping every entry
  of a mistyped list would turn "allow only these" into "allow everyone".
* ``StatisticsInterval`` accepts 1..3600 seconds as the original code does, although the manual
  says 1..60; files that work with the original keep working.

Default locations are ``/etc/aspia/<name>`` (``%ProgramData%\\aspia`` on Windows). Setting the
environment variable ``ASPIA_CONFIG_DIR`` moves them, which lets a non-root user run and test
the programs without touching ``/etc``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import os
import re
import shlex
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Self

from natrelay.ops.addresses import AddressError, parse_host_port, parse_listen_address
from natrelay.ops.bandwidth import format_rate, parse_rate
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


class _Reader:
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


def _ip_list_text(entries: Sequence[IPAddress]) -> str:
    # The original writes every entry followed by ';', so a non-empty list ends with ';'.
    return "".join(f"{entry};" for entry in entries)


class _SettingsFile:
    """What relay.json and router.json share: load, validate, create without overwriting."""

    FILE_NAME: ClassVar[str]
    FILE_MODE: ClassVar[int]
    FIELDS: ClassVar[tuple[FieldInfo, ...]]

    @classmethod
    def _from_reader(cls, reader: _Reader) -> Self:
        raise NotImplementedError

    def to_settings(self) -> dict[str, str]:
        """The key/value text Aspia stores for this configuration."""
        raise NotImplementedError

    @classmethod
    def _check(cls, config: Self, reader: _Reader) -> None:
        """Warnings about values that are valid but almost certainly not what the operator wants."""

    @classmethod
    def from_settings(cls, doc: SettingsDocument, warnings: list[ConfigProblem] | None = None) -> Self:
        """Build and validate; raises :class:`ConfigError` listing every problem in ``doc``.

        Warnings (unknown keys, suspicious values) go into ``warnings`` when the caller passes a
        list, which a CLI then prints to stderr whatever the log level; without one they are
        logged. A :class:`ConfigError` carries them too.
        """
        reader = _Reader(doc, cls.FIELDS)
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


_PORT = "an integer from 1 to 65535"
_RATE = ("natrelay only, ignored by Aspia: bytes per second for {}, with K, M or G (binary), "
         "e.g. 10M; empty or 0 for no limit")
_HTTP_LISTEN = ("natrelay only, ignored by Aspia: empty (no HTTP) or HOST:PORT for /metrics, /status "
                "and the dashboard, e.g. 127.0.0.1:9070")


@dataclass(frozen=True)
class _GuardField:
    """A relay.json key of natrelay's flood guard: a whole number in ``low..high``."""

    key: str
    attr: str
    allowed: str
    default: int
    low: int
    high: int


# natrelay's flood guard; the original does not know these keys and ignores them.
_RELAY_GUARD: Final = (
    _GuardField("PeerFirstMessageTimeout", "peer_first_message_timeout", "seconds until a new peer "
                "connection has sent its PeerToRelay, an integer from 1 to 300; default 5", 5, 1, 300),
    _GuardField("MaxPendingPeers", "max_pending_peers", "peer connections waiting for their PeerToRelay "
                "at once, an integer from 0 (no cap) to 1000000; default 60", 60, 0, 1_000_000),
    _GuardField("MaxPendingPeersPerIp", "max_pending_peers_per_ip", "peer connections from one IP address "
                "(IPv6: one /64) waiting for their PeerToRelay at once, an integer from 0 (no cap) to "
                "1000000; default 16", 16, 0, 1_000_000),
    _GuardField("MaxConnectionsPerMinutePerIp", "max_connections_per_minute_per_ip", "new peer connections "
                "per minute from one IP address (IPv6: one /64) that do not present a valid key, an integer "
                "from 0 (no cap) to 1000000; default 60", 60, 0, 1_000_000),
    _GuardField("MaxBytesBeforeAuth", "max_bytes_before_auth", "bytes a peer may send before its "
                "PeerToRelay is complete, an integer from 64 to 1048580; default 16384",
                16384, 64, 1_048_580),
    _GuardField("MaxSessionDuration", "max_session_duration", "minutes a paired session may last, an "
                "integer from 0 (no cap) to 525600; default 1440", 1440, 0, 525_600),
    _GuardField("MaxConnections", "max_connections", "peer connections open at once, an integer from 0 "
                "(no cap) to 1000000; default 10000", 10_000, 0, 1_000_000),
    _GuardField("MaxConnectionsPerIp", "max_connections_per_ip", "peer connections open at once from one "
                "IP address, an integer from 0 (no cap) to 1000000; default 256", 256, 0, 1_000_000),
)

_RELAY_FIELDS: Final = (
    FieldInfo("RouterAddress", "host name or IP address of the Router", required=True),
    FieldInfo("RouterPort", f"{_PORT}; default 8060"),
    FieldInfo(
        "RouterPublicKey", "64 hexadecimal digits, the content of the Router's router.pub", required=True
    ),
    FieldInfo("ListenInterface", "empty for all interfaces, or an IP address of this machine"),
    FieldInfo("PeerAddress", "host name or IP address at which peers reach this Relay", required=True),
    FieldInfo("PeerPort", f"{_PORT}; default 8070"),
    FieldInfo("PeerIdleTimeout", "minutes, an integer from 1 to 60; default 5"),
    FieldInfo("MaxPeerCount", "an integer from 0 to 4294967295; default 100"),
    FieldInfo("StatisticsEnabled", "true or false (or 1 or 0); default false"),
    FieldInfo("StatisticsInterval", "seconds, an integer from 1 to 3600; default 5"),
    *(FieldInfo(g.key, g.allowed) for g in _RELAY_GUARD),
    FieldInfo("HttpListen", _HTTP_LISTEN),
    FieldInfo("RateSession", _RATE.format("each session (both directions together)")),
    FieldInfo("RateGlobal", _RATE.format("all sessions together")),
    FieldInfo("RouterAddresses", "empty, or further routers of the same cluster as HOST:PORT separated by "
                                 "';' (the relay splits its keys between them and RouterAddress)"),
)


@dataclass(frozen=True)
class RelayConfig(_SettingsFile):
    """relay.json. Times keep the file's units: ``peer_idle_timeout`` in minutes, ``statistics_interval`` in
    seconds, so a value in a message or a log means the same as in the file."""

    router_address: str = ""
    router_port: int = 8060
    router_public_key: bytes = b""
    listen_interface: str = ""
    peer_address: str = ""
    peer_port: int = 8070
    peer_idle_timeout: int = 5
    max_peer_count: int = 100
    statistics_enabled: bool = False
    statistics_interval: int = 5
    # The flood guard (natrelay only; see _RELAY_GUARD for the keys, units and ranges).
    peer_first_message_timeout: int = 5
    max_pending_peers: int = 60
    max_pending_peers_per_ip: int = 16
    max_connections_per_minute_per_ip: int = 60
    max_bytes_before_auth: int = 16384
    max_session_duration: int = 1440
    max_connections: int = 10_000
    max_connections_per_ip: int = 256
    http_listen: str = ""
    rate_session: int = 0
    rate_global: int = 0
    router_addresses: tuple[tuple[str, int], ...] = ()
    """Not in the original's relay.json; written only when set."""

    FILE_NAME: ClassVar[str] = RELAY_CONFIG_NAME
    FILE_MODE: ClassVar[int] = 0o644  # no secrets inside; a non-root service user must be able to read it
    FIELDS: ClassVar[tuple[FieldInfo, ...]] = _RELAY_FIELDS

    @property
    def routers(self) -> tuple[tuple[str, int], ...]:
        """RouterAddress:RouterPort first, then RouterAddresses."""
        return ((self.router_address, self.router_port), *self.router_addresses)

    @classmethod
    def _from_reader(cls, reader: _Reader) -> Self:
        return cls(
            router_address=reader.host("RouterAddress"),
            router_port=reader.uint("RouterPort", 8060, 1, 65535),
            router_public_key=reader.hex_bytes("RouterPublicKey", 32),
            listen_interface=reader.interface("ListenInterface"),
            peer_address=reader.host("PeerAddress", reachable=True),
            peer_port=reader.uint("PeerPort", 8070, 1, 65535),
            peer_idle_timeout=reader.uint("PeerIdleTimeout", 5, 1, 60),
            max_peer_count=reader.uint("MaxPeerCount", 100, 0, 2**32 - 1),
            statistics_enabled=reader.boolean("StatisticsEnabled", False),
            statistics_interval=reader.uint("StatisticsInterval", 5, 1, 3600),
            **{g.attr: reader.uint(g.key, g.default, g.low, g.high) for g in _RELAY_GUARD},
            http_listen=reader.listen("HttpListen"),
            rate_session=reader.rate("RateSession"),
            rate_global=reader.rate("RateGlobal"),
            router_addresses=reader.host_port_list("RouterAddresses"),
        )

    def to_settings(self) -> dict[str, str]:
        # Flood-guard keys only when they differ from the default, so --create-config writes the
        # original's file and a file written back stays what the operator (or Aspia) wrote.
        guard = {g.key: str(value) for g in _RELAY_GUARD if (value := getattr(self, g.attr)) != g.default}
        if self.http_listen:
            guard["HttpListen"] = self.http_listen
        if self.rate_session:
            guard["RateSession"] = format_rate(self.rate_session)
        if self.rate_global:
            guard["RateGlobal"] = format_rate(self.rate_global)
        return guard | {
            "ListenInterface": self.listen_interface,
            "MaxPeerCount": str(self.max_peer_count),
            "PeerAddress": self.peer_address,
            "PeerIdleTimeout": str(self.peer_idle_timeout),
            "PeerPort": str(self.peer_port),
            "RouterAddress": self.router_address,
            "RouterPort": str(self.router_port),
            "RouterPublicKey": self.router_public_key.hex().upper(),
            "StatisticsEnabled": "true" if self.statistics_enabled else "false",
            "StatisticsInterval": str(self.statistics_interval),
        } | ({"RouterAddresses": ";".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
                                          for h, p in self.router_addresses)}
             if self.router_addresses else {})

    @classmethod
    def _check(cls, config: Self, reader: _Reader) -> None:
        if config.max_peer_count == 0:
            reader.warn("MaxPeerCount", "is 0: the Router gets no keys from this Relay and no peer can "
                        "connect through it (allowed: " + reader.fields["MaxPeerCount"].allowed + ")")


_WHITE_LIST = "IP addresses separated by ';'; empty allows every address"
_ROUTER_ORIGINAL_FIELDS: Final = (
    FieldInfo("ListenInterface", "empty for all interfaces, or an IP address of this machine"),
    FieldInfo("Port", f"{_PORT}; default 8060"),
    FieldInfo("PrivateKey", "64 hexadecimal digits (a 32-byte X25519 private key)", required=True),
    FieldInfo("SeedKey", "empty (generated at startup) or 128 hexadecimal digits (64 bytes)"),
    FieldInfo("ClientWhiteList", _WHITE_LIST),
    FieldInfo("HostWhiteList", _WHITE_LIST),
    FieldInfo("AdminWhiteList", _WHITE_LIST),
    FieldInfo("RelayWhiteList", _WHITE_LIST + " (empty: loopback only, see RelayAllowAnyAddress)"),
    FieldInfo("HttpListen", _HTTP_LISTEN),
)
# Router guard fields (issues 8 and 9): unknown to the original, which ignores them. Each is an
# unsigned integer with a default; 0 turns a cap off where the text says so. --create-config and
# to_settings() write them only when they differ from the default, so files stay the original's.
ROUTER_GUARD_FIELDS: Final = (
    # key, attribute, default, low, high, what it is
    ("MaxConnections", "max_connections", 10_000, 0, 1_000_000, "connections in total; 0 = no cap"),
    ("MaxConnectionsPerIp", "max_connections_per_ip", 256, 0, 1_000_000,
     "connections per source address; 0 = no cap"),
    ("NewConnectionsPerMinutePerIp", "connections_per_minute_per_ip", 60, 0, 1_000_000,
     "new connections per minute per source address (also the burst); 0 = no limit"),
    ("MaxPendingConnections", "max_pending", 512, 0, 1_000_000,
     "connections not authenticated yet, in total; 0 = no cap"),
    ("MaxPendingConnectionsPerIp", "max_pending_per_ip", 8, 0, 1_000_000,
     "connections not authenticated yet, per source address; 0 = no cap"),
    ("MaxBytesBeforeAuth", "max_bytes_before_auth", 16_384, 0, 1 << 30,
     "bytes a connection may send before it has authenticated; 0 = no cap"),
    ("AuthTimeout", "auth_timeout", 20, 1, 600, "seconds a connection may take to authenticate"),
    ("LoginTimeout", "login_timeout", 10, 1, 600,
     "seconds from the user name to a finished password login"),
    ("MaxKeysPerRelay", "max_keys_per_relay", 1000, 1, 1_000_000,
     "relay keys the router holds per relay; more are dropped"),
    ("ClientRequestsPerMinute", "client_requests_per_minute", 60, 0, 1_000_000,
     "connection requests per minute per client account (half of it at once); 0 = no limit"),
    ("HostRequestsPerMinute", "host_requests_per_minute", 120, 0, 1_000_000,
     "connection requests per minute to one host ID (half of it at once); 0 = no limit"),
    ("HostIdRequestsPerMinute", "host_id_requests_per_minute", 10, 0, 1_000_000,
     "new host IDs per minute per source address; 0 = no limit"),
    ("UnusedHostIdExpiryDays", "unused_host_id_days", 7, 0, 36_500,
     "days after which a host ID that was issued but never used again is deleted; 0 = never"),
)
_ROUTER_FIELDS: Final = _ROUTER_ORIGINAL_FIELDS + tuple(
    FieldInfo(key, f"{what}; an integer from {low} to {high}, default {default}")
    for key, _attr, default, low, high, what in ROUTER_GUARD_FIELDS
) + (FieldInfo("RelayAllowAnyAddress", "true or false (or 1 or 0); default false: with an empty "
               "RelayWhiteList only relays on this machine (loopback) may register; true: any "
               "address, as the original does"),
    FieldInfo("Database", "empty (router.db3 in the data directory), a postgresql://user:password@host:port/"
                          "dbname URL (routers sharing it form a cluster), or the absolute path of an SQLite "
                          "database"),
)


@dataclass(frozen=True)
class RouterConfig(_SettingsFile):
    """router.json (its JSON part: generating keys and the database belong to the router's setup).

    The keys are kept out of ``repr`` so a logged config never leaks them.
    """

    listen_interface: str = ""
    port: int = 8060
    private_key: bytes = field(default=b"", repr=False)
    seed_key: bytes = field(default=b"", repr=False)
    client_white_list: tuple[IPAddress, ...] = ()
    host_white_list: tuple[IPAddress, ...] = ()
    admin_white_list: tuple[IPAddress, ...] = ()
    relay_white_list: tuple[IPAddress, ...] = ()
    relay_any_address: bool = False
    max_connections: int = 10_000
    max_connections_per_ip: int = 256
    connections_per_minute_per_ip: int = 60
    max_pending: int = 512
    max_pending_per_ip: int = 8
    max_bytes_before_auth: int = 16_384
    auth_timeout: int = 20
    login_timeout: int = 10
    max_keys_per_relay: int = 1000
    client_requests_per_minute: int = 60
    host_requests_per_minute: int = 120
    host_id_requests_per_minute: int = 10
    unused_host_id_days: int = 7
    http_listen: str = ""
    database: str = field(default="", repr=False)
    """Not in the original's router.json; written only when set. Kept out of ``repr``: it may hold
    a password."""

    FILE_NAME: ClassVar[str] = ROUTER_CONFIG_NAME
    FILE_MODE: ClassVar[int] = 0o600  # holds the private key and the seed key
    FIELDS: ClassVar[tuple[FieldInfo, ...]] = _ROUTER_FIELDS

    @classmethod
    def _from_reader(cls, reader: _Reader) -> Self:
        guard: dict[str, Any] = {attr: reader.uint(key, default, low, high)
                                 for key, attr, default, low, high, _what in ROUTER_GUARD_FIELDS}
        return dataclasses.replace(cls(
            listen_interface=reader.interface("ListenInterface"),
            port=reader.uint("Port", 8060, 1, 65535),
            private_key=reader.hex_bytes("PrivateKey", 32),
            seed_key=reader.hex_bytes("SeedKey", 64),
            client_white_list=reader.ip_list("ClientWhiteList"),
            host_white_list=reader.ip_list("HostWhiteList"),
            admin_white_list=reader.ip_list("AdminWhiteList"),
            relay_white_list=reader.ip_list("RelayWhiteList"),
            relay_any_address=reader.boolean("RelayAllowAnyAddress", False),
            http_listen=reader.listen("HttpListen"),
            database=reader.database("Database"),
        ), **guard)

    def to_settings(self) -> dict[str, str]:
        extra = {"Database": self.database} if self.database else {}
        return extra | {
            "AdminWhiteList": _ip_list_text(self.admin_white_list),
            "ClientWhiteList": _ip_list_text(self.client_white_list),
            "HostWhiteList": _ip_list_text(self.host_white_list),
            "ListenInterface": self.listen_interface,
            "Port": str(self.port),
            "PrivateKey": self.private_key.hex().upper(),
            "RelayWhiteList": _ip_list_text(self.relay_white_list),
            "SeedKey": self.seed_key.hex().upper(),
            **{key: str(getattr(self, attr)) for key, attr, default, _low, _high, _what in ROUTER_GUARD_FIELDS
               if getattr(self, attr) != default},
            **({"RelayAllowAnyAddress": "true"} if self.relay_any_address else {}),
        } | ({"HttpListen": self.http_listen} if self.http_listen else {})
