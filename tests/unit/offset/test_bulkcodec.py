"""Large KaMessage/ChannelMessage encoding without pycapnp's builder: pycapnp's words, pycapnp's reading."""

from __future__ import annotations

import os

import pytest

from natrelay.offset import bulkcodec
from natrelay.offset import messages as M
from natrelay.offset.packing import pack_single_segment

from .packing_helpers import unpack

SIZES = [bulkcodec.FAST_MIN, 1025, 2047, 2048, 2049, 61_441, 65_536, 200_003]
PADDINGS = [0, 1, 7, 8, 9, 255]


def _pycapnp_ka(data: bytes) -> bytes:
    builder = M._keepalive.KaMessage.new_message(num_first_segment_words=M._one_segment(len(data)))
    builder.message = data
    words: bytes = builder.to_bytes()
    return words


def _pycapnp_channel(padding: bytes, user: bytes) -> bytes:
    size = M._one_segment(len(padding), len(user))
    builder = M._dh.ChannelMessage.new_message(num_first_segment_words=size)
    builder.randPadding = padding
    builder.init("content").user = user
    words: bytes = builder.to_bytes()
    return words


@pytest.mark.parametrize("size", SIZES)
def test_ka_message_has_pycapnps_words(size: int) -> None:
    data = os.urandom(size)
    packed = bulkcodec.encode_ka_message(data)
    assert unpack(packed) == _pycapnp_ka(data)
    assert M._keepalive.KaMessage.from_bytes_packed(packed).message == data
    assert M.encode_ka_message(data) == packed  # messages.py takes this path for large payloads


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("pad", PADDINGS)
def test_channel_message_has_pycapnps_words(size: int, pad: int) -> None:
    padding, user = os.urandom(pad), os.urandom(size)
    packed = bulkcodec.encode_channel_user(padding, user)
    assert unpack(packed) == _pycapnp_channel(padding, user)
    reader = M._dh.ChannelMessage.from_bytes_packed(packed)
    assert reader.randPadding == padding and reader.content.user == user
    assert M.decode_channel_message(M.encode_channel_message(padding, user)) == user


def test_small_payloads_stay_with_pycapnp() -> None:
    """Below the threshold the builder's standard packing is kept: the spec's vectors (§13.2)."""
    data = os.urandom(bulkcodec.FAST_MIN - 1)
    assert M.encode_ka_message(data) != pack_single_segment(_pycapnp_ka(data))
    assert M.encode_channel_message(b"\xaa\xbb", b"\x01") == bytes.fromhex(
        "10 07 40 02 11 05 12 51 04 01 01 03 aa bb 01 01 11 01 0a 01 01")
