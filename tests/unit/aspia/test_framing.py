"""Aspia framing: size field, user-data/channel frames, keep-alive frames and timers (spec §2)."""

from __future__ import annotations

import pytest

from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.framing import (
    MAX_MESSAGE_SIZE,
    MAX_SIZE_FIELD,
    DataFrame,
    FrameDecoder,
    KeepAlive,
    KeepAliveFrame,
    decode_size,
    encode_keepalive,
    encode_size,
    encode_user_frame,
    split_channel_header,
)

# (size, encoding) from the table in §2.2, plus the edges the C++ writer switches at.
SIZE_VECTORS = [
    (0, "00"),
    (1, "01"),
    (127, "7f"),
    (128, "8001"),
    (16383, "ff7f"),
    (16384, "808001"),
    (131071, "ffff07"),
    (131072, "80808800"),
    (2097151, "ffffff00"),
    (2097152, "80808001"),
    (MAX_SIZE_FIELD, "ffffffff"),
]


@pytest.mark.parametrize(("size", "wire"), SIZE_VECTORS)
def test_size_field_matches_cpp_writer(size: int, wire: str) -> None:
    assert encode_size(size).hex() == wire
    assert decode_size(bytes.fromhex(wire)) == (size, len(wire) // 2)


def test_fourth_byte_contributes_all_eight_bits() -> None:
    # Byte 3 has its top bit set yet decoding stops there: 0xff << 21 | 0x7f | ...
    assert decode_size(bytes.fromhex("80808080")) == (0x80 << 21, 4)
    assert decode_size(bytes.fromhex("ffffffff") + b"\x05") == (MAX_SIZE_FIELD, 4)


def test_non_minimal_encodings_decode() -> None:
    assert decode_size(b"\x80\x00") == (0, 2)
    assert decode_size(bytes.fromhex("85808000")) == (5, 4)
    assert decode_size(bytes.fromhex("9e80c001")) == (3 * 1024 * 1024 + 30, 4)


@pytest.mark.parametrize("partial", ["", "80", "8080", "808080"])
def test_incomplete_size_field_needs_more(partial: str) -> None:
    assert decode_size(bytes.fromhex(partial)) is None


def test_encode_size_rejects_unrepresentable() -> None:
    with pytest.raises(ValueError):
        encode_size(MAX_SIZE_FIELD + 1)
    with pytest.raises(ValueError):
        encode_size(-1)


@pytest.mark.parametrize("length", [1, 127, 128, 16383, 16384, 131071, 131072])
def test_user_frame_round_trip_at_size_edges(length: int) -> None:
    payload = bytes(i & 0xFF for i in range(length))
    wire = encode_user_frame(payload)
    assert wire.startswith(encode_size(length))
    assert FrameDecoder().feed(wire) == [DataFrame(payload)]


def test_frame_at_exact_limit_accepted_and_one_over_refused() -> None:
    body = b"\x01" * MAX_MESSAGE_SIZE
    assert FrameDecoder().feed(encode_size(MAX_MESSAGE_SIZE) + body) == [DataFrame(body)]
    decoder = FrameDecoder()
    # Refused on the size field alone, before any body byte is buffered.
    with pytest.raises(AspiaProtocolError):
        decoder.feed(encode_size(MAX_MESSAGE_SIZE + 1))
    assert decoder.buffered == 0


def test_custom_limit_is_enforced() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(encode_user_frame(b"x" * 10)) == [DataFrame(b"x" * 10)]
    with pytest.raises(AspiaProtocolError):
        decoder.feed(encode_size(11))


def test_non_minimal_size_frame_is_accepted() -> None:
    assert FrameDecoder().feed(bytes.fromhex("83808000") + b"abc") == [DataFrame(b"abc")]


def test_byte_by_byte_feeding_yields_the_same_frames() -> None:
    wire = (
        encode_user_frame(b"first")
        + encode_keepalive(True, b"\x00\x00\x00\x07")
        + encode_user_frame(b"y" * 300, channel_id=1)
    )
    decoder = FrameDecoder()
    frames = []
    for i in range(len(wire)):
        frames += decoder.feed(wire[i : i + 1])
    assert frames == FrameDecoder().feed(wire)
    assert frames == [
        DataFrame(b"first"),
        KeepAliveFrame(True, b"\x00\x00\x00\x07"),
        DataFrame(b"\x01\x00" + b"y" * 300),
    ]
    assert decoder.buffered == 0


def test_next_frame_lets_caller_switch_state_between_frames() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_user_frame(b"plain") + encode_user_frame(b"tagged", channel_id=0))
    first = decoder.next_frame()
    second = decoder.next_frame()
    assert first == DataFrame(b"plain")
    assert isinstance(second, DataFrame)
    assert split_channel_header(second.body) == (0, b"tagged")
    assert decoder.next_frame() is None


def test_channel_header_layout_and_reserved_byte_ignored() -> None:
    assert encode_user_frame(b"hi", channel_id=5) == b"\x04\x05\x00hi"
    assert split_channel_header(b"\x01\xffpayload") == (1, b"payload")


@pytest.mark.parametrize("body", [b"", b"\x00", b"\x00\x00"])
def test_channel_header_without_payload_is_an_error(body: bytes) -> None:
    # The real router closes on the 3-byte frame 02 00 00 (§2.3).
    with pytest.raises(AspiaProtocolError):
        split_channel_header(body)


def test_empty_payload_cannot_be_framed() -> None:
    with pytest.raises(ValueError):
        encode_user_frame(b"")
    with pytest.raises(ValueError):
        encode_user_frame(b"x", channel_id=256)
    with pytest.raises(ValueError):
        encode_user_frame(b"x" * MAX_MESSAGE_SIZE, channel_id=0)


def test_keepalive_wire_examples() -> None:
    # Observed byte for byte from the real router and relay (§2.4).
    assert encode_keepalive(True, bytes(4)).hex() == "00010100000400000000000000"
    assert encode_keepalive(False, bytes(4)).hex() == "00010000000400000000000000"
    assert encode_keepalive(True, b"\x00\x00\x00\x01").hex() == "00010100000400000000000001"
    decoder = FrameDecoder()
    assert decoder.feed(bytes.fromhex("00010100000400000000000000")) == [KeepAliveFrame(True, bytes(4))]
    assert decoder.feed(bytes.fromhex("00010000000400000000000000")) == [KeepAliveFrame(False, bytes(4))]


def test_keepalive_after_non_minimal_zero_size() -> None:
    frames = FrameDecoder().feed(b"\x80\x00" + encode_keepalive(True, b"12345678")[1:])
    assert frames == [KeepAliveFrame(True, b"12345678")]


@pytest.mark.parametrize(
    "wire",
    [
        "00020100000400000000000000",  # service type 2
        "00010100000000000000",  # KEEP_ALIVE with length 0
        "0001010000" + (MAX_MESSAGE_SIZE + 1).to_bytes(4, "little").hex(),  # over the limit
    ],
)
def test_bad_service_frames_are_errors(wire: str) -> None:
    with pytest.raises(AspiaProtocolError):
        FrameDecoder().feed(bytes.fromhex(wire))


def test_service_length_is_little_endian() -> None:
    frame = encode_keepalive(True, b"x" * 258)
    assert frame[5:9] == b"\x02\x01\x00\x00"


def test_decoder_stays_failed_after_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(AspiaProtocolError):
        decoder.feed(bytes.fromhex("00020100000400000000000000"))
    with pytest.raises(AspiaProtocolError):
        decoder.feed(encode_user_frame(b"valid"))


# --- keep-alive state machine ---------------------------------------------------------------


def test_keepalive_first_ping_after_interval_then_counter_increments_big_endian() -> None:
    ka = KeepAlive()
    assert ka.deadline is None and ka.on_timer(1000.0) == []
    ka.enable(now=0.0)
    assert ka.deadline == 60.0
    assert ka.on_timer(59.9) == []
    ping = ka.on_timer(60.0)
    assert ping == [bytes.fromhex("00010100000400000000000000")]
    assert ka.deadline == 90.0
    assert ka.on_timer(70.0) == []  # no second ping while one is outstanding
    assert ka.on_frame(KeepAliveFrame(False, bytes(4)), now=61.0) == []
    assert ka.counter == b"\x00\x00\x00\x01"
    assert ka.deadline == 121.0
    assert ka.on_timer(121.0) == [bytes.fromhex("00010100000400000000000001")]


def test_keepalive_timeout_without_pong() -> None:
    ka = KeepAlive(interval=15, timeout=5)
    ka.enable(now=0.0)
    ka.on_timer(15.0)
    assert ka.on_timer(19.9) == []
    with pytest.raises(AspiaProtocolError) as info:
        ka.on_timer(20.0)
    assert info.value.code is ErrorCode.TIMEOUT


def test_keepalive_answers_pings_even_when_disabled() -> None:
    ka = KeepAlive()
    assert ka.on_frame(KeepAliveFrame(True, b"12345678"), now=0.0) == [encode_keepalive(False, b"12345678")]


@pytest.mark.parametrize(
    "pong",
    [b"\x00\x00\x00\x01", bytes(8), b"\x00"],
)
def test_keepalive_rejects_pong_with_wrong_data(pong: bytes) -> None:
    ka = KeepAlive()
    ka.enable(now=0.0)
    ka.on_timer(60.0)
    with pytest.raises(AspiaProtocolError):
        ka.on_frame(KeepAliveFrame(False, pong), now=61.0)


def test_keepalive_rejects_unsolicited_pong() -> None:
    disabled = KeepAlive()
    with pytest.raises(AspiaProtocolError):
        disabled.on_frame(KeepAliveFrame(False, bytes(4)), now=0.0)
    idle = KeepAlive()
    idle.enable(now=0.0)
    with pytest.raises(AspiaProtocolError):
        idle.on_frame(KeepAliveFrame(False, bytes(4)), now=1.0)


def test_keepalive_counter_wraps_at_32_bits() -> None:
    ka = KeepAlive()
    ka.enable(now=0.0)
    now = 0.0
    ka._counter = 0xFFFFFFFF  # reaching it honestly takes 2^32 round trips
    now += 60
    assert ka.on_timer(now) == [encode_keepalive(True, b"\xff\xff\xff\xff")]
    ka.on_frame(KeepAliveFrame(False, b"\xff\xff\xff\xff"), now)
    assert ka.counter == bytes(4)


def test_keepalive_settings_follow_cpp_ranges() -> None:
    for interval, timeout in [(14.9, 30), (301, 30), (60, 4.9), (60, 61)]:
        with pytest.raises(ValueError):
            KeepAlive(interval, timeout)


def test_keepalive_defer_postpones_only_an_outstanding_pong() -> None:
    from natrelay.aspia.errors import AspiaProtocolError
    from natrelay.aspia.framing import KeepAlive

    ka = KeepAlive(60.0, 30.0)
    ka.enable(0.0)
    ka.defer_timeout(10.0)  # no PING outstanding: nothing to postpone
    assert ka.deadline == 60.0
    assert ka.on_timer(60.0)  # PING out, PONG due at 90
    ka.defer_timeout(85.0)  # not reading at 85: the PONG may be sitting unread
    assert ka.deadline == 115.0
    assert ka.on_timer(100.0) == []
    try:
        ka.on_timer(115.0)
    except AspiaProtocolError:
        pass
    else:
        raise AssertionError("a PONG still missing after the deferred deadline must time out")
