"""The peers' keep-alive timing: pings often enough for NATs, inside what the C++ side accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from natrelay.aspia.handshake import Identify
from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
from natrelay.aspia.peer.relay_link import DEFAULT_KEEPALIVE, KeepAliveTiming
from natrelay.cli.natrelay import main

KEY = "67192DD0501037F55A959A3600BE1A1D41E2141086201F947CBC14107E2FEF6D"


def test_default_pings_more_often_than_a_30_s_nat_forgets() -> None:
    assert DEFAULT_KEEPALIVE.interval < 30
    assert DEFAULT_KEEPALIVE.interval + DEFAULT_KEEPALIVE.timeout <= 60  # a dead mapping is noticed


def test_channels_ping_at_the_configured_interval() -> None:
    config = ClientConfig(session_type=4, identify=Identify.ANONYMOUS, server_public_key=bytes.fromhex(KEY))
    channel = KeepAliveTiming(17, 6).channel(ClientHandshake(config, 0.0), 0.0)
    assert channel.next_deadline() == 17.0


@pytest.mark.parametrize(("interval", "timeout"), [(14, 15), (301, 15), (20, 4), (20, 61)])
def test_values_the_cpp_side_would_refuse_are_refused(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="keep-alive"):
        KeepAliveTiming(interval, timeout)


def test_cli_reports_a_bad_keepalive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    code = main(["aspia", "host", "--router", "127.0.0.1:1", "--router-key", KEY, "--expose", "127.0.0.1:2",
                 "--user", "u", "--password-file", str(pw), "--state", str(tmp_path / "s.json"),
                 "--keepalive", "5"])
    assert code == 1 and "keep-alive interval must be 15..300 s" in capsys.readouterr().err
