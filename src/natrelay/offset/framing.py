"""Length framing and the version prefix of an Offset relay link (spec §3).

A frame is an 8-byte big-endian length followed by that many bytes. The original trusts the
64-bit length (spec §12.2 item 1); here every length is checked against a cap before a single
byte of its body is buffered, so a peer cannot make us hold more than ``max_frame`` + one read.
"""

from __future__ import annotations

from .constants import DEFAULT_MAX_FRAME, PROTOCOL_VERSION
from .errors import ProtocolError

HEADER_LEN = 8
VERSION_PAYLOAD = PROTOCOL_VERSION.to_bytes(4, "big")


def frame_header(length: int) -> bytes:
    """The 8-byte big-endian length, so callers can ``writelines([header, payload])`` without a copy."""
    return length.to_bytes(HEADER_LEN, "big")


def encode_frame(payload: bytes) -> bytes:
    return frame_header(len(payload)) + payload


VERSION_FRAME: bytes = encode_frame(VERSION_PAYLOAD)


def check_version(payload: bytes) -> None:
    """The first frame of each direction must be exactly our 4-byte version (spec §3.2)."""
    if len(payload) != len(VERSION_PAYLOAD):
        raise ProtocolError(f"version frame of {len(payload)} bytes, expected {len(VERSION_PAYLOAD)}")
    if payload != VERSION_PAYLOAD:
        raise ProtocolError(f"protocol version {int.from_bytes(payload, 'big')}, expected {PROTOCOL_VERSION}")


class FrameDecoder:
    """Splits a byte stream into frame payloads.

    Bytes are appended to one bytearray and consumed from the front (CPython trims a bytearray's
    head in O(1)), so a large frame arriving in many small reads costs O(n), not O(n^2). When the
    buffer is empty and a read holds whole frames, they are sliced straight out of the read.
    """

    # No instance dict: a relay keeps one per link, two links per idle tunnel (about 290 bytes each).
    __slots__ = ("_buf", "_max_frame", "_need")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max_frame = max_frame
        self._buf = bytearray()
        self._need = -1  # body length of the frame whose header is consumed, or -1 between frames

    @property
    def buffered(self) -> int:
        """Bytes held, for memory accounting."""
        return len(self._buf)

    def _check_length(self, length: int) -> int:
        if length > self._max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds the {self._max_frame}-byte limit")
        return length

    def feed(self, data: bytes) -> list[bytes]:
        """Returns the payloads completed by ``data``; raises ProtocolError on an oversized length."""
        buf = self._buf
        if buf or self._need >= 0:
            frames: list[bytes] = []
            buf += data
        else:
            # A read that is exactly one frame (a round trip's message) needs no loop.
            if len(data) >= HEADER_LEN:
                length = int.from_bytes(data[:HEADER_LEN], "big")
                if length == len(data) - HEADER_LEN and length <= self._max_frame:
                    return [bytes(data[HEADER_LEN:])]
            frames = []
            consumed = self._take_direct(data, frames)
            if consumed == len(data):
                return frames
            with memoryview(data) as view:
                buf += view[consumed:]
        pos = 0
        end = len(buf)
        while True:
            if self._need < 0:
                if end - pos < HEADER_LEN:
                    break
                self._need = self._check_length(int.from_bytes(buf[pos : pos + HEADER_LEN], "big"))
                pos += HEADER_LEN
            if end - pos < self._need:
                break
            with memoryview(buf) as view:
                frames.append(bytes(view[pos : pos + self._need]))
            pos += self._need
            self._need = -1
        del buf[:pos]
        return frames

    def _take_direct(self, data: bytes, frames: list[bytes]) -> int:
        """Slices whole frames out of ``data`` (empty buffer only); returns how many bytes it consumed."""
        pos = 0
        end = len(data)
        while end - pos >= HEADER_LEN:
            length = self._check_length(int.from_bytes(data[pos : pos + HEADER_LEN], "big"))
            if end - pos - HEADER_LEN < length:
                break
            pos += HEADER_LEN
            frames.append(bytes(data[pos : pos + length]))
            pos += length
        return pos
