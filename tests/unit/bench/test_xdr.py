"""The strelaysrv client's XDR codec: layouts from the relay protocol v1 description, and bounds."""

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from relaybench import xdr


def test_header_layout_is_magic_type_length_big_endian() -> None:
    msg = xdr.connect_request(b"\xaa" * 32)
    assert msg[:12] == struct.pack(">III", 0x9E79BC40, 5, 36)
    assert msg[12:16] == struct.pack(">I", 32)
    assert msg[16:] == b"\xaa" * 32


def test_opaque_fields_are_padded_to_four_bytes() -> None:
    msg = xdr.join_session_request(b"abcde")
    body = msg[12:]
    assert body == struct.pack(">I", 5) + b"abcde" + b"\x00\x00\x00"
    assert xdr.parse_header(msg[:12]) == (xdr.TYPE_JOIN_SESSION_REQUEST, 12)


def test_join_relay_request_carries_an_empty_token() -> None:
    assert xdr.join_relay_request() == struct.pack(">IiiI", xdr.MAGIC, 2, 4, 0)


def _invitation(from_id: bytes, key: bytes, address: bytes, port: int, server: bool) -> bytes:
    def opaque(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b + b"\x00" * ((4 - len(b) % 4) % 4)

    return opaque(from_id) + opaque(key) + opaque(address) + struct.pack(">II", port, int(server))


def test_session_invitation_round_trip() -> None:
    body = _invitation(b"\x01" * 32, b"\x02" * 32, b"", 22067, True)
    inv = xdr.parse_session_invitation(body)
    assert inv == xdr.SessionInvitation(b"\x01" * 32, b"\x02" * 32, b"", 22067, True)


def test_response_parses_code_and_message() -> None:
    body = struct.pack(">iI", 2, 17) + b"already connected" + b"\x00" * 3
    assert xdr.parse_response(body) == xdr.Response(2, "already connected")
    negative = struct.pack(">iI", -1, 0)
    assert xdr.parse_response(negative).code == -1


def test_bad_magic_and_oversized_length_are_refused() -> None:
    with pytest.raises(xdr.XdrError, match="magic"):
        xdr.parse_header(struct.pack(">Iii", 0x12345678, 4, 0))
    with pytest.raises(xdr.XdrError, match="out of bounds"):
        xdr.parse_header(struct.pack(">Iii", xdr.MAGIC, 4, xdr.MAX_MESSAGE + 1))
    with pytest.raises(xdr.XdrError, match="out of bounds"):
        xdr.parse_header(struct.pack(">Iii", xdr.MAGIC, 4, -1))


def test_opaque_longer_than_its_bound_is_refused() -> None:
    body = _invitation(b"\x01" * 33, b"", b"", 1, False)
    with pytest.raises(xdr.XdrError, match="exceeds"):
        xdr.parse_session_invitation(body)
    with pytest.raises(xdr.XdrError):
        xdr.connect_request(b"\x00" * 33)


def test_port_above_65535_is_refused() -> None:
    with pytest.raises(xdr.XdrError, match="port"):
        xdr.parse_session_invitation(_invitation(b"", b"", b"", 70000, False))


@given(st.binary(max_size=200))
def test_garbage_bodies_raise_only_xdr_errors(data: bytes) -> None:
    for parse in (xdr.parse_session_invitation, xdr.parse_response):
        with contextlib.suppress(xdr.XdrError):
            parse(data)
