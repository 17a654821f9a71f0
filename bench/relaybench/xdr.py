"""Syncthing relay protocol v1 messages (XDR, big endian), written from the public protocol description.

Only what a benchmark client needs: the join/connect/invitation/session messages and their 12-byte header.
Every length read off the wire is checked against a small bound before any slice is taken, so a confused
relay cannot make the benchmark allocate or hang on a garbage length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = 0x9E79BC40
HEADER = struct.Struct(">Iii")
MAX_MESSAGE = 1024  # the largest v1 message (a SessionInvitation) is well under 200 bytes
MAX_OPAQUE = 32

TYPE_PING = 0
TYPE_PONG = 1
TYPE_JOIN_RELAY_REQUEST = 2
TYPE_JOIN_SESSION_REQUEST = 3
TYPE_RESPONSE = 4
TYPE_CONNECT_REQUEST = 5
TYPE_SESSION_INVITATION = 6
TYPE_RELAY_FULL = 7


class XdrError(Exception):
    """The relay sent something that is not a well-formed v1 message."""


@dataclass(frozen=True)
class Response:
    code: int
    message: str


@dataclass(frozen=True)
class SessionInvitation:
    from_id: bytes
    key: bytes
    address: bytes
    port: int
    server_socket: bool


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _opaque(data: bytes, limit: int = MAX_OPAQUE) -> bytes:
    if len(data) > limit:
        raise XdrError(f"opaque field of {len(data)} bytes exceeds {limit}")
    return struct.pack(">I", len(data)) + data + b"\x00" * _pad(len(data))


def frame(msg_type: int, body: bytes = b"") -> bytes:
    """Prefix ``body`` with the v1 header."""
    return HEADER.pack(MAGIC, msg_type, len(body)) + body


def join_relay_request() -> bytes:
    # Newer relays read an (empty) token string here; older ones ignore the body. Sending the empty
    # string keeps one client working against both.
    return frame(TYPE_JOIN_RELAY_REQUEST, _opaque(b"", 0))


def connect_request(device_id: bytes) -> bytes:
    return frame(TYPE_CONNECT_REQUEST, _opaque(device_id))


def join_session_request(key: bytes) -> bytes:
    return frame(TYPE_JOIN_SESSION_REQUEST, _opaque(key))


def ping() -> bytes:
    return frame(TYPE_PING)


def pong() -> bytes:
    return frame(TYPE_PONG)


def parse_header(data: bytes) -> tuple[int, int]:
    """Return (type, body length) of a 12-byte header, refusing bad magic and oversized bodies."""
    if len(data) != HEADER.size:
        raise XdrError("short header")
    magic, msg_type, length = HEADER.unpack(data)
    if magic != MAGIC:
        raise XdrError(f"bad magic {magic:#x}")
    if not 0 <= length <= MAX_MESSAGE:
        raise XdrError(f"message length {length} out of bounds")
    return msg_type, length


class _Reader:
    """Cursor over one message body; every read is bounds-checked."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def uint32(self) -> int:
        if self._pos + 4 > len(self._data):
            raise XdrError("truncated integer")
        (value,) = struct.unpack_from(">I", self._data, self._pos)
        self._pos += 4
        return int(value)

    def opaque(self, limit: int) -> bytes:
        n = self.uint32()
        if n > limit:
            raise XdrError(f"opaque length {n} exceeds {limit}")
        end = self._pos + n
        if end + _pad(n) > len(self._data):
            raise XdrError("truncated opaque")
        value = self._data[self._pos : end]
        self._pos = end + _pad(n)
        return value


def parse_response(body: bytes) -> Response:
    r = _Reader(body)
    code = r.uint32()
    if code >= 1 << 31:
        code -= 1 << 32
    message = r.opaque(MAX_MESSAGE).decode("utf-8", "replace")
    return Response(code, message)


def parse_session_invitation(body: bytes) -> SessionInvitation:
    r = _Reader(body)
    from_id = r.opaque(MAX_OPAQUE)
    key = r.opaque(MAX_OPAQUE)
    address = r.opaque(MAX_OPAQUE)
    port = r.uint32()
    if port > 0xFFFF:
        raise XdrError(f"port {port} out of range")
    server_socket = r.uint32() != 0
    return SessionInvitation(from_id, key, address, port, server_socket)
