"""Aspia's JSON settings files (relay.json, router.json), read and written the way Aspia 2.7.0 does.

Aspia keeps settings as a flat map of string to string and writes every value as a JSON *string*
(``"Port": "8060"``), keys sorted, four-space indent, no trailing newline. Files written here are
byte-compatible with that layout so an operator can move a file between the C++ programs and ours.

Reading is deliberately more tolerant than the original in one way and stricter in another:

* JSON numbers (integers) and booleans are accepted and turned into the text Aspia would have
  stored, because hand-written ``"StatisticsEnabled": true`` silently meaning *false* in the
  original (spec section 12, item 20) is a trap, not a feature.
* Values Aspia silently drops (null, arrays, fractions, duplicate keys) are not dropped here but
  reported in :attr:`SettingsDocument.rejected`, so the configuration layer can name them instead
  of quietly applying a default.
* A file that is too large or does not parse raises :class:`JsonSettingsError` rather than being
  "treated as empty": an unreadable config should stop a daemon, not start it with defaults.

Reading never creates anything (the original writes ``{}`` when merely opening a missing file,
spec section 12, item 3). Writing goes through a temporary file in the target directory and an
atomic rename or link, so no reader ever sees a half-written or empty file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

# The original's limit, typo included (5 * 1024 * 2024, about 10 MB): any file Aspia reads, we read.
MAX_SETTINGS_FILE_SIZE: Final = 5 * 1024 * 2024

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_ASCII_WHITESPACE: Final = " \t\n\r\f\v"
# Aspia joins nested object keys with '/' to form its flat key space.
KEY_SEPARATOR: Final = "/"


class JsonSettingsError(Exception):
    """The settings file exists but cannot be used as a whole (size, encoding, syntax, shape)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class SettingsDocument:
    """A parsed settings file.

    ``values`` holds what Aspia would have stored (trimmed text); ``rejected`` holds keys whose
    JSON value Aspia would have ignored, with the reason, so callers can report them by name.
    """

    source: str
    values: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    # Keys whose value was a JSON object ({...}, even an empty one). Aspia flattens an object into
    # "Key/sub" entries, so "Port": {"a": 1} would otherwise vanish behind a "Port/a" nobody reads.
    groups: set[str] = field(default_factory=set)


class _DuplicateKeys:
    """Marker so that a repeated key is reported instead of "last one wins" without notice."""

    def __init__(self, pairs: list[tuple[str, object]]) -> None:
        self.pairs = pairs


def _keep_pairs(pairs: list[tuple[str, object]]) -> _DuplicateKeys:
    # Keep the raw pair list: dict() would hide duplicates, which we want to report.
    return _DuplicateKeys(pairs)


def _reject_constant(name: str) -> object:
    # Python's json accepts NaN/Infinity, which are not JSON and never valid Aspia values.
    raise ValueError(f"{name} is not valid JSON")


def _as_text(value: object) -> str | None:
    """Aspia's stored text for a JSON scalar, or None if Aspia would not store it."""
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip(_ASCII_WHITESPACE) if _is_unicode(value) else None
    if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
        return str(value)
    return None


def _is_unicode(text: str) -> bool:
    # JSON escapes can produce lone UTF-16 surrogates, which no UTF-8 file can hold.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _why_rejected(value: object) -> str:
    if isinstance(value, str):
        return "the text contains an unpaired UTF-16 surrogate escape"
    if value is None:
        return "null is not a value; write a string or delete the key"
    if isinstance(value, list):
        return "arrays are not supported; write a string"
    if isinstance(value, float):
        return "fractional numbers are not supported; write an integer"
    if isinstance(value, int):
        return "integer outside the 64-bit range"
    return f"unsupported JSON value of type {type(value).__name__}"


def _flatten(obj: _DuplicateKeys, prefix: str, doc: SettingsDocument) -> None:
    seen: set[str] = set()
    for key, value in obj.pairs:
        full = prefix + key
        if not _is_unicode(full):
            # Reported under a printable form of the key, since the key itself cannot be written.
            doc.rejected[full.encode("utf-8", "backslashreplace").decode("utf-8")] = (
                "the key contains an unpaired UTF-16 surrogate escape"
            )
            continue
        if full in seen or full in doc.values or full in doc.rejected:
            doc.values.pop(full, None)
            doc.rejected[full] = "the key appears more than once"
            continue
        seen.add(full)
        if isinstance(value, _DuplicateKeys):
            doc.groups.add(full)
            _flatten(value, full + KEY_SEPARATOR, doc)
            continue
        text = _as_text(value)
        if text is None:
            doc.rejected[full] = _why_rejected(value)
        else:
            doc.values[full] = text


def parse_settings(data: bytes, source: str = "<memory>") -> SettingsDocument:
    """Parse settings bytes; raises only :class:`JsonSettingsError` for unusable input."""
    if len(data) > MAX_SETTINGS_FILE_SIZE:
        raise JsonSettingsError(source, f"file is larger than {MAX_SETTINGS_FILE_SIZE} bytes")
    try:
        # utf-8-sig: editors on Windows like to add a byte-order mark; it carries no meaning.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JsonSettingsError(source, f"not valid UTF-8 at byte {exc.start}") from None
    try:
        root = json.loads(text, object_pairs_hook=_keep_pairs, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise JsonSettingsError(
            source, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:
        # ValueError: e.g. an integer literal with thousands of digits; RecursionError: deep nesting.
        raise JsonSettingsError(source, f"not valid JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(root, _DuplicateKeys):
        raise JsonSettingsError(source, "the document must be a JSON object ({ ... })")
    doc = SettingsDocument(source=source)
    _flatten(root, "", doc)
    return doc


def read_settings(path: Path) -> SettingsDocument:
    """Read a settings file without ever creating it.

    Raises ``FileNotFoundError`` (and other ``OSError``) as the OS reports them, and
    :class:`JsonSettingsError` for a file that is not a regular file or not usable JSON.
    The size is checked on the open descriptor and the read is bounded, so a huge or growing
    file cannot make us allocate more than the limit.
    """
    # O_NONBLOCK: opening a FIFO placed at the config path must not hang the daemon.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise JsonSettingsError(str(path), "not a regular file")
        if st.st_size > MAX_SETTINGS_FILE_SIZE:
            raise JsonSettingsError(str(path), f"file is larger than {MAX_SETTINGS_FILE_SIZE} bytes")
        data = fh.read(MAX_SETTINGS_FILE_SIZE + 1)
    return parse_settings(data, str(path))


def _utf8_order(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def _nest(values: Mapping[str, str]) -> dict[str, object]:
    """Turn Aspia's '/'-joined keys back into nested objects, as its writer does."""
    root: dict[str, object] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("settings keys and values must be str")
        parts = key.split(KEY_SEPARATOR)
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"settings key {key!r} conflicts with the value at {part!r}")
            node = child
        if parts[-1] in node:
            raise ValueError(f"settings key {key!r} conflicts with a nested group of the same name")
        node[parts[-1]] = value
    return root


def _sorted_tree(node: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in sorted(node, key=_utf8_order):
        value = node[key]
        out[key] = _sorted_tree(value) if isinstance(value, dict) else value
    return out


def format_settings(values: Mapping[str, str]) -> bytes:
    """Aspia's on-disk layout: string values, byte-order-sorted keys, 4-space indent, no final newline."""
    tree = _sorted_tree(_nest(values))
    return json.dumps(tree, indent=4, ensure_ascii=False).encode("utf-8")


def directory_mode_for(file_mode: int) -> int:
    """The mode for a folder we create to hold a file of ``file_mode``.

    A folder for private files (no group/other bits: keys, databases) is 0700. A folder for
    files others must read (relay.json is read by the relay's systemd ``DynamicUser``, router.pub
    is public) is 0755: readable and traversable, but never writable by anyone but the owner.
    """
    return 0o700 if file_mode & 0o077 == 0 else 0o755


def make_directories(path: Path, mode: int) -> None:
    """``mkdir -p`` giving every folder it creates ``mode`` at most, whatever the umask.

    ``Path.mkdir(parents=True)`` and ``os.makedirs`` give the intermediate folders 0777 less the
    umask, which under ``umask 000`` is a world-writable folder above a private key. Here each
    missing component is created with ``mode`` (the umask can only remove bits from it), and
    folders that already exist are left as they are: they are the operator's.
    """
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        if os.path.lexists(current):
            # A non-directory in the way: not the "target exists" callers look for.
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(current))
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not directory.is_dir():
                raise NotADirectoryError(
                    errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory)
                ) from None
            continue  # created by someone else meanwhile: theirs, keep it


def write_file_atomically(
    path: Path, data: bytes, *, exclusive: bool, mode: int = 0o644, dir_mode: int | None = None
) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing/the old file or the whole new file.

    The data goes to a temporary file in the same directory first (same filesystem, so the final
    step is atomic). With ``exclusive`` the temporary file is hard-linked to the target, which fails
    with ``FileExistsError`` if *anything* (file, directory, dangling symlink) is already there,
    so an existing file is never overwritten and no empty file is left behind on failure.
    Without ``exclusive`` it is renamed over the target, keeping the target's permission bits.
    Missing parent folders are created with ``dir_mode`` (default: :func:`directory_mode_for`
    ``mode``), whatever the umask.
    """
    make_directories(path.parent, directory_mode_for(mode) if dir_mode is None else dir_mode)
    if not exclusive:
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(os.stat(path).st_mode)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:
                # Filesystem without hard links: O_EXCL still refuses to overwrite; the brief
                # window with a partial file is the price of such a filesystem.
                _copy_exclusive(data, path, mode)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _copy_exclusive(data: bytes, path: Path, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def _fsync_dir(directory: Path) -> None:
    # Makes the new directory entry durable; not possible on every platform, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_settings(
    path: Path, values: Mapping[str, str], *, exclusive: bool = False, mode: int = 0o644
) -> bool:
    """Write a settings file in Aspia's layout; returns False if the file already had exactly this content.

    Skipping identical writes mirrors Aspia ("a file is written only if something changed") and
    keeps file modification times meaningful to operators.
    """
    data = format_settings(values)
    if not exclusive and _has_content(path, data):
        return False
    write_file_atomically(path, data, exclusive=exclusive, mode=mode)
    return True


def _has_content(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return False
        # Bounded: one byte more than we need is enough to see a difference in length.
        return fh.read(len(data) + 1) == data


def update_settings(path: Path, changes: Mapping[str, str]) -> bool:
    """Change some keys of an existing settings file, keeping every other key as it was.

    This is what the router needs to store a generated SeedKey without losing settings it does
    not know about. Keys whose JSON value was rejected on reading are kept only if ``changes``
    replaces them (they had no usable value to keep).
    """
    doc = read_settings(path)
    merged = dict(doc.values)
    merged.update(changes)
    return write_settings(path, merged)
