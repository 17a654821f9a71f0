"""Relay protocol v1 messages against the byte layouts of the protocol definition (packets_xdr.go)."""

from __future__ import annotations

import pytest

from natrelay.syncthing import xdr

MAGIC = bytes.fromhex("9E79BC40")


def word(n: int) -> bytes:
    return n.to_bytes(4, "big")


def test_header_is_magic_type_length_big_endian() -> None:
    assert xdr.encode(xdr.Ping()) == MAGIC + word(0) + word(0)
    assert xdr.encode(xdr.Pong()) == MAGIC + word(1) + word(0)
    assert xdr.encode(xdr.RelayFull()) == MAGIC + word(7) + word(0)


def test_join_relay_request_token_is_an_xdr_string() -> None:
    assert xdr.encode(xdr.JoinRelayRequest("")) == MAGIC + word(2) + word(4) + word(0)
    assert xdr.encode(xdr.JoinRelayRequest("abcde")) == MAGIC + word(2) + word(12) + word(5) + b"abcde\0\0\0"
    # A pre-token client sends an empty body: the empty token.
    assert xdr.decode_body(2, b"") == xdr.JoinRelayRequest("")


def test_join_session_request_key_is_opaque_32() -> None:
    key = bytes(range(32))
    assert xdr.encode(xdr.JoinSessionRequest(key)) == MAGIC + word(3) + word(36) + word(32) + key
    with pytest.raises(xdr.XdrError):
        xdr.encode(xdr.JoinSessionRequest(bytes(33)))
    with pytest.raises(xdr.XdrError, match="Key"):
        xdr.decode_body(3, word(33) + bytes(36))


def test_response_is_code_then_string() -> None:
    assert xdr.encode(xdr.RESPONSE_SUCCESS) == MAGIC + word(4) + word(16) + word(0) + word(7) + b"success\0"
    assert xdr.encode(xdr.RESPONSE_UNEXPECTED_MESSAGE)[12:16] == word(100)
    assert xdr.decode_body(4, word(0xFFFFFFFF) + word(0)) == xdr.Response(-1, "")


def test_connect_request() -> None:
    dev = b"\xaa" * 32
    assert xdr.encode(xdr.ConnectRequest(dev)) == MAGIC + word(5) + word(36) + word(32) + dev


def test_session_invitation_port_and_bool_take_a_word_each() -> None:
    inv = xdr.SessionInvitation(b"\x01" * 32, b"\x02" * 32, bytes([127, 0, 0, 1]), 22067, True)
    body = (word(32) + b"\x01" * 32 + word(32) + b"\x02" * 32 + word(4) + bytes([127, 0, 0, 1])
            + bytes.fromhex("00005633") + word(1))
    assert xdr.encode(inv) == MAGIC + word(6) + word(len(body)) + body
    assert xdr.decode_body(6, body) == inv
    # An empty address (use the relay's) and ServerSocket false.
    empty = xdr.SessionInvitation(b"", b"", b"", 0, False)
    assert xdr.encode_body(empty)[1] == word(0) * 5
    with pytest.raises(xdr.XdrError, match="Port"):
        xdr.decode_body(6, word(0) * 3 + word(0x10000) + word(0))


def test_header_bounds_are_checked_before_any_allocation() -> None:
    with pytest.raises(xdr.XdrError, match="magic"):
        xdr.parse_header(word(0x9E79BC41) + word(0) + word(0))
    with pytest.raises(xdr.XdrError, match="length"):
        xdr.parse_header(MAGIC + word(0) + word(1025))
    with pytest.raises(xdr.XdrError, match="length"):
        xdr.parse_header(MAGIC + word(0) + word(0xFFFFFFFF))  # -1
    assert xdr.parse_header(MAGIC + word(6) + word(1024)) == (6, 1024)


def test_unknown_type_and_truncation_are_errors() -> None:
    with pytest.raises(xdr.XdrError, match="unknown"):
        xdr.decode_body(8, b"")
    with pytest.raises(xdr.XdrError, match="truncated"):
        xdr.decode_body(5, word(32) + bytes(31))
    with pytest.raises(xdr.XdrError, match="UTF-8"):
        xdr.decode_body(2, word(1) + b"\xff\0\0\0")


def test_decoder_splits_a_stream_at_any_boundary() -> None:
    msgs: list[xdr.Message] = [xdr.Ping(), xdr.RESPONSE_SUCCESS, xdr.ConnectRequest(b"\x05" * 32),
                               xdr.JoinRelayRequest("tok")]
    stream = b"".join(xdr.encode(m) for m in msgs)
    for cut in range(len(stream) + 1):
        d = xdr.Decoder()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert got == msgs
        assert d.buffered == 0
    d = xdr.Decoder()
    assert d.wanted() == 12
    d.feed(xdr.encode(xdr.RESPONSE_SUCCESS)[:12])
    assert d.wanted() == 16
