"""The stream layer carried inside relayed channels: data and end-of-stream messages."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natrelay.engine.tunnel import (
    END_MESSAGE,
    MAX_CHUNK,
    MAX_REASON,
    RemoteAbort,
    StreamEnd,
    StreamLayerError,
    decode_message,
    encode_abort,
    split_data,
)


def test_split_and_decode_round_trip_in_order() -> None:
    data = bytes(range(256)) * 3000  # 768,000 bytes: several chunks
    messages = split_data(data)
    assert len(messages) == -(-len(data) // MAX_CHUNK)
    assert all(len(m) <= MAX_CHUNK + 1 for m in messages)
    decoded = [decode_message(m) for m in messages]
    assert b"".join(d for d in decoded if d is not None) == data
    assert decode_message(END_MESSAGE) is None
    assert split_data(b"") == []


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x01x", b"\x03abc", b"\xff",
                                 b"\x02" + b"x" * (MAX_REASON + 1)])
def test_invalid_messages_are_errors(bad: bytes) -> None:
    with pytest.raises(StreamLayerError):
        decode_message(bad)


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_the_layer_error(data: bytes) -> None:
    try:
        result = decode_message(data)
    except (StreamLayerError, RemoteAbort):
        return
    assert result is None or (data[0] == 0 and result == data[1:])


def test_abort_carries_a_printable_bounded_reason() -> None:
    with pytest.raises(RemoteAbort, match=r"^the host cannot reach its service$"):
        decode_message(encode_abort("the host cannot reach its service"))
    with pytest.raises(RemoteAbort, match=r"^a\?b$"):
        decode_message(b"\x02a\x1bb")  # a terminal escape is not printed as is
    with pytest.raises(RemoteAbort, match=r"^no reason given$"):
        decode_message(b"\x02")
    long = encode_abort("\u00e9" * MAX_REASON)  # cut on a character boundary, within the bound
    assert len(long) <= 1 + MAX_REASON
    with pytest.raises(RemoteAbort):
        decode_message(long)


class _App(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[object] = []

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def data_received(self, data: bytes) -> None:
        self.events.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(exc)


def _opened(app: _App) -> StreamEnd:
    end = StreamEnd(app)
    end.transport = object()  # type: ignore[assignment]  # only "opened" matters here
    return end


def test_an_abort_reaches_the_application_as_an_error_even_after_end_of_stream() -> None:
    app = _App()
    end = _opened(app)
    assert end.deliver(b"\x00hi") is None
    assert end.deliver(END_MESSAGE) is None
    problem = end.deliver(encode_abort("disk full"))
    assert problem is not None and "disk full" in problem
    end.connection_lost("closed")
    assert app.events[:2] == [b"hi", "eof"]
    error = app.events[2]
    assert isinstance(error, ConnectionResetError) and "disk full" in str(error)


def test_a_clean_end_is_not_an_error_and_a_cut_one_is() -> None:
    clean, cut = _App(), _App()
    end = _opened(clean)
    end.deliver(END_MESSAGE)
    end.connection_lost("closed")
    assert clean.events == ["eof", None]
    end = _opened(cut)
    end.deliver(b"\x00x")
    end.connection_lost("relay went away")
    assert isinstance(cut.events[-1], ConnectionResetError) and "relay went away" in str(cut.events[-1])


class _Carrier:
    transport = None
    closing = False

    def send_app(self, messages: list[bytes]) -> None:
        pass

    def maybe_finish(self) -> None:
        pass

    def close(self, reason: str) -> None:
        pass

    def abort(self, reason: str) -> None:
        pass


def test_set_protocol_redirects_every_later_stream_event() -> None:
    """A protocol installed on the tunnel (e.g. the bridge's) gets data, end, flow control and loss."""
    first, second = _App(), _App()
    end = StreamEnd(first)
    tunnel = end.open(_Carrier(), {})
    assert tunnel.get_protocol() is first
    end.deliver(b"\x00one")
    tunnel.set_protocol(second)
    assert tunnel.get_protocol() is second
    end.deliver(b"\x00two")
    end.deliver(END_MESSAGE)
    end.connection_lost("closed")
    assert first.events == [b"one"]
    assert second.events == [b"two", "eof", None]
