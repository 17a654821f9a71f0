"""relay.json's flood-guard fields (natrelay only): defaults, ranges, precise messages, round trip."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from natrelay.ops.aspia_config import RelayConfig
from natrelay.ops.aspia_settings import ConfigError
from natrelay.ops.jsonsettings import SettingsDocument

KEY_HEX = "01" * 32
BASE = {"RouterAddress": "router.example.net", "RouterPublicKey": KEY_HEX, "PeerAddress": "203.0.113.7"}


def load(tmp_path: Path, **extra: object) -> RelayConfig:
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(BASE | extra))
    return RelayConfig.load(path)


def test_defaults_follow_aspias_flood_guard(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    assert (cfg.peer_first_message_timeout, cfg.max_pending_peers, cfg.max_pending_peers_per_ip,
            cfg.max_connections_per_minute_per_ip, cfg.max_bytes_before_auth, cfg.max_session_duration,
            cfg.max_connections, cfg.max_connections_per_ip) == (5, 60, 16, 60, 16384, 1440, 10000, 256)


def test_fields_load_and_zero_means_no_cap(tmp_path: Path) -> None:
    cfg = load(tmp_path, PeerFirstMessageTimeout="2", MaxPendingPeers=0, MaxPendingPeersPerIp="4",
               MaxConnectionsPerMinutePerIp="600", MaxBytesBeforeAuth="1024", MaxSessionDuration="0",
               MaxConnections="0", MaxConnectionsPerIp="32")
    assert (cfg.peer_first_message_timeout, cfg.max_pending_peers, cfg.max_pending_peers_per_ip,
            cfg.max_connections_per_minute_per_ip, cfg.max_bytes_before_auth, cfg.max_session_duration,
            cfg.max_connections, cfg.max_connections_per_ip) == (2, 0, 4, 600, 1024, 0, 0, 32)


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("PeerFirstMessageTimeout", "0", "1 to 300"),
    ("PeerFirstMessageTimeout", "301", "1 to 300"),
    ("MaxPendingPeers", "-1", "0 (no cap) to 1000000"),
    ("MaxPendingPeersPerIp", "1000001", "0 (no cap) to 1000000"),
    ("MaxConnectionsPerMinutePerIp", "ten", "0 (no cap) to 1000000"),
    ("MaxBytesBeforeAuth", "63", "64 to 1048580"),
    ("MaxSessionDuration", "525601", "0 (no cap) to 525600"),
    ("MaxConnections", "1.5", "0 (no cap) to 1000000"),
    ("MaxConnectionsPerIp", "-5", "0 (no cap) to 1000000"),
])
def test_bad_values_name_the_key_the_file_and_the_range(tmp_path: Path, key: str, value: object,
                                                       fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **{key: value})
    assert info.value.keys == [key]
    [line] = info.value.lines()
    assert line.startswith(f"{tmp_path / 'relay.json'}: {key}: ") and fragment in line


def test_written_only_when_not_default_and_round_trip() -> None:
    cfg = RelayConfig(router_address="r", router_public_key=b"\x01" * 32, peer_address="p")
    assert not any(k.startswith(("MaxPending", "MaxConn", "MaxBytes", "MaxSession", "PeerFirst"))
                   for k in cfg.to_settings())
    changed = replace(cfg, max_pending_peers=7, max_session_duration=0)
    settings = changed.to_settings()
    assert settings["MaxPendingPeers"] == "7" and settings["MaxSessionDuration"] == "0"
    assert RelayConfig.from_settings(SettingsDocument("mem", settings)) == changed
    assert [p.key for p in replace(cfg, max_bytes_before_auth=10).problems()] == ["MaxBytesBeforeAuth"]
