"""Relay protocol v1 messages: a 12-byte header and an XDR body (sans-IO).

Header: magic ``0x9E79BC40``, message type, body length; three big-endian 32-bit words. Bodies are
XDR: a variable-length opaque or string is a 4-byte length, the bytes, and zero padding to a multiple
of four; an unsigned short and a bool each take a full 4-byte word. Lengths are checked against the
protocol's bounds (1024 bytes per body, 32 bytes per opaque field) before anything is sliced, so a
hostile length costs nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = 0x9E79BC40
HEADER = struct.Struct(">Iii")
HEADER_SIZE = HEADER.size
#: strelaysrv refuses a body longer than this; so do we.
MAX_BODY = 1024
#: ``opaque X<32>`` fields: keys, device IDs, addresses.
MAX_OPAQUE = 32

TYPE_PING = 0
TYPE_PONG = 1
TYPE_JOIN_RELAY_REQUEST = 2
TYPE_JOIN_SESSION_REQUEST = 3
TYPE_RESPONSE = 4
TYPE_CONNECT_REQUEST = 5
TYPE_SESSION_INVITATION = 6
TYPE_RELAY_FULL = 7


class XdrError(ValueError):
    """Input that is not a well-formed v1 message; the connection that sent it is closed."""


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class RelayFull:
    pass


@dataclass(frozen=True, slots=True)
class JoinRelayRequest:
    token: str = ""


@dataclass(frozen=True, slots=True)
class JoinSessionRequest:
    key: bytes


@dataclass(frozen=True, slots=True)
class Response:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    device_id: bytes


@dataclass(frozen=True, slots=True)
class SessionInvitation:
    from_id: bytes
    key: bytes
    address: bytes
    port: int
    server_socket: bool


Message = (Ping | Pong | RelayFull | JoinRelayRequest | JoinSessionRequest | Response | ConnectRequest
           | SessionInvitation)

RESPONSE_SUCCESS = Response(0, "success")
RESPONSE_NOT_FOUND = Response(1, "not found")
RESPONSE_ALREADY_CONNECTED = Response(2, "already connected")
RESPONSE_WRONG_TOKEN = Response(3, "wrong token")
RESPONSE_UNEXPECTED_MESSAGE = Response(100, "unexpected message")


# ----------------------------------------------------------------- encoding

def _pad(n: int) -> bytes:
    return b"\x00" * ((4 - n % 4) % 4)


def _opaque(name: str, data: bytes, limit: int | None = MAX_OPAQUE) -> bytes:
    if limit is not None and len(data) > limit:
        raise XdrError(f"{name}: {len(data)} bytes, at most {limit} allowed")
    return struct.pack(">I", len(data)) + data + _pad(len(data))


def encode_body(msg: Message) -> tuple[int, bytes]:
    """The message's type number and XDR body."""
    if isinstance(msg, Ping):
        return TYPE_PING, b""
    if isinstance(msg, Pong):
        return TYPE_PONG, b""
    if isinstance(msg, RelayFull):
        return TYPE_RELAY_FULL, b""
    if isinstance(msg, JoinRelayRequest):
        return TYPE_JOIN_RELAY_REQUEST, _opaque("Token", msg.token.encode(), None)
    if isinstance(msg, JoinSessionRequest):
        return TYPE_JOIN_SESSION_REQUEST, _opaque("Key", msg.key)
    if isinstance(msg, Response):
        return TYPE_RESPONSE, struct.pack(">i", msg.code) + _opaque("Message", msg.message.encode(), None)
    if isinstance(msg, ConnectRequest):
        return TYPE_CONNECT_REQUEST, _opaque("ID", msg.device_id)
    if isinstance(msg, SessionInvitation):
        if not 0 <= msg.port <= 0xFFFF:
            raise XdrError(f"Port: {msg.port} is not an unsigned 16-bit value")
        return TYPE_SESSION_INVITATION, (
            _opaque("From", msg.from_id) + _opaque("Key", msg.key) + _opaque("Address", msg.address)
            + struct.pack(">II", msg.port, 1 if msg.server_socket else 0))
    raise TypeError(f"not a relay protocol message: {msg!r}")


def encode(msg: Message) -> bytes:
    """Header and body, ready to write."""
    msg_type, body = encode_body(msg)
    if len(body) > MAX_BODY:
        raise XdrError(f"message body of {len(body)} bytes exceeds {MAX_BODY}")
    return HEADER.pack(MAGIC, msg_type, len(body)) + body


# ----------------------------------------------------------------- decoding

def parse_header(data: bytes) -> tuple[int, int]:
    """(type, body length) of a 12-byte header; bad magic or a length outside 0..1024 is refused."""
    if len(data) != HEADER_SIZE:
        raise XdrError(f"header must be {HEADER_SIZE} bytes, got {len(data)}")
    magic, msg_type, length = HEADER.unpack(data)
    if magic != MAGIC:
        raise XdrError(f"bad magic {magic:#010x}")
    if not 0 <= length <= MAX_BODY:
        raise XdrError(f"body length {length} outside 0..{MAX_BODY}")
    return msg_type, length


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def word(self, name: str) -> int:
        end = self.pos + 4
        if end > len(self.data):
            raise XdrError(f"{name}: truncated")
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos = end
        return int(value)

    def opaque(self, name: str, limit: int) -> bytes:
        n = self.word(name)
        if n > limit:
            raise XdrError(f"{name}: length {n} exceeds {limit}")
        end = self.pos + n
        padded = end + (4 - n % 4) % 4
        if padded > len(self.data):
            raise XdrError(f"{name}: truncated")
        value = self.data[self.pos:end]
        self.pos = padded
        return value

    def string(self, name: str) -> str:
        raw = self.opaque(name, MAX_BODY)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise XdrError(f"{name}: not UTF-8") from exc


def decode_body(msg_type: int, body: bytes) -> Message:
    """One message from its type and body (as bounded by :func:`parse_header`).

    Trailing bytes after the last field are ignored, as Syncthing's unmarshaller does. A
    JoinRelayRequest with an empty body is a pre-token client and means the empty token.
    """
    if len(body) > MAX_BODY:
        raise XdrError(f"body length {len(body)} exceeds {MAX_BODY}")
    c = _Cursor(body)
    if msg_type == TYPE_PING:
        return Ping()
    if msg_type == TYPE_PONG:
        return Pong()
    if msg_type == TYPE_RELAY_FULL:
        return RelayFull()
    if msg_type == TYPE_JOIN_RELAY_REQUEST:
        return JoinRelayRequest(c.string("Token") if body else "")
    if msg_type == TYPE_JOIN_SESSION_REQUEST:
        return JoinSessionRequest(c.opaque("Key", MAX_OPAQUE))
    if msg_type == TYPE_RESPONSE:
        code = c.word("Code")
        if code >= 1 << 31:
            code -= 1 << 32
        return Response(code, c.string("Message"))
    if msg_type == TYPE_CONNECT_REQUEST:
        return ConnectRequest(c.opaque("ID", MAX_OPAQUE))
    if msg_type == TYPE_SESSION_INVITATION:
        from_id = c.opaque("From", MAX_OPAQUE)
        key = c.opaque("Key", MAX_OPAQUE)
        address = c.opaque("Address", MAX_OPAQUE)
        port = c.word("Port")
        if port > 0xFFFF:
            raise XdrError(f"Port: {port} has bits above 16 set")
        return SessionInvitation(from_id, key, address, port, c.word("ServerSocket") != 0)
    raise XdrError(f"unknown message type {msg_type}")


class Decoder:
    """Turns a byte stream into messages; holds at most one header plus one bounded body.

    ``feed`` returns every complete message; after an :class:`XdrError` the stream is unusable
    and the connection must be closed.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def wanted(self) -> int:
        """How many more bytes complete the message in progress (never reads past it)."""
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return HEADER_SIZE - len(buf)
        _, length = parse_header(bytes(buf[:HEADER_SIZE]))
        return HEADER_SIZE + length - len(buf)

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        out: list[Message] = []
        while len(buf) >= HEADER_SIZE:
            msg_type, length = parse_header(bytes(buf[:HEADER_SIZE]))
            end = HEADER_SIZE + length
            if len(buf) < end:
                break
            body = bytes(buf[HEADER_SIZE:end])
            del buf[:end]
            out.append(decode_body(msg_type, body))
        return out
