"""Operator-facing config edges (issue 8): objects where values belong, warnings the caller can
print whatever the log level, folders and key files safe under any umask, a readable private key."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from natrelay.ops.aspia_config import RelayConfig, RouterConfig
from natrelay.ops.aspia_logging import AspiaFileHandler, report_always
from natrelay.ops.aspia_settings import ConfigError, ConfigProblem
from natrelay.ops.jsonsettings import (
    directory_mode_for,
    make_directories,
    parse_settings,
    write_file_atomically,
)

KEY_HEX = "AB" * 32
RELAY = {"RouterAddress": "127.0.0.1", "RouterPublicKey": KEY_HEX, "PeerAddress": "127.0.0.1"}


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write(path: Path, obj: object, mode: int = 0o644) -> Path:
    path.write_text(json.dumps(obj))
    path.chmod(mode)
    return path


# ------------------------------------------------------------- objects where values belong
@pytest.mark.parametrize("value", [{"a": 1}, {}, {"a": {"b": "8060"}}])
def test_an_object_for_a_value_is_an_error_naming_field_file_and_allowed_values(
    tmp_path: Path, value: object
) -> None:
    path = write(tmp_path / "relay.json", {**RELAY, "RouterPort": value})
    with pytest.raises(ConfigError) as info:
        RelayConfig.load(path, [])
    assert info.value.keys == ["RouterPort"]
    (line,) = info.value.lines()
    assert str(path) in line and "JSON object" in line and "1 to 65535" in line
    # The flattened "RouterPort/a" is part of that error, not a second "unknown key" complaint.
    assert info.value.warnings == []


def test_parse_records_which_keys_held_objects() -> None:
    doc = parse_settings(b'{"A": {"b": {}}, "C": "1"}')
    assert doc.groups == {"A", "A/b"} and doc.values == {"C": "1"}


def test_an_unknown_object_reports_its_entries_once_each() -> None:
    doc = parse_settings(json.dumps({**RELAY, "Extra": {"x": "1", "y": "2"}}).encode(), "relay.json")
    warnings: list[ConfigProblem] = []
    RelayConfig.from_settings(doc, warnings)
    assert [w.message for w in warnings] == ["unknown key 'Extra/x' ignored", "unknown key 'Extra/y' ignored"]


# ----------------------------------------------------------- warnings handed to the caller
def test_unknown_keys_and_max_peer_count_0_are_warnings_the_caller_receives(tmp_path: Path) -> None:
    path = write(tmp_path / "relay.json", {**RELAY, "PeerIdelTimeout": "3", "MaxPeerCount": 0})
    warnings: list[ConfigProblem] = []
    config = RelayConfig.load(path, warnings)
    assert config.max_peer_count == 0
    text = "\n".join(w.message for w in warnings)
    assert "unknown key 'PeerIdelTimeout'" in text and "did you mean 'PeerIdleTimeout'" in text
    assert any(w.key == "MaxPeerCount" and "no peer can connect" in w.message for w in warnings)


def test_a_config_error_carries_the_warnings_that_may_explain_it(tmp_path: Path) -> None:
    path = write(tmp_path / "relay.json", {"RouterAdress": "127.0.0.1", "RouterPublicKey": KEY_HEX,
                                           "PeerAddress": "127.0.0.1"})
    with pytest.raises(ConfigError) as info:
        RelayConfig.load(path, [])
    assert info.value.keys == ["RouterAddress"]
    (warning,) = info.value.warning_lines()
    assert warning.startswith(f"{path}: warning: ") and "did you mean 'RouterAddress'" in warning


def test_report_always_prints_whatever_the_level_and_copies_to_log_files(tmp_path: Path) -> None:
    logger = logging.getLogger("test_report_always")
    logger.setLevel(logging.CRITICAL)  # ASPIA_LOG_LEVEL=2, the default
    handler = AspiaFileHandler(tmp_path, "prog", max_bytes=1 << 20, max_age_days=1)
    logger.addHandler(handler)
    try:
        out = io.StringIO()
        report_always("prog", ["f.json: warning: unknown key 'X'"], logger=logger, stream=out)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert out.getvalue() == "prog: f.json: warning: unknown key 'X'\n"
    (log_file,) = tmp_path.glob("prog-*.log")
    assert "unknown key 'X'" in log_file.read_text()


# ---------------------------------------------------------------- private key file modes
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_router_json_others_can_read_loads_with_a_warning_and_the_fix(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "router.json", {"PrivateKey": KEY_HEX}, mode)
    warnings: list[ConfigProblem] = []
    RouterConfig.load(path, warnings)
    (warning,) = warnings
    assert f"{mode:04o}" in warning.message and f"chmod 600 {path}" in warning.message


def test_a_0600_router_json_loads_silently(tmp_path: Path) -> None:
    path = write(tmp_path / "router.json", {"PrivateKey": KEY_HEX}, 0o600)
    warnings: list[ConfigProblem] = []
    RouterConfig.load(path, warnings)
    assert warnings == []


def test_a_relay_json_others_can_write_is_warned_about(tmp_path: Path) -> None:
    path = write(tmp_path / "relay.json", RELAY, 0o666)
    warnings: list[ConfigProblem] = []
    RelayConfig.load(path, warnings)
    (warning,) = warnings
    assert "0666" in warning.message and "chmod go-w" in warning.message
    path.chmod(0o644)
    warnings.clear()
    RelayConfig.load(path, warnings)
    assert warnings == []


def test_without_a_list_warnings_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "router.json", {"PrivateKey": KEY_HEX}, 0o644)
    with caplog.at_level(logging.WARNING, logger="natrelay.ops.aspia_settings"):
        RouterConfig.load(path)
    assert "chmod 600" in caplog.text


# ------------------------------------------------------------------------ umask 000
def test_folders_are_created_with_the_given_mode_whatever_the_umask(tmp_path: Path, umask_000: None) -> None:
    make_directories(tmp_path / "a" / "b" / "c", 0o700)
    for part in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert mode_of(part) == 0o700
    make_directories(tmp_path / "a" / "b" / "c", 0o755)  # existing folders are the operator's
    assert mode_of(tmp_path / "a") == 0o700


def test_a_file_in_the_way_of_a_folder_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        make_directories(tmp_path / "f" / "sub", 0o700)


def test_key_files_and_their_folders_are_private_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    written = RouterConfig(private_key=bytes(32)).write_new(tmp_path / "etc" / "aspia" / "router.json")
    assert mode_of(written) == 0o600
    assert mode_of(written.parent) == 0o700 and mode_of(written.parent.parent) == 0o700
    relay = RelayConfig().write_new(tmp_path / "pub" / "relay.json")
    # relay.json has no secret and the relay's systemd DynamicUser must read it; never writable.
    assert mode_of(relay) == 0o644 and mode_of(relay.parent) == 0o755


def test_directory_mode_follows_the_file(tmp_path: Path, umask_000: None) -> None:
    assert directory_mode_for(0o600) == 0o700 and directory_mode_for(0o644) == 0o755
    write_file_atomically(tmp_path / "x" / "y", b"1", exclusive=True, mode=0o644, dir_mode=0o750)
    assert mode_of(tmp_path / "x") == 0o750


def test_offset_identity_and_ticket_folders_are_safe_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    from natrelay.offset.files import RelayTicket, write_identity, write_ticket

    write_identity(tmp_path / "keys" / "deep" / "relay.ident", bytes(range(32)))
    write_ticket(tmp_path / "pub" / "relay.ticket", RelayTicket(bytes(32), "127.0.0.1:1"))
    assert mode_of(tmp_path / "keys") == 0o700 and mode_of(tmp_path / "keys" / "deep") == 0o700
    assert mode_of(tmp_path / "keys" / "deep" / "relay.ident") == 0o600
    assert mode_of(tmp_path / "pub") == 0o755
