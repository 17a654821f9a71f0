"""The two messages every tunnel byte crosses, encoded for large payloads without pycapnp's builder.

Each 64 KiB of tunnel data is wrapped four times on its way (``KaMessage{message}`` inside
``ChannelMessage{randPadding, user}``, end to end and again on the sending node's relay link).
pycapnp builds each through a ``MessageBuilder``: the payload is copied into the builder, copied
out by ``to_bytes`` and sliced again by the packer, about 17 us per 60 KiB message on this
machine, close to the ChaCha20-Poly1305 pass over the same bytes. Both messages have one fixed
layout, so for large payloads this module writes the single-segment words pycapnp itself
produces (same words, same order: tested word for word against pycapnp's ``to_bytes``), packed
with literal runs straight from the payload (``packing.pack_prefixed``: one copy of it).

Reading stays with pycapnp: its C++ unpacker takes 7 us for 60 KiB, and a reader in Python
measured slower (8-11 us), because unpacking needs a slice per 2 KiB run. Small messages never
come here, so the spec's byte vectors (§13.2) are produced by pycapnp exactly as before.
"""

from __future__ import annotations

import struct

from .packing import pack_prefixed

#: Payloads at least this long (bytes of Data fields) are encoded here.
FAST_MIN = 1024

_KA_HEAD = struct.Struct("<QQQ")  # root pointer, data word (disc), pointer to message
_CM_HEAD = struct.Struct("<QQQ")  # root pointer, randPadding pointer, content pointer
_CM_MID = struct.Struct("<QQ")  # ChannelContent: data word (disc), pointer to user

_DATA = 2  # list element size code of Data (one byte per element)
_ZERO_PAD = [bytes(n) for n in range(8)]


def _struct_pointer(offset: int, data_words: int, pointers: int) -> int:
    return (offset << 2) | (data_words << 32) | (pointers << 48)


def _data_pointer(offset: int, length: int) -> int:
    return 1 | (offset << 2) | ((_DATA | (length << 3)) << 32)


_ROOT_1_1 = _struct_pointer(0, 1, 1)  # KaMessage, ChannelContent: one data word, one pointer
_ROOT_0_2 = _struct_pointer(0, 0, 2)  # ChannelMessage: two pointers
_DISC_1 = 1  # KaMessage.message, ChannelContent.user


def _words(length: int) -> int:
    return (length + 7) >> 3


# ---------------------------------------------------------------- encoding


def encode_ka_message(message: bytes) -> bytes:
    """Packed ``KaMessage{message}``: root, disc 1, pointer, then the bytes (pycapnp's layout)."""
    n = len(message)
    return pack_prefixed(_KA_HEAD.pack(_ROOT_1_1, _DISC_1, _data_pointer(0, n)), message)


def encode_channel_user(padding: bytes, user: bytes) -> bytes:
    """Packed ``ChannelMessage{randPadding, content: user}`` in pycapnp's layout: the padding right
    after the root struct, then the ChannelContent struct, then the user bytes."""
    p, u = len(padding), len(user)
    pw = _words(p)
    head = _CM_HEAD.pack(_ROOT_0_2, _data_pointer(1, p), _struct_pointer(pw, 1, 1))
    mid = _CM_MID.pack(_DISC_1, _data_pointer(0, u))
    return pack_prefixed(b"".join((head, padding, _ZERO_PAD[-p & 7], mid)), user)
