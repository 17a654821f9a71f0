"""Aspia "TcpChannel" framing as a sans-IO codec (spec §2).

The size prefix is independent of connection state, so :class:`FrameDecoder` can split a byte
stream into frames on its own. Everything that *does* depend on state -- whether a 2-byte
channel header is present, whether the payload is encrypted -- is left to the caller, frame by
frame, because the handshake switches both in the middle of a stream (§4.3 "back-to-back
messages"): a decoder that stripped headers or decrypted ahead of the state machine would
misread the frame that follows a switch.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from natrelay.aspia.errors import AspiaProtocolError, ErrorCode

MAX_MESSAGE_SIZE = 7 * 1024 * 1024
"""Largest user-data frame size and service-frame data length either side accepts (§2.5)."""

MAX_SIZE_FIELD = (1 << 29) - 1
CHANNEL_HEADER_SIZE = 2
SERVICE_HEADER_SIZE = 8
SERVICE_TYPE_KEEP_ALIVE = 1
KEEP_ALIVE_FLAG_PING = 0x01
KEEP_ALIVE_COUNTER_SIZE = 4

_SERVICE_HEADER = struct.Struct("<BBBBI")  # type, flags, reserved1, reserved2, length (LE)


def encode_size(size: int) -> bytes:
    """Encode a frame size the way the C++ writer does, 4th-byte quirk included (§2.2).

    Sizes from 131 072 up get the 4-byte form even where 3 bytes would do; matching the
    original byte for byte keeps captures comparable, and every reader accepts it.
    """
    if not 0 <= size <= MAX_SIZE_FIELD:
        raise ValueError(f"size {size} not representable in the 29-bit size field")
    if size < 0x80:
        return bytes((size,))
    if size < 0x4000:
        return bytes(((size & 0x7F) | 0x80, size >> 7))
    if size <= 0x1FFFF:
        return bytes(((size & 0x7F) | 0x80, ((size >> 7) & 0x7F) | 0x80, size >> 14))
    return bytes(
        ((size & 0x7F) | 0x80, ((size >> 7) & 0x7F) | 0x80, ((size >> 14) & 0x7F) | 0x80, size >> 21)
    )


def decode_size(buf: bytes | bytearray | memoryview, start: int = 0) -> tuple[int, int] | None:
    """Decode a size field at ``buf[start:]``; return ``(value, bytes used)`` or ``None`` if short.

    Never fails: every 1 to 4 byte sequence is a valid size (non-minimal forms included), the
    fourth byte contributing all 8 bits. Range checks belong to the caller.
    """
    end = len(buf)
    if start >= end:
        return None
    b = buf[start]
    value = b & 0x7F
    if b < 0x80:
        return value, 1
    if start + 1 >= end:
        return None
    b = buf[start + 1]
    value |= (b & 0x7F) << 7
    if b < 0x80:
        return value, 2
    if start + 2 >= end:
        return None
    b = buf[start + 2]
    value |= (b & 0x7F) << 14
    if b < 0x80:
        return value, 3
    if start + 3 >= end:
        return None
    return value | (buf[start + 3] << 21), 4


@dataclass(frozen=True, slots=True)
class DataFrame:
    """A user-data frame exactly as transmitted: channel header (if enabled) + payload."""

    body: bytes


@dataclass(frozen=True, slots=True)
class KeepAliveFrame:
    """A KEEP_ALIVE service frame; ``ping`` is False for a PONG."""

    ping: bool
    data: bytes


Frame = DataFrame | KeepAliveFrame


class FrameDecoder:
    """Splits an incoming byte stream into frames, bounding every length before buffering it.

    Use :meth:`feed` for "everything that is complete", or :meth:`receive_data` plus
    :meth:`next_frame` to interleave per-frame state changes. After an error the decoder stays
    failed: the connection has to be closed (§2.5), and silently resynchronising on a byte
    stream without delimiters is impossible anyway.
    """

    def __init__(self, max_frame: int = MAX_MESSAGE_SIZE) -> None:
        if not 1 <= max_frame <= MAX_SIZE_FIELD:
            raise ValueError("max_frame out of range")
        self._max = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._error: AspiaProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes without parsing them."""
        if self._error is not None:
            raise self._error
        if self._pos:
            # Drop consumed frames once per call: only the unfinished tail is moved, so the
            # copying stays linear in the stream length.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Append ``data`` and return every frame that is now complete, in order."""
        self.receive_data(data)
        frames: list[Frame] = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or ``None`` until more bytes arrive."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame()
        except AspiaProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            self._pos = 0
            raise

    def _next_frame(self) -> Frame | None:
        buf, pos = self._buf, self._pos
        decoded = decode_size(buf, pos)
        if decoded is None:
            return None
        size, used = decoded
        if size:
            if size > self._max:
                raise AspiaProtocolError(f"frame of {size} bytes exceeds limit {self._max}")
            start = pos + used
            if len(buf) - start < size:
                return None
            self._pos = start + size
            return DataFrame(bytes(buf[start : start + size]))
        header_at = pos + used
        if len(buf) - header_at < SERVICE_HEADER_SIZE:
            return None
        kind, flags, _r1, _r2, length = _SERVICE_HEADER.unpack_from(buf, header_at)
        if kind != SERVICE_TYPE_KEEP_ALIVE:
            raise AspiaProtocolError(f"unknown service frame type {kind}")
        if length == 0 or length > self._max:
            raise AspiaProtocolError(f"keep-alive data length {length} out of range")
        start = header_at + SERVICE_HEADER_SIZE
        if len(buf) - start < length:
            return None
        self._pos = start + length
        return KeepAliveFrame(bool(flags & KEEP_ALIVE_FLAG_PING), bytes(buf[start : start + length]))


def encode_user_frame(payload: bytes, channel_id: int | None = None) -> bytes:
    """Frame an outgoing (already encrypted, if applicable) payload.

    ``channel_id`` is ``None`` while channel-ID support is off (always during the handshake);
    otherwise the 2-byte header goes in front, outside any encryption (§2.3). An empty payload
    is refused because size 0 means "service frame" on the wire.
    """
    if not payload:
        raise ValueError("an empty payload cannot be framed (size 0 marks a service frame)")
    if channel_id is None:
        size = len(payload)
        header = b""
    else:
        if not 0 <= channel_id <= 0xFF:
            raise ValueError(f"channel id {channel_id} does not fit one byte")
        size = len(payload) + CHANNEL_HEADER_SIZE
        header = bytes((channel_id, 0))
    if size > MAX_MESSAGE_SIZE:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_MESSAGE_SIZE}")
    return b"".join((encode_size(size), header, payload))


def split_channel_header(body: bytes) -> tuple[int, bytes]:
    """Split a received user-data frame into ``(channel_id, payload)`` when channels are on.

    The reserved byte is ignored, as the real router does (§2.3).
    """
    if len(body) <= CHANNEL_HEADER_SIZE:
        raise AspiaProtocolError("user-data frame has no payload after the channel header")
    return body[0], body[CHANNEL_HEADER_SIZE:]


def encode_keepalive(ping: bool, data: bytes) -> bytes:
    """A KEEP_ALIVE service frame: never encrypted and never channel-tagged (§2.4)."""
    if not data or len(data) > MAX_MESSAGE_SIZE:
        raise ValueError("keep-alive data must be 1 byte .. 7 MiB")
    flags = KEEP_ALIVE_FLAG_PING if ping else 0
    return b"\x00" + _SERVICE_HEADER.pack(SERVICE_TYPE_KEEP_ALIVE, flags, 0, 0, len(data)) + data


class KeepAlive:
    """One side's keep-alive timer and counter (§2.4), driven by the caller's clock.

    Answering pings does not need :meth:`enable`: every side must echo every PING, even one
    that never enabled keep-alive itself and even in the middle of the handshake.
    """

    def __init__(self, interval: float = 60.0, timeout: float = 30.0) -> None:
        # The C++ side only accepts these ranges; mirroring them keeps configs portable.
        if not 15.0 <= interval <= 300.0:
            raise ValueError("keep-alive interval must be 15..300 s")
        if not 5.0 <= timeout <= 60.0:
            raise ValueError("keep-alive timeout must be 5..60 s")
        self._interval = interval
        self._timeout = timeout
        self._counter = 0
        self._enabled = False
        self._next_ping = 0.0
        self._pong_due: float | None = None

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def counter(self) -> bytes:
        """The 4-byte counter the next (or outstanding) PING carries."""
        return self._counter.to_bytes(KEEP_ALIVE_COUNTER_SIZE, "big")

    def enable(self, now: float) -> None:
        """Start pinging: the first PING goes out ``interval`` after ``now``."""
        self._enabled = True
        self._counter = 0
        self._pong_due = None
        self._next_ping = now + self._interval

    @property
    def deadline(self) -> float | None:
        """When :meth:`on_timer` next has something to do, or ``None`` while disabled."""
        if not self._enabled:
            return None
        return self._pong_due if self._pong_due is not None else self._next_ping

    def on_timer(self, now: float) -> list[bytes]:
        """Emit a due PING, or raise ``TIMEOUT`` if the outstanding PONG is overdue."""
        if not self._enabled:
            return []
        if self._pong_due is not None:
            if now >= self._pong_due:
                raise AspiaProtocolError("no keep-alive pong within the timeout", ErrorCode.TIMEOUT)
            return []
        if now < self._next_ping:
            return []
        self._pong_due = now + self._timeout
        return [encode_keepalive(True, self.counter)]

    def defer_timeout(self, now: float) -> None:
        """We are not reading (our consumer is slow): an unread PONG is not a missing one."""
        if self._pong_due is not None:
            self._pong_due = max(self._pong_due, now + self._timeout)

    def on_frame(self, frame: KeepAliveFrame, now: float) -> list[bytes]:
        """Answer a PING, or check a PONG against the outstanding counter."""
        if frame.ping:
            return [encode_keepalive(False, frame.data)]
        # Stricter than C++ (which only compares data): a PONG we did not ask for is refused
        # even if it happens to carry the current counter, since no honest peer sends one.
        if self._pong_due is None or frame.data != self.counter:
            raise AspiaProtocolError("unexpected keep-alive pong")
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        self._pong_due = None
        self._next_ping = now + self._interval
        return []
