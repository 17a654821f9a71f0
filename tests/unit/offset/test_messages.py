"""Cap'n Proto messages: spec §13.2 vectors, limb order, multi-segment input, bounded decoding."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from natrelay.offset import messages as m
from natrelay.offset.errors import ProtocolError

from .packing_helpers import pack_simple, unpack

PK = bytes(range(32))
PK_WORDS = "07 06 05 04 03 02 01 00 0f 0e 0d 0c 0b 0a 09 08 17 16 15 14 13 12 11 10 1f 1e 1d 1c 1b 1a 19 18"
PACKED_PK_TAIL = (
    "7f 07 06 05 04 03 02 01 ff 0f 0e 0d 0c 0b 0a 09 08 02 17 16 15 14 13 12 11 10 1f 1e 1d 1c 1b 1a 19 18"
)

LISTEN = "10 03 50 01 01 00 01"
CONNECT = "10 08 50 01 01 01 02 40 01 10 04 " + PACKED_PK_TAIL
ACCEPT = "10 08 50 01 01 01 01 40 01 10 04 " + PACKED_PK_TAIL
INCOMING = "10 07 40 01 40 01 10 04 " + PACKED_PK_TAIL
KA_KEEPALIVE = "10 03 50 01 01 00 01"
KA_010203 = "10 04 50 01 01 01 01 11 01 1a 07 01 02 03"
KA_LISTEN = "10 04 50 01 01 01 01 11 01 3a 5f 10 03 50 01 01 01"
CM_AABB_01 = "10 07 40 02 11 05 12 51 04 01 01 03 aa bb 01 01 11 01 0a 01 01"
CM_FIRST_CLIENT = (
    "10 09 40 02 11 05 12 51 04 01 01 03 aa bb 01 01 11 01 8a ff 10 04 50 01 01 01 01 11 01 01 3a 5f "
    "10 03 50 01 01 01 01"
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# ------------------------------------------------------------------ vectors of spec §13.2

ENCODE_VECTORS: list[tuple[str, Callable[[], bytes], str]] = [
    ("listen", lambda: m.encode_init_connection(m.Listen()), LISTEN),
    ("connect", lambda: m.encode_init_connection(m.Connect(PK)), CONNECT),
    ("accept", lambda: m.encode_init_connection(m.Accept(PK)), ACCEPT),
    ("incoming", lambda: m.encode_incoming_connection(PK), INCOMING),
    ("reject", lambda: m.encode_reject_connection(PK), INCOMING),
    ("keepalive", lambda: m.encode_ka_message(None), KA_KEEPALIVE),
    ("ka 010203", lambda: m.encode_ka_message(b"\x01\x02\x03"), KA_010203),
    ("ka listen", lambda: m.encode_ka_message(m.encode_init_connection(m.Listen())), KA_LISTEN),
    ("cm aabb 01", lambda: m.encode_channel_message(b"\xaa\xbb", b"\x01"), CM_AABB_01),
    (
        "cm first client",
        lambda: m.encode_channel_message(b"\xaa\xbb", m.encode_ka_message(h(LISTEN))),
        CM_FIRST_CLIENT,
    ),
]


@pytest.mark.parametrize(("name", "encode", "expected"), ENCODE_VECTORS, ids=[v[0] for v in ENCODE_VECTORS])
def test_encoders_match_spec_vectors(name: str, encode: Callable[[], bytes], expected: str) -> None:
    assert encode() == h(expected)


def test_decoders_read_spec_vectors() -> None:
    assert m.decode_init_connection(h(LISTEN)) == m.Listen()
    assert m.decode_init_connection(h(CONNECT)) == m.Connect(PK)
    assert m.decode_init_connection(h(ACCEPT)) == m.Accept(PK)
    assert m.decode_incoming_connection(h(INCOMING)) == PK
    assert m.decode_reject_connection(h(INCOMING)) == PK
    assert m.decode_ka_message(h(KA_KEEPALIVE)) is None
    assert m.decode_ka_message(h(KA_010203)) == b"\x01\x02\x03"
    assert m.decode_ka_message(h(KA_LISTEN)) == h(LISTEN)
    assert m.decode_channel_message(h(CM_AABB_01)) == b"\x01"
    assert m.decode_channel_message(h(CM_FIRST_CLIENT)) == h(KA_LISTEN)


def test_listen_unpacked_layout() -> None:
    assert unpack(h(LISTEN)) == h("00000000 03000000 00000000 01000100") + bytes(16)


def test_public_key_limbs_are_byte_reversed_per_8_bytes() -> None:
    words = unpack(m.encode_incoming_connection(PK))
    assert words[-32:] == h(PK_WORDS)


def test_exchange_rand_nonce_layout_empty_and_with_dest() -> None:
    msg = m.ExchangeRandNonce(bytes(range(0x10, 0x20)), b"\xaa" * 32, None)
    words = unpack(m.encode_exchange_rand_nonce(msg))
    assert len(words) == 14 * 8
    assert words[:8] == h("00000000 0d000000")
    assert words[8:16] == h("00000000 01000300")
    assert words[16:24] == bytes(8)  # discriminant 0: empty
    assert words[40:48] == bytes(8)  # pointer 2 is null
    assert h("17161514131211101f1e1d1c1b1a1918") in words
    assert m.decode_exchange_rand_nonce(m.encode_exchange_rand_nonce(msg)) == msg

    with_dest = m.ExchangeRandNonce(msg.rand_nonce, msg.src_public_key, b"\xbb" * 32)
    words = unpack(m.encode_exchange_rand_nonce(with_dest))
    assert words[16:24] == h("0100000000000000")
    assert words[40:48] != bytes(8)
    assert m.decode_exchange_rand_nonce(m.encode_exchange_rand_nonce(with_dest)) == with_dest


def test_reference_unpacker_agrees_with_pycapnp() -> None:
    builder = m._dh.ChannelMessage.new_message()
    builder.randPadding = bytes(range(256)) * 3 + bytes(40)
    builder.init("content").user = b"\xff" * 3000
    packed = builder.to_bytes_packed()
    builder.clear_write_flag()
    assert unpack(packed) == builder.to_bytes()


# ------------------------------------------------------------------ round trips


def test_round_trip_every_message() -> None:
    nonce, key, salt, sig = bytes(range(16)), bytes(range(1, 33)), b"\x5a" * 32, bytes(range(64))
    dh = m.ExchangeDh(key, nonce, salt, sig)
    assert m.decode_exchange_dh(m.encode_exchange_dh(dh)) == dh
    assert dh.signed_bytes() == key + nonce + salt
    rekey = m.Rekey(key, salt)
    assert m.decode_rekey(m.encode_rekey(rekey)) == rekey
    assert m.decode_channel_message(m.encode_channel_message(b"pad", rekey)) == rekey
    assert m.decode_channel_message(m.encode_channel_message(b"", b"")) == b""
    for init in (m.Listen(), m.Accept(key), m.Connect(key)):
        assert m.decode_init_connection(m.encode_init_connection(init)) == init
    assert m.decode_ka_message(m.encode_ka_message(b"")) == b""


def test_our_bytes_equal_a_plain_pycapnp_build() -> None:
    """Our encoders against the generic pycapnp dict API: same schema, same allocation order."""
    limbs = {"x0": 0x0001020304050607, "x1": 0x08090A0B0C0D0E0F, "x2": 0x1011121314151617}
    pk = {"inner": {**limbs, "x3": 0x18191A1B1C1D1E1F}}
    salt = {"inner": {"x0": 1, "x1": 2, "x2": 3, "x3": 4}}
    salt_bytes = b"".join(i.to_bytes(8, "big") for i in (1, 2, 3, 4))
    rekey_dict = {"dhPublicKey": pk, "keySalt": salt}
    cases: list[tuple[Any, dict[str, Any], bytes]] = [
        (m._relay.InitConnection, {"connect": pk}, m.encode_init_connection(m.Connect(PK))),
        (m._relay.IncomingConnection, {"publicKey": pk}, m.encode_incoming_connection(PK)),
        (m._dh.Rekey, rekey_dict, m.encode_rekey(m.Rekey(PK, salt_bytes))),
        (
            m._dh.ChannelMessage,
            {"randPadding": b"\x07" * 9, "content": {"user": b"abc"}},
            m.encode_channel_message(b"\x07" * 9, b"abc"),
        ),
        (m._keepalive.KaMessage, {"message": b"xyz" * 100}, m.encode_ka_message(b"xyz" * 100)),
    ]
    for schema, fields, ours in cases:
        assert schema.new_message(**fields).to_bytes_packed() == ours


@pytest.mark.parametrize("npad", [0, 1, 7, 8, 9, 255])
@pytest.mark.parametrize("nuser", [0, 1, 8, 100, 1016, 1017, 5000, 70000])
def test_per_frame_encoders_make_the_general_encoders_bytes(npad: int, nuser: int) -> None:
    """The inline per-frame paths (a user ChannelMessage, a KaMessage with a message) change no byte,
    on either side of the literal-run threshold (packing.py)."""
    padding, user = os.urandom(npad), bytes(range(1, 256)) * (nuser // 255) + b"\x05" * (nuser % 255)
    general = m.encode_channel_message(padding, user)
    assert m.encode_user_message(padding, user) == general
    builder = m._dh.ChannelMessage.new_message(num_first_segment_words=20000)
    builder.randPadding = padding
    builder.init("content").user = user
    assert unpack(general) == unpack(builder.to_bytes_packed())
    ka = m._keepalive.KaMessage.new_message(num_first_segment_words=20000)
    ka.message = user
    assert unpack(m.encode_ka_message(user)) == unpack(ka.to_bytes_packed())
    if nuser < 1000:  # below the threshold: pycapnp's own packing, byte for byte
        assert m.encode_ka_message(user) == m._keepalive.KaMessage.new_message(message=user).to_bytes_packed()


def default_builder_message(padding: bytes, user: bytes) -> bytes:
    """A ChannelMessage from pycapnp's default builder, which spills large fields into more segments."""
    builder = m._dh.ChannelMessage.new_message()
    builder.randPadding = padding
    builder.init("content").user = user
    packed: bytes = builder.to_bytes_packed()
    return packed


def test_multi_segment_channel_message_with_60000_bytes_of_padding() -> None:
    padding = bytes(range(1, 256)) * 236  # 60,180 non-zero bytes
    payload = m.encode_ka_message(b"tunnel frame")
    two_segments = default_builder_message(padding, payload)
    assert unpack(two_segments)[:4] == h("01000000")  # segment count - 1 = 1: reached by a far pointer
    assert m.decode_channel_message(two_segments) == payload


def test_three_segment_message_with_large_user_data() -> None:
    three_segments = default_builder_message(b"\x01" * 60000, b"\x02" * 60000)
    assert unpack(three_segments)[:4] == h("02000000")
    assert m.decode_channel_message(three_segments) == b"\x02" * 60000


def test_large_messages_are_encoded_as_one_segment() -> None:
    padding, payload = bytes(range(1, 256)) * 236, b"\x02" * 70000
    ours = m.encode_channel_message(padding, payload)
    assert unpack(ours)[:4] == bytes(4)
    builder = m._dh.ChannelMessage.new_message(num_first_segment_words=20000)
    builder.randPadding = padding
    builder.init("content").user = payload
    # The same message as pycapnp builds from a first segment big enough (packed differently:
    # large messages use literal runs, see packing.py).
    assert unpack(ours) == unpack(builder.to_bytes_packed())
    assert unpack(m.encode_ka_message(payload))[:4] == bytes(4)
    assert unpack(m.encode_channel_message(b"", m.Rekey(PK, PK)))[:4] == bytes(4)


def test_cut_multi_segment_messages_fail_cleanly() -> None:
    """pycapnp aborts the process if a lazily read later segment is missing; we must refuse first."""
    packed = default_builder_message(b"\x01" * 9000, b"\x02" * 9000)
    for cut in [*range(1, 40), *range(40, len(packed), 97), len(packed) - 1]:
        with pytest.raises(ProtocolError, match="ChannelMessage"):
            m.decode_channel_message(packed[:cut])


def test_missing_unreferenced_last_segment_fails_cleanly() -> None:
    # Two segments, the second (3 words) referenced by nothing and absent from the input.
    unpacked = h("01000000 01000000 03000000 00000000") + bytes(8)
    with pytest.raises(ProtocolError, match="incomplete segments"):
        m.decode_ka_message(pack_simple(unpacked))
    complete = pack_simple(unpacked + b"\x01" * 24)
    assert m.decode_ka_message(complete) is None  # null root: the default KaMessage, a keepAlive


def test_run_overrunning_the_last_segment_fails_cleanly() -> None:
    unpacked = h("01000000 01000000 01000000 00000000") + bytes(8) + b"\x01" * 8
    zero_run_past_end = pack_simple(unpacked)[:-9] + b"\x00\x05"
    with pytest.raises(ProtocolError, match="incomplete segments"):
        m.decode_ka_message(zero_run_past_end)


def test_segment_table_cut_or_crossed_by_a_run() -> None:
    with pytest.raises(ProtocolError, match="cut short"):
        m.decode_ka_message(h("11 01 01"))  # 2 segments, table ends early
    with pytest.raises(ProtocolError, match="crosses"):
        m.decode_ka_message(h("11 01 01 00 05"))  # zero run from the table into the segments
    too_many = pack_simple((600).to_bytes(4, "little") + bytes(4))
    with pytest.raises(ProtocolError, match="601 segments"):
        m.decode_ka_message(too_many)


# ------------------------------------------------------------------ malformed input


def test_null_public_key_reads_as_zero_bytes() -> None:
    accept_null = h("10 03 50 01 01 01 01 00 00")  # disc 1 (accept), pointer 0 null
    assert m.decode_init_connection(accept_null) == m.Accept(bytes(32))


def test_unknown_discriminant_is_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="InitConnection"):
        m.decode_init_connection(h("10 03 50 01 01 01 03 00 00"))
    with pytest.raises(ProtocolError, match="KaMessage"):
        m.decode_ka_message(h("10 03 50 01 01 01 02 00 00"))
    # ChannelMessage{randPadding "pp", content.user "u"}: byte 40 (after the segment table, the
    # root and its two pointers, and the padding's word) is ChannelContent's discriminant, 1 = user.
    unpacked = bytearray(h("00000000 07000000 00000000 00000200 05000000 12000000 04000000 01000100"
                           "70700000 00000000 01000000 00000000 01000000 0a000000 75000000 00000000"))
    assert m.decode_channel_message(pack_simple(bytes(unpacked))) == b"u"
    unpacked[40] = 2
    with pytest.raises(ProtocolError, match="ChannelMessage"):
        m.decode_channel_message(pack_simple(bytes(unpacked)))


def test_trailing_bytes_are_ignored_like_the_rust_reader() -> None:
    assert m.decode_init_connection(h(LISTEN) + b"junk") == m.Listen()


DECODERS: list[Callable[[bytes], object]] = [
    m.decode_init_connection,
    m.decode_incoming_connection,
    m.decode_reject_connection,
    m.decode_ka_message,
    m.decode_exchange_rand_nonce,
    m.decode_exchange_dh,
    m.decode_rekey,
    m.decode_channel_message,
]


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff" * 10, h(LISTEN)[:4], h("10 03 50 01 01 00")])
def test_truncated_or_garbage_input_is_protocol_error(decode: Callable[[bytes], object], data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


def test_wrong_pointer_kind_is_protocol_error() -> None:
    # Accept has discriminant 1 like KaMessage.message, but its pointer is a struct, not a byte list.
    with pytest.raises(ProtocolError, match="KaMessage"):
        m.decode_ka_message(h(ACCEPT))


def test_segment_table_beyond_traversal_limit_is_refused_before_unpacking() -> None:
    builder = m._keepalive.KaMessage.new_message(num_first_segment_words=5000)
    builder.message = bytes(8 * 4096)
    zeros = builder.to_bytes_packed()  # pycapnp packs it to a few dozen bytes; it unpacks to 32 KiB
    assert len(zeros) < 100
    assert m.decode_ka_message(zeros) == bytes(8 * 4096)
    with pytest.raises(ProtocolError, match="too large"):
        m.decode_ka_message(zeros, max_words=1000)
    channel = m._dh.ChannelMessage.new_message(num_first_segment_words=11000)
    channel.randPadding = bytes(80000)
    channel.init("content").user = b""
    with pytest.raises(ProtocolError, match="too large"):
        m.decode_channel_message(channel.to_bytes_packed(), max_words=5000)


def with_extra_words(packed: bytes, extra: int) -> bytes:
    """The same single-segment message with ``extra`` unused zero words claimed by its segment table."""
    words = unpack(packed)
    assert words[:4] == bytes(4)
    size = int.from_bytes(words[4:8], "little") + extra
    return pack_simple(bytes(4) + size.to_bytes(4, "little") + words[8:] + bytes(8 * extra))


def test_handshake_messages_have_a_small_fixed_limit() -> None:
    dh = m.ExchangeDh(PK, bytes(16), PK, bytes(64))
    packed = m.encode_exchange_dh(dh)
    assert m.decode_exchange_dh(with_extra_words(packed, 100)) == dh
    with pytest.raises(ProtocolError, match="too large"):
        m.decode_exchange_dh(with_extra_words(packed, m.SMALL_MESSAGE_WORDS))


def test_message_word_limit_scales_with_frame_cap() -> None:
    assert m.message_word_limit(2 * 1024 * 1024) * 8 >= 2 * 2 * 1024 * 1024
    assert m.message_word_limit(1000) < m.message_word_limit(10_000)


def test_encoders_refuse_wrong_lengths() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        m.encode_init_connection(m.Connect(b"short"))
    with pytest.raises(ValueError, match="16 bytes"):
        m.encode_exchange_rand_nonce(m.ExchangeRandNonce(b"x", PK, None))
    with pytest.raises(ValueError, match="64 bytes"):
        m.encode_exchange_dh(m.ExchangeDh(PK, bytes(16), PK, b"sig"))
