"""The stream layer carried inside relayed channels: data and end-of-stream messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natrelay.engine.tunnel import END_MESSAGE, MAX_CHUNK, StreamLayerError, decode_message, split_data


def test_split_and_decode_round_trip_in_order() -> None:
    data = bytes(range(256)) * 3000  # 768,000 bytes: several chunks
    messages = split_data(data)
    assert len(messages) == -(-len(data) // MAX_CHUNK)
    assert all(len(m) <= MAX_CHUNK + 1 for m in messages)
    decoded = [decode_message(m) for m in messages]
    assert b"".join(d for d in decoded if d is not None) == data
    assert decode_message(END_MESSAGE) is None
    assert split_data(b"") == []


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x01x", b"\x02abc", b"\xff"])
def test_invalid_messages_are_errors(bad: bytes) -> None:
    with pytest.raises(StreamLayerError):
        decode_message(bad)


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_the_layer_error(data: bytes) -> None:
    try:
        result = decode_message(data)
    except StreamLayerError:
        return
    assert result is None or (data[0] == 0 and result == data[1:])
