"""The Aspia authentication handshake (spec §4) as two pure state machines: what both share.

Both sides (``ServerHandshake``, ``ClientHandshake``) consume the payloads of handshake frames
(user-data frames, never channel-tagged) and return the payloads to send back, already
encrypted where the flow requires it. Framing and keep-alive stay with the caller. Keys are
installed *inside* ``receive``, before it returns, so a frame that arrived in the same TCP read
as the previous one is decrypted with the right key (§4.3 "back-to-back messages").

On success ``result`` carries the running :class:`ChannelCipher` (its counters continue into
the session), the peer's version and whether channel IDs are now on. Any failure raises
:class:`AspiaProtocolError` with the C++ authenticator's error code and leaves the machine
failed; the caller closes the connection without telling the peer anything (§4.9).

Deviations from v2.7.0 on purpose (spec §12): a wrong-length IV or ``B ≡ 0 mod N`` fails at once
instead of stalling (bug 12); the server never picks a cipher the client did not offer (bug 21);
anonymous logins without the X25519 layer are refused instead of running unencrypted (bug 11);
tag-short ciphertext is an authentication failure (bug 7, in :mod:`crypto`).

The sides live in :mod:`natrelay.aspia.handshake_server` and :mod:`natrelay.aspia.handshake_client`,
one module each: no connection runs both, and each side's flows read best without the other's
in between. This module holds
what they share: :class:`HandshakeMachine` (steps, the overall deadline, the size cap, opening
and sealing under the current key), the result, and the key and IV rules of §4.6.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf.message import Message

from natrelay.aspia import crypto
from natrelay.aspia.crypto import IV_SIZE, ChannelCipher, RandomBytes
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.messages import M, Version, parse, serialize
from natrelay.aspia.proto import key_exchange_pb2

HANDSHAKE_TIMEOUT = 60.0
MAX_HANDSHAKE_MESSAGE = 64 * 1024
"""Cap on a single handshake payload. The largest honest one (an 8192-bit key exchange) is
about 2 KiB; refusing more before parsing keeps unauthenticated input cheap."""


class Identify(enum.IntEnum):
    """``proto.Identify``: how the client authenticates."""

    SRP = 0
    ANONYMOUS = 1


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """The informational fields of SessionChallenge/SessionResponse (shown in admin lists)."""

    os_name: str = ""
    computer_name: str = ""
    arch: str = ""
    cpu_cores: int = 0
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """What both sides know once authentication succeeded."""

    cipher: ChannelCipher
    """The channel cipher with its counters already advanced past the handshake."""
    peer_version: Version
    session_type: int
    """The single session type the client requested (and the server granted)."""
    allowed_sessions: int
    """The set the server offered in SessionChallenge."""
    identify: Identify
    user_name: str
    peer_info: SessionInfo
    channel_ids: bool
    """Whether frames from now on carry the 2-byte channel header (peer ≥ 2.6.0, §2.3)."""


class Step(enum.Enum):
    """Where a machine is: the next message it expects, or its end."""

    HELLO = "hello"
    IDENTIFY = "identify"
    KEY_EXCHANGE = "key_exchange"
    SESSION = "session"
    DONE = "done"
    FAILED = "failed"


def session_info_of(m: key_exchange_pb2.SessionChallenge | key_exchange_pb2.SessionResponse) -> SessionInfo:
    return SessionInfo(m.os_name, m.computer_name, m.arch, m.cpu_cores, m.display_name)


def srp_key(k0: bytes | None, premaster: int) -> bytes:
    """``K = H256([K0 ||] bytes(S))`` (§4.6)."""
    return crypto.h256((k0 or b"") + crypto.int_to_bytes(premaster))


def check_iv(iv: bytes) -> bytes:
    """``iv`` if it has the cipher's IV size, else the handshake fails."""
    # C++ creates the cipher with a wrong-length IV, fails silently and waits out the 60 s
    # timer (§12 bug 12); failing now gives the same outcome sooner.
    if len(iv) != IV_SIZE:
        raise AspiaProtocolError(f"IV of {len(iv)} bytes, expected {IV_SIZE}")
    return iv


class HandshakeMachine:
    """Shared plumbing: step tracking, the overall deadline, and the current cipher."""

    def __init__(self, timeout: float, now: float, random_bytes: RandomBytes) -> None:
        self._random = random_bytes
        self._step = Step.HELLO
        self._cipher: ChannelCipher | None = None
        self.deadline = now + timeout
        self.result: HandshakeResult | None = None

    @property
    def done(self) -> bool:
        return self._step is Step.DONE

    @property
    def cipher(self) -> ChannelCipher | None:
        """The cipher protecting the next handshake message, if one is installed yet."""
        return self._cipher

    def check_timeout(self, now: float) -> None:
        """Raise once the whole-handshake timer (60 s by default, §4.9) has run out."""
        if self._step not in (Step.DONE, Step.FAILED) and now >= self.deadline:
            self._step = Step.FAILED
            raise AspiaProtocolError("authentication timed out", ErrorCode.TIMEOUT)

    def receive(self, message: bytes, now: float) -> list[bytes]:
        """Process one handshake payload; return the payloads to send, in order."""
        if self._step is Step.DONE:
            raise AspiaProtocolError("handshake message after the handshake completed")
        if self._step is Step.FAILED:
            raise AspiaProtocolError("handshake already failed")
        self.check_timeout(now)
        try:
            return self._dispatch(message)
        except AspiaProtocolError:
            self._step = Step.FAILED
            raise

    def _dispatch(self, message: bytes) -> list[bytes]:
        raise NotImplementedError

    def _open(self, message_type: type[M], payload: bytes) -> M:
        if len(payload) > MAX_HANDSHAKE_MESSAGE:
            raise AspiaProtocolError("handshake message too large")
        if not payload:
            raise AspiaProtocolError("empty handshake message")
        if self._cipher is not None:
            payload = self._cipher.decrypt(payload)
        return parse(message_type, payload)

    def _seal(self, message: Message) -> bytes:
        data = serialize(message)
        return self._cipher.encrypt(data) if self._cipher is not None else data
