"""Syncthing device IDs: SHA-256 of a certificate's DER bytes, written in Syncthing's text form.

The text form is the unpadded RFC 4648 base32 of the 32 bytes (52 characters), cut in four groups of 13,
each followed by a check character (Syncthing's own mod-32 Luhn variant), then split into eight groups of
seven joined with dashes. Relays need it to print their ``relay://...?id=`` URL and to log peers the
way Syncthing users see them.
"""

from __future__ import annotations

import base64
import hashlib

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
DEVICE_ID_LENGTH = 32


class DeviceIDError(ValueError):
    """A device ID string that is malformed or whose check characters do not match."""


def device_id_of(cert_der: bytes) -> bytes:
    """The 32-byte device ID of a certificate (DER)."""
    return hashlib.sha256(cert_der).digest()


def luhn32(group: str) -> str:
    """Syncthing's check character for a group of base32 characters.

    Not textbook Luhn: the factor alternates 1, 2, 1, ... from the first character and the addend is
    folded as ``addend // 32 + addend % 32``.
    """
    factor = 1
    total = 0
    for ch in group:
        cp = ALPHABET.find(ch)
        if cp < 0:
            raise DeviceIDError(f"character {ch!r} is not in the base32 alphabet")
        addend = factor * cp
        factor = 1 if factor == 2 else 2
        total += addend // 32 + addend % 32
    return ALPHABET[(32 - total % 32) % 32]


def format_device_id(device_id: bytes) -> str:
    """``XXXXXXX-XXXXXXX-...`` (8 groups of 7) for a 32-byte ID."""
    if len(device_id) != DEVICE_ID_LENGTH:
        raise DeviceIDError(f"a device ID is {DEVICE_ID_LENGTH} bytes, got {len(device_id)}")
    plain = base64.b32encode(device_id).decode().rstrip("=")
    checked = "".join(plain[i:i + 13] + luhn32(plain[i:i + 13]) for i in range(0, 52, 13))
    return "-".join(checked[i:i + 7] for i in range(0, 56, 7))


def parse_device_id(text: str) -> bytes:
    """The 32 bytes of a device ID in any form Syncthing accepts (dashes, spaces, lower case,
    0/1/8 typed for O/I/B, with or without check characters); wrong check characters are refused."""
    s = text.strip().strip("=").upper()
    s = s.replace("0", "O").replace("1", "I").replace("8", "B")
    s = s.replace("-", "").replace(" ", "")
    if len(s) == 56:
        plain = ""
        for i in range(4):
            group, check = s[i * 14:i * 14 + 13], s[i * 14 + 13]
            if luhn32(group) != check:
                raise DeviceIDError(f"{text!r}: check character of group {i + 1} is wrong")
            plain += group
        s = plain
    if len(s) != 52:
        raise DeviceIDError(f"{text!r}: a device ID has 52 or 56 characters besides dashes, got {len(s)}")
    try:
        return base64.b32decode(s + "====")
    except ValueError as exc:
        raise DeviceIDError(f"{text!r}: not base32") from exc
