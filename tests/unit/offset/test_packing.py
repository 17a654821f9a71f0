"""Literal-run packing of large messages: every reader must see the same message as pycapnp's packing."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natrelay.offset import messages as M
from natrelay.offset.packing import LITERAL_THRESHOLD, pack_single_segment

SIZES = [LITERAL_THRESHOLD - 1, LITERAL_THRESHOLD, 2039, 2040, 2041, 2048, 4080, 4088, 4096, 65536, 300_001]


def _unpacked_ka(data: bytes) -> bytes:
    builder = M._keepalive.KaMessage.new_message(num_first_segment_words=M._one_segment(len(data)))
    builder.message = data
    unpacked: bytes = builder.to_bytes()
    return unpacked


@pytest.mark.parametrize("size", SIZES)
def test_pycapnp_reads_literal_packing_as_the_same_message(size: int) -> None:
    data = os.urandom(size)
    packed = pack_single_segment(_unpacked_ka(data))
    assert M._keepalive.KaMessage.from_bytes_packed(packed).message == data
    assert M.decode_ka_message(packed) == data


@pytest.mark.parametrize("size", SIZES)
def test_encoders_round_trip_both_layers(size: int) -> None:
    data = bytes(size)  # all zeros: the case where literal runs differ most from pycapnp's packing
    ka = M.encode_ka_message(data)
    assert M.decode_ka_message(ka) == data
    padding = os.urandom(size % 256)
    assert M.decode_channel_message(M.encode_channel_message(padding, ka)) == ka


def test_segment_table_is_its_own_run() -> None:
    """C++ and Rust readers refuse a run that crosses from the segment table into segment 0."""
    unpacked = _unpacked_ka(os.urandom(5000))
    packed = pack_single_segment(unpacked)
    words = len(unpacked) // 8 - 1  # 5000 bytes of data: the segment size needs two bytes
    assert packed[:3] == bytes([0x30]) + words.to_bytes(2, "little")  # the standard packing of the table
    assert packed[3] == 0xFF and packed[4:12] == unpacked[8:16]  # then segment 0 starts a literal run


def test_small_messages_keep_pycapnp_packing() -> None:
    """So the spec's byte vectors (§13.2) are still produced exactly."""
    assert M.encode_ka_message(b"\x01\x02\x03") == bytes.fromhex("10 04 50 01 01 01 01 11 01 1a 07 01 02 03")


@pytest.mark.parametrize("bad", [b"", b"\x00" * 8, b"\x01\x00\x00\x00\x01\x00\x00\x00" + b"\x00" * 16,
                                 b"\x00\x00\x00\x00\x05\x00\x00\x00" + b"\x00" * 16, b"\x00" * 13])
def test_rejects_what_is_not_one_whole_segment(bad: bytes) -> None:
    with pytest.raises(ValueError):
        pack_single_segment(bad)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=LITERAL_THRESHOLD, max_size=20_000))
def test_any_payload_round_trips(data: bytes) -> None:
    assert M.decode_ka_message(M.encode_ka_message(data)) == data
