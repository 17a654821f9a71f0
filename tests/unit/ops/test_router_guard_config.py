"""router.json's optional guard fields (issues 8 and 9): defaults, validation, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from natrelay.ops.aspia_config import ROUTER_GUARD_FIELDS, RouterConfig
from natrelay.ops.aspia_settings import ConfigError

KEY_HEX = "11" * 32


def load(tmp_path: Path, **values: str) -> RouterConfig:
    path = tmp_path / "router.json"
    path.write_text(json.dumps({"PrivateKey": KEY_HEX, **values}))
    return RouterConfig.load(path)


def test_defaults_when_absent_and_not_written_when_default(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    for key, attr, default, _low, _high, _what in ROUTER_GUARD_FIELDS:
        assert getattr(cfg, attr) == default, key
        assert key not in cfg.to_settings()
    assert cfg.relay_any_address is False and "RelayAllowAnyAddress" not in cfg.to_settings()


def test_values_load_and_round_trip(tmp_path: Path) -> None:
    cfg = load(tmp_path, MaxPendingConnectionsPerIp="3", ClientRequestsPerMinute="0",
               RelayAllowAnyAddress="true", UnusedHostIdExpiryDays="30")
    assert (cfg.max_pending_per_ip, cfg.client_requests_per_minute, cfg.unused_host_id_days) == (3, 0, 30)
    assert cfg.relay_any_address
    settings = cfg.to_settings()
    assert settings["MaxPendingConnectionsPerIp"] == "3" and settings["RelayAllowAnyAddress"] == "true"
    assert cfg.problems() == []
    path = tmp_path / "again.json"
    cfg.write_new(path)
    assert RouterConfig.load(path) == cfg


@pytest.mark.parametrize(("key", "value"), [("AuthTimeout", "0"), ("MaxKeysPerRelay", "0"),
                                            ("LoginTimeout", "601"), ("MaxConnections", "-1"),
                                            ("NewConnectionsPerMinutePerIp", "many"),
                                            ("RelayAllowAnyAddress", "yes")])
def test_bad_values_name_the_field_and_what_is_allowed(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **{key: value})
    assert info.value.keys == [key]
    assert "allowed:" in str(info.value) and repr(value) in str(info.value)
