"""Aspia crypto: hashes, big numbers, X25519, the tag-first channel AEAD (spec §3, §8.3)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from natrelay.aspia.crypto import (
    TAG_SIZE,
    ChannelCipher,
    Cipher,
    MessageDecryptor,
    MessageEncryptor,
    X25519KeyPair,
    bytes_to_int,
    h256,
    h512,
    int_to_bytes,
    open_relay_secret,
    pad,
    seal_relay_secret,
    strip_leading_zeros,
)
from natrelay.aspia.errors import AspiaProtocolError, DecryptionError, ErrorCode

KEY = bytes(range(0xA0, 0xC0))
IV = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9ffff")

# §3.3 [verified] example: "hello", messages 0 and 1 (the second after the IV carry).
AEAD_VECTORS = {
    Cipher.CHACHA20_POLY1305: (
        "aecb0f15ba4a0a01d2007d83eb59ba3ca2797e6cd3",
        "432e21bf9ef0212454102547c6269736fe65e45f1f",
    ),
    Cipher.AES256_GCM: (
        "178411bb58b565c02cd52798558ac2192c02424984",
        "1b2ab4888ebecfc5a0b4acd11dd7d219bf4002ba17",
    ),
}


def test_hashes_are_blake2_with_the_right_sizes() -> None:
    # Published BLAKE2 digests of the empty string.
    assert h512().hex().startswith("786a02f742015903c6c6fd852552d272912f4740e15847618a86e217f71f5419")
    assert h256().hex() == "69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9"
    assert h512(b"ab", b"c") == h512(b"abc")
    assert len(h512(b"x")) == 64 and len(h256(b"x")) == 32


def test_big_number_encoding_strips_leading_zeros() -> None:
    assert int_to_bytes(0) == b""
    assert int_to_bytes(1) == b"\x01"
    assert int_to_bytes(0x0100) == b"\x01\x00"
    assert bytes_to_int(b"\x00\x00\x01\x00") == 256
    assert strip_leading_zeros(bytes(range(64))) == bytes(range(1, 64))
    assert pad(5, 4) == b"\x00\x00\x00\x05"
    with pytest.raises(ValueError):
        int_to_bytes(-1)


@pytest.mark.parametrize("cipher", list(Cipher))
def test_channel_aead_matches_spec_vectors(cipher: Cipher) -> None:
    first, second = AEAD_VECTORS[cipher]
    enc = MessageEncryptor(cipher, KEY, IV)
    assert enc.encrypt(b"hello").hex() == first
    assert enc.nonce == bytes.fromhex("f0f1f2f3f4f5f6f7f8fa0000")  # carry propagated
    assert enc.encrypt(b"hello").hex() == second
    dec = MessageDecryptor(cipher, KEY, IV)
    assert dec.decrypt(bytes.fromhex(first)) == b"hello"
    assert dec.decrypt(bytes.fromhex(second)) == b"hello"


def test_wire_layout_is_tag_first() -> None:
    raw = ChaCha20Poly1305(KEY).encrypt(IV, b"hello", None)  # ciphertext || tag
    wire = MessageEncryptor(Cipher.CHACHA20_POLY1305, KEY, IV).encrypt(b"hello")
    assert wire == raw[-TAG_SIZE:] + raw[:-TAG_SIZE]
    assert len(wire) == len(b"hello") + TAG_SIZE


def test_nonce_wraps_at_96_bits() -> None:
    enc = MessageEncryptor(Cipher.AES256_GCM, KEY, b"\xff" * 12)
    enc.encrypt(b"x")
    assert enc.nonce == bytes(12)


def test_counters_must_stay_in_lockstep() -> None:
    enc = MessageEncryptor(Cipher.CHACHA20_POLY1305, KEY, IV)
    dec = MessageDecryptor(Cipher.CHACHA20_POLY1305, KEY, IV)
    skipped = enc.encrypt(b"one")
    with pytest.raises(DecryptionError):
        dec.decrypt(enc.encrypt(b"two"))  # receiver still expects nonce 0
    assert dec.decrypt(skipped) == b"one"  # a failure did not advance the counter


@pytest.mark.parametrize("length", [0, 1, 5, 15])
def test_payload_shorter_than_tag_is_an_authentication_failure(length: int) -> None:
    # The C++ receiver computes length - 16 unchecked and aborts (§12 bug 7).
    with pytest.raises(DecryptionError) as info:
        MessageDecryptor(Cipher.CHACHA20_POLY1305, KEY, IV).decrypt(b"a" * length)
    assert info.value.code is ErrorCode.ACCESS_DENIED


def test_tampering_is_detected() -> None:
    wire = bytearray(MessageEncryptor(Cipher.AES256_GCM, KEY, IV).encrypt(b"hello"))
    wire[-1] ^= 1
    with pytest.raises(DecryptionError):
        MessageDecryptor(Cipher.AES256_GCM, KEY, IV).decrypt(bytes(wire))


def test_channel_cipher_uses_one_iv_per_direction() -> None:
    iv_a, iv_b = bytes(12), b"\x01" * 12
    alice = ChannelCipher(Cipher.CHACHA20_POLY1305, KEY, iv_a, iv_b)
    bob = ChannelCipher(Cipher.CHACHA20_POLY1305, KEY, iv_b, iv_a)
    assert bob.decrypt(alice.encrypt(b"ping")) == b"ping"
    assert alice.decrypt(bob.encrypt(b"pong")) == b"pong"
    with pytest.raises(DecryptionError):
        alice.decrypt(alice.encrypt(b"own"))  # own direction's IV differs


def test_key_and_iv_sizes_are_enforced() -> None:
    with pytest.raises(ValueError):
        MessageEncryptor(Cipher.CHACHA20_POLY1305, KEY[:31], IV)
    with pytest.raises(ValueError):
        MessageDecryptor(Cipher.AES256_GCM, KEY, IV[:11])


def test_relay_secret_matches_spec_example() -> None:
    # §8.3 [verified] example.
    relay = X25519KeyPair.from_private_bytes(bytes(range(1, 33)))
    peer_private = bytes(range(0x51, 0x71))
    assert relay.public_bytes.hex() == "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c"
    iv = bytes(range(0x30, 0x3C))
    public, data = seal_relay_secret(relay.public_bytes, iv, b"SECRET-BYTES", lambda n: peer_private[:n])
    assert public.hex() == "0233f006ef4bed144ea0a5bb46c7067c7c2acec5f8cc811f3df59fdcd5ac7614"
    assert X25519KeyPair.from_private_bytes(peer_private).derive_key(relay.public_bytes).hex() == (
        "a48f2333c45b103c14477057ba3d03b4948c189760118c2f5049ae404f5f3711"
    )
    assert data.hex() == "002695d996b2dd9b4e7f3eb2006d941323dd9f0b80e5c46a4e1c27fe"
    assert open_relay_secret(relay, iv, public, data) == b"SECRET-BYTES"


def test_relay_secret_failures() -> None:
    relay = X25519KeyPair.from_private_bytes(bytes(range(1, 33)))
    iv = bytes(12)
    public, data = seal_relay_secret(relay.public_bytes, iv, b"s")
    with pytest.raises(DecryptionError):
        open_relay_secret(relay, iv, public, data[:5])  # the 5-byte crash of §7.3
    with pytest.raises(DecryptionError):
        open_relay_secret(relay, iv, public, b"")
    with pytest.raises(DecryptionError):
        open_relay_secret(relay, b"\x01" * 12, public, data)
    with pytest.raises(AspiaProtocolError):
        open_relay_secret(relay, iv[:8], public, data)


@pytest.mark.parametrize("peer_public", [bytes(32), bytes(31), b"\x01" + bytes(31)])
def test_x25519_rejects_bad_or_low_order_peer_keys(peer_public: bytes) -> None:
    # All-zero and the point of order 1 give an all-zero shared secret.
    with pytest.raises(AspiaProtocolError):
        X25519KeyPair.generate().derive_key(peer_public)


def test_x25519_both_sides_agree() -> None:
    a, b = X25519KeyPair.generate(), X25519KeyPair.generate()
    assert a.derive_key(b.public_bytes) == b.derive_key(a.public_bytes)
    assert X25519KeyPair.from_private_bytes(a.private_bytes).public_bytes == a.public_bytes
