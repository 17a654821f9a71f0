"""Primitive checks of spec §13.3 and the strict nonce counter of §5.4."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes

from natrelay.offset.crypto import (
    MIN_ENCRYPTED_FRAME,
    CipherCache,
    Decryptor,
    DhKeyPair,
    Encryptor,
    Identity,
    counter_nonce,
    hkdf_sha512_256,
    verify_signature,
)
from natrelay.offset.errors import ProtocolError

from .link_helpers import RFC8032_PUBLIC, RFC8032_SEED

ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
RFC7748_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_sha512_256_matches_the_original_unit_test() -> None:
    digest = hashes.Hash(hashes.SHA512_256())
    digest.update(b"This is a test!")
    assert digest.finalize().hex() == "349c7ea7498d0432dcb0604a9ed37a8b65a90bfa166c91475f072a29e42da1fb"


def test_hkdf_sha512_256_vector() -> None:
    key = hkdf_sha512_256(b"\x11" * 32, bytes(range(32)))
    assert key.hex() == "c49c22e13cd6ea61bc84d4b39b49d06332a1ac84a86988e30a23d2694e287fdc"


def test_chacha20poly1305_vector_is_frame_zero() -> None:
    frame = Encryptor(b"\x01" * 32).encrypt(b"Hello world1!")
    expected = "494221bd817261ad76970dbc8fd2a7d60f5e33788cc747161327eb6d6e"
    assert frame == bytes(12) + bytes.fromhex(expected)
    assert Decryptor(b"\x01" * 32).decrypt(frame) == b"Hello world1!"


def test_identity_rfc8032_test_1() -> None:
    ident = Identity(RFC8032_SEED)
    assert ident.public_key == RFC8032_PUBLIC
    assert b64url(ident.seed) == "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
    assert b64url(ident.public_key) == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert RFC8032_SEED.hex() not in repr(ident)


def test_sign_and_verify() -> None:
    ident = Identity.generate()
    sig = ident.sign(b"message")
    assert len(sig) == 64
    assert verify_signature(ident.public_key, b"message", sig)
    assert not verify_signature(ident.public_key, b"messagE", sig)
    assert not verify_signature(Identity.generate().public_key, b"message", sig)
    assert not verify_signature(ident.public_key, b"message", sig[:-1])
    assert not verify_signature(b"short", b"message", sig)


def test_identity_needs_a_32_byte_seed() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Identity(b"\x00" * 31)


def test_x25519_rfc7748_vectors() -> None:
    alice, bob = DhKeyPair(ALICE_PRIVATE), DhKeyPair(BOB_PRIVATE)
    assert alice.public_key == ALICE_PUBLIC
    assert bob.public_key == BOB_PUBLIC
    assert alice.exchange(BOB_PUBLIC) == RFC7748_SHARED == bob.exchange(ALICE_PUBLIC)


def test_derived_keys_pair_up_across_the_two_ends() -> None:
    alice, bob = DhKeyPair(ALICE_PRIVATE), DhKeyPair(BOB_PRIVATE)
    a_send, a_recv = alice.derive_keys(b"A" * 32, BOB_PUBLIC, b"B" * 32)
    b_send, b_recv = bob.derive_keys(b"B" * 32, ALICE_PUBLIC, b"A" * 32)
    assert a_send == b_recv == hkdf_sha512_256(b"A" * 32, RFC7748_SHARED)
    assert a_recv == b_send != a_send


def test_all_zero_shared_secret_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="X25519"):
        DhKeyPair(ALICE_PRIVATE).exchange(bytes(32))  # a small-order point


def test_counter_nonce_is_little_endian() -> None:
    assert counter_nonce(0) == bytes(12)
    assert counter_nonce(1) == b"\x01" + bytes(11)
    assert counter_nonce(256) == b"\x00\x01" + bytes(10)


def test_encryptor_counts_frames_and_wraps_at_2_96() -> None:
    enc = Encryptor(b"\x02" * 32)
    nonces = [enc.encrypt_parts(b"x")[0] for _ in range(257)]
    assert nonces[0] == bytes(12)
    assert nonces[1] == b"\x01" + bytes(11)
    assert nonces[256] == b"\x00\x01" + bytes(10)
    enc._counter = (1 << 96) - 1
    assert enc.encrypt(b"x")[:12] == b"\xff" * 12
    assert enc.encrypt(b"x")[:12] == bytes(12)


def test_decryptor_requires_the_exact_next_nonce() -> None:
    enc, dec = Encryptor(b"\x03" * 32), Decryptor(b"\x03" * 32)
    first, second, third = (enc.encrypt(p) for p in (b"one", b"two", b"three"))
    assert dec.decrypt(first) == b"one"
    with pytest.raises(ProtocolError, match="nonce"):
        dec.decrypt(third)  # skipping is not allowed
    with pytest.raises(ProtocolError):
        dec.decrypt(first)  # nor is a replay
    assert dec.decrypt(second) == b"two"  # the failures did not move the counter
    assert dec.decrypt(third) == b"three"


def test_bad_tag_does_not_advance_the_counter() -> None:
    enc, dec = Encryptor(b"\x04" * 32), Decryptor(b"\x04" * 32)
    frame = enc.encrypt(b"payload")
    tampered = frame[:-1] + bytes([frame[-1] ^ 1])
    assert dec.try_decrypt(tampered) is None
    assert dec.try_decrypt(frame) == b"payload"
    assert Decryptor(b"\x05" * 32).try_decrypt(frame) is None  # wrong key


@pytest.mark.parametrize("length", [0, 1, 5, 11, 12, 27])
def test_short_frames_are_protocol_errors(length: int) -> None:
    assert MIN_ENCRYPTED_FRAME == 28
    with pytest.raises(ProtocolError, match="minimum 28"):
        Decryptor(b"\x06" * 32).try_decrypt(bytes(length))


def test_empty_plaintext_makes_a_28_byte_frame() -> None:
    frame = Encryptor(b"\x07" * 32).encrypt(b"")
    assert len(frame) == 28
    assert Decryptor(b"\x07" * 32).decrypt(frame) == b""


def test_cipher_cache_keeps_the_most_recent_keys_and_rebuilds_evicted_ones() -> None:
    cache = CipherCache(2)
    k1, k2, k3 = b"\x11" * 32, b"\x12" * 32, b"\x13" * 32
    first = cache.get(k1)
    assert cache.get(k1) is first  # reused while in use
    cache.get(k2)
    cache.get(k1)  # k1 is now the most recent: k2 goes first
    cache.get(k3)
    assert len(cache) == 2 and cache.get(k1) is first
    enc, dec = Encryptor(k2, cache), Decryptor(k2, cache)  # k2 was evicted: rebuilt on use
    for n in range(3):
        frame = enc.encrypt(bytes([n]) * 100)
        cache.get(k3), cache.get(k1)  # other links push k2 out between every frame
        assert dec.decrypt(frame) == bytes([n]) * 100
    assert len(cache) == 2
    with pytest.raises(ValueError):
        CipherCache(0)


def test_shared_cache_frames_match_private_contexts() -> None:
    cache = CipherCache(1)
    shared, own = Encryptor(b"\x21" * 32, cache), Encryptor(b"\x21" * 32)
    assert [shared.encrypt(b"abc") for _ in range(3)] == [own.encrypt(b"abc") for _ in range(3)]
