"""The accepting side of the Aspia handshake (spec §4): Router toward everyone, Host toward Clients.

A sans-IO state machine over handshake payloads, built on
:class:`natrelay.aspia.handshake.HandshakeMachine` (see that module for the contract both
sides keep). The server side also owns what it must know before a client connects: its
:class:`ServerConfig` and the stored SRP accounts (:class:`UserRecord`) it looks names up in.
It never picks a cipher the client did not offer (§12 bug 21), refuses anonymous logins without
the X25519 layer (§12 bug 11), and answers an unknown or disabled user with a deterministic fake
verifier, so a client only ever learns "wrong password" (§4.8).
"""

from __future__ import annotations

from collections.abc import Callable
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
from natrelay.aspia.messages import ASPIA_VERSION, Version
from natrelay.aspia.proto import key_exchange_pb2

USER_FLAG_ENABLED = 0x1


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


class ServerHandshake(HandshakeMachine):
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
        if self._step is Step.HELLO:
            return self._on_client_hello(message)
        if self._step is Step.IDENTIFY:
            return self._on_identify(message)
        if self._step is Step.KEY_EXCHANGE:
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
                iv_c1 = check_iv(hello.iv)
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
            self._step = Step.SESSION
        else:
            self._step = Step.IDENTIFY
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
        self._step = Step.KEY_EXCHANGE
        return [self._seal(reply)]

    def _on_client_key_exchange(self, payload: bytes) -> list[bytes]:
        exchange = self._open(key_exchange_pb2.SrpClientKeyExchange, payload)
        if not exchange.A or not exchange.iv:
            raise AspiaProtocolError("SrpClientKeyExchange lacks A or iv")
        iv_c2 = check_iv(exchange.iv)
        group = self._group
        assert group is not None  # set together with the step
        a_bytes = crypto.strip_leading_zeros(exchange.A)
        if len(a_bytes) > group.size:  # bounded before the integer conversion
            raise AspiaProtocolError("SRP A not below N", ErrorCode.UNKNOWN_ERROR)
        a_public = crypto.bytes_to_int(a_bytes)
        srp.check_public_value(group, a_public, ErrorCode.UNKNOWN_ERROR)
        u = srp.compute_u(group, a_public, self._b_public, srp.h512_digest)
        premaster = srp.server_premaster(group, a_public, self._verifier, u, self._b)
        self._cipher = ChannelCipher(self._chosen, srp_key(self._k0, premaster), self._iv_s2, iv_c2)
        self._step = Step.SESSION
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
            peer_info=session_info_of(response),
            channel_ids=version >= messages.MIN_VERSION_WITH_CHANNEL_IDS,
        )
        self._step = Step.DONE
        return []
