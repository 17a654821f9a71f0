"""Length framing and the version prefix (spec §3, vectors §13.1)."""

from __future__ import annotations

import pytest

from natrelay.offset.errors import ProtocolError
from natrelay.offset.framing import VERSION_FRAME, FrameDecoder, check_version, encode_frame, frame_header


def test_version_frame_bytes() -> None:
    assert bytes.fromhex("00 00 00 00 00 00 00 04 00 00 00 00") == VERSION_FRAME


def test_frame_header_is_8_byte_big_endian() -> None:
    assert frame_header(0x43) == bytes.fromhex("00 00 00 00 00 00 00 43")
    assert frame_header(0x0102030405060708) == bytes(range(1, 9))
    payload = bytes(67)
    assert encode_frame(payload) == bytes.fromhex("0000000000000043") + payload


def test_decoder_splits_frames_in_one_chunk_including_empty() -> None:
    stream = encode_frame(b"abc") + encode_frame(b"") + encode_frame(b"\x00" * 10)
    assert FrameDecoder().feed(stream) == [b"abc", b"", b"\x00" * 10]


@pytest.mark.parametrize("step", [1, 3, 7, 8, 9, 64])
def test_decoder_reassembles_any_chunking(step: int) -> None:
    payloads = [b"x" * 100, b"", b"hello", bytes(range(256)) * 3]
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for i in range(0, len(stream), step):
        got += decoder.feed(stream[i : i + step])
    assert got == payloads
    assert decoder.buffered == 0


def test_decoder_keeps_partial_header_and_body() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame_header(5)) == []
    assert decoder.feed(b"ab") == []
    assert decoder.buffered == 2
    assert decoder.feed(b"cde" + frame_header(1)[:3]) == [b"abcde"]
    assert decoder.buffered == 3
    assert decoder.feed(frame_header(1)[3:] + b"Z") == [b"Z"]


def test_decoder_accepts_memoryview_and_bytearray() -> None:
    stream = encode_frame(b"abc") + encode_frame(b"defg")
    assert FrameDecoder().feed(memoryview(stream)) == [b"abc", b"defg"]
    assert FrameDecoder().feed(bytearray(stream)) == [b"abc", b"defg"]


def test_decoder_refuses_oversized_length_before_buffering_body() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(encode_frame(b"y" * 100)) == [b"y" * 100]  # the cap itself is allowed
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(frame_header(101))


def test_decoder_refuses_huge_length_arriving_after_buffered_data() -> None:
    decoder = FrameDecoder(max_frame=1 << 20)
    decoder.feed(b"\x00" * 3)  # partial header forces the buffered path
    with pytest.raises(ProtocolError):
        decoder.feed(b"\xff" * 5 + b"body")


def test_decoder_large_frame_in_small_chunks() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = encode_frame(payload)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for i in range(0, len(stream), 1000):
        got += decoder.feed(stream[i : i + 1000])
    assert got == [payload]


def test_check_version_accepts_only_four_zero_bytes() -> None:
    check_version(b"\x00\x00\x00\x00")
    with pytest.raises(ProtocolError, match="version 1"):
        check_version(b"\x00\x00\x00\x01")
    for bad_length in (b"", b"\x00" * 3, b"\x00" * 5):
        with pytest.raises(ProtocolError, match="bytes"):
            check_version(bad_length)


def test_read_that_is_exactly_one_frame() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(encode_frame(b"x" * 100)) == [b"x" * 100]  # at the cap: accepted
    assert decoder.feed(encode_frame(b"")) == [b""]
    assert type(decoder.feed(memoryview(encode_frame(b"ab")))[0]) is bytes
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(encode_frame(b"y" * 101))  # whole, but over the cap
    assert decoder.buffered == 0
