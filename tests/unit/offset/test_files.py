"""Identity and ticket files: byte-exact formats (spec §10) and the original's strict reading."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from natrelay.offset.files import (
    MAX_FILE_SIZE,
    FileFormatError,
    RelayTicket,
    b64url_decode,
    b64url_encode,
    public_key_from_seed,
    read_identity_or_ticket,
    read_identity_seed,
    read_ticket,
    write_identity,
    write_ticket,
)

# RFC 8032 test 1 and the spec's §10.2 / §10.3 example files.
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
SEED_B64 = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
PUBLIC_B64 = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
IDENT_BYTES = b'{\n  "privateKey": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"\n}'
TICKET_BYTES = (
    b'{\n  "publicKey": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",\n  "address": "127.0.0.1:1337"\n}'
)


def _ident(tmp_path: Path, key_text: str, extra: str = "") -> Path:
    path = tmp_path / "x.ident"
    path.write_text('{\n  "privateKey": "' + key_text + '"' + extra + "\n}", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- base64


def test_b64url_encode_matches_spec_vectors() -> None:
    assert b64url_encode(SEED) == SEED_B64
    assert b64url_encode(PUBLIC) == PUBLIC_B64
    assert len(b64url_encode(bytes(32))) == 43


def test_public_key_from_seed_is_rfc8032_test1() -> None:
    assert public_key_from_seed(SEED) == PUBLIC
    with pytest.raises(ValueError):
        public_key_from_seed(SEED[:31])


@given(st.binary(min_size=0, max_size=80))
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text, length=len(data), what="v") == data


@given(st.binary(min_size=1, max_size=40))
def test_b64url_accepts_canonical_padding(data: bytes) -> None:
    padded = base64.urlsafe_b64encode(data).decode()
    assert b64url_decode(padded, length=len(data), what="v") == data


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("+" + SEED_B64[1:], "'+'"),                # standard alphabet (spec: "Invalid byte 43, offset 0")
        (SEED_B64[:10] + "/" + SEED_B64[11:], "'/'"),
        (SEED_B64[:-1] + "B", "non-zero unused bits"),  # spec: "Invalid last symbol 66, offset 42"
        (SEED_B64 + "==", "padding"),               # more '=' than the Rust decoder allows
        (SEED_B64[:20] + "=" + SEED_B64[20:], "'=' padding is only allowed at the end"),
        (SEED_B64[:-1] + " ", "' '"),
        (" " + SEED_B64, "' '"),
        (SEED_B64 + "\n", "'\\n'"),
        (SEED_B64[:-1] + "é", "'é'"),
        (SEED_B64 + "AA", "cannot be decoded"),     # 45 characters leave a 6-bit remainder
    ],
)
def test_b64url_decode_rejects_what_the_original_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=r"^key: ") as info:
        b64url_decode(text, length=32, what="key")
    assert fragment in str(info.value)


def test_b64url_decode_checks_unused_bits_for_both_remainders() -> None:
    # One trailing byte -> 2 chars, 4 unused bits; two bytes -> 3 chars, 2 unused bits.
    assert b64url_decode("_w", length=1, what="v") == b"\xff"
    for bad in ("_x", "_z", "_0", "_-"):
        with pytest.raises(ValueError, match="unused bits"):
            b64url_decode(bad, length=1, what="v")
    assert b64url_decode("__8", length=2, what="v") == b"\xff\xff"
    with pytest.raises(ValueError, match="unused bits"):
        b64url_decode("__9", length=2, what="v")


def test_b64url_decode_padding_positions_like_rust_base64_0_10() -> None:
    assert b64url_decode("AA=", length=1, what="v") == b"\x00"  # short padding is accepted
    assert b64url_decode("AA==", length=1, what="v") == b"\x00"
    assert b64url_decode("AAA=", length=2, what="v") == b"\x00\x00"
    for bad in ("AAA==", "AAAA=", "A===", "===="):
        with pytest.raises(ValueError):
            b64url_decode(bad, length=0, what="v")


def test_b64url_decode_short_is_an_error_long_is_truncated_with_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ValueError, match="31 bytes; 32 are required"):
        b64url_decode(b64url_encode(SEED[:31]), length=32, what="key")
    with pytest.raises(ValueError, match="0 bytes"):
        b64url_decode("", length=32, what="key")
    with caplog.at_level(logging.WARNING, logger="natrelay.offset.files"):
        assert b64url_decode(b64url_encode(SEED + b"\x01\x02"), length=32, what="key") == SEED
    assert any("34 bytes" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- writing


def test_written_files_are_byte_exact(tmp_path: Path) -> None:
    write_identity(tmp_path / "relay.ident", SEED)
    write_ticket(tmp_path / "relay.ticket", RelayTicket(PUBLIC, "127.0.0.1:1337"))
    assert (tmp_path / "relay.ident").read_bytes() == IDENT_BYTES
    assert (tmp_path / "relay.ticket").read_bytes() == TICKET_BYTES


def test_non_ascii_address_is_raw_utf8(tmp_path: Path) -> None:
    write_ticket(tmp_path / "t", RelayTicket(PUBLIC, "relé.example:1337"))
    raw = (tmp_path / "t").read_bytes()
    assert "relé.example:1337".encode() in raw and b"\\u" not in raw
    assert read_ticket(tmp_path / "t").address == "relé.example:1337"


def test_identity_mode_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_identity(tmp_path / "a.ident", SEED)
        write_ticket(tmp_path / "a.ticket", RelayTicket(PUBLIC, "h:1"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.ident").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a.ticket").stat().st_mode) == 0o644


def test_writers_create_missing_parents(tmp_path: Path) -> None:
    write_identity(tmp_path / "a" / "b" / "relay.ident", SEED)
    write_ticket(tmp_path / "c" / "d" / "relay.ticket", RelayTicket(PUBLIC, "h:1"))
    assert read_identity_seed(tmp_path / "a" / "b" / "relay.ident") == SEED
    assert read_ticket(tmp_path / "c" / "d" / "relay.ticket").public_key == PUBLIC


def test_refuses_to_overwrite_and_leaves_the_file_unchanged(tmp_path: Path) -> None:
    ident, ticket = tmp_path / "r.ident", tmp_path / "r.ticket"
    ident.write_bytes(b"precious")
    ticket.write_bytes(b"also precious")
    with pytest.raises(FileExistsError):
        write_identity(ident, bytes(32))
    with pytest.raises(FileExistsError):
        write_ticket(ticket, RelayTicket(PUBLIC, "h:1"))
    assert ident.read_bytes() == b"precious"
    assert ticket.read_bytes() == b"also precious"


def test_does_not_follow_a_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "link.ident").symlink_to(target)
    with pytest.raises(FileExistsError):
        write_identity(tmp_path / "link.ident", SEED)
    assert not target.exists()


def test_parent_that_is_a_file_is_not_reported_as_existing_output(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_identity(tmp_path / "plain" / "relay.ident", SEED)


def test_writers_validate_their_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_identity(tmp_path / "i", SEED[:16])
    assert not (tmp_path / "i").exists()
    with pytest.raises(ValueError):
        RelayTicket(PUBLIC[:31], "h:1")
    with pytest.raises(ValueError, match="257 bytes"):
        RelayTicket(PUBLIC, "a" * 252 + ":1234")
    assert RelayTicket(PUBLIC, "a" * 251 + ":1234").address.endswith(":1234")


# ----------------------------------------------------------------------------- reading


def test_reads_the_spec_examples(tmp_path: Path) -> None:
    (tmp_path / "i").write_bytes(IDENT_BYTES)
    (tmp_path / "t").write_bytes(TICKET_BYTES)
    assert read_identity_seed(tmp_path / "i") == SEED
    assert read_ticket(tmp_path / "t") == RelayTicket(PUBLIC, "127.0.0.1:1337")
    assert read_identity_or_ticket(tmp_path / "i") == SEED
    assert read_identity_or_ticket(tmp_path / "t") == RelayTicket(PUBLIC, "127.0.0.1:1337")


@given(st.binary(min_size=32, max_size=32), st.text(max_size=60).filter(lambda s: "\x00" not in s))
def test_round_trip(tmp_path_factory: pytest.TempPathFactory, key: bytes, address: str) -> None:
    base = tmp_path_factory.mktemp("rt")
    write_identity(base / "i", key)
    write_ticket(base / "t", RelayTicket(key, address))
    assert read_identity_seed(base / "i") == key
    assert read_ticket(base / "t") == RelayTicket(key, address)


def test_accepts_padding_unknown_fields_and_trailing_newline(tmp_path: Path) -> None:
    path = _ident(tmp_path, SEED_B64 + "=", extra=',\n  "comment": [1, {"x": null}]')
    path.write_text(path.read_text() + "\n\n")
    assert read_identity_seed(path) == SEED
    ticket = tmp_path / "t"
    ticket.write_text(json.dumps({"address": "h:1", "publicKey": PUBLIC_B64, "extra": 5}))
    assert read_ticket(ticket) == RelayTicket(PUBLIC, "h:1")


def test_long_key_is_truncated_with_a_warning_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _ident(tmp_path, b64url_encode(SEED + b"\xaa\xbb"))
    with caplog.at_level(logging.WARNING, logger="natrelay.offset.files"):
        assert read_identity_seed(path) == SEED
    assert any(str(path) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{\n  "privateKey": "' + "+" + SEED_B64[1:] + '"\n}', "'+'"),
        ('{\n  "privateKey": "' + SEED_B64[:-1] + 'B"\n}', "unused bits"),
        ('{\n  "privateKey": "' + b64url_encode(SEED[:31]) + '"\n}', "31 bytes; 32 are required"),
        ('{\n  "privateKey": ""\n}', "0 bytes"),
        ("{}", "missing field 'privateKey'"),
        ('{"privateKey": 5}', "must be a string"),
        ('{"privateKey": null}', "must be a string"),
        ("[]", "expected a JSON object"),
        ("", "not valid JSON"),
        ('{"privateKey": "' + SEED_B64 + '"', "not valid JSON"),
        ('{"privateKey": "' + SEED_B64 + '", "privateKey": "' + SEED_B64 + '"}', "duplicate field"),
        ('{"privateKey": "' + SEED_B64 + '", "x": NaN}', "NaN"),
    ],
)
def test_identity_rejections_name_file_and_problem(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.ident"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(FileFormatError) as info:
        read_identity_seed(path)
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)
    assert info.value.path == str(path)


def test_rejects_non_utf8_and_oversized_files(tmp_path: Path) -> None:
    path = tmp_path / "bin.ident"
    path.write_bytes(b'{"privateKey": "\xff"}')
    with pytest.raises(FileFormatError, match="not UTF-8"):
        read_identity_seed(path)
    path.write_bytes(b" " * MAX_FILE_SIZE + IDENT_BYTES)
    with pytest.raises(FileFormatError, match="larger than"):
        read_identity_seed(path)


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"publicKey": PUBLIC_B64}, "missing field 'address'"),
        ({"address": "h:1"}, "missing field 'publicKey'"),
        ({"publicKey": PUBLIC_B64, "address": 7}, "must be a string"),
        ({"publicKey": PUBLIC_B64, "address": "a" * 257}, "257 bytes"),
        ({"publicKey": PUBLIC_B64[:-1] + "p", "address": "h:1"}, "unused bits"),
        ({"publicKey": b64url_encode(PUBLIC[:31]), "address": "h:1"}, "31 bytes"),
        ({"publicKey": PUBLIC_B64, "address": "\ud800:1"}, "surrogate"),
    ],
)
def test_ticket_rejections(tmp_path: Path, obj: dict[str, object], fragment: str) -> None:
    path = tmp_path / "bad.ticket"
    path.write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(FileFormatError, match=f"^{path}: ") as info:
        read_ticket(path)
    assert fragment in str(info.value)


def test_ticket_address_limit_is_bytes_not_characters(tmp_path: Path) -> None:
    path = tmp_path / "t.ticket"
    path.write_text(json.dumps({"publicKey": PUBLIC_B64, "address": "é" * 128}), encoding="utf-8")
    assert read_ticket(path).address == "é" * 128  # 256 bytes
    path.write_text(json.dumps({"publicKey": PUBLIC_B64, "address": "é" * 128 + "x"}), encoding="utf-8")
    with pytest.raises(FileFormatError, match="257 bytes"):
        read_ticket(path)


def test_read_identity_or_ticket_refuses_other_json(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"hello": "world"}')
    with pytest.raises(FileFormatError, match="neither an identity"):
        read_identity_or_ticket(path)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_identity_seed(tmp_path / "absent.ident")


def test_written_identity_signs_for_its_ticket_key(tmp_path: Path) -> None:
    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    write_identity(tmp_path / "i", seed)
    write_ticket(tmp_path / "t", RelayTicket(public_key_from_seed(seed), "h:1"))
    private = Ed25519PrivateKey.from_private_bytes(read_identity_seed(tmp_path / "i"))
    signature = private.sign(b"hello")
    Ed25519PublicKey.from_public_bytes(read_ticket(tmp_path / "t").public_key).verify(signature, b"hello")
