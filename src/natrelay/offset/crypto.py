"""Offset's cryptographic primitives on top of ``cryptography`` (spec §5.1, §5.3, §5.4).

Ed25519 identities, X25519 ephemeral keys, HKDF-SHA-512/256 and ChaCha20-Poly1305 frames with
the original's strict 96-bit little-endian nonce counter. Nothing here is hand-rolled: this
module only fixes parameters and byte layouts, and maps failures onto ProtocolError.
"""

from __future__ import annotations

import os
from collections import OrderedDict

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


#: Contexts a relay or node keeps at most: its busiest keys (each tunnel at a relay uses four).
DEFAULT_CIPHER_CACHE = 256


class CipherCache:
    """ChaCha20-Poly1305 contexts for the keys in use, at most ``size`` of them, least recent out.

    A ``cryptography`` AEAD object holds about 2.4 KB of OpenSSL state from its construction on.
    With one per direction per link it was the largest part of an idle session (a tunnel is two
    links at the relay: 9.6 of its 17 KiB). Through this cache memory follows the links that move
    data, not the links that are open: an idle link's context is dropped and rebuilt (about 3 us)
    when it next sends or receives, a heartbeat every 16 s at most. One cache per relay or node,
    passed to its links; nothing process-wide.
    """

    def __init__(self, size: int = DEFAULT_CIPHER_CACHE) -> None:
        if size < 1:
            raise ValueError("a cipher cache holds at least one context")
        self._size = size
        self._aeads: OrderedDict[bytes, ChaCha20Poly1305] = OrderedDict()

    def get(self, key: bytes) -> ChaCha20Poly1305:
        aeads = self._aeads
        aead = aeads.get(key)
        if aead is None:
            aead = aeads[key] = ChaCha20Poly1305(key)
            if len(aeads) > self._size:
                aeads.popitem(last=False)
        else:
            aeads.move_to_end(key)
        return aead

    def __len__(self) -> int:
        return len(self._aeads)


def counter_nonce(counter: int) -> bytes:
    """The 12-byte nonce for the n-th frame under one key: n, little-endian (spec §5.4)."""
    return counter.to_bytes(NONCE_LEN, "little")


class Encryptor:
    """One direction's sender: each frame is ``nonce || ciphertext || tag``, nonces counting from 0."""

    # No instance dict: a relay keeps one per link, two links per idle tunnel (about 290 bytes each).
    __slots__ = ("_aead", "_ciphers", "_counter", "_key")

    def __init__(self, key: bytes, ciphers: CipherCache | None = None) -> None:
        """Without ``ciphers`` the encryptor keeps a context of its own."""
        self._key = key
        self._ciphers = ciphers
        self._aead = ChaCha20Poly1305(key) if ciphers is None else None
        self._counter = 0

    def encrypt_parts(self, plaintext: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext with tag), kept apart so a writer can send them without joining."""
        nonce = self._counter.to_bytes(NONCE_LEN, "little")
        self._counter = (self._counter + 1) % _COUNTER_MODULUS
        aead = self._aead
        if aead is None:
            assert self._ciphers is not None
            aead = self._ciphers.get(self._key)
        return nonce, aead.encrypt(nonce, plaintext, None)

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce, sealed = self.encrypt_parts(plaintext)
        return nonce + sealed


class Decryptor:
    """One direction's receiver: the frame's nonce must equal the expected counter exactly."""

    # No instance dict: a relay keeps one per link, two links per idle tunnel (about 290 bytes each).
    __slots__ = ("_aead", "_ciphers", "_counter", "_key")

    def __init__(self, key: bytes, ciphers: CipherCache | None = None) -> None:
        """Without ``ciphers`` the decryptor keeps a context of its own."""
        self._key = key
        self._ciphers = ciphers
        self._aead = ChaCha20Poly1305(key) if ciphers is None else None
        self._counter = 0

    def try_decrypt(self, frame: bytes) -> bytes | None:
        """The plaintext, or None on a nonce mismatch or bad tag (then the counter does not move)."""
        if len(frame) < MIN_ENCRYPTED_FRAME:
            raise ProtocolError(f"encrypted frame of {len(frame)} bytes, minimum {MIN_ENCRYPTED_FRAME}")
        nonce = self._counter.to_bytes(NONCE_LEN, "little")
        if frame[:NONCE_LEN] != nonce:
            return None
        aead = self._aead
        if aead is None:
            assert self._ciphers is not None
            aead = self._ciphers.get(self._key)
        try:
            # The view lives only in this call: the ciphertext is not copied out of the frame.
            plaintext: bytes = aead.decrypt(nonce, memoryview(frame)[NONCE_LEN:], None)
        except InvalidTag:
            return None
        self._counter = (self._counter + 1) % _COUNTER_MODULUS
        return plaintext

    def decrypt(self, frame: bytes) -> bytes:
        plaintext = self.try_decrypt(frame)
        if plaintext is None:
            raise ProtocolError("encrypted frame with unexpected nonce or bad tag")
        return plaintext
