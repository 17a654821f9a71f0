"""The Aspia authentication handshake (spec §4) as two pure state machines.

:class:`ServerHandshake` and :class:`ClientHandshake` consume the payloads of handshake frames
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
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import Message

from natrelay.aspia import crypto, messages, srp
from natrelay.aspia.crypto import IV_SIZE, ChannelCipher, Cipher, RandomBytes, X25519KeyPair
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.messages import ASPIA_VERSION, M, Version, parse, serialize
from natrelay.aspia.proto import key_exchange_pb2

HANDSHAKE_TIMEOUT = 60.0
MAX_HANDSHAKE_MESSAGE = 64 * 1024
"""Cap on a single handshake payload. The largest honest one (an 8192-bit key exchange) is
about 2 KiB; refusing more before parsing keeps unauthenticated input cheap."""

USER_FLAG_ENABLED = 0x1
_KNOWN_CIPHERS = frozenset(int(c) for c in Cipher)


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
class UserRecord:
    """A stored SRP account as the server needs it (router DB row or host user)."""

    name: str
    group: str
    salt: bytes
    verifier: bytes
    sessions: int
    flags: int = USER_FLAG_ENABLED


UserLookup = Callable[[str], UserRecord | None]
"""Exact-match lookup by the name as received (the router is case-sensitive, §4.8)."""


def _no_users(_name: str) -> UserRecord | None:
    return None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What a server-side authenticator knows before any client connects."""

    private_key: bytes | None = None
    """32-byte X25519 static key; enables flows A and C. None for a Host (flow B only)."""
    seed_key: bytes = b""
    """Seed for fake verifiers; empty means 64 fresh random bytes per attempt (§4.8)."""
    anonymous_sessions: int = 0
    """Session types granted to anonymous clients; 0 disables anonymous access."""
    users: UserLookup = _no_users
    prefer_aes: bool = False
    version: Version = ASPIA_VERSION
    info: SessionInfo = field(default_factory=SessionInfo)
    timeout: float = HANDSHAKE_TIMEOUT

    def __post_init__(self) -> None:
        if self.private_key is not None and len(self.private_key) != crypto.X25519_KEY_SIZE:
            raise ValueError("server private key must be 32 bytes")
        if self.anonymous_sessions and self.private_key is None:
            raise ValueError("anonymous access requires a private key")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What the connecting side asks for and proves."""

    session_type: int
    identify: Identify = Identify.SRP
    username: str = ""
    password: bytes = b""
    server_public_key: bytes | None = None
    """The server's static X25519 key if known (flows A and C)."""
    encryption: int = Cipher.CHACHA20_POLY1305 | Cipher.AES256_GCM
    """Bitmask of ciphers offered in ClientHello."""
    version: Version = ASPIA_VERSION
    info: SessionInfo = field(default_factory=SessionInfo)
    timeout: float = HANDSHAKE_TIMEOUT

    def __post_init__(self) -> None:
        if self.session_type <= 0 or self.session_type & (self.session_type - 1):
            raise ValueError("session_type must have exactly one bit set")
        if not self.encryption & (Cipher.CHACHA20_POLY1305 | Cipher.AES256_GCM):
            raise ValueError("offer at least one known cipher")
        if self.server_public_key is not None and len(self.server_public_key) != crypto.X25519_KEY_SIZE:
            raise ValueError("server public key must be 32 bytes")
        if self.identify is Identify.ANONYMOUS and self.server_public_key is None:
            raise ValueError("anonymous login needs the server public key (else it is unencrypted)")
        if self.identify is Identify.SRP and not self.username:
            raise ValueError("SRP login needs a user name")


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


class _Step(enum.Enum):
    HELLO = "hello"
    IDENTIFY = "identify"
    KEY_EXCHANGE = "key_exchange"
    SESSION = "session"
    DONE = "done"
    FAILED = "failed"


def _session_info(m: key_exchange_pb2.SessionChallenge | key_exchange_pb2.SessionResponse) -> SessionInfo:
    return SessionInfo(m.os_name, m.computer_name, m.arch, m.cpu_cores, m.display_name)


def _srp_key(k0: bytes | None, premaster: int) -> bytes:
    """``K = H256([K0 ||] bytes(S))`` (§4.6)."""
    return crypto.h256((k0 or b"") + crypto.int_to_bytes(premaster))


def _check_iv(iv: bytes) -> bytes:
    # C++ creates the cipher with a wrong-length IV, fails silently and waits out the 60 s
    # timer (§12 bug 12); failing now gives the same outcome sooner.
    if len(iv) != IV_SIZE:
        raise AspiaProtocolError(f"IV of {len(iv)} bytes, expected {IV_SIZE}")
    return iv


class _Machine:
    """Shared plumbing: step tracking, the overall deadline, and the current cipher."""

    def __init__(self, timeout: float, now: float, random_bytes: RandomBytes) -> None:
        self._random = random_bytes
        self._step = _Step.HELLO
        self._cipher: ChannelCipher | None = None
        self.deadline = now + timeout
        self.result: HandshakeResult | None = None

    @property
    def done(self) -> bool:
        return self._step is _Step.DONE

    @property
    def cipher(self) -> ChannelCipher | None:
        """The cipher protecting the next handshake message, if one is installed yet."""
        return self._cipher

    def check_timeout(self, now: float) -> None:
        """Raise once the whole-handshake timer (60 s by default, §4.9) has run out."""
        if self._step not in (_Step.DONE, _Step.FAILED) and now >= self.deadline:
            self._step = _Step.FAILED
            raise AspiaProtocolError("authentication timed out", ErrorCode.TIMEOUT)

    def receive(self, message: bytes, now: float) -> list[bytes]:
        """Process one handshake payload; return the payloads to send, in order."""
        if self._step is _Step.DONE:
            raise AspiaProtocolError("handshake message after the handshake completed")
        if self._step is _Step.FAILED:
            raise AspiaProtocolError("handshake already failed")
        self.check_timeout(now)
        try:
            return self._dispatch(message)
        except AspiaProtocolError:
            self._step = _Step.FAILED
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


class ServerHandshake(_Machine):
    """The accepting side: Router toward everyone, Host toward Clients (flows A, B, C)."""

    def __init__(
        self, config: ServerConfig, now: float, random_bytes: RandomBytes = crypto.default_random
    ) -> None:
        super().__init__(config.timeout, now, random_bytes)
        self._config = config
        self._key_pair = (
            X25519KeyPair.from_private_bytes(config.private_key) if config.private_key is not None else None
        )
        self._iv_s1 = random_bytes(IV_SIZE)
        self._chosen = Cipher.CHACHA20_POLY1305
        self._k0: bytes | None = None
        self._hello_version: Version | None = None
        self._identify = Identify.SRP
        self._user_name = ""
        self._allowed = 0
        self._group: srp.SrpGroup | None = None
        self._verifier = 0
        self._b = 0
        self._b_public = 0
        self._iv_s2 = b""

    def _dispatch(self, message: bytes) -> list[bytes]:
        if self._step is _Step.HELLO:
            return self._on_client_hello(message)
        if self._step is _Step.IDENTIFY:
            return self._on_identify(message)
        if self._step is _Step.KEY_EXCHANGE:
            return self._on_client_key_exchange(message)
        return self._on_session_response(message)

    def _choose_cipher(self, offered: int) -> Cipher:
        chacha = bool(offered & Cipher.CHACHA20_POLY1305)
        aes = bool(offered & Cipher.AES256_GCM)
        if aes and (self._config.prefer_aes or not chacha):
            return Cipher.AES256_GCM
        if chacha:
            return Cipher.CHACHA20_POLY1305
        raise AspiaProtocolError(f"client offers no known cipher (mask {offered:#x})")

    def _on_client_hello(self, payload: bytes) -> list[bytes]:
        hello = self._open(key_exchange_pb2.ClientHello, payload)
        self._hello_version = messages.hello_version(hello)
        self._chosen = self._choose_cipher(hello.encryption)
        if hello.identify not in (key_exchange_pb2.IDENTIFY_SRP, key_exchange_pb2.IDENTIFY_ANONYMOUS):
            raise AspiaProtocolError(f"unknown identify method {hello.identify}")
        self._identify = Identify(hello.identify)
        iv_c1 = b""
        if self._key_pair is not None:
            if bool(hello.public_key) != bool(hello.iv):
                raise AspiaProtocolError("ClientHello carries only one of public_key and iv")
            if hello.public_key:
                iv_c1 = _check_iv(hello.iv)
                self._k0 = self._key_pair.derive_key(hello.public_key)
        if self._identify is Identify.ANONYMOUS:
            if not self._config.anonymous_sessions:
                raise AspiaProtocolError("anonymous access is disabled", ErrorCode.ACCESS_DENIED)
            if self._k0 is None:
                raise AspiaProtocolError("anonymous login without the X25519 layer (would be unencrypted)")
        reply = key_exchange_pb2.ServerHello(
            encryption=key_exchange_pb2.Encryption.ValueType(self._chosen),
            version=self._config.version.to_proto(),
        )
        if self._k0 is not None:
            reply.iv = self._iv_s1
        out = [self._seal(reply)]
        if self._k0 is not None:
            # Installed once ServerHello is written; everything after it uses K0 (§4.6).
            self._cipher = ChannelCipher(self._chosen, self._k0, self._iv_s1, iv_c1)
        if self._identify is Identify.ANONYMOUS:
            self._allowed = self._config.anonymous_sessions
            out.append(self._challenge())
            self._step = _Step.SESSION
        else:
            self._step = _Step.IDENTIFY
        return out

    def _on_identify(self, payload: bytes) -> list[bytes]:
        identify = self._open(key_exchange_pb2.SrpIdentify, payload)
        name = identify.username
        if not name:
            raise AspiaProtocolError("empty user name")
        self._user_name = name
        record = self._config.users(name)
        if (
            record is not None
            and record.flags & USER_FLAG_ENABLED
            and record.group in srp.GROUPS
            and crypto.strip_leading_zeros(record.salt)
            and record.verifier
        ):
            group = srp.GROUPS[record.group]
            salt = crypto.strip_leading_zeros(record.salt)
            verifier = record.verifier
            self._allowed = record.sessions
        else:
            # Unknown, disabled or broken account: carry on with a deterministic fake so the
            # client only ever sees "wrong password" (§4.8).
            seed = self._config.seed_key or self._random(64)
            group, salt, verifier = srp.fake_user(seed, name)
            self._allowed = 0
        self._group = group
        self._verifier = crypto.bytes_to_int(verifier)
        self._b = crypto.bytes_to_int(self._random(srp.SECRET_SIZE))
        k = srp.compute_k(group, srp.h512_digest)
        self._b_public = srp.compute_b_public(group, k, self._verifier, self._b)
        self._iv_s2 = self._random(IV_SIZE)
        reply = key_exchange_pb2.SrpServerKeyExchange(
            number=group.n_bytes,
            generator=group.g_bytes,
            salt=salt,
            B=crypto.int_to_bytes(self._b_public),
            iv=self._iv_s2,
        )
        self._step = _Step.KEY_EXCHANGE
        return [self._seal(reply)]

    def _on_client_key_exchange(self, payload: bytes) -> list[bytes]:
        exchange = self._open(key_exchange_pb2.SrpClientKeyExchange, payload)
        if not exchange.A or not exchange.iv:
            raise AspiaProtocolError("SrpClientKeyExchange lacks A or iv")
        iv_c2 = _check_iv(exchange.iv)
        group = self._group
        assert group is not None  # set together with the step
        a_bytes = crypto.strip_leading_zeros(exchange.A)
        if len(a_bytes) > group.size:  # bounded before the integer conversion
            raise AspiaProtocolError("SRP A not below N", ErrorCode.UNKNOWN_ERROR)
        a_public = crypto.bytes_to_int(a_bytes)
        srp.check_public_value(group, a_public, ErrorCode.UNKNOWN_ERROR)
        u = srp.compute_u(group, a_public, self._b_public, srp.h512_digest)
        premaster = srp.server_premaster(group, a_public, self._verifier, u, self._b)
        self._cipher = ChannelCipher(self._chosen, _srp_key(self._k0, premaster), self._iv_s2, iv_c2)
        self._step = _Step.SESSION
        return [self._challenge()]

    def _challenge(self) -> bytes:
        info = self._config.info
        challenge = key_exchange_pb2.SessionChallenge(
            version=self._config.version.to_proto(),
            session_types=self._allowed,
            cpu_cores=info.cpu_cores,
            os_name=info.os_name,
            computer_name=info.computer_name,
            arch=info.arch,
            display_name=info.display_name,
        )
        return self._seal(challenge)

    def _on_session_response(self, payload: bytes) -> list[bytes]:
        response = self._open(key_exchange_pb2.SessionResponse, payload)
        version = self._hello_version if self._hello_version is not None else messages.late_version(response)
        requested = response.session_type
        if requested == 0 or requested & (requested - 1):
            raise AspiaProtocolError(f"session_type {requested:#x} must have exactly one bit set")
        if not requested & self._allowed:
            raise AspiaProtocolError(f"session type {requested} not allowed", ErrorCode.SESSION_DENIED)
        assert self._cipher is not None  # every accepted flow has installed a key by now
        self.result = HandshakeResult(
            cipher=self._cipher,
            peer_version=version,
            session_type=requested,
            allowed_sessions=self._allowed,
            identify=self._identify,
            user_name=self._user_name,
            peer_info=_session_info(response),
            channel_ids=version >= messages.MIN_VERSION_WITH_CHANNEL_IDS,
        )
        self._step = _Step.DONE
        return []


class ClientHandshake(_Machine):
    """The connecting side: Relay/Host/Client/Admin toward the Router, Client toward a Host."""

    def __init__(
        self, config: ClientConfig, now: float, random_bytes: RandomBytes = crypto.default_random
    ) -> None:
        super().__init__(config.timeout, now, random_bytes)
        self._config = config
        self._started = False
        self._k0: bytes | None = None
        self._iv_c1 = b""
        self._chosen = Cipher.CHACHA20_POLY1305
        self._hello_version: Version | None = None

    def start(self) -> list[bytes]:
        """The ClientHello that opens every flow; call exactly once, before ``receive``."""
        if self._started:
            raise RuntimeError("handshake already started")
        self._started = True
        config = self._config
        hello = key_exchange_pb2.ClientHello(
            encryption=config.encryption,
            identify=key_exchange_pb2.Identify.ValueType(config.identify),
            version=config.version.to_proto(),
        )
        if config.server_public_key is not None:
            ephemeral = X25519KeyPair.generate(self._random)
            self._iv_c1 = self._random(IV_SIZE)
            self._k0 = ephemeral.derive_key(config.server_public_key)
            hello.public_key = ephemeral.public_bytes
            hello.iv = self._iv_c1
        return [serialize(hello)]

    def _dispatch(self, message: bytes) -> list[bytes]:
        if not self._started:
            raise AspiaProtocolError("data from the server before ClientHello was sent")
        if self._step is _Step.HELLO:
            return self._on_server_hello(message)
        if self._step is _Step.KEY_EXCHANGE:
            return self._on_server_key_exchange(message)
        return self._on_challenge(message)

    def _on_server_hello(self, payload: bytes) -> list[bytes]:
        hello = self._open(key_exchange_pb2.ServerHello, payload)
        self._hello_version = messages.hello_version(hello)
        if int(hello.encryption) not in _KNOWN_CIPHERS:
            raise AspiaProtocolError(f"server chose unknown cipher {hello.encryption}")
        self._chosen = Cipher(hello.encryption)
        if bool(hello.iv) != (self._k0 is not None):
            raise AspiaProtocolError("ServerHello iv does not match whether we sent a public key")
        if self._k0 is not None:
            self._cipher = ChannelCipher(self._chosen, self._k0, self._iv_c1, _check_iv(hello.iv))
        if self._config.identify is Identify.ANONYMOUS:
            self._step = _Step.SESSION
            return []
        self._step = _Step.KEY_EXCHANGE
        return [self._seal(key_exchange_pb2.SrpIdentify(username=self._config.username))]

    def _on_server_key_exchange(self, payload: bytes) -> list[bytes]:
        exchange = self._open(key_exchange_pb2.SrpServerKeyExchange, payload)
        if not exchange.salt or not exchange.B:
            raise AspiaProtocolError("SrpServerKeyExchange lacks salt or B")
        iv_s2 = _check_iv(exchange.iv)
        group = srp.client_group(exchange.number, exchange.generator)
        b_bytes = crypto.strip_leading_zeros(exchange.B)
        if len(b_bytes) > group.size:
            raise AspiaProtocolError("SRP B not below N")
        b_public = crypto.bytes_to_int(b_bytes)
        srp.check_public_value(group, b_public, ErrorCode.PROTOCOL_ERROR)
        a = crypto.bytes_to_int(self._random(srp.SECRET_SIZE))
        a_public = srp.compute_a_public(group, a)
        x = srp.aspia_x(exchange.salt, self._config.username, self._config.password)
        k = srp.compute_k(group, srp.h512_digest)
        u = srp.compute_u(group, a_public, b_public, srp.h512_digest)
        premaster = srp.client_premaster(group, k, b_public, x, a, u)
        iv_c2 = self._random(IV_SIZE)
        out = self._seal(key_exchange_pb2.SrpClientKeyExchange(A=crypto.int_to_bytes(a_public), iv=iv_c2))
        # Switch only after the exchange went out under the old key (§4.6).
        self._cipher = ChannelCipher(self._chosen, _srp_key(self._k0, premaster), iv_c2, iv_s2)
        self._step = _Step.SESSION
        return [out]

    def _on_challenge(self, payload: bytes) -> list[bytes]:
        # A wrong password (or a fake user) surfaces here as DecryptionError / ACCESS_DENIED.
        challenge = self._open(key_exchange_pb2.SessionChallenge, payload)
        version = self._hello_version if self._hello_version is not None else messages.late_version(challenge)
        config = self._config
        if not challenge.session_types & config.session_type:
            raise AspiaProtocolError("server does not allow the requested session", ErrorCode.SESSION_DENIED)
        info = config.info
        response = key_exchange_pb2.SessionResponse(
            version=config.version.to_proto(),
            session_type=config.session_type,
            cpu_cores=info.cpu_cores,
            os_name=info.os_name,
            computer_name=info.computer_name,
            arch=info.arch,
            display_name=info.display_name,
        )
        out = self._seal(response)
        assert self._cipher is not None  # SRP and anonymous flows both install a key first
        self.result = HandshakeResult(
            cipher=self._cipher,
            peer_version=version,
            session_type=config.session_type,
            allowed_sessions=challenge.session_types,
            identify=config.identify,
            user_name=config.username if config.identify is Identify.SRP else "",
            peer_info=_session_info(challenge),
            channel_ids=version >= messages.MIN_VERSION_WITH_CHANNEL_IDS,
        )
        self._step = _Step.DONE
        return [out]

