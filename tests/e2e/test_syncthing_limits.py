"""The Syncthing relay at its limits, over real sockets: rate limits, RelayFull, timeouts (messages,
pings, stalled TLS handshakes), running out of descriptors, and nothing leaked after any of them.

The protocol's ordinary conversations are in test_syncthing_protocol.py.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from natrelay.syncthing import xdr
from tests.e2e.offset_env import wait_for
from tests.e2e.syncthing_client import Device, exchange, pair, read_message, send, wait_invitation
from tests.e2e.syncthing_env import start_relay


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
        threads = [threading.Thread(target=exchange, args=(s, c, size)) for s, c in pairs]
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
        threads = [threading.Thread(target=exchange, args=(s, c, size)) for s, c in pairs]
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
        exchange(sides[0], sides[1], 64 * 1024)
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
