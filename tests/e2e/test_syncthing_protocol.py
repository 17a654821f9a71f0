"""Relay protocol v1 over real sockets: our relay (and, where it tells something, Debian's strelaysrv)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from natrelay.syncthing import xdr
from tests.e2e.offset_env import free_port, wait_for
from tests.e2e.syncthing_client import Device, pair, read_message, recv_exact, send, wait_invitation
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


def _exchange(s: socket.socket, c: socket.socket, size: int = 256 * 1024) -> None:
    payload = bytes(range(256)) * (size // 256)
    t = threading.Thread(target=s.sendall, args=(payload,))
    t.start()
    assert recv_exact(c, len(payload)) == payload
    t.join()
    c.sendall(b"back")
    assert recv_exact(s, 4) == b"back"


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
        _exchange(s, c)
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
        _exchange(s, c, 4096)
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
        _exchange(s, c)
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
    _exchange(s, c)
    for x in (s, c, conn, silent):
        x.close()


def test_per_session_rate_limit_holds_each_session(tmp_path: Path) -> None:
    """Each session gets its own limit (a lower bound on time: load can only make it slower)."""
    rate = 256 * 1024
    relay = start_relay(tmp_path / "relay", "-per-session-rate", str(rate))
    try:
        a, b = Device(tmp_path, "a", relay.port), Device(tmp_path, "b", relay.port)
        conn, _ = a.join()
        size = 5 * rate  # 2 * rate of burst, then 3 s at the limit
        pairs = [pair(a, conn, b) for _ in range(2)]
        started = time.monotonic()
        threads = [threading.Thread(target=_exchange, args=(s, c, size)) for s, c in pairs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - started
        assert elapsed >= 2.5, f"{size} bytes per session at {rate} B/s took only {elapsed:.2f} s"
        assert relay.status()["options"]["per-session-rate"] == rate
        for s, c in pairs:
            s.close()
            c.close()
        conn.close()
    finally:
        relay.stop()


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
            _exchange(s, c, 8192)
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
        _exchange(s, c)
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


def _fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_limits_timeouts_and_no_leaks(tmp_path: Path) -> None:
    """RelayFull past -max-sessions; a partner that never comes frees the waiting side after the
    message timeout; failed TLS handshakes and refused joins leave no descriptor behind."""
    relay = start_relay(tmp_path / "relay", "-max-sessions", "1", "-message-timeout", "2s")
    try:
        a, b, c = (Device(tmp_path, n, relay.port) for n in "abc")
        conn, answer = a.join()
        assert answer == xdr.RESPONSE_SUCCESS
        s, cl = pair(a, conn, b)
        other, answer = c.join()
        assert answer == xdr.RelayFull()
        other.close()
        assert b.connect_to(a.device_id) == xdr.RelayFull()
        s.close()
        cl.close()
        wait_for(lambda: relay.status()["numActiveSessions"] == 0, 30, "the session to end")
        # Counted from here: the engine keeps the finished session's pipe as a spare.
        before = _fd_count(relay.proc.pid)
        # A partner that never joins: the waiting side is closed after the message timeout.
        inv_b = b.connect_to(a.device_id)
        assert isinstance(inv_b, xdr.SessionInvitation)
        wait_invitation(conn)
        lonely, answer = b.session(inv_b)
        assert answer == xdr.RESPONSE_SUCCESS
        lonely.settimeout(30)
        t0 = time.monotonic()
        assert lonely.recv(1) == b""
        assert time.monotonic() - t0 >= 1.0
        lonely.close()
        # Broken TLS handshakes and silent connections.
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", relay.port)) as x:
                x.sendall(b"\x16\x03\x01\x00\x05hello-not-tls")
                x.settimeout(30)
                with contextlib.suppress(ConnectionResetError):
                    x.recv(100)
        conn.close()
        wait_for(lambda: relay.status()["numConnections"] == 0, 30, "protocol connections to close")
        wait_for(lambda: _fd_count(relay.proc.pid) <= before, 30, "descriptors to come back")
        assert relay.status()["numPendingSessionKeys"] == 0
    finally:
        relay.stop()


def test_global_rate_limit_holds_all_sessions_together(tmp_path: Path) -> None:
    """Two sessions share -global-rate (a lower bound on time: load can only make it slower)."""
    rate = 256 * 1024
    relay = start_relay(tmp_path / "relay", "-global-rate", str(rate))
    try:
        a, b = Device(tmp_path, "a", relay.port), Device(tmp_path, "b", relay.port)
        conn, _ = a.join()
        size = 2 * rate  # 4 * rate in total: 2 * rate of burst, then about 2 s at the limit
        pairs = [pair(a, conn, b) for _ in range(2)]
        started = time.monotonic()
        threads = [threading.Thread(target=_exchange, args=(s, c, size)) for s, c in pairs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - started
        assert elapsed >= 1.5, f"{2 * size} bytes at {rate} B/s global took only {elapsed:.2f} s"
        for s, c in pairs:
            s.close()
            c.close()
        conn.close()
    finally:
        relay.stop()


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_out_of_descriptors_pauses_accepting_then_recovers(tmp_path: Path) -> None:
    """With 64 descriptors, 80 silent connections exhaust them: the relay neither crashes nor spins on
    its readable listener, answers joins with RelayFull while over its limit, and serves again after."""
    relay = start_relay(tmp_path / "relay", "-message-timeout", "60s", prefix=("prlimit", "--nofile=64:64"))
    hogs: list[socket.socket] = []
    try:
        for _ in range(80):
            hogs.append(socket.create_connection(("127.0.0.1", relay.port)))
        time.sleep(1)
        cpu0 = _cpu_seconds(relay.proc.pid)
        time.sleep(3)
        assert _cpu_seconds(relay.proc.pid) - cpu0 < 0.3, "the relay spins while out of descriptors"
        assert relay.proc.poll() is None
        for h in hogs:
            h.close()
        hogs.clear()
        a = Device(tmp_path, "a", relay.port)

        def joined() -> bool:
            try:
                sock, answer = a.join()
            except OSError:
                return False
            sock.close()
            return answer == xdr.RESPONSE_SUCCESS

        wait_for(joined, 60, "a join to succeed again")
        assert "pausing accepts" in relay.log()
    finally:
        for h in hogs:
            h.close()
        relay.stop()


def test_pings_keep_a_device_joined_and_silence_ends_it(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "-ping-interval", "1s", "-network-timeout", "3s")
    try:
        a, b = Device(tmp_path, "a", relay.port), Device(tmp_path, "b", relay.port)
        live, answer = a.join()
        assert answer == xdr.RESPONSE_SUCCESS
        silent, answer = b.join()
        assert answer == xdr.RESPONSE_SUCCESS
        live.settimeout(10)
        pings = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            msg = read_message(live)
            assert msg == xdr.Ping()
            pings += 1
            send(live, xdr.Pong())
        assert pings >= 3
        # b never answered: closed after the network timeout, while a is still joined.
        silent.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while True:
                msg_or_end = silent.recv(4096)
                if not msg_or_end:
                    break
        assert b.connect_to(a.device_id) != xdr.RESPONSE_NOT_FOUND
        assert a.connect_to(b.device_id) == xdr.RESPONSE_NOT_FOUND
        live.close()
        silent.close()
    finally:
        relay.stop()


def test_tls_stalls_missing_certificates_and_trickled_joins(tmp_path: Path) -> None:
    """The protocol mode's own TLS carriage: a handshake that stops half-way is closed at the message
    timeout and gives its slot back, a device without a certificate is turned away, and a session
    request that arrives a byte at a time still joins (the whole-request fast path must not be the
    only way in)."""
    import ssl

    relay = start_relay(tmp_path / "relay", "-message-timeout", "2s")
    try:
        a, b = Device(tmp_path, "a", relay.port), Device(tmp_path, "b", relay.port)
        conn, answer = a.join()
        assert answer == xdr.RESPONSE_SUCCESS
        # A session request a byte at a time, for both sides.
        inv_b = b.connect_to(a.device_id)
        assert isinstance(inv_b, xdr.SessionInvitation)
        inv_a = wait_invitation(conn)
        sides = []
        for inv in (inv_a, inv_b):
            side = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
            side.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for byte in xdr.encode(xdr.JoinSessionRequest(inv.key)):
                side.sendall(bytes([byte]))
                time.sleep(0.01)
            assert read_message(side) == xdr.RESPONSE_SUCCESS
            sides.append(side)
        _exchange(sides[0], sides[1], 64 * 1024)
        for side in sides:
            side.close()
        wait_for(lambda: relay.status()["numActiveSessions"] == 0, 30, "the session to end")
        # Counted from here: the engine keeps the finished session's pipe as a spare.
        before = _fd_count(relay.proc.pid)
        # A real ClientHello, then silence. First let every earlier deadline pass, so nothing but
        # this connection's own deadline can wake the relay's timer.
        time.sleep(2.5)
        hello_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        hello_ctx.check_hostname = False
        hello_ctx.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        half = hello_ctx.wrap_bio(incoming, outgoing)
        with contextlib.suppress(ssl.SSLWantReadError):
            half.do_handshake()
        stalled = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
        stalled.sendall(outgoing.read())
        t0 = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            while stalled.recv(65536):
                pass
        assert time.monotonic() - t0 >= 1.0, "closed before the message timeout"
        stalled.close()
        # No client certificate: the handshake may finish, the connection does not stay.
        anon_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anon_ctx.check_hostname = False
        anon_ctx.verify_mode = ssl.CERT_NONE
        anon_ctx.set_alpn_protocols(["bep-relay"])
        raw = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):
            anon = anon_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            send(anon, xdr.JoinRelayRequest(""))
            assert anon.recv(1) == b""
        raw.close()
        wait_for(lambda: relay.status()["numConnections"] == 1, 30, "only the joined device to stay")
        wait_for(lambda: _fd_count(relay.proc.pid) <= before, 30, "descriptors to come back")
        conn.close()
    finally:
        relay.stop()
