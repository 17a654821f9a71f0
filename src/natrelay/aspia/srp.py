"""SRP-6a arithmetic (RFC 5054 style), parameterised by hash, plus Aspia's specifics (§4.7, §4.8).

The generic functions take the hash as an argument so the same code is checked against the
RFC 5054 SHA-1 vectors and then used with BLAKE2b-512, as Aspia does. There are no M1/M2
proofs in Aspia: each side proves the key by producing an AEAD frame the other can open.

Modular exponentiation here is Python's ``pow``, which is not constant-time; the exponents are
ephemeral or derived from salted hashes, and ``cryptography`` exposes no SRP primitive to use
instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from natrelay.aspia.crypto import bytes_to_int, h512, int_to_bytes, pad, strip_leading_zeros
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode

HashFn = Callable[[bytes], bytes]
"""A one-shot hash: bytes in, digest out."""

SECRET_SIZE = 128
"""Bytes of randomness in the client's ``a`` and the server's ``b`` (1024 bits, §4.7)."""

NEW_USER_SALT_SIZE = 64

# RFC 5054 Appendix A groups. 1024-2048 are the SRP-specific primes; 3072-8192 equal the
# RFC 3526 MODP primes (tests rebuild those from the pi formula and check N, (N-1)/2 prime).
_N_1024 = (
    "eeaf0ab9adb38dd69c33f80afa8fc5e86072618775ff3c0b9ea2314c9c256576d674df7496ea81d3383b4813d692c6e0"
    "e0d5d8e250b98be48e495c1d6089dad15dc7d7b46154d6b6ce8ef4ad69b15d4982559b297bcf1885c529f566660e57ec"
    "68edbc3c05726cc02fd4cbf4976eaa9afd5138fe8376435b9fc61d2fc0eb06e3"
)
_N_1536 = (
    "9def3cafb939277ab1f12a8617a47bbbdba51df499ac4c80beeea9614b19cc4d5f4f5f556e27cbde51c6a94be4607a29"
    "1558903ba0d0f84380b655bb9a22e8dcdf028a7cec67f0d08134b1c8b97989149b609e0be3bab63d47548381dbc5b1fc"
    "764e3f4b53dd9da1158bfd3e2b9c8cf56edf019539349627db2fd53d24b7c48665772e437d6c7f8ce442734af7ccb7ae"
    "837c264ae3a9beb87f8a2fe9b8b5292e5a021fff5e91479e8ce7a28c2442c6f315180f93499a234dcf76e3fed135f9bb"
)
_N_2048 = (
    "ac6bdb41324a9a9bf166de5e1389582faf72b6651987ee07fc3192943db56050a37329cbb4a099ed8193e0757767a13d"
    "d52312ab4b03310dcd7f48a9da04fd50e8083969edb767b0cf6095179a163ab3661a05fbd5faaae82918a9962f0b93b8"
    "55f97993ec975eeaa80d740adbf4ff747359d041d5c33ea71d281e446b14773bca97b43a23fb801676bd207a436c6481"
    "f1d2b9078717461a5b9d32e688f87748544523b524b0d57d5ea77a2775d2ecfa032cfbdbf52fb3786160279004e57ae6"
    "af874e7303ce53299ccc041c7bc308d82a5698f3a8d0c38271ae35f8e9dbfbb694b5c803d89f7ae435de236d525f5475"
    "9b65e372fcd68ef20fa7111f9e4aff73"
)
_N_3072 = (
    "ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd129024e088a67cc74020bbea63b139b22514a08798e3404dd"
    "ef9519b3cd3a431b302b0a6df25f14374fe1356d6d51c245e485b576625e7ec6f44c42e9a637ed6b0bff5cb6f406b7ed"
    "ee386bfb5a899fa5ae9f24117c4b1fe649286651ece45b3dc2007cb8a163bf0598da48361c55d39a69163fa8fd24cf5f"
    "83655d23dca3ad961c62f356208552bb9ed529077096966d670c354e4abc9804f1746c08ca18217c32905e462e36ce3b"
    "e39e772c180e86039b2783a2ec07a28fb5c55df06f4c52c9de2bcbf6955817183995497cea956ae515d2261898fa0510"
    "15728e5a8aaac42dad33170d04507a33a85521abdf1cba64ecfb850458dbef0a8aea71575d060c7db3970f85a6e1e4c7"
    "abf5ae8cdb0933d71e8c94e04a25619dcee3d2261ad2ee6bf12ffa06d98a0864d87602733ec86a64521f2b18177b200c"
    "bbe117577a615d6c770988c0bad946e208e24fa074e5ab3143db5bfce0fd108e4b82d120a93ad2caffffffffffffffff"
)
_N_4096 = (
    "ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd129024e088a67cc74020bbea63b139b22514a08798e3404dd"
    "ef9519b3cd3a431b302b0a6df25f14374fe1356d6d51c245e485b576625e7ec6f44c42e9a637ed6b0bff5cb6f406b7ed"
    "ee386bfb5a899fa5ae9f24117c4b1fe649286651ece45b3dc2007cb8a163bf0598da48361c55d39a69163fa8fd24cf5f"
    "83655d23dca3ad961c62f356208552bb9ed529077096966d670c354e4abc9804f1746c08ca18217c32905e462e36ce3b"
    "e39e772c180e86039b2783a2ec07a28fb5c55df06f4c52c9de2bcbf6955817183995497cea956ae515d2261898fa0510"
    "15728e5a8aaac42dad33170d04507a33a85521abdf1cba64ecfb850458dbef0a8aea71575d060c7db3970f85a6e1e4c7"
    "abf5ae8cdb0933d71e8c94e04a25619dcee3d2261ad2ee6bf12ffa06d98a0864d87602733ec86a64521f2b18177b200c"
    "bbe117577a615d6c770988c0bad946e208e24fa074e5ab3143db5bfce0fd108e4b82d120a92108011a723c12a787e6d7"
    "88719a10bdba5b2699c327186af4e23c1a946834b6150bda2583e9ca2ad44ce8dbbbc2db04de8ef92e8efc141fbecaa6"
    "287c59474e6bc05d99b2964fa090c3a2233ba186515be7ed1f612970cee2d7afb81bdd762170481cd0069127d5b05aa9"
    "93b4ea988d8fddc186ffb7dc90a6c08f4df435c934063199ffffffffffffffff"
)
_N_6144 = (
    "ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd129024e088a67cc74020bbea63b139b22514a08798e3404dd"
    "ef9519b3cd3a431b302b0a6df25f14374fe1356d6d51c245e485b576625e7ec6f44c42e9a637ed6b0bff5cb6f406b7ed"
    "ee386bfb5a899fa5ae9f24117c4b1fe649286651ece45b3dc2007cb8a163bf0598da48361c55d39a69163fa8fd24cf5f"
    "83655d23dca3ad961c62f356208552bb9ed529077096966d670c354e4abc9804f1746c08ca18217c32905e462e36ce3b"
    "e39e772c180e86039b2783a2ec07a28fb5c55df06f4c52c9de2bcbf6955817183995497cea956ae515d2261898fa0510"
    "15728e5a8aaac42dad33170d04507a33a85521abdf1cba64ecfb850458dbef0a8aea71575d060c7db3970f85a6e1e4c7"
    "abf5ae8cdb0933d71e8c94e04a25619dcee3d2261ad2ee6bf12ffa06d98a0864d87602733ec86a64521f2b18177b200c"
    "bbe117577a615d6c770988c0bad946e208e24fa074e5ab3143db5bfce0fd108e4b82d120a92108011a723c12a787e6d7"
    "88719a10bdba5b2699c327186af4e23c1a946834b6150bda2583e9ca2ad44ce8dbbbc2db04de8ef92e8efc141fbecaa6"
    "287c59474e6bc05d99b2964fa090c3a2233ba186515be7ed1f612970cee2d7afb81bdd762170481cd0069127d5b05aa9"
    "93b4ea988d8fddc186ffb7dc90a6c08f4df435c93402849236c3fab4d27c7026c1d4dcb2602646dec9751e763dba37bd"
    "f8ff9406ad9e530ee5db382f413001aeb06a53ed9027d831179727b0865a8918da3edbebcf9b14ed44ce6cbaced4bb1b"
    "db7f1447e6cc254b332051512bd7af426fb8f401378cd2bf5983ca01c64b92ecf032ea15d1721d03f482d7ce6e74fef6"
    "d55e702f46980c82b5a84031900b1c9e59e7c97fbec7e8f323a97a7e36cc88be0f1d45b7ff585ac54bd407b22b4154aa"
    "cc8f6d7ebf48e1d814cc5ed20f8037e0a79715eef29be32806a1d58bb7c5da76f550aa3d8a1fbff0eb19ccb1a313d55c"
    "da56c9ec2ef29632387fe8d76e3c0468043e8f663f4860ee12bf2d5b0b7474d6e694f91e6dcc4024ffffffffffffffff"
)
_N_8192 = (
    "ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd129024e088a67cc74020bbea63b139b22514a08798e3404dd"
    "ef9519b3cd3a431b302b0a6df25f14374fe1356d6d51c245e485b576625e7ec6f44c42e9a637ed6b0bff5cb6f406b7ed"
    "ee386bfb5a899fa5ae9f24117c4b1fe649286651ece45b3dc2007cb8a163bf0598da48361c55d39a69163fa8fd24cf5f"
    "83655d23dca3ad961c62f356208552bb9ed529077096966d670c354e4abc9804f1746c08ca18217c32905e462e36ce3b"
    "e39e772c180e86039b2783a2ec07a28fb5c55df06f4c52c9de2bcbf6955817183995497cea956ae515d2261898fa0510"
    "15728e5a8aaac42dad33170d04507a33a85521abdf1cba64ecfb850458dbef0a8aea71575d060c7db3970f85a6e1e4c7"
    "abf5ae8cdb0933d71e8c94e04a25619dcee3d2261ad2ee6bf12ffa06d98a0864d87602733ec86a64521f2b18177b200c"
    "bbe117577a615d6c770988c0bad946e208e24fa074e5ab3143db5bfce0fd108e4b82d120a92108011a723c12a787e6d7"
    "88719a10bdba5b2699c327186af4e23c1a946834b6150bda2583e9ca2ad44ce8dbbbc2db04de8ef92e8efc141fbecaa6"
    "287c59474e6bc05d99b2964fa090c3a2233ba186515be7ed1f612970cee2d7afb81bdd762170481cd0069127d5b05aa9"
    "93b4ea988d8fddc186ffb7dc90a6c08f4df435c93402849236c3fab4d27c7026c1d4dcb2602646dec9751e763dba37bd"
    "f8ff9406ad9e530ee5db382f413001aeb06a53ed9027d831179727b0865a8918da3edbebcf9b14ed44ce6cbaced4bb1b"
    "db7f1447e6cc254b332051512bd7af426fb8f401378cd2bf5983ca01c64b92ecf032ea15d1721d03f482d7ce6e74fef6"
    "d55e702f46980c82b5a84031900b1c9e59e7c97fbec7e8f323a97a7e36cc88be0f1d45b7ff585ac54bd407b22b4154aa"
    "cc8f6d7ebf48e1d814cc5ed20f8037e0a79715eef29be32806a1d58bb7c5da76f550aa3d8a1fbff0eb19ccb1a313d55c"
    "da56c9ec2ef29632387fe8d76e3c0468043e8f663f4860ee12bf2d5b0b7474d6e694f91e6dbe115974a3926f12fee5e4"
    "38777cb6a932df8cd8bec4d073b931ba3bc832b68d9dd300741fa7bf8afc47ed2576f6936ba424663aab639c5ae4f568"
    "3423b4742bf1c978238f16cbe39d652de3fdb8befc848ad922222e04a4037c0713eb57a81a23f0c73473fc646cea306b"
    "4bcbc8862f8385ddfa9d4b7fa2c087e879683303ed5bdd3a062b3cf5b3a278a66d2a13f83f44f82ddf310ee074ab6a36"
    "4597e899a0255dc164f31cc50846851df9ab48195ded7ea1b1d510bd7ee74d73faf36bc31ecfa268359046f4eb879f92"
    "4009438b481c6cd7889a002ed5ee382bc9190da6fc026e479558e4475677e9aa9e3050e2765694dfc81f56e880b96e71"
    "60c980dd98edd3dfffffffffffffffff"
)


@dataclass(frozen=True, slots=True)
class SrpGroup:
    """A named SRP group: safe prime ``N`` and generator ``g``."""

    name: str
    N: int
    g: int

    @property
    def size(self) -> int:
        """Byte length of N, the width of ``PAD()``."""
        return (self.N.bit_length() + 7) // 8

    @property
    def n_bytes(self) -> bytes:
        return int_to_bytes(self.N)

    @property
    def g_bytes(self) -> bytes:
        return int_to_bytes(self.g)


def _group(name: str, hex_n: str, g: int) -> SrpGroup:
    return SrpGroup(name, int(hex_n, 16), g)


GROUPS: Mapping[str, SrpGroup] = MappingProxyType(
    {
        "1024": _group("1024", _N_1024, 2),
        "1536": _group("1536", _N_1536, 2),
        "2048": _group("2048", _N_2048, 2),
        "3072": _group("3072", _N_3072, 5),
        "4096": _group("4096", _N_4096, 5),
        "6144": _group("6144", _N_6144, 5),
        "8192": _group("8192", _N_8192, 19),
    }
)
"""Every group a stored user may name (server side)."""

NEW_USER_GROUP = "4096"
FAKE_USER_GROUP = "8192"
CLIENT_GROUPS = ("4096", "6144", "8192")
"""The only groups a 2.7.0 client accepts from a server (§4.7)."""


# --- Generic SRP-6a (RFC 5054 formulas) -------------------------------------------------------


def compute_k(group: SrpGroup, hash_fn: HashFn) -> int:
    """``k = H(PAD(N) | PAD(g))``."""
    return bytes_to_int(hash_fn(pad(group.N, group.size) + pad(group.g, group.size)))


def compute_x(salt: bytes, identity: bytes, password: bytes, hash_fn: HashFn) -> int:
    """``x = H(s | H(I | ":" | P))`` with the salt bytes exactly as given."""
    return bytes_to_int(hash_fn(salt + hash_fn(identity + b":" + password)))


def compute_verifier(group: SrpGroup, x: int) -> int:
    """``v = g^x mod N``."""
    return pow(group.g, x, group.N)


def compute_a_public(group: SrpGroup, a: int) -> int:
    """The client's public value ``A = g^a mod N``."""
    return pow(group.g, a, group.N)


def compute_b_public(group: SrpGroup, k: int, v: int, b: int) -> int:
    """The server's public value ``B = (k*v + g^b) mod N``."""
    return (k * v + pow(group.g, b, group.N)) % group.N


def check_public_value(group: SrpGroup, value: int, code: ErrorCode) -> None:
    """Refuse a peer's A or B that is ≥ N or ≡ 0 mod N (the SRP-6a safeguards).

    ``code`` differs by side: the C++ server reports UNKNOWN_ERROR for a bad A, the client a
    protocol error for a bad B (where C++ silently stalls instead, §12 bug 12).
    """
    if value >= group.N or value % group.N == 0:
        raise AspiaProtocolError("SRP public value out of range", code)


def compute_u(group: SrpGroup, a_public: int, b_public: int, hash_fn: HashFn) -> int:
    """``u = H(PAD(A) | PAD(B))``; both values must already be below N."""
    if not (0 <= a_public < group.N and 0 <= b_public < group.N):
        raise AspiaProtocolError("SRP public value not below N")
    return bytes_to_int(hash_fn(pad(a_public, group.size) + pad(b_public, group.size)))


def client_premaster(group: SrpGroup, k: int, b_public: int, x: int, a: int, u: int) -> int:
    """``S = (B - k*g^x mod N)^(a + u*x) mod N``; the exponent is deliberately not reduced."""
    check_public_value(group, b_public, ErrorCode.PROTOCOL_ERROR)
    base = (b_public - k * pow(group.g, x, group.N)) % group.N
    return pow(base, a + u * x, group.N)


def server_premaster(group: SrpGroup, a_public: int, v: int, u: int, b: int) -> int:
    """``S = (A * v^u mod N)^b mod N``."""
    check_public_value(group, a_public, ErrorCode.UNKNOWN_ERROR)
    return pow(a_public * pow(v, u, group.N) % group.N, b, group.N)


# --- Aspia specifics --------------------------------------------------------------------------


def h512_digest(data: bytes) -> bytes:
    """BLAKE2b-512 as a :data:`HashFn`."""
    return h512(data)


def aspia_x(salt: bytes, username: str, password: bytes) -> int:
    """Aspia's x: BLAKE2b-512, stripped salt first, and the user name lower-cased (§4.7).

    Lower-casing uses ``str.lower()``; the C++ side uses ICU root-locale lowering, which the
    spec only confirmed equal for ASCII.
    """
    identity = username.lower().encode("utf-8")
    return compute_x(strip_leading_zeros(salt), identity, password, h512_digest)


def make_verifier(group: SrpGroup, salt: bytes, username: str, password: bytes) -> bytes:
    """The stored verifier for a user record, stripped big-endian."""
    return int_to_bytes(compute_verifier(group, aspia_x(salt, username, password)))


def fake_user(seed: bytes, username: str) -> tuple[SrpGroup, bytes, bytes]:
    """Deterministic ``(group, salt, verifier)`` for an unknown or disabled user (§4.8).

    Salt and verifier depend only on the server's seed and the name as received, so probing a
    name twice gives the same answer and the response cannot reveal whether the user exists.
    """
    group = GROUPS[FAKE_USER_GROUP]
    salt = strip_leading_zeros(h512(seed + username.encode("utf-8")))
    return group, salt, make_verifier(group, salt, username, seed)


def client_group(number: bytes, generator: bytes) -> SrpGroup:
    """Identify the group a server sent, accepting only the client-allowed ones (§4.7)."""
    number = strip_leading_zeros(number)
    if len(number) not in (GROUPS[name].size for name in CLIENT_GROUPS) or len(generator) > 8:
        raise AspiaProtocolError("server offered an SRP group a 2.7.0 client does not accept")
    n = bytes_to_int(number)
    g = bytes_to_int(generator)
    for name in CLIENT_GROUPS:
        group = GROUPS[name]
        if n == group.N and g == group.g:
            return group
    raise AspiaProtocolError("server offered an SRP group a 2.7.0 client does not accept")


def new_account(username: str, password: bytes, salt: bytes) -> tuple[str, bytes, bytes]:
    """``(group name, salt, verifier)`` for a new user, as the C++ admin builds it (§6.7).

    The caller supplies a fresh 64-byte random salt (:data:`NEW_USER_SALT_SIZE`).
    """
    group = GROUPS[NEW_USER_GROUP]
    return group.name, salt, make_verifier(group, salt, username, password)
