"""The installed ``stmgr`` console script, run as a user would (seed manual, spec §11, §13.6)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from natrelay.offset.files import b64url_decode, b64url_encode

RELAY_PORT = "13370"

# The "Running your own relay" commands from shared/seeds/offset-relay.txt, verbatim
# (the strelay line belongs to the relay's own tests).
SEED_COMMANDS = """\
mkdir relay
stmgr gen-ident --output relay/relay.ident
stmgr relay-ticket \\
        --address $RELAY_ADDRESS:$RELAY_PORT \\
        --idfile relay/relay.ident \\
        --output relay/relay.relay
"""

SPEC_IDENT = b'{\n  "privateKey": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"\n}'
SPEC_TICKET = (
    b'{\n  "publicKey": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",\n  "address": "127.0.0.1:1337"\n}'
)


def _find_stmgr() -> str:
    # Prefer the script installed next to this interpreter: a PATH lookup may hit a
    # different Python's copy or a slow version-manager shim.
    beside = Path(sys.executable).parent / "stmgr"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("stmgr")
    if found is None:
        pytest.fail("the stmgr console script is not installed; run: python3 -m pip install -e '.[test]'")
    return found


@pytest.fixture(scope="module")
def stmgr_path() -> str:
    return _find_stmgr()


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str


Runner = Callable[..., Result]


@pytest.fixture
def run(stmgr_path: str, tmp_path: Path) -> Runner:
    env = {k: v for k, v in os.environ.items() if k != "NATRELAY_LOG"}

    def _run(*args: str) -> Result:
        done = subprocess.run(
            [stmgr_path, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    return _run


def _assert_one_error_line(result: Result, *fragments: str) -> None:
    assert result.status == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stmgr: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_seed_manual_commands(stmgr_path: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NATRELAY_LOG"}
    env.update(
        RELAY_ADDRESS="127.0.0.1",
        RELAY_PORT=RELAY_PORT,
        PATH=os.path.dirname(stmgr_path) + os.pathsep + env.get("PATH", ""),
    )
    done = subprocess.run(
        ["bash", "-e", "-c", "umask 022\n" + SEED_COMMANDS],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")  # silent on success, like the original

    ident, ticket = tmp_path / "relay" / "relay.ident", tmp_path / "relay" / "relay.relay"
    assert stat.S_IMODE(ident.stat().st_mode) == 0o600
    assert stat.S_IMODE(ticket.stat().st_mode) == 0o644

    ident_obj = json.loads(ident.read_bytes())
    ticket_obj = json.loads(ticket.read_bytes())
    assert list(ident_obj) == ["privateKey"] and list(ticket_obj) == ["publicKey", "address"]
    # Exactly serde_json's pretty layout: re-serialising gives the same bytes.
    assert ident.read_bytes() == json.dumps(ident_obj, indent=2, ensure_ascii=False).encode()
    assert ticket.read_bytes() == json.dumps(ticket_obj, indent=2, ensure_ascii=False).encode()
    assert ticket_obj["address"] == f"127.0.0.1:{RELAY_PORT}"

    seed = b64url_decode(ident_obj["privateKey"], length=32, what="privateKey")
    assert ident_obj["privateKey"] == b64url_encode(seed)  # 43 chars, no padding
    private = Ed25519PrivateKey.from_private_bytes(seed)
    assert ticket_obj["publicKey"] == b64url_encode(private.public_key().public_bytes_raw())
    ticket_raw = b64url_decode(ticket_obj["publicKey"], length=32, what="publicKey")
    ticket_key = Ed25519PublicKey.from_public_bytes(ticket_raw)
    ticket_key.verify(private.sign(b"relay proof"), b"relay proof")


def test_spec_example_ident_gives_the_spec_ticket_byte_for_byte(run: Runner, tmp_path: Path) -> None:
    (tmp_path / "spec.ident").write_bytes(SPEC_IDENT)
    result = run("relay-ticket", "-a", "127.0.0.1:1337", "-i", "spec.ident", "-o", "spec.ticket")
    assert (result.status, result.stdout, result.stderr) == (0, "", "")
    assert (tmp_path / "spec.ticket").read_bytes() == SPEC_TICKET


def test_show_prints_key_and_address(run: Runner, tmp_path: Path) -> None:
    (tmp_path / "spec.ident").write_bytes(SPEC_IDENT)
    (tmp_path / "spec.ticket").write_bytes(SPEC_TICKET)
    shown = run("show", "spec.ident")
    assert (shown.status, shown.stdout) == (0, "publicKey: 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\n")
    shown = run("show", "spec.ticket")
    assert shown.status == 0
    assert shown.stdout == "publicKey: 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\naddress: 127.0.0.1:1337\n"


def test_gen_ident_twice_refuses_and_leaves_the_file_unchanged(run: Runner, tmp_path: Path) -> None:
    assert run("gen-ident", "-o", "deep/er/r.ident").status == 0  # parents are created
    before = (tmp_path / "deep/er/r.ident").read_bytes()
    _assert_one_error_line(run("gen-ident", "-o", "deep/er/r.ident"), "deep/er/r.ident", "already exists")
    assert (tmp_path / "deep/er/r.ident").read_bytes() == before


def test_relay_ticket_checks_output_before_reading_the_ident(run: Runner, tmp_path: Path) -> None:
    (tmp_path / "r.ticket").write_text("keep me")
    result = run("relay-ticket", "-a", "127.0.0.1:1", "-i", "missing.ident", "-o", "r.ticket")
    _assert_one_error_line(result, "r.ticket", "already exists")
    assert (tmp_path / "r.ticket").read_text() == "keep me"


@pytest.mark.parametrize(
    ("ident_bytes", "fragments"),
    [
        (None, ("missing.ident", "No such file")),
        (SPEC_IDENT.replace(b'"nW', b'"+W'), ("missing.ident", "'+'")),
        (SPEC_IDENT.replace(b'f2A"', b'f2B"'), ("missing.ident", "unused bits")),
        (b'{"privateKey": "' + b64url_encode(bytes(31)).encode() + b'"}', ("missing.ident", "31 bytes")),
    ],
)
def test_bad_ident_fails_with_status_1(
    run: Runner, tmp_path: Path, ident_bytes: bytes | None, fragments: tuple[str, ...]
) -> None:
    if ident_bytes is not None:
        (tmp_path / "missing.ident").write_bytes(ident_bytes)
    result = run("relay-ticket", "-a", "127.0.0.1:1", "-i", "missing.ident", "-o", "t")
    _assert_one_error_line(result, *fragments)
    assert not (tmp_path / "t").exists()


def test_long_key_is_accepted_with_a_warning(run: Runner, tmp_path: Path) -> None:
    seed = bytes(range(32))
    (tmp_path / "long.ident").write_text(json.dumps({"privateKey": b64url_encode(seed + b"\x99\x98")}))
    result = run("relay-ticket", "-a", "127.0.0.1:1", "-i", "long.ident", "-o", "t")
    assert result.status == 0
    assert "WARNING" in result.stderr and "34 bytes" in result.stderr
    expected = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert json.loads((tmp_path / "t").read_text())["publicKey"] == b64url_encode(expected)


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("", "empty"),
        ("a" * 252 + ":1234", "257 bytes"),
        ("127.0.0.1", "no port"),
        ("127.0.0.1:0", "outside 1-65535"),
        ("127.0.0.1:65536", "outside 1-65535"),
        ("127.0.0.1:port", "not a number"),
    ],
)
def test_bad_address_is_refused(run: Runner, tmp_path: Path, address: str, fragment: str) -> None:
    (tmp_path / "r.ident").write_bytes(SPEC_IDENT)
    result = run("relay-ticket", "-a", address, "-i", "r.ident", "-o", "t")
    _assert_one_error_line(result, "--address", fragment)
    assert not (tmp_path / "t").exists()


def test_longest_address_and_ipv6_are_accepted(run: Runner, tmp_path: Path) -> None:
    (tmp_path / "r.ident").write_bytes(SPEC_IDENT)
    longest = "a" * 251 + ":1234"
    assert run("relay-ticket", "--address", longest, "--idfile", "r.ident", "--output", "a").status == 0
    assert json.loads((tmp_path / "a").read_text())["address"] == longest
    assert run("relay-ticket", "-a", "[::1]:65535", "-i", "r.ident", "-o", "b").status == 0
    assert json.loads((tmp_path / "b").read_text())["address"] == "[::1]:65535"


def test_version_help_and_usage_errors(run: Runner) -> None:
    version = run("--version")
    assert (version.status, version.stdout.strip()) == (0, "stmgr 0.1.0")
    for args in (["--help"], ["gen-ident", "--help"], ["relay-ticket", "-h"], ["show", "--help"]):
        shown = run(*args)
        assert shown.status == 0 and "exit status" in shown.stdout, args
    assert run("relay-ticket", "-a", "127.0.0.1:1", "-o", "t").status == 2  # missing --idfile
    assert run("frobnicate").status == 2
    assert run().status == 2


def test_verbose_says_what_was_written(run: Runner, tmp_path: Path) -> None:
    result = run("gen-ident", "-o", "v.ident", "--verbose")
    assert result.status == 0 and result.stdout == ""
    assert "v.ident" in result.stderr and "INFO" in result.stderr


def test_show_key_only_prints_the_bare_key(run: Runner, tmp_path: Path) -> None:
    (tmp_path / "spec.ident").write_bytes(SPEC_IDENT)
    shown = run("show", "--key", "spec.ident")
    assert (shown.status, shown.stdout) == (0, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\n")


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("", "empty"),
        ("127.0.0.1", "no port"),
        ("127.0.0.1:0", "outside 1-65535"),
        ("127.0.0.1:99999", "outside 1-65535"),
        ("relay.example:port", "not a number"),
    ],
)
def test_show_refuses_a_ticket_whose_address_cannot_be_dialled(
        run: Runner, tmp_path: Path, address: str, fragment: str) -> None:
    ticket = json.loads(SPEC_TICKET)
    ticket["address"] = address
    (tmp_path / "bad.ticket").write_text(json.dumps(ticket))
    for args in (("show", "bad.ticket"), ("show", "--key", "bad.ticket")):
        _assert_one_error_line(run(*args), "bad.ticket", "field 'address'", fragment)
