"""Relay protocol v1 over real sockets: our relay (and, where it tells something, Debian's strelaysrv).

The protocol's conversations and the ways in (join, connect, pair, tokens, pools, ``natrelay serve``);
what the relay does at its limits (rates, timeouts, descriptors, stalled TLS) is in
test_syncthing_limits.py.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from natrelay.syncthing import xdr
from tests.e2e.offset_env import free_port, wait_for
from tests.e2e.syncthing_client import Device, exchange, pair, read_message, send, wait_invitation
from tests.e2e.syncthing_env import RelayProcess, start_relay


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    r = start_relay(tmp_path / "relay")
    try:
        yield r
    finally:
        r.stop()


def _start_strelaysrv(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["strelaysrv", f"-keys={directory}", f"-listen=127.0.0.1:{port}",
                             "-protocol=tcp4", "-pools=", "-status-srv=", "-nat=false"], cwd=directory,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return proc.poll() is not None

    wait_for(listening, 30, "strelaysrv to listen")
    assert proc.poll() is None
    return proc, port


@pytest.mark.parametrize("which", ["natrelay", "strelaysrv"])
def test_join_connect_pair_and_forward(tmp_path: Path, which: str) -> None:
    """Our client code against both relays: the same dance works byte for byte."""
    if which == "strelaysrv" and shutil.which("strelaysrv") is None:
        pytest.skip("strelaysrv is not installed")
    proc: subprocess.Popen[bytes] | None = None
    ours: RelayProcess | None = None
    try:
        if which == "strelaysrv":
            proc, port = _start_strelaysrv(tmp_path / "strelaysrv")
        else:
            ours = start_relay(tmp_path / "relay")
            port = ours.port
        a, b = Device(tmp_path, "a", port), Device(tmp_path, "b", port)
        conn, answer = a.join()
        assert answer == xdr.RESPONSE_SUCCESS
        # Unknown device: "not found".
        assert b.connect_to(b"\x01" * 32) == xdr.RESPONSE_NOT_FOUND
        # The same device joining twice: "already connected".
        second, answer = a.join()
        assert answer == xdr.RESPONSE_ALREADY_CONNECTED
        second.close()
        # Ping is answered with Pong.
        send(conn, xdr.Ping())
        assert read_message(conn) == xdr.Pong()
        s, c = pair(a, conn, b)
        exchange(s, c)
        if ours is not None:
            status = ours.status()
            assert status["numActiveSessions"] == 1 and status["bytesProxied"] >= 256 * 1024 + 4
            assert status["numConnections"] >= 1
        # The joined device leaves: its sessions are closed at once.
        conn.close()
        s.settimeout(30)
        assert s.recv(1) == b""
        c.close()
        s.close()
    finally:
        if ours is not None:
            ours.stop()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def test_simultaneous_session_joins_both_land(tmp_path: Path, relay: RelayProcess) -> None:
    """strelaysrv may answer the second of two joins landing together "already connected" and lose the
    session; ours pairs every time."""
    a, b = Device(tmp_path, "a", relay.port), Device(tmp_path, "b", relay.port)
    conn, answer = a.join()
    assert answer == xdr.RESPONSE_SUCCESS
    for _ in range(20):
        inv_b = b.connect_to(a.device_id)
        assert isinstance(inv_b, xdr.SessionInvitation)
        inv_a = wait_invitation(conn)
        s = socket.create_connection(("127.0.0.1", relay.port))
        c = socket.create_connection(("127.0.0.1", relay.port))
        # Both requests in flight before either answer is read.
        send(s, xdr.JoinSessionRequest(inv_a.key))
        send(c, xdr.JoinSessionRequest(inv_b.key))
        assert read_message(s) == xdr.RESPONSE_SUCCESS
        assert read_message(c) == xdr.RESPONSE_SUCCESS
        exchange(s, c, 4096)
        # A key is good for one connection only.
        late = socket.create_connection(("127.0.0.1", relay.port))
        send(late, xdr.JoinSessionRequest(inv_a.key))
        assert read_message(late) == xdr.RESPONSE_NOT_FOUND
        late.close()
        s.close()
        c.close()
    conn.close()


def test_token(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "-token", "t0k")
    try:
        a = Device(tmp_path, "a", relay.port)
        for token in ("", "wrong"):
            sock, answer = a.join(token)
            assert answer == xdr.RESPONSE_WRONG_TOKEN
            sock.settimeout(30)
            assert sock.recv(1) == b""
            sock.close()
        sock, answer = a.join("t0k")
        assert answer == xdr.RESPONSE_SUCCESS
        b = Device(tmp_path, "b", relay.port)
        s, c = pair(a, sock, b)
        exchange(s, c)
        for x in (s, c, sock):
            x.close()
    finally:
        relay.stop()


def test_garbage_and_silence_never_hurt_others(tmp_path: Path, relay: RelayProcess) -> None:
    a, b = Device(tmp_path, "a", relay.port), Device(tmp_path, "b", relay.port)
    conn, answer = a.join()
    assert answer == xdr.RESPONSE_SUCCESS
    # Session mode: a bad magic, a huge length, an unexpected message, a silent connection.
    bad = [xdr.HEADER.pack(0xDEADBEEF, 3, 4) + b"\0" * 4, xdr.HEADER.pack(xdr.MAGIC, 3, 1 << 30),
           xdr.encode(xdr.Ping())]
    silent = socket.create_connection(("127.0.0.1", relay.port))
    for blob in bad:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as x:
            x.sendall(blob)
            rest = b""
            try:
                while chunk := x.recv(4096):
                    rest += chunk
            except ConnectionResetError:  # closed with our unread garbage still queued: a reset
                pass
            assert rest in (b"", xdr.encode(xdr.RESPONSE_UNEXPECTED_MESSAGE))
    # Protocol mode: garbage after TLS closes that connection only.
    p = b.protocol()
    p.sendall(b"\xff" * 64)
    p.settimeout(30)
    assert p.recv(1) == b""
    p.close()
    s, c = pair(a, conn, b)
    exchange(s, c)
    for x in (s, c, conn, silent):
        x.close()


class _Pool(BaseHTTPRequestHandler):
    posts: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append(json.loads(body))
        reply = json.dumps({"evictionIn": 2_000_000_000}).encode()  # 2 s, in Go's nanoseconds
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_pool_registration_posts_and_rejoins(tmp_path: Path) -> None:
    _Pool.posts = []
    httpd = HTTPServer(("127.0.0.1", 0), _Pool)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        relay = start_relay(tmp_path / "relay", "-pools", f"http://127.0.0.1:{httpd.server_port}/endpoint")
        try:
            wait_for(lambda: len(_Pool.posts) >= 2, 60, "a join and a rejoin")
            assert _Pool.posts[0]["url"] == relay.url
            assert relay.status()["options"]["pools"] == [f"http://127.0.0.1:{httpd.server_port}/endpoint"]
        finally:
            relay.stop()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_no_pool_by_default_and_none_with_a_token(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "-token", "x", "-pools", "http://127.0.0.1:9/never")
    try:
        assert relay.status()["options"]["pools"] == []
    finally:
        relay.stop()


def test_bench_client_works_against_ours(tmp_path: Path, relay: RelayProcess) -> None:
    """The benchmark's strelaysrv client, unchanged, pairs through our relay."""
    bench = Path(__file__).resolve().parents[2] / "bench"
    sys.path.insert(0, str(bench))
    try:
        from relaybench.strelaysrv import StrelaysrvOpener
    finally:
        sys.path.remove(str(bench))
    opener = StrelaysrvOpener(relay.port)
    try:
        for _ in range(5):
            s, c = opener.open_pair()
            exchange(s, c, 8192)
            s.close()
            c.close()
        assert opener.retries == 0
    finally:
        opener.close()


def test_natrelay_serve_runs_the_syncthing_relay_and_prints_its_url(tmp_path: Path) -> None:
    from tests.e2e.offset_env import tool

    port = free_port()
    out_path = tmp_path / "serve.out"
    with open(out_path, "wb") as out:
        serve = subprocess.Popen([*tool("natrelay"), "serve", "--data-dir", str(tmp_path / "data"),
                                  "--offset-port", str(free_port()), "--no-aspia",
                                  "--syncthing-port", str(port)],
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Stop with Ctrl-C" in out_path.read_text() or serve.poll() is not None, 30,
                 "natrelay serve to start")
        text = out_path.read_text()
        from natrelay.syncthing.deviceid import format_device_id
        from natrelay.syncthing.tls import ensure_identity

        relay_id = format_device_id(ensure_identity(tmp_path / "data" / "syncthing").device_id)
        assert f"relay URL: relay://127.0.0.1:{port}/?id={relay_id}" in text, text
        a, b = Device(tmp_path, "a", port), Device(tmp_path, "b", port)
        conn, answer = a.join()
        assert answer == xdr.RESPONSE_SUCCESS
        s, c = pair(a, conn, b)
        exchange(s, c)
        for x in (s, c, conn):
            x.close()
    finally:
        serve.send_signal(signal.SIGINT)
        assert serve.wait(20) == 0, out_path.read_text()


def test_our_device_ids_are_syncthings(tmp_path: Path) -> None:
    """The ID we compute from a certificate Syncthing generated is the one Syncthing prints."""
    if shutil.which("syncthing") is None:
        pytest.skip("syncthing is not installed")
    from natrelay.syncthing.deviceid import format_device_id
    from natrelay.syncthing.tls import ensure_identity_files
    from tests.e2e.syncthing_env import make_syncthing

    st = make_syncthing(tmp_path, "x")
    ident = ensure_identity_files(st.home / "cert.pem", st.home / "key.pem")
    assert format_device_id(ident.device_id) == st.device_id
