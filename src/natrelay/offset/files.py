"""Offset identity (``*.ident``) and relay ticket files (spec §10).

The files must be interchangeable with the ones Offset v0.1.11's ``stmgr`` writes and
reads, so writing reproduces ``serde_json::to_string_pretty`` byte for byte and reading
accepts exactly what the original's base64 decoder accepts (URL-safe alphabet, optional
``=`` padding, zero unused trailing bits), with two deliberate departures (spec §12.2):
an over-long key is accepted only with a warning, and identity files are created
exclusively with mode 0600 instead of "check, then create" with mode 0666 & ~umask.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from natrelay.offset.constants import MAX_ADDRESS_LENGTH
from natrelay.ops.addresses import AddressError, validate_ticket_address
from natrelay.ops.jsonsettings import directory_mode_for, make_directories

__all__ = [
    "KEY_LENGTH",
    "MAX_FILE_SIZE",
    "FileFormatError",
    "RelayTicket",
    "b64url_decode",
    "b64url_encode",
    "public_key_from_seed",
    "read_identity_or_ticket",
    "read_identity_seed",
    "read_ticket",
    "write_identity",
    "write_ticket",
]

_log = logging.getLogger(__name__)

#: Ed25519 seeds and public keys are 32 bytes.
KEY_LENGTH: Final = 32
#: Both file kinds are well under 1 KiB; the cap only stops us reading a wrong,
#: huge file into memory (the original has no cap; nothing it writes comes close).
MAX_FILE_SIZE: Final = 64 * 1024
#: Offset's ``MAX_NET_ADDRESS_LENGTH`` in UTF-8 bytes; also enforced when reading.

_IDENT_MODE: Final = 0o600
_TICKET_MODE: Final = 0o644
_B64URL_INVALID = re.compile(r"[^A-Za-z0-9_-]")
_B64URL_VALUES: Final = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}


class FileFormatError(ValueError):
    """An identity or ticket file that cannot be used; names the file and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class RelayTicket:
    """What a peer needs to reach a relay: its public key and where to dial it.

    ``address`` is free text as far as the file format goes (spec §10.3); only its
    length is a format rule. ``stmgr`` checks that it is a usable ``HOST:PORT``.
    """

    public_key: bytes
    address: str

    def __post_init__(self) -> None:
        if len(self.public_key) != KEY_LENGTH:
            raise ValueError(f"public key must be {KEY_LENGTH} bytes, not {len(self.public_key)}")
        try:
            size = len(self.address.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("address contains an unpaired surrogate, which UTF-8 cannot hold") from None
        if size > MAX_ADDRESS_LENGTH:
            raise ValueError(f"address is {size} bytes long; at most {MAX_ADDRESS_LENGTH} bytes are allowed")


# --------------------------------------------------------------------------- base64


def b64url_encode(data: bytes) -> str:
    """URL-safe base64 without padding, as base64 0.10 ``URL_SAFE_NO_PAD`` writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode_any(text: str, *, what: str) -> bytes:
    """Decode with the acceptance set of Rust base64 0.10.1 ``URL_SAFE_NO_PAD``.

    Python's ``urlsafe_b64decode`` would also take ``+``/``/``, ignore junk, and drop
    non-zero unused bits; the original rejects all of those, so a file that works
    here must work there. Padding is optional but, when present, must sit where the
    Rust decoder allows it (at most to the next multiple of four characters).
    """
    data = text.rstrip("=")
    pad = len(text) - len(data)
    bad = _B64URL_INVALID.search(data)
    if bad is not None:
        char = bad.group()
        if char == "=":
            problem = "'=' padding is only allowed at the end"
        elif char in "+/":
            problem = f"character {char!r} is standard base64; URL-safe base64 uses '-' and '_'"
        else:
            problem = f"character {char!r} is not URL-safe base64"
        raise ValueError(f"{what}: {problem} (offset {bad.start()})")
    tail = len(data) % 4
    if tail == 1:
        raise ValueError(f"{what}: base64 text of {len(data)} characters cannot be decoded (truncated?)")
    if pad and (tail == 0 or pad > 4 - tail):
        raise ValueError(f"{what}: too much '=' padding (offset {len(data)})")
    if tail:
        # The last symbol carries 4 (tail 2) or 2 (tail 3) bits that fall off the end;
        # they must be zero, otherwise the text is corrupt or was cut short.
        unused_mask = 0b1111 if tail == 2 else 0b11
        if _B64URL_VALUES[data[-1]] & unused_mask:
            raise ValueError(
                f"{what}: last character {data[-1]!r} has non-zero unused bits (offset {len(data) - 1}); "
                "the text is corrupt or truncated"
            )
    try:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except binascii.Error as exc:  # unreachable after the checks above; kept as a guard
        raise ValueError(f"{what}: invalid base64 ({exc})") from None


def _fit_length(raw: bytes, *, length: int, what: str) -> bytes:
    """Apply the original's fixed-size rule: short is an error, long is truncated.

    Truncation is kept for compatibility with files the original accepts (spec §12.2
    item 11), but it usually means the wrong value was pasted, so it is logged.
    """
    if len(raw) < length:
        raise ValueError(f"{what}: decodes to {len(raw)} bytes; {length} are required")
    if len(raw) > length:
        _log.warning(
            "%s decodes to %d bytes; using only the first %d (the original does the same, "
            "but the file is probably wrong)", what, len(raw), length,
        )
        return raw[:length]
    return raw


def b64url_decode(text: str, *, length: int, what: str) -> bytes:
    """Strictly decode URL-safe base64 into exactly ``length`` bytes.

    Raises ``ValueError`` naming ``what`` for anything the original would reject; a
    longer value is truncated to ``length`` with a logged warning.
    """
    return _fit_length(_b64url_decode_any(text, what=what), length=length, what=what)


# --------------------------------------------------------------------------- keys


def public_key_from_seed(seed: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key of a 32-byte seed."""
    if len(seed) != KEY_LENGTH:
        raise ValueError(f"an Ed25519 seed is {KEY_LENGTH} bytes, not {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


# --------------------------------------------------------------------------- reading


def _reject_constant(name: str) -> Any:
    # serde_json refuses NaN/Infinity anywhere in the document; so do we.
    raise ValueError(f"{name} is not valid JSON")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # serde's derived Deserialize errors on a repeated field; Python would keep the last.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate field {key!r}")
        obj[key] = value
    return obj


def _load_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a small UTF-8 JSON object, bounding the size before reading it."""
    with open(path, "rb") as file:
        raw = file.read(MAX_FILE_SIZE + 1)
    if len(raw) > MAX_FILE_SIZE:
        raise FileFormatError(path, f"larger than {MAX_FILE_SIZE} bytes; not an Offset key file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileFormatError(path, f"not UTF-8 text (byte {exc.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise FileFormatError(path, f"not valid JSON: {exc.msg} ({where})") from None
    except (ValueError, RecursionError) as exc:
        raise FileFormatError(path, f"unusable JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FileFormatError(path, "expected a JSON object")
    return obj


def _string_field(obj: dict[str, Any], field: str, path: str | os.PathLike[str]) -> str:
    if field not in obj:
        raise FileFormatError(path, f"missing field {field!r}")
    value = obj[field]
    if not isinstance(value, str):
        raise FileFormatError(path, f"field {field!r} must be a string")
    return value


def _key_field(obj: dict[str, Any], field: str, path: str | os.PathLike[str]) -> bytes:
    text = _string_field(obj, field, path)
    try:
        raw = _b64url_decode_any(text, what=f"field {field!r}")
    except ValueError as exc:
        raise FileFormatError(path, str(exc)) from None
    try:
        return _fit_length(raw, length=KEY_LENGTH, what=f"{os.fspath(path)}: field {field!r}")
    except ValueError:
        raise FileFormatError(
            path, f"field {field!r} decodes to {len(raw)} bytes; {KEY_LENGTH} are required"
        ) from None


def _seed_from_object(obj: dict[str, Any], path: str | os.PathLike[str]) -> bytes:
    return _key_field(obj, "privateKey", path)


def _ticket_from_object(obj: dict[str, Any], path: str | os.PathLike[str]) -> RelayTicket:
    public_key = _key_field(obj, "publicKey", path)
    address = _string_field(obj, "address", path)
    try:
        return RelayTicket(public_key=public_key, address=address)
    except ValueError as exc:
        raise FileFormatError(path, f"field 'address': {exc}") from None


def check_ticket_address(path: str | os.PathLike[str], ticket: RelayTicket) -> RelayTicket:
    """``ticket`` if its address can be dialled (a host and a port in 1-65535), else a precise error.

    Reading a ticket keeps the file format's free-text address (spec §10.3), as the original
    does; tools that show or use a ticket call this so a broken address is named, not passed on.
    """
    try:
        validate_ticket_address(ticket.address, max_bytes=MAX_ADDRESS_LENGTH, what="address")
    except AddressError as exc:
        raise FileFormatError(path, f"field 'address': {exc}") from None
    return ticket


def read_identity_seed(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte Ed25519 seed stored in an identity file (spec §10.2).

    Raises ``FileFormatError`` for a malformed file and ``OSError`` if it cannot be read.
    """
    return _seed_from_object(_load_object(path), path)


def read_ticket(path: str | os.PathLike[str]) -> RelayTicket:
    """The relay ticket stored in ``path`` (spec §10.3); unknown fields are ignored."""
    return _ticket_from_object(_load_object(path), path)


def read_identity_or_ticket(path: str | os.PathLike[str]) -> bytes | RelayTicket:
    """Read either kind of file, telling them apart by their key field.

    Returns the seed (``bytes``) for an identity, a ``RelayTicket`` for a ticket. Used
    by ``stmgr show``, where the user should not have to say which kind it is.
    """
    obj = _load_object(path)
    if "privateKey" in obj:
        return _seed_from_object(obj, path)
    if "publicKey" in obj:
        return _ticket_from_object(obj, path)
    raise FileFormatError(path, "neither an identity (no 'privateKey') nor a relay ticket (no 'publicKey')")


# --------------------------------------------------------------------------- writing


def _dumps(obj: dict[str, str]) -> bytes:
    # Same bytes as serde_json::to_string_pretty for flat string objects: 2-space
    # indent, ": " separator, raw UTF-8, no trailing newline (spec §10.1).
    return json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8")


def _create_exclusive(path: str | os.PathLike[str], content: bytes, mode: int, *, force_mode: bool) -> None:
    """Create ``path`` with ``content``; never overwrite or follow an existing name.

    ``O_CREAT|O_EXCL`` makes "does it exist?" and "create it" one atomic step, so a
    racing writer or a planted symlink cannot make us overwrite a file (the original
    checks first and creates later). A failed write removes the partial file so that
    no half-written key is ever left behind to be loaded later.
    """
    parent = os.path.dirname(os.fspath(path))
    if parent:
        try:
            # Folders we create are 0700 for an identity, 0755 for a ticket, whatever the umask.
            make_directories(Path(parent), directory_mode_for(mode))
        except (FileExistsError, NotADirectoryError):
            # A non-directory sits where a parent folder should be. Reporting this as
            # FileExistsError would read as "output already exists", which it is not.
            raise NotADirectoryError(errno.ENOTDIR, "a parent of it is not a folder", parent) from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, mode)
    try:
        if force_mode:
            # The umask can only remove bits, but an odd one (e.g. 0o277) would leave
            # the owner unable to read their own key; pin the mode exactly.
            os.fchmod(fd, mode)
        view = memoryview(content)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def write_identity(path: str | os.PathLike[str], seed: bytes) -> None:
    """Write a new identity file with mode 0600, creating missing parent folders.

    Raises ``FileExistsError`` (leaving the existing file untouched) if ``path`` exists,
    even as a dangling symlink.
    """
    if len(seed) != KEY_LENGTH:
        raise ValueError(f"an Ed25519 seed is {KEY_LENGTH} bytes, not {len(seed)}")
    _create_exclusive(path, _dumps({"privateKey": b64url_encode(seed)}), _IDENT_MODE, force_mode=True)


def write_ticket(path: str | os.PathLike[str], ticket: RelayTicket) -> None:
    """Write a new relay ticket (mode 0644 less the umask: a ticket is public).

    Raises ``FileExistsError`` if ``path`` exists; creates missing parent folders.
    """
    content = _dumps({"publicKey": b64url_encode(ticket.public_key), "address": ticket.address})
    _create_exclusive(path, content, _TICKET_MODE, force_mode=False)
