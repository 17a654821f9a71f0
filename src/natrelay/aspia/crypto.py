"""Aspia's cryptographic building blocks (spec §3, §8.3), all on top of ``cryptography``.

Hashes, X25519 key agreement, the channel AEAD with its tag-first layout and big-endian nonce
counters, and the stripped big-endian integer encoding. Randomness is always injected as a
``random_bytes(n)`` callable so handshakes can be replayed against fixed test vectors.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from natrelay.aspia.errors import AspiaProtocolError, DecryptionError

RandomBytes = Callable[[int], bytes]
"""Source of randomness: returns exactly ``n`` random bytes (``os.urandom`` in production)."""

KEY_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
X25519_KEY_SIZE = 32
_NONCE_MASK = (1 << (8 * IV_SIZE)) - 1


def default_random(n: int) -> bytes:
    """Operating-system randomness; a named function so it can be a dataclass default."""
    return os.urandom(n)


def h512(*parts: bytes) -> bytes:
    """BLAKE2b-512 of the concatenated parts (the SRP hash, §3.1)."""
    h = hashlib.blake2b(digest_size=64)
    for part in parts:
        h.update(part)
    return h.digest()


def h256(*parts: bytes) -> bytes:
    """BLAKE2s-256 of the concatenated parts (the key-derivation hash, §3.1)."""
    h = hashlib.blake2s(digest_size=32)
    for part in parts:
        h.update(part)
    return h.digest()


def int_to_bytes(value: int) -> bytes:
    """Unsigned big-endian with leading zeros removed, like OpenSSL ``BN_bn2bin`` (§3.4).

    Zero encodes as the empty string, which is what makes "empty salt"/"empty B" checks and
    the ``A % N == 0`` checks two views of the same condition.
    """
    if value < 0:
        raise ValueError("negative big number")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def bytes_to_int(data: bytes) -> int:
    """Inverse of :func:`int_to_bytes`; leading zero bytes are accepted and ignored."""
    return int.from_bytes(data, "big")


def strip_leading_zeros(data: bytes) -> bytes:
    """Canonicalise a stored big number (e.g. a 64-byte salt starting with 00) before use."""
    return data.lstrip(b"\x00")


def pad(value: int, length: int) -> bytes:
    """Big-endian, left-padded to ``length`` bytes: the SRP ``PAD()`` of §4.7."""
    return value.to_bytes(length, "big")


class Cipher(enum.IntEnum):
    """Channel AEADs, numbered as ``proto.Encryption`` (and as ClientHello flag bits)."""

    CHACHA20_POLY1305 = 1
    AES256_GCM = 2


def _make_aead(cipher: Cipher, key: bytes) -> ChaCha20Poly1305 | AESGCM:
    if len(key) != KEY_SIZE:
        raise ValueError("channel keys are 32 bytes")
    if cipher is Cipher.CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    return AESGCM(key)


def _check_iv(iv: bytes) -> int:
    if len(iv) != IV_SIZE:
        raise ValueError("channel IVs are 12 bytes")
    return int.from_bytes(iv, "big")


class MessageEncryptor:
    """Sending half of a channel: AEAD output as ``tag || ciphertext``, nonce = IV + count.

    The AEAD object is built once per key, not per message; the nonce is kept as an integer
    and incremented as a 96-bit big-endian counter after every message (§3.3).
    """

    def __init__(self, cipher: Cipher, key: bytes, iv: bytes) -> None:
        self.cipher = cipher
        self._aead = _make_aead(cipher, key)
        self._nonce = _check_iv(iv)

    @property
    def nonce(self) -> bytes:
        """The nonce the next message will use."""
        return self._nonce.to_bytes(IV_SIZE, "big")

    def encrypt(self, plaintext: bytes) -> bytes:
        sealed = memoryview(self._aead.encrypt(self.nonce, plaintext, None))
        self._nonce = (self._nonce + 1) & _NONCE_MASK
        # cryptography appends the tag; Aspia puts it first.
        return b"".join((sealed[-TAG_SIZE:], sealed[:-TAG_SIZE]))


class MessageDecryptor:
    """Receiving half of a channel; the nonce only advances on a successful decryption."""

    def __init__(self, cipher: Cipher, key: bytes, iv: bytes) -> None:
        self.cipher = cipher
        self._aead = _make_aead(cipher, key)
        self._nonce = _check_iv(iv)

    @property
    def nonce(self) -> bytes:
        """The nonce the next message is expected to use."""
        return self._nonce.to_bytes(IV_SIZE, "big")

    def decrypt(self, data: bytes) -> bytes:
        # Shorter than a tag is an authentication failure, not a crash (spec §12 bug 7).
        if len(data) < TAG_SIZE:
            raise DecryptionError("encrypted payload shorter than its tag")
        view = memoryview(data)
        try:
            plain = self._aead.decrypt(self.nonce, b"".join((view[TAG_SIZE:], view[:TAG_SIZE])), None)
        except InvalidTag:
            raise DecryptionError() from None
        self._nonce = (self._nonce + 1) & _NONCE_MASK
        return plain


class ChannelCipher:
    """Both directions of an encrypted channel: one key, one IV per direction (§4.6)."""

    def __init__(self, cipher: Cipher, key: bytes, send_iv: bytes, recv_iv: bytes) -> None:
        self.cipher = cipher
        self.encryptor = MessageEncryptor(cipher, key, send_iv)
        self.decryptor = MessageDecryptor(cipher, key, recv_iv)

    def encrypt(self, plaintext: bytes) -> bytes:
        return self.encryptor.encrypt(plaintext)

    def decrypt(self, data: bytes) -> bytes:
        return self.decryptor.decrypt(data)


class X25519KeyPair:
    """An X25519 key pair kept as a ``cryptography`` object plus its raw public bytes."""

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_bytes = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, random_bytes: RandomBytes = default_random) -> X25519KeyPair:
        """A fresh pair from 32 random bytes (clamping is done by X25519 itself)."""
        return cls(X25519PrivateKey.from_private_bytes(random_bytes(X25519_KEY_SIZE)))

    @classmethod
    def from_private_bytes(cls, private: bytes) -> X25519KeyPair:
        if len(private) != X25519_KEY_SIZE:
            raise ValueError("X25519 private keys are 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(private))

    @property
    def private_bytes(self) -> bytes:
        return self.private_key.private_bytes_raw()

    def derive_key(self, peer_public: bytes) -> bytes:
        """``H256(X25519(own private, peer public))``, the only way Aspia uses a DH result.

        ``peer_public`` comes off the wire, so a wrong length or a low-order point (all-zero
        shared secret, which ``cryptography`` refuses) is a protocol error.
        """
        if len(peer_public) != X25519_KEY_SIZE:
            raise AspiaProtocolError(f"X25519 public key has {len(peer_public)} bytes, expected 32")
        try:
            shared = self.private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise AspiaProtocolError("X25519 exchange produced no usable secret") from None
        return h256(shared)


def usable_public_key(public: bytes) -> bool:
    """Whether an X25519 exchange with ``public`` yields a secret (False for low-order points
    such as all zeros, which ``cryptography`` refuses): lets a CLI reject a bad key up front
    with a clear message instead of failing in the middle of a connection."""
    if len(public) != X25519_KEY_SIZE:
        return False
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


def seal_relay_secret(
    relay_public_key: bytes, iv: bytes, secret: bytes, random_bytes: RandomBytes = default_random
) -> tuple[bytes, bytes]:
    """Encrypt a router-issued secret for a relay key (§8.3); returns ``(peer_public, data)``.

    A fresh ephemeral key per call: the relay key is one-time, but the peer's side must not
    be linkable across relays either.
    """
    if len(iv) != IV_SIZE:
        raise AspiaProtocolError("relay key IV must be 12 bytes")
    eph = X25519KeyPair.generate(random_bytes)
    key = eph.derive_key(relay_public_key)
    return eph.public_bytes, MessageEncryptor(Cipher.CHACHA20_POLY1305, key, iv).encrypt(secret)


def open_relay_secret(relay_key: X25519KeyPair, iv: bytes, peer_public: bytes, data: bytes) -> bytes:
    """The relay's side of :func:`seal_relay_secret`: decrypt ``PeerToRelay.data``.

    Empty or tag-short ``data`` fails as a decryption error instead of crashing (§12 bug 7).
    """
    if len(iv) != IV_SIZE:
        raise AspiaProtocolError("relay key IV must be 12 bytes")
    key = relay_key.derive_key(peer_public)
    secret = MessageDecryptor(Cipher.CHACHA20_POLY1305, key, iv).decrypt(data)
    if not secret:
        raise DecryptionError("relay secret is empty")
    return secret
