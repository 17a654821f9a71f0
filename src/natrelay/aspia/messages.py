"""Bounded protobuf (de)serialisation for Aspia messages and the §5 envelopes.

The envelopes (``RelayToRouter``, ``PeerToRouter``, ...) are plain messages with several
optional submessages rather than oneofs; receivers handle the first present field in a fixed
order (§5.6). The order tuples below let every session type dispatch the way its C++
counterpart does. The relay's first message (§7.3, §8.3) is the one place that does not use
varint framing, so its 4-byte length prefix is handled here too.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from natrelay.aspia.crypto import IV_SIZE, X25519_KEY_SIZE, RandomBytes, default_random, seal_relay_secret
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.framing import MAX_MESSAGE_SIZE
from natrelay.aspia.proto import common_pb2, key_exchange_pb2, relay_peer_pb2, router_common_pb2

M = TypeVar("M", bound=Message)

MAX_PEER_TO_RELAY_SIZE = 1024 * 1024
"""Largest ``PeerToRelay`` body a relay accepts (§7.3)."""

_BE_U32 = struct.Struct(">I")

# Receiver priority orders: the first present field wins, later ones are ignored (§5.6).
ROUTER_FROM_HOST: tuple[str, ...] = ("host_id_request", "reset_host_id")
ROUTER_FROM_CLIENT: tuple[str, ...] = ("connection_request", "check_host_status")
# key_withdraw and keys_withdrawn are natrelay's (relays registered with several routers of a cluster).
ROUTER_FROM_RELAY: tuple[str, ...] = ("key_pool", "relay_stat", "key_withdraw")
ROUTER_FROM_ADMIN: tuple[str, ...] = (
    "session_list_request",
    "session_request",
    "user_list_request",
    "user_request",
    "peer_connection_request",
)
RELAY_FROM_ROUTER: tuple[str, ...] = ("key_used", "peer_connection_request", "keys_withdrawn")
HOST_FROM_ROUTER: tuple[str, ...] = ("host_id_response", "connection_offer")
CLIENT_FROM_ROUTER: tuple[str, ...] = ("connection_offer", "host_status")


def parse(message_type: type[M], data: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> M:
    """Parse ``data`` as ``message_type``; any failure is an :class:`AspiaProtocolError`.

    The size is checked before protobuf sees the bytes, so a caller that skipped framing
    limits still cannot make the parser allocate for an unbounded input.
    """
    if len(data) > max_size:
        raise AspiaProtocolError(f"{message_type.__name__} of {len(data)} bytes exceeds {max_size}")
    message = message_type()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:  # upb raises DecodeError; be defensive
        raise AspiaProtocolError(f"malformed {message_type.__name__}: {exc}") from None
    return message


def serialize(message: Message) -> bytes:
    """Serialise a message that is about to be framed; refuses an empty result.

    A message whose fields are all default encodes to zero bytes, and a zero-size frame is a
    service frame on the wire (§2.1), so sending one would be misread by the peer.
    """
    data = message.SerializeToString()
    if not data:
        raise ValueError(f"{type(message).__name__} has only default fields and cannot be sent")
    return data


def first_present(envelope: Message, order: Sequence[str]) -> tuple[str, Message] | None:
    """The first field of ``order`` that is present in ``envelope``, with its submessage."""
    for name in order:
        if envelope.HasField(name):
            sub: Message = getattr(envelope, name)
            return name, sub
    return None


def make_envelope(envelope_type: type[M], field: str, body: Message) -> M:
    """An envelope with exactly ``field`` set to ``body``, present even when ``body`` is empty.

    ``RouterToRelay{key_used{key_id: 0}}`` must go out as ``0a 00``: plain ``CopyFrom`` of a
    default submessage would leave the field absent and the envelope empty.
    """
    envelope = envelope_type()
    sub: Message = getattr(envelope, field)
    sub.SetInParent()
    sub.MergeFrom(body)
    return envelope


@dataclass(frozen=True, order=True, slots=True)
class Version:
    """A peer version; comparison is component-wise with missing parts as 0 (§4.4)."""

    major: int
    minor: int
    patch: int = 0
    revision: int = 0

    @classmethod
    def from_proto(cls, message: common_pb2.Version) -> Version:
        return cls(message.major, message.minor, message.patch, message.revision)

    def to_proto(self) -> common_pb2.Version:
        return common_pb2.Version(
            major=self.major, minor=self.minor, patch=self.patch, revision=self.revision
        )

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}.{self.revision}"


ASPIA_VERSION = Version(2, 7, 0, 4866)
"""The version we announce: that of the 2.7.0 tag the spec was verified against."""
MIN_VERSION_WITH_HELLO_VERSION = Version(2, 7, 0)
MIN_SUPPORTED_VERSION = Version(2, 3, 0)
MIN_VERSION_WITH_CHANNEL_IDS = Version(2, 6, 0)


def hello_version(message: key_exchange_pb2.ClientHello | key_exchange_pb2.ServerHello) -> Version | None:
    """The Hello's version, or None for a pre-2.7.0 peer (§4.4).

    Only 2.7.0 and later put a version in the Hello, so a lower one there is a protocol error.
    """
    if not message.HasField("version"):
        return None
    version = Version.from_proto(message.version)
    if version < MIN_VERSION_WITH_HELLO_VERSION:
        raise AspiaProtocolError(f"Hello carries version {version}, below 2.7.0")
    return version


def late_version(message: key_exchange_pb2.SessionChallenge | key_exchange_pb2.SessionResponse) -> Version:
    """The version of a peer whose Hello had none, which must then be 2.3.0 up to 2.7.0 (§4.4)."""
    version = Version.from_proto(message.version) if message.HasField("version") else Version(0, 0)
    if version >= MIN_VERSION_WITH_HELLO_VERSION:
        raise AspiaProtocolError(f"version {version} should have been sent in the Hello")
    if version < MIN_SUPPORTED_VERSION:
        raise AspiaProtocolError(f"peer version {version} is too old", ErrorCode.VERSION_ERROR)
    return version


def check_relay_credentials(credentials: router_common_pb2.RelayCredentials) -> None:
    """Refuse offers a C++ peer would refuse before contacting a relay (§8.3 step 1)."""
    key = credentials.key
    if key.type != router_common_pb2.RelayKey.TYPE_X25519:
        raise AspiaProtocolError("relay key is not X25519")
    if key.encryption != router_common_pb2.RelayKey.ENCRYPTION_CHACHA20_POLY1305:
        raise AspiaProtocolError("relay key cipher is not ChaCha20-Poly1305")
    if len(key.public_key) != X25519_KEY_SIZE or len(key.iv) != IV_SIZE:
        raise AspiaProtocolError("relay key has a malformed public key or IV")
    if not credentials.secret:
        raise AspiaProtocolError("relay credentials carry no secret")


def encode_peer_to_relay(message: relay_peer_pb2.PeerToRelay) -> bytes:
    """The relay's first message: 4-byte big-endian length, then the protobuf (§8.3 step 4)."""
    body = serialize(message)
    if len(body) > MAX_PEER_TO_RELAY_SIZE:
        raise ValueError("PeerToRelay exceeds 1 MiB")
    return _BE_U32.pack(len(body)) + body


def build_peer_to_relay(
    credentials: router_common_pb2.RelayCredentials, random_bytes: RandomBytes = default_random
) -> bytes:
    """Everything a peer writes to a relay before the channel starts (§8.3 steps 1-4)."""
    check_relay_credentials(credentials)
    key = credentials.key
    public, data = seal_relay_secret(key.public_key, key.iv, credentials.secret, random_bytes)
    return encode_peer_to_relay(relay_peer_pb2.PeerToRelay(key_id=key.key_id, public_key=public, data=data))


class PeerToRelayReader:
    """The relay's side of the first message, without ever consuming past it (§7.3).

    ``wanted`` says exactly how many more bytes complete the message, so a stream shell can
    read precisely that much; if it hands over more anyway, the excess is kept in
    ``leftover`` and must be forwarded to the partner once the pair is formed.
    """

    def __init__(self, max_size: int = MAX_PEER_TO_RELAY_SIZE) -> None:
        self._max = max_size
        self._buf = bytearray()
        self._length: int | None = None
        self.message: relay_peer_pb2.PeerToRelay | None = None
        self.leftover = b""

    @property
    def wanted(self) -> int:
        """Bytes still needed; 0 once the message is complete."""
        if self.message is not None:
            return 0
        if self._length is None:
            return _BE_U32.size - len(self._buf)
        return _BE_U32.size + self._length - len(self._buf)

    def feed(self, data: bytes) -> relay_peer_pb2.PeerToRelay | None:
        """Consume ``data``; return the message once complete (then only once)."""
        if self.message is not None:
            self.leftover += data
            return None
        take = min(len(data), self.wanted)
        self._buf += data[:take]
        rest = data[take:]
        if self._length is None and len(self._buf) >= _BE_U32.size:
            (length,) = _BE_U32.unpack_from(self._buf)
            if not 0 < length <= self._max:
                raise AspiaProtocolError(f"PeerToRelay length {length} out of range")
            self._length = length
            take = min(len(rest), self.wanted)
            self._buf += rest[:take]
            rest = rest[take:]
        if self._length is None or self.wanted:
            return None
        self.message = parse(relay_peer_pb2.PeerToRelay, bytes(self._buf[_BE_U32.size :]), max_size=self._max)
        self._buf = bytearray()
        self.leftover = bytes(rest)
        return self.message
