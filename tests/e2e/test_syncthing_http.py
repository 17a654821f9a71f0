"""The Syncthing relay's HTTP surfaces, read from a real ``natrelay syncthing-relay`` with a real session
through it: ``--http`` (Prometheus ``/metrics``, ``/status``, ``/healthz``, the dashboard) and strelaysrv's
public ``-status-srv`` document, both on aiohttp."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from natrelay.syncthing import xdr
from tests.e2e.http_env import get, overview, scrape, status, value
from tests.e2e.offset_env import free_port, tool, wait_for
from tests.e2e.syncthing_client import Device, pair, recv_exact
from tests.e2e.syncthing_env import start_relay

SERVER_TO_CLIENT = 300_000
CLIENT_TO_SERVER = 70_000


def test_metrics_status_and_dashboard_follow_a_real_session(tmp_path: Path) -> None:
    http_port = free_port()
    relay = start_relay(tmp_path / "relay", "--http", f"127.0.0.1:{http_port}")
    base = f"http://127.0.0.1:{http_port}/"
    try:
        assert f"dashboard, metrics and status: {base}" in relay.log()
        assert get(base + "healthz") == b"ok\n"
        before = scrape(base)
        assert value(before, "natrelay_pairings_total", family="syncthing") == 0
        a, b = Device(tmp_path, "a", relay.port), Device(tmp_path, "b", relay.port)
        conn, answer = a.join()
        assert answer == xdr.RESPONSE_SUCCESS
        s, c = pair(a, conn, b)
        try:
            # The device that joined the session first (a, the server side) is "first".
            sender = threading.Thread(target=s.sendall, args=(b"s" * SERVER_TO_CLIENT,))
            sender.start()
            assert recv_exact(c, SERVER_TO_CLIENT) == b"s" * SERVER_TO_CLIENT
            sender.join()
            c.sendall(b"c" * CLIENT_TO_SERVER)
            assert recv_exact(s, CLIENT_TO_SERVER) == b"c" * CLIENT_TO_SERVER
            during = scrape(base)
            assert value(during, "natrelay_pairings_total", family="syncthing") == 1
            assert value(during, "natrelay_sessions_active", family="syncthing") == 1
            assert value(during, "natrelay_relayed_bytes_total", family="syncthing",
                         direction="first_to_second") == SERVER_TO_CLIENT
            assert value(during, "natrelay_relayed_bytes_total", family="syncthing",
                         direction="second_to_first") == CLIENT_TO_SERVER
            doc = status(base)
            assert doc["numActiveSessions"] == 1 and doc["numProxies"] == 2
            assert doc["bytesProxied"] == SERVER_TO_CLIENT + CLIENT_TO_SERVER
            assert doc["families"]["syncthing"]["sessionsStarted"] == 1
            # strelaysrv's own document on -status-srv says the same.
            public = relay.status()
            assert public["numActiveSessions"] == 1
            assert public["bytesProxied"] == SERVER_TO_CLIENT + CLIENT_TO_SERVER
            assert public["options"]["network-timeout"] == 120
            rows = overview(base)
            assert rows["total_sessions"] == 1, rows
            row = rows["sessions"][0]
            assert row["family"] == "syncthing" and row["bytes_ab"] == SERVER_TO_CLIENT
            assert row["bytes_ba"] == CLIENT_TO_SERVER, row
            page = get(base).decode()
            assert "<html" in page and "Syncthing relay" in page
        finally:
            s.close()
            c.close()
            conn.close()
        # Every gauge returns to zero when the load leaves; counters keep what happened.
        def settled() -> bool:
            now = scrape(base)
            return (value(now, "natrelay_sessions_active", family="syncthing") == 0
                    and value(now, "natrelay_connections_open", family="syncthing") == 0)

        wait_for(settled, 30, "the relay's gauges to return to zero")
        after = scrape(base)
        assert value(after, "natrelay_pairings_total", family="syncthing") == 1
        assert value(after, "natrelay_session_duration_seconds_count", family="syncthing") == 1
        assert relay.status()["bytesProxied"] == SERVER_TO_CLIENT + CLIENT_TO_SERVER
    finally:
        relay.stop()


def test_public_status_server_answers_only_status(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay")
    base = f"http://127.0.0.1:{relay.status_port}"
    try:
        with urllib.request.urlopen(base + "/status", timeout=10) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert r.headers["Content-Type"].startswith("application/json")
            assert json.load(r)["numActiveSessions"] == 0
        head = urllib.request.Request(base + "/status", method="HEAD")
        with urllib.request.urlopen(head, timeout=10) as r:
            assert r.status == 200 and r.read() == b""
        for path, method, code in (("/metrics", "GET", 404), ("/", "GET", 404), ("/status", "POST", 405)):
            body = b"x" if method == "POST" else None
            request = urllib.request.Request(base + path, data=body, method=method)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(request, timeout=10)
            assert err.value.code == code, path
        # No --http given: nothing else listens.
        assert "dashboard, metrics and status" not in relay.log()
    finally:
        relay.stop()


def test_bad_http_switches_are_refused_with_the_switch_named(tmp_path: Path) -> None:
    out = subprocess.run([*tool("natrelay"), "syncthing-relay", "-listen=127.0.0.1:0", "-keys", str(tmp_path),
                          "-status-srv=", "--http-auth"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--http" in out.stderr, out.stderr
    taken = free_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        out = subprocess.run([*tool("natrelay"), "syncthing-relay", "-listen=127.0.0.1:0", "-keys",
                              str(tmp_path), "-status-srv=", "--http", f"127.0.0.1:{taken}"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and f"cannot start HTTP on 127.0.0.1:{taken}" in out.stderr, out.stderr
