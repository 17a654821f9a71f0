"""Reference Cap'n Proto packing for tests, written from spec §4.1 and independent of pycapnp."""

from __future__ import annotations


def unpack(packed: bytes) -> bytes:
    """An independent reference unpacker for Cap'n Proto packing, written from spec §4.1."""
    out = bytearray()
    i = 0
    while i < len(packed):
        tag = packed[i]
        i += 1
        word = bytearray(8)
        for bit in range(8):
            if tag & (1 << bit):
                word[bit] = packed[i]
                i += 1
        out += word
        if tag == 0x00:
            out += bytes(8 * packed[i])
            i += 1
        elif tag == 0xFF:
            count = packed[i]
            i += 1
            out += packed[i : i + 8 * count]
            i += 8 * count
    return bytes(out)


def pack_simple(unpacked: bytes) -> bytes:
    """A valid but naive packing (no runs), so tests can hand-craft packed input."""
    out = bytearray()
    for i in range(0, len(unpacked), 8):
        word = unpacked[i : i + 8]
        tag = sum(1 << bit for bit in range(8) if word[bit])
        out.append(tag)
        out += bytes(b for b in word if b)
        if tag in (0x00, 0xFF):
            out.append(0)
    return bytes(out)
