"""Settings of the Syncthing relay: strelaysrv's flag spellings, durations, addresses, status fields."""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path

import pytest

from natrelay.cli.natrelay import build_parser
from natrelay.cli.syncthing_relay import config_from_args, parse_duration
from natrelay.syncthing.app import AppConfig, AppConfigError, _session_address, go_duration, split_host_port
from natrelay.syncthing.pool import next_attempt
from natrelay.syncthing.server import RelayOptions, SyncthingRelay
from natrelay.syncthing.status import RateCalculator, StatusOptions, status_document
from natrelay.syncthing.tls import ensure_identity, server_context


def test_flags_in_strelaysrv_and_long_spelling() -> None:
    p = build_parser()
    a = p.parse_args(["syncthing-relay", "-listen=:1234", "-keys", "/k", "-per-session-rate=10",
                      "-global-rate", "20", "-token=t", "-pools=http://x/a,http://y/b", "-status-srv=",
                      "-network-timeout=90s", "-ping-interval", "1m30s", "-provided-by", "me"])
    b = p.parse_args(["syncthing-relay", "--listen", ":1234", "--keys=/k", "--per-session-rate", "10",
                      "--global-rate=20", "--token", "t", "--pools", "http://x/a,http://y/b", "--status-srv",
                      "", "--network-timeout", "90", "--ping-interval=90", "--provided-by=me"])
    ca, cb = config_from_args(a), config_from_args(b)
    assert ca == cb
    assert ca.listen == ":1234" and ca.keys_dir == Path("/k") and ca.pools == ["http://x/a", "http://y/b"]
    assert ca.network_timeout == 90.0 and ca.ping_interval == 90.0 and ca.status_srv == ""
    assert config_from_args(p.parse_args(["syncthing-relay"])).pools == []  # no pool by default


def test_durations_and_addresses() -> None:
    assert parse_duration("2m") == 120 and parse_duration("1h30m") == 5400 and parse_duration("500ms") == 0.5
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("2 minutes")
    assert go_duration(60) == "1m0s" and go_duration(120) == "2m0s" and go_duration(3600) == "1h0m0s"
    assert split_host_port(":22067", "-listen") == ("", 22067)
    assert split_host_port("[::1]:5", "-listen") == ("::1", 5)
    with pytest.raises(AppConfigError, match="-listen"):
        split_host_port("nohost", "-listen")
    with pytest.raises(AppConfigError, match="65535"):
        split_host_port(":70000", "-ext-address")
    assert _session_address("127.0.0.1") == bytes([127, 0, 0, 1])
    assert _session_address("0.0.0.0") == b"" and _session_address("relay.example") == b""
    assert len(_session_address("::1")) == 16


def test_pool_answers() -> None:
    assert next_attempt(200, b'{"evictionIn": 3600000000000}') == pytest.approx(2880.0)
    assert next_attempt(200, b"garbage") == 3600.0
    assert next_attempt(401, b"") is None
    assert next_attempt(429, b"", retry=60.0) == 60.0 and next_attempt(500, b"") == 60.0


def test_status_document_has_strelaysrv_fields() -> None:
    import datetime

    rates = RateCalculator()
    rates.sample(10 * 125_000)  # 1 Mbit/s over the 10 s interval
    doc = status_document(version="v", start_time=datetime.datetime.now(datetime.UTC), uptime=5.0,
                          pending_keys=2, active_sessions=1, connections=3, proxies=2, bytes_proxied=10,
                          rates=rates, options=StatusOptions(120, 60, 60, 0, 0, [], ""), tasks=1)
    for key in ("version", "buildHost", "buildUser", "buildDate", "startTime", "uptimeSeconds",
                "numPendingSessionKeys", "numActiveSessions", "numConnections", "numProxies", "bytesProxied",
                "goVersion", "goOS", "goArch", "goMaxProcs", "goNumRoutine", "kbps10s1m5m15m30m60m",
                "options"):
        assert key in doc
    assert doc["kbps10s1m5m15m30m60m"] == [1000, 166, 33, 11, 5, 2]
    assert set(doc["options"]) == {"network-timeout", "ping-interval", "message-timeout",  # type: ignore[arg-type]
                                   "per-session-rate", "global-rate", "pools", "provided-by"}


def test_provided_by_is_bounded(tmp_path: Path) -> None:
    from natrelay.syncthing.app import start_relay

    async def main() -> None:
        with pytest.raises(AppConfigError, match="provided-by"):
            await start_relay(AppConfig(listen="127.0.0.1:0", keys_dir=tmp_path, provided_by="x" * 31,
                                        status_srv=""))

    asyncio.run(main())


def test_each_session_has_its_own_bucket_and_all_share_the_global_one(tmp_path: Path) -> None:
    """strelaysrv's Debian build shared one limiter between sessions; here each has its own."""
    from natrelay.syncthing import xdr
    from natrelay.syncthing.relay import RelayConfig

    async def main() -> None:
        relay = SyncthingRelay(RelayOptions(host="127.0.0.1", port=0, config=RelayConfig(session_port=0),
                                            per_session_rate=1000, global_rate=5000),
                               server_context(ensure_identity(tmp_path / "k")))
        _, port = relay.start()
        loop = asyncio.get_running_loop()
        socks = []
        try:
            for n in range(2):
                s = relay.table.create(bytes([n]) * 32, b"\xff" * 32, bytes([n, 1]) * 16, bytes([n, 2]) * 16,
                                       loop.time())
                for key in (s.server_key, s.client_key):
                    c = socket.create_connection(("127.0.0.1", port))
                    c.sendall(xdr.encode(xdr.JoinSessionRequest(key)))
                    socks.append(c)
            for _ in range(200):
                await asyncio.sleep(0.01)
                if len(relay.sessions.throttles) == 2:
                    break
            t1, t2 = relay.sessions.throttles.values()
            own1, global1 = t1._buckets
            own2, global2 = t2._buckets
            assert own1 is not own2 and global1 is global2
            assert own1.rate == 1000 and global1.rate == 5000
        finally:
            for c in socks:
                c.close()
            relay.close()

    asyncio.run(main())
