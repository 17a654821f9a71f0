"""relay.json / router.json: defaults, validation that names every problem, and --create-config."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natrelay.ops.aspia_config import RelayConfig, RouterConfig
from natrelay.ops.aspia_settings import (
    CONFIG_DIR_ENV,
    ConfigError,
    ConfigExistsError,
    address_allowed,
    default_config_path,
)
from natrelay.ops.jsonsettings import SettingsDocument

KEY_HEX = "0123456789ABCDEFfedcba9876543210" * 2
KEY = bytes.fromhex(KEY_HEX)
SEED_HEX = "AB" * 64


def write_json(path: Path, obj: Mapping[str, object]) -> Path:
    path.write_text(json.dumps(obj))
    return path


def good_relay(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "RouterAddress": "router.example.net",
        "RouterPort": "8060",
        "RouterPublicKey": KEY_HEX,
        "PeerAddress": "203.0.113.7",
        "PeerPort": "8070",
    }
    base.update(changes)
    return base


def load_error(cls: type[RelayConfig] | type[RouterConfig], path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        cls.load(path)
    return info.value


# ---------------------------------------------------------------- default paths


def test_default_paths_are_the_manuals() -> None:
    assert default_config_path("relay.json", {}, platform="linux") == Path("/etc/aspia/relay.json")
    assert default_config_path("router.json", {}, platform="linux") == Path("/etc/aspia/router.json")


def test_config_dir_env_moves_the_default(tmp_path: Path) -> None:
    env = {CONFIG_DIR_ENV: str(tmp_path)}
    assert default_config_path("relay.json", env) == tmp_path / "relay.json"


@pytest.mark.parametrize("name", ["", "..", "a/relay.json", "..\\x"])
def test_default_path_takes_plain_names_only(name: str) -> None:
    with pytest.raises(ValueError):
        default_config_path(name, {})


def test_load_without_path_uses_the_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    write_json(tmp_path / "relay.json", good_relay())
    assert RelayConfig.load().peer_address == "203.0.113.7"


# ---------------------------------------------------------------- relay.json


def test_create_default_writes_every_field_at_its_default(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "aspia" / "relay.json"
    assert RelayConfig.create_default(path) == path
    data = path.read_bytes()
    assert json.loads(data) == {
        "ListenInterface": "",
        "MaxPeerCount": "100",
        "PeerAddress": "",
        "PeerIdleTimeout": "5",
        "PeerPort": "8070",
        "RouterAddress": "",
        "RouterPort": "8060",
        "RouterPublicKey": "",
        "StatisticsEnabled": "false",
        "StatisticsInterval": "5",
    }
    assert data.startswith(b'{\n    "ListenInterface": "",\n') and data.endswith(b'"5"\n}')
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["relay.json"]


def test_fresh_config_names_exactly_the_fields_to_fill_in(tmp_path: Path) -> None:
    path = RelayConfig.create_default(tmp_path / "relay.json")
    err = load_error(RelayConfig, path)
    assert err.keys == ["RouterAddress", "RouterPublicKey", "PeerAddress"]
    for line in err.lines():
        assert line.startswith(f"{path}: ")
        assert "required" in line and "allowed:" in line
    assert str(err) == "\n".join(err.lines())


def test_file_written_by_the_original_needs_key_and_peer_address(tmp_path: Path) -> None:
    path = tmp_path / "relay.json"
    path.write_bytes(
        b'{\n    "MaxPeerCount": "100",\n    "PeerAddress": "",\n    "PeerIdleTimeout": "5",\n'
        b'    "PeerPort": "8070",\n    "RouterAddress": "127.0.0.1",\n    "RouterPort": "8060",\n'
        b'    "RouterPublicKey": "",\n    "StatisticsEnabled": "false",\n    "StatisticsInterval": "5"\n}'
    )
    assert load_error(RelayConfig, path).keys == ["RouterPublicKey", "PeerAddress"]


def test_complete_config_loads_with_types_and_defaults(tmp_path: Path) -> None:
    path = write_json(tmp_path / "relay.json", good_relay(RouterPublicKey=KEY_HEX.lower()))
    cfg = RelayConfig.load(path)
    assert cfg == RelayConfig(
        router_address="router.example.net",
        router_public_key=KEY,
        peer_address="203.0.113.7",
    )
    assert (cfg.peer_idle_timeout, cfg.max_peer_count, cfg.statistics_interval) == (5, 100, 5)
    assert cfg.problems() == []


def test_every_problem_is_reported_at_once_with_value_and_range(tmp_path: Path) -> None:
    bad = good_relay(
        RouterPort="0",
        RouterPublicKey=KEY_HEX[:-2],
        ListenInterface="eth0",
        PeerAddress="0.0.0.0",
        PeerPort="70000",
        PeerIdleTimeout="61",
        MaxPeerCount="-1",
        StatisticsEnabled="yes",
        StatisticsInterval="5s",
    )
    path = write_json(tmp_path / "relay.json", bad)
    err = load_error(RelayConfig, path)
    assert err.keys == [
        "RouterPort",
        "RouterPublicKey",
        "ListenInterface",
        "PeerAddress",
        "PeerPort",
        "PeerIdleTimeout",
        "MaxPeerCount",
        "StatisticsEnabled",
        "StatisticsInterval",
    ]
    text = str(err)
    for fragment in ("1 to 65535", "62 hexadecimal digits, needs 64", "'eth0'", "wildcard", "'70000'"):
        assert fragment in text
    assert "1 to 60" in text and "'yes'" in text and "1 to 3600" in text
    assert all(line.startswith(str(path)) for line in err.lines())


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("PeerIdleTimeout", "1", True),
        ("PeerIdleTimeout", "60", True),
        ("PeerIdleTimeout", "0", False),
        ("StatisticsInterval", "3600", True),
        ("StatisticsInterval", "3601", False),
        ("MaxPeerCount", "0", True),
        ("MaxPeerCount", "4294967295", True),
        ("MaxPeerCount", "4294967296", False),
        ("RouterPort", "65535", True),
        ("RouterPort", "65536", False),
        ("RouterPort", "+1", False),
        ("RouterPort", "٣", False),
        ("PeerPort", 8070, True),
        ("PeerPort", 80.0, False),
        ("StatisticsEnabled", "1", True),
        ("StatisticsEnabled", "TRUE", True),
        ("StatisticsEnabled", "0", True),
        ("StatisticsEnabled", True, True),
        ("StatisticsEnabled", None, False),
        ("RouterPublicKey", "zz" + KEY_HEX[2:], False),
        ("RouterPublicKey", KEY_HEX + "00", False),
        ("RouterAddress", "1.2.3.256", False),
        ("RouterAddress", "bad host", False),
        ("RouterAddress", "-x.example", False),
        ("RouterAddress", "ünïcode.example", True),
        ("RouterAddress", "::1", True),
        ("RouterAddress", "localhost", True),
        ("ListenInterface", "::", True),
        ("ListenInterface", "127.0.0.1", True),
        ("ListenInterface", "localhost", False),
    ],
)
def test_field_boundaries(tmp_path: Path, key: str, value: object, ok: bool) -> None:
    path = write_json(tmp_path / "relay.json", good_relay(**{key: value}))
    if ok:
        RelayConfig.load(path)
    else:
        assert load_error(RelayConfig, path).keys == [key]


def test_plain_json_numbers_and_booleans_are_accepted(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "relay.json", good_relay(PeerPort=9000, StatisticsEnabled=True, MaxPeerCount=0)
    )
    cfg = RelayConfig.load(path)
    assert (cfg.peer_port, cfg.statistics_enabled, cfg.max_peer_count) == (9000, True, 0)


def test_empty_optional_value_means_default(tmp_path: Path) -> None:
    path = write_json(tmp_path / "relay.json", good_relay(PeerPort="  ", PeerIdleTimeout=""))
    cfg = RelayConfig.load(path)
    assert (cfg.peer_port, cfg.peer_idle_timeout) == (8070, 5)


def test_unknown_keys_warn_with_a_suggestion_but_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_json(tmp_path / "relay.json", good_relay(PeerIdelTimeout="3"))
    with caplog.at_level(logging.WARNING, logger="natrelay.ops.aspia_settings"):
        cfg = RelayConfig.load(path)
    assert cfg.peer_idle_timeout == 5
    assert "'PeerIdelTimeout'" in caplog.text and "did you mean 'PeerIdleTimeout'" in caplog.text


def test_problems_of_a_config_built_in_code() -> None:
    cfg = RelayConfig(router_address="r", router_public_key=b"\x01" * 31, peer_address="p", router_port=0)
    assert [p.key for p in cfg.problems()] == ["RouterPort", "RouterPublicKey"]


def test_missing_file_says_how_to_create_it_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "aspia" / "relay.json"
    err = load_error(RelayConfig, path)
    assert "--create-config" in str(err) and "RouterAddress, RouterPublicKey, PeerAddress" in str(err)
    assert str(path) in str(err)
    assert list(tmp_path.iterdir()) == []


def test_unparsable_file_is_one_problem_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.json"
    path.write_text('{"RouterPort": "8060",,}')
    err = load_error(RelayConfig, path)
    assert len(err.problems) == 1 and err.lines()[0].startswith(f"{path}: not valid JSON")


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "relay.json").mkdir()
    assert "cannot read the file: Is a directory" in str(load_error(RelayConfig, tmp_path / "relay.json"))


# ---------------------------------------------------------------- --create-config refusals


def test_create_never_overwrites_a_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.json"
    path.write_text("edited by the operator")
    with pytest.raises(ConfigExistsError) as info:
        RelayConfig.create_default(path)
    assert str(path) in str(info.value) and "already exists" in str(info.value)
    assert isinstance(info.value, ConfigError)
    assert path.read_text() == "edited by the operator"
    assert [p.name for p in tmp_path.iterdir()] == ["relay.json"]


@pytest.mark.parametrize("kind", ["directory", "dangling symlink"])
def test_create_refuses_anything_in_the_way(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "router.json"
    if kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ConfigExistsError):
        RouterConfig.create_default(path)
    assert not (tmp_path / "elsewhere.json").exists()


def test_create_below_a_file_is_an_error_not_an_existing_config(tmp_path: Path) -> None:
    (tmp_path / "aspia").write_text("a file where the directory should be")
    with pytest.raises(ConfigError, match="cannot create the file: Not a directory") as info:
        RelayConfig.create_default(tmp_path / "aspia" / "relay.json")
    assert not isinstance(info.value, ConfigExistsError)
    assert [p.name for p in tmp_path.iterdir()] == ["aspia"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_create_in_unwritable_directory_leaves_nothing(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ConfigError, match="cannot create"):
            RelayConfig.create_default(locked / "relay.json")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- router.json


def test_router_create_default_and_what_is_missing(tmp_path: Path) -> None:
    path = RouterConfig.create_default(tmp_path / "router.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_bytes()) == {
        "AdminWhiteList": "",
        "ClientWhiteList": "",
        "HostWhiteList": "",
        "ListenInterface": "",
        "Port": "8060",
        "PrivateKey": "",
        "RelayWhiteList": "",
        "SeedKey": "",
    }
    assert load_error(RouterConfig, path).keys == ["PrivateKey"]


def test_router_file_in_the_originals_layout_loads(tmp_path: Path) -> None:
    original = {
        "AdminWhiteList": "",
        "ClientWhiteList": " 10.0.0.1 ;;::ffff:192.0.2.1; ",
        "HostWhiteList": "",
        "Port": "8060",
        "PrivateKey": KEY_HEX,
        "RelayWhiteList": "127.0.0.1;",
        "SeedKey": SEED_HEX,
    }
    cfg = RouterConfig.load(write_json(tmp_path / "router.json", original))
    assert cfg.private_key == KEY and cfg.seed_key == bytes.fromhex(SEED_HEX)
    assert cfg.client_white_list == (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("192.0.2.1"))
    assert cfg.to_settings()["ClientWhiteList"] == "10.0.0.1;192.0.2.1;"
    assert cfg.to_settings()["PrivateKey"] == KEY_HEX.upper()
    assert KEY_HEX.upper() not in repr(cfg) and SEED_HEX not in repr(cfg)


def test_router_problems_are_all_named(tmp_path: Path) -> None:
    bad = {"Port": "0", "PrivateKey": "", "SeedKey": "ABCD", "HostWhiteList": "10.0.0.1;10.0.0.300;x"}
    err = load_error(RouterConfig, write_json(tmp_path / "router.json", bad))
    assert err.keys == ["Port", "PrivateKey", "SeedKey", "HostWhiteList"]
    assert "'10.0.0.300', 'x'" in str(err) and "needs 128" in str(err)


def test_router_write_new_with_keys_round_trips(tmp_path: Path) -> None:
    cfg = RouterConfig(private_key=KEY, seed_key=bytes(64), admin_white_list=(ipaddress.ip_address("::1"),))
    path = cfg.write_new(tmp_path / "router.json")
    assert RouterConfig.load(path) == cfg


def test_white_list_rule() -> None:
    listed = (ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1"))
    assert address_allowed((), "198.51.100.9")
    assert address_allowed(listed, "192.0.2.1")
    assert address_allowed(listed, "::ffff:192.0.2.1")
    assert address_allowed(listed, ipaddress.ip_address("2001:db8::1"))
    assert not address_allowed(listed, "192.0.2.2")
    assert not address_allowed(listed, "not an address")


# ---------------------------------------------------------------- round trip


_HOSTS = st.sampled_from(["127.0.0.1", "::1", "relay.example.org", "a-b.c"])


@given(
    router_address=_HOSTS,
    router_port=st.integers(1, 65535),
    key=st.binary(min_size=32, max_size=32),
    listen=st.sampled_from(["", "0.0.0.0", "::", "192.0.2.5"]),
    peer_address=_HOSTS,
    peer_port=st.integers(1, 65535),
    idle=st.integers(1, 60),
    max_peers=st.integers(0, 2**32 - 1),
    stats=st.booleans(),
    interval=st.integers(1, 3600),
)
def test_valid_relay_configs_survive_the_file_format(
    router_address: str,
    router_port: int,
    key: bytes,
    listen: str,
    peer_address: str,
    peer_port: int,
    idle: int,
    max_peers: int,
    stats: bool,
    interval: int,
) -> None:
    cfg = RelayConfig(
        router_address, router_port, key, listen, peer_address, peer_port, idle, max_peers, stats, interval
    )
    assert cfg.problems() == []
    assert RelayConfig.from_settings(SettingsDocument("mem", cfg.to_settings())) == cfg
