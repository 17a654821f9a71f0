"""SRP-6a maths: RFC 5054 vectors with SHA-1, then Aspia's BLAKE2b-512 variant (spec §4.7-4.10)."""

from __future__ import annotations

import hashlib
import random

import pytest

from natrelay.aspia import srp
from natrelay.aspia.crypto import bytes_to_int, h256, int_to_bytes, pad
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode


def sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


def _hex(text: str) -> int:
    return int("".join(text.split()), 16)


# RFC 5054 Appendix B (1024-bit group, SHA-1).
RFC_SALT = bytes.fromhex("BEB25379D1A8581EB5A727673A2441EE")
RFC_A_SECRET = _hex("60975527035CF2AD1989806F0407210BC81EDC04E2762A56AFD529DDDA2D4393")
RFC_B_SECRET = _hex("E487CB59D31AC550471E81F00F6928E01DDA08E974A004F49E61F5D105284D20")
RFC_K = _hex("7556AA045AEF2CDD07ABAF0F665C3E818913186F")
RFC_X = _hex("94B7555AABE9127CC58CCF4993DB6CF84D16C124")
RFC_U = _hex("CE38B9593487DA98554ED47D70A7AE5F462EF019")
RFC_V = _hex(
    """7E273DE8 696FFC4F 4E337D05 B4B375BE B0DDE156 9E8FA00A 9886D812 9BADA1F1 822223CA 1A605B53
    0E379BA4 729FDC59 F105B478 7E5186F5 C671085A 1447B52A 48CF1970 B4FB6F84 00BBF4CE BFBB1681
    52E08AB5 EA53D15C 1AFF87B2 B9DA6E04 E058AD51 CC72BFC9 033B564E 26480D78 E955A5E2 9E7AB245
    DB2BE315 E2099AFB"""
)
RFC_A = _hex(
    """61D5E490 F6F1B795 47B0704C 436F523D D0E560F0 C64115BB 72557EC4 4352E890 3211C046 92272D8B
    2D1A5358 A2CF1B6E 0BFCF99F 921530EC 8E393561 79EAE45E 42BA92AE ACED8251 71E1E8B9 AF6D9C03
    E1327F44 BE087EF0 6530E69F 66615261 EEF54073 CA11CF58 58F0EDFD FE15EFEA B349EF5D 76988A36
    72FAC47B 0769447B"""
)
RFC_B = _hex(
    """BD0C6151 2C692C0C B6D041FA 01BB152D 4916A1E7 7AF46AE1 05393011 BAF38964 DC46A067 0DD125B9
    5A981652 236F99D9 B681CBF8 7837EC99 6C6DA044 53728610 D0C6DDB5 8B318885 D7D82C7F 8DEB75CE
    7BD4FBAA 37089E6F 9C6059F3 88838E7A 00030B33 1EB76840 910440B1 B27AAEAE EB4012B7 D7665238
    A8E3FB00 4B117B58"""
)
RFC_S = _hex(
    """B0DC82BA BCF30674 AE450C02 87745E79 90A3381F 63B387AA F271A10D 233861E3 59B48220 F7C4693C
    9AE12B0A 6F67809F 0876E2D0 13800D6C 41BB59B6 D5979B5C 00A172B4 A2A5903A 0BDCAF8A 709585EB
    2AFAFA8F 3499B200 210DCC1F 10EB3394 3CD67FC8 8A2F39A4 BE5BEC4E C0A3212D C346D7E4 74B29EDE
    8A469FFE CA686E5A"""
)


def test_rfc5054_vectors_with_sha1() -> None:
    group = srp.GROUPS["1024"]
    assert srp.compute_k(group, sha1) == RFC_K
    x = srp.compute_x(RFC_SALT, b"alice", b"password123", sha1)
    assert x == RFC_X
    v = srp.compute_verifier(group, x)
    assert v == RFC_V
    a_public = srp.compute_a_public(group, RFC_A_SECRET)
    b_public = srp.compute_b_public(group, RFC_K, v, RFC_B_SECRET)
    assert a_public == RFC_A
    assert b_public == RFC_B
    u = srp.compute_u(group, a_public, b_public, sha1)
    assert u == RFC_U
    assert srp.client_premaster(group, RFC_K, b_public, x, RFC_A_SECRET, u) == RFC_S
    assert srp.server_premaster(group, a_public, v, u, RFC_B_SECRET) == RFC_S


# §4.10 [verified] vector: group 4096, BLAKE2b-512.
SPEC_SALT = bytes(range(64))
SPEC_A_SECRET = bytes_to_int(bytes(range(0x11, 0x91)))
SPEC_B_SECRET = bytes_to_int(bytes(range(0x22, 0xA2)))
SPEC_X = _hex(
    "9ae2485950ddda1fac249b7b9e1c8ac76f4b82b104f4e1b182e9c902e403848b"
    "ccedae65b4f3760e1d186cc1ae1b870bb2fd3531bca950b9acf2f7ecb975b8a9"
)
SPEC_U = _hex(
    "0323223c2ab844dcbac2460a71d7b106ae24731bb8da40162e49080c70529bdd"
    "614e0b672d01d1e9dd394c60302ca486fd8decdb5f86ca42fc21c93331af865a"
)


def test_aspia_srp_vector() -> None:
    group = srp.GROUPS["4096"]
    x = srp.aspia_x(SPEC_SALT, "Admin", b"secret")
    assert x == SPEC_X
    # The salt is hashed stripped (63 bytes) and the name lower-cased.
    assert x == srp.compute_x(SPEC_SALT[1:], b"admin", b"secret", srp.h512_digest)
    v = srp.compute_verifier(group, x)
    assert pad(v, 512).hex().startswith("bcea630144e3efb1072f89da43fdb94d")
    assert srp.make_verifier(group, SPEC_SALT, "Admin", b"secret") == int_to_bytes(v)
    k = srp.compute_k(group, srp.h512_digest)
    a_public = srp.compute_a_public(group, SPEC_A_SECRET)
    b_public = srp.compute_b_public(group, k, v, SPEC_B_SECRET)
    assert pad(a_public, 512).hex().startswith("9922b35360c1490c737e12c71f49e1ac")
    assert pad(b_public, 512).hex().startswith("de4ffdb5201d38a981077360fb5be274")
    u = srp.compute_u(group, a_public, b_public, srp.h512_digest)
    assert u == SPEC_U
    client_s = srp.client_premaster(group, k, b_public, x, SPEC_A_SECRET, u)
    server_s = srp.server_premaster(group, a_public, v, u, SPEC_B_SECRET)
    assert client_s == server_s
    assert pad(client_s, 512).hex().startswith("5fe72a2b7351b9e717f58d96c64cb63e")
    # §4.6: K = H256(S) without K0, H256(K0 || S) with K0 = 40..5F.
    assert h256(int_to_bytes(client_s)).hex() == (
        "cd3b8384729ef018108ceb647d25805f40bdf2f66ffaa34f55ff8744d0bb7396"
    )
    assert h256(bytes(range(0x40, 0x60)), int_to_bytes(client_s)).hex() == (
        "70c2ff1b2a8c4397a594f843386377a93154b3e0bf7ae6e8588a75a71fe9cf72"
    )


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("4096", "233baaf370839d8c2667da4379c646cb"),
        ("6144", "a0656995ca7d5b90"),
        ("8192", "0b2fd20c436ee130"),
    ],
)
def test_multiplier_k_for_client_groups(name: str, prefix: str) -> None:
    group = srp.GROUPS[name]
    assert pad(srp.compute_k(group, srp.h512_digest), 64).hex().startswith(prefix)


def _pi_scaled(bits: int) -> int:
    """floor(pi * 2^bits) by Machin's formula in integers (independent of the module under test)."""
    guard = 32
    one = 1 << (bits + guard)

    def arctan_inv(n: int) -> int:
        total = term = one // n
        k, sign = 1, -1
        while term:
            term //= n * n
            total += sign * (term // (2 * k + 1))
            sign, k = -sign, k + 1
        return total

    return (16 * arctan_inv(5) - 4 * arctan_inv(239)) >> guard


@pytest.mark.parametrize(
    ("name", "offset", "g"),
    [("3072", 1690314, 5), ("4096", 240904, 5), ("6144", 929484, 5), ("8192", 4743158, 19)],
)
def test_modp_groups_rebuild_from_the_rfc3526_formula(name: str, offset: int, g: int) -> None:
    n = int(name)
    expected = 2**n - 2 ** (n - 64) - 1 + 2**64 * (_pi_scaled(n - 130) + offset)
    assert expected == srp.GROUPS[name].N
    assert srp.GROUPS[name].g == g
    assert srp.GROUPS[name].size == n // 8


def _probably_prime(n: int, rounds: int = 3) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(n & 0xFFFF)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


@pytest.mark.parametrize("name", ["1024", "1536", "2048"])
def test_small_groups_are_safe_primes(name: str) -> None:
    # The SRP-specific primes of RFC 5054; a typo in a constant would break primality.
    group = srp.GROUPS[name]
    assert group.N.bit_length() == int(name)
    assert _probably_prime(group.N) and _probably_prime((group.N - 1) // 2)
    assert group.g == 2


def test_fake_user_salt_matches_spec_and_is_deterministic() -> None:
    seed = bytes(range(0x80, 0xC0))
    group, salt, verifier = srp.fake_user(seed, "Ghost")
    assert salt.hex() == (
        "40824e5205d8cd848538d4aeb2877f37ebf53d29988b75f0d9fb96a85930c707"
        "3ae41b314fe953075146bed9fde61b1a23257757bbba2ad1ce1010ce69fe425d"
    )
    assert group is srp.GROUPS["8192"]
    assert srp.fake_user(seed, "Ghost") == (group, salt, verifier)
    # The salt uses the name as received, the verifier the lower-cased name with the seed as password.
    assert srp.fake_user(seed, "ghost")[1] != salt
    assert verifier == srp.make_verifier(group, salt, "gHoSt", seed)


def test_client_accepts_only_the_large_groups() -> None:
    for name in srp.CLIENT_GROUPS:
        group = srp.GROUPS[name]
        assert srp.client_group(group.n_bytes, group.g_bytes) is group
        assert srp.client_group(b"\x00" + group.n_bytes, group.g_bytes) is group
    g4096 = srp.GROUPS["4096"]
    with pytest.raises(AspiaProtocolError):
        srp.client_group(srp.GROUPS["2048"].n_bytes, b"\x02")
    with pytest.raises(AspiaProtocolError):
        srp.client_group(g4096.n_bytes, b"\x02")  # right N, wrong g
    with pytest.raises(AspiaProtocolError):
        srp.client_group(int_to_bytes(g4096.N + 2), b"\x05")
    with pytest.raises(AspiaProtocolError):
        srp.client_group(b"", b"")


@pytest.mark.parametrize("multiple", [0, 1, 2])
def test_public_values_congruent_to_zero_or_too_large_are_refused(multiple: int) -> None:
    group = srp.GROUPS["1024"]
    value = multiple * group.N
    with pytest.raises(AspiaProtocolError) as info:
        srp.check_public_value(group, value, ErrorCode.UNKNOWN_ERROR)
    assert info.value.code is ErrorCode.UNKNOWN_ERROR
    with pytest.raises(AspiaProtocolError):
        srp.server_premaster(group, value, RFC_V, RFC_U, RFC_B_SECRET)
    with pytest.raises(AspiaProtocolError):
        srp.client_premaster(group, RFC_K, value, RFC_X, RFC_A_SECRET, RFC_U)


def test_u_needs_values_below_n() -> None:
    group = srp.GROUPS["1024"]
    with pytest.raises(AspiaProtocolError):
        srp.compute_u(group, group.N, 5, sha1)
    srp.check_public_value(group, group.N - 1, ErrorCode.PROTOCOL_ERROR)  # in range: no error


def test_new_account_is_group_4096_and_usable() -> None:
    salt = bytes(range(1, 65))
    group_name, stored_salt, verifier = srp.new_account("Mixed.User", b"pw", salt)
    assert (group_name, stored_salt) == ("4096", salt)
    group = srp.GROUPS[group_name]
    assert bytes_to_int(verifier) == srp.compute_verifier(group, srp.aspia_x(salt, "mixed.user", b"pw"))
