"""Offset's cryptographic primitives on top of ``cryptography`` (spec §5.1, §5.3, §5.4).

Ed25519 identities, X25519 ephemeral keys, HKDF-SHA-512/256 and ChaCha20-Poly1305 frames with
the original's strict 96-bit little-endian nonce counter. Nothing here is hand-rolled: this
module only fixes parameters and byte layouts, and maps failures onto ProtocolError.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ProtocolError

SEED_LEN = 32
KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
MIN_ENCRYPTED_FRAME = NONCE_LEN + TAG_LEN  # shorter frames made the original panic (spec §12.2 item 3)
_COUNTER_MODULUS = 1 << (8 * NONCE_LEN)

_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


class Identity:
    """An Ed25519 identity from its 32-byte seed."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_LEN:
            raise ValueError(f"an Ed25519 seed is {SEED_LEN} bytes, got {len(seed)}")
        self.seed: bytes = bytes(seed)
        self._key = Ed25519PrivateKey.from_private_bytes(self.seed)
        self.public_key: bytes = self._key.public_key().public_bytes(_RAW, _RAW_PUBLIC)

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(SEED_LEN))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:  # never print the seed
        return f"Identity(public_key={self.public_key.hex()})"


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 verification that answers False, rather than raising, for any bad input."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def hkdf_sha512_256(salt: bytes, ikm: bytes) -> bytes:
    """HKDF over HMAC-SHA-512/256 with L = 32 and empty info: one direction's key (spec §5.3)."""
    return HKDF(algorithm=hashes.SHA512_256(), length=KEY_LEN, salt=salt, info=b"").derive(ikm)


class DhKeyPair:
    """An ephemeral X25519 key pair, made from 32 bytes the caller drew (so tests can script them)."""

    def __init__(self, private_bytes: bytes) -> None:
        self._key = X25519PrivateKey.from_private_bytes(private_bytes)
        self.public_key: bytes = self._key.public_key().public_bytes(_RAW, _RAW_PUBLIC)

    def exchange(self, peer_public_key: bytes) -> bytes:
        """The raw 32-byte shared secret; an all-zero result (a small-order peer key) is refused."""
        try:
            return self._key.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
        except ValueError as exc:  # cryptography refuses the all-zero secret (spec §12.2 item 12)
            raise ProtocolError(f"X25519 exchange failed: {exc}") from None

    def derive_keys(self, local_salt: bytes, peer_public_key: bytes, peer_salt: bytes) -> tuple[bytes, bytes]:
        """(send key, receive key): each direction is salted by its sender's salt."""
        shared = self.exchange(peer_public_key)
        return hkdf_sha512_256(local_salt, shared), hkdf_sha512_256(peer_salt, shared)


def counter_nonce(counter: int) -> bytes:
    """The 12-byte nonce for the n-th frame under one key: n, little-endian (spec §5.4)."""
    return counter.to_bytes(NONCE_LEN, "little")


class Encryptor:
    """One direction's sender: each frame is ``nonce || ciphertext || tag``, nonces counting from 0."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0

    def encrypt_parts(self, plaintext: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext with tag), kept apart so a writer can send them without joining."""
        nonce = self._counter.to_bytes(NONCE_LEN, "little")
        self._counter = (self._counter + 1) % _COUNTER_MODULUS
        return nonce, self._aead.encrypt(nonce, plaintext, None)

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce, sealed = self.encrypt_parts(plaintext)
        return nonce + sealed


class Decryptor:
    """One direction's receiver: the frame's nonce must equal the expected counter exactly."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0

    def try_decrypt(self, frame: bytes) -> bytes | None:
        """The plaintext, or None on a nonce mismatch or bad tag (then the counter does not move)."""
        if len(frame) < MIN_ENCRYPTED_FRAME:
            raise ProtocolError(f"encrypted frame of {len(frame)} bytes, minimum {MIN_ENCRYPTED_FRAME}")
        nonce = self._counter.to_bytes(NONCE_LEN, "little")
        with memoryview(frame) as view:
            if view[:NONCE_LEN] != nonce:
                return None
            try:
                plaintext = self._aead.decrypt(nonce, view[NONCE_LEN:], None)
            except InvalidTag:
                return None
        self._counter = (self._counter + 1) % _COUNTER_MODULUS
        return plaintext

    def decrypt(self, frame: bytes) -> bytes:
        plaintext = self.try_decrypt(frame)
        if plaintext is None:
            raise ProtocolError("encrypted frame with unexpected nonce or bad tag")
        return plaintext
