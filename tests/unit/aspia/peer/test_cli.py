"""``natrelay aspia host|client`` argument checks that fail before any connection is made."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from natrelay.cli import aspia_peer
from natrelay.cli.aspia_peer import parse_host_id, parse_router_key, parse_routers
from natrelay.cli.natrelay import main

KEY = "67192DD0501037F55A959A3600BE1A1D41E2141086201F947CBC14107E2FEF6D"


def test_router_key_is_router_pub_in_any_case() -> None:
    assert parse_router_key(KEY) == bytes.fromhex(KEY)
    assert parse_router_key(f" {KEY.lower()}\n") == bytes.fromhex(KEY)
    for bad in (KEY[:-2], KEY + "00", "zz" * 32, ""):
        with pytest.raises(ValueError, match="64 hex digits"):
            parse_router_key(bad)


def test_host_id_is_a_positive_64_bit_decimal() -> None:
    assert parse_host_id("1") == 1
    assert parse_host_id(str(2**64 - 1)) == 2**64 - 1
    for bad in ("0", str(2**64), "-1", "0x10", "", "\u0661"):
        with pytest.raises(ValueError, match="host-id"):
            parse_host_id(bad)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_host_refuses_to_start_without_users_or_with_bad_files(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    base = ["aspia", "host", "--router", "127.0.0.1:1", "--router-key", KEY, "--expose", "127.0.0.1:2",
            "--state", str(tmp_path / "state.json")]
    code, err = run(base, capsys)
    assert code == 1 and "define the host's users" in err
    code, err = run([*base, "--user", "bob"], capsys)
    assert code == 1 and "--user and --password-file go together" in err
    code, err = run([*base, "--user", "bob", "--password-file", str(tmp_path / "missing")], capsys)
    assert code == 1 and "cannot read password file" in err
    (tmp_path / "state.json").write_text("{")
    (tmp_path / "pw").write_text("x\n")
    code, err = run([*base, "--user", "bob", "--password-file", str(tmp_path / "pw")], capsys)
    assert code == 1 and "state file" in err
    assert not (tmp_path / "other").exists()


def test_client_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pw").write_text("x\n")
    base = ["aspia", "client", "--router", "127.0.0.1:1", "--user", "alice", "--password-file",
            str(tmp_path / "pw")]
    code, err = run([*base, "--router-key", "abc", "--host-id", "1"], capsys)
    assert code == 1 and "--router-key must be 64 hex digits" in err
    code, err = run([*base, "--router-key", KEY, "--host-id", "0"], capsys)
    assert code == 1 and "--host-id" in err
    code, err = run([*base, "--router-key", KEY, "--host-id", "1", "--listen", "nowhere"], capsys)
    assert code == 1 and "--listen" in err


@pytest.mark.parametrize("key", ["00" * 32, "01" + "00" * 31])
def test_a_low_order_router_key_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   key: str) -> None:
    (tmp_path / "pw").write_text("x\n")
    code, err = run(["aspia", "client", "--router", "127.0.0.1:1", "--user", "alice", "--password-file",
                     str(tmp_path / "pw"), "--router-key", key, "--host-id", "1"], capsys)
    assert code == 1 and "not a usable X25519 public key" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_router_takes_a_comma_list_whose_rest_are_the_fallbacks() -> None:
    assert parse_routers("127.0.0.1:8060") == (("127.0.0.1", 8060), ())
    assert parse_routers("a.example:1,[::1]:2,10.0.0.3:3") == (("a.example", 1),
                                                              (("::1", 2), ("10.0.0.3", 3)))
    for bad in ("127.0.0.1:8060,", ",127.0.0.1:8060", "127.0.0.1:8060,,127.0.0.2:1", "127.0.0.1:1,b:0", ""):
        with pytest.raises(ValueError, match="--router"):
            parse_routers(bad)


def test_host_and_client_get_the_fallback_routers(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []

    def fake(settings: Any, *_args: Any, **_kw: Any) -> SimpleNamespace:
        made.append(settings)
        return SimpleNamespace(state=SimpleNamespace(host_id=0), run=None)

    monkeypatch.setattr(aspia_peer, "AspiaHost", fake)
    monkeypatch.setattr(aspia_peer, "AspiaClient", fake)
    monkeypatch.setattr(aspia_peer, "run", lambda *_a, **_kw: 0)
    (tmp_path / "pw").write_text("x\n")
    common = ["--router-key", KEY, "--user", "bob", "--password-file", str(tmp_path / "pw")]
    assert main(["aspia", "host", "--router", "127.0.0.1:1,127.0.0.2:2", *common, "--expose", "127.0.0.1:3",
                 "--state", str(tmp_path / "state.json")]) == 0
    assert main(["aspia", "client", "--router", "127.0.0.1:1,[::1]:2", *common, "--host-id", "5",
                 "--listen", "127.0.0.1:4"]) == 0
    assert main(["aspia", "client", "--router", "127.0.0.1:1", *common, "--host-id", "5",
                 "--listen", "127.0.0.1:4"]) == 0
    assert [(s.router, s.fallback_routers) for s in made] == [
        (("127.0.0.1", 1), (("127.0.0.2", 2),)), (("127.0.0.1", 1), (("::1", 2),)), (("127.0.0.1", 1), ())]
    code, err = run(["aspia", "client", "--router", "127.0.0.1:1,", *common, "--host-id", "5"], capsys)
    assert code == 1 and "--router" in err
