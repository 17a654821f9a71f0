"""The connecting side of the Aspia handshake (spec §4): anyone toward the Router, a Client to a Host.

A sans-IO state machine over handshake payloads, built on
:class:`natrelay.aspia.handshake.HandshakeMachine` (see that module for the contract both
sides keep): :meth:`ClientHandshake.start` gives the ClientHello, then each server message is
answered. :class:`ClientConfig` refuses, before anything is sent, an anonymous login without the
server's public key (it would run unencrypted, §12 bug 11).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from natrelay.aspia import crypto, messages, srp
from natrelay.aspia.crypto import IV_SIZE, ChannelCipher, Cipher, RandomBytes, X25519KeyPair
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.handshake import (
    HANDSHAKE_TIMEOUT,
    HandshakeMachine,
    HandshakeResult,
    Identify,
    SessionInfo,
    Step,
    check_iv,
    session_info_of,
    srp_key,
)
from natrelay.aspia.messages import ASPIA_VERSION, Version, serialize
from natrelay.aspia.proto import key_exchange_pb2

_KNOWN_CIPHERS = frozenset(int(c) for c in Cipher)


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


class ClientHandshake(HandshakeMachine):
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
        if self._step is Step.HELLO:
            return self._on_server_hello(message)
        if self._step is Step.KEY_EXCHANGE:
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
            self._cipher = ChannelCipher(self._chosen, self._k0, self._iv_c1, check_iv(hello.iv))
        if self._config.identify is Identify.ANONYMOUS:
            self._step = Step.SESSION
            return []
        self._step = Step.KEY_EXCHANGE
        return [self._seal(key_exchange_pb2.SrpIdentify(username=self._config.username))]

    def _on_server_key_exchange(self, payload: bytes) -> list[bytes]:
        exchange = self._open(key_exchange_pb2.SrpServerKeyExchange, payload)
        if not exchange.salt or not exchange.B:
            raise AspiaProtocolError("SrpServerKeyExchange lacks salt or B")
        iv_s2 = check_iv(exchange.iv)
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
        self._cipher = ChannelCipher(self._chosen, srp_key(self._k0, premaster), iv_c2, iv_s2)
        self._step = Step.SESSION
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
            peer_info=session_info_of(challenge),
            channel_ids=version >= messages.MIN_VERSION_WITH_CHANNEL_IDS,
        )
        self._step = Step.DONE
        return [out]
