"""The Aspia issue's system test: real ``aspia_router``, two ``aspia_relay``s and the natrelay peers.

Everything runs as separate processes on 127.0.0.1; the only thing in the test process is the
service the host exposes (an echo server that, once its input ends, says so and closes: that is
how the tests see half-close carried end to end).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.aspia_env import (
    HOST,
    Process,
    Router,
    RouterSetup,
    add_router_user,
    aspia_env,
    create_router,
    free_port,
    start_process,
    start_relay,
    start_router,
    tool,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)

EOF_MARK = b"<service saw end of input>"
ROUTER_USER, ROUTER_PASSWORD = "alice", "router-pw"
HOST_USER, HOST_PASSWORD = "bob", "host-pw"
RELAY_TIMERS = {"NATRELAY_ASPIA_RELAY_TIMERS": "reconnect=0.5"}


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        server: EchoServer = self.server  # type: ignore[assignment]
        with server.lock:
            server.connections += 1
        while data := sock.recv(262144):
            sock.sendall(data)
        sock.sendall(EOF_MARK)
        with server.lock:
            server.eofs += 1
        sock.close()


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__((HOST, 0), _Echo)
        self.lock = threading.Lock()
        self.connections = 0
        self.eofs = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@dataclass
class Peers:
    """A router, two relays, an exposed echo service and a registered host."""

    tmp: Path
    setup: RouterSetup
    router: Router
    relays: list[Process]
    echo: EchoServer
    host: Process
    host_id: int
    clients: list[Process] = field(default_factory=list)
    """Clients started through ``listen_client``: the fixture stops them (and fails if SIGTERM does not)."""

    def client_args(self, *, user: str = ROUTER_USER, password: str = ROUTER_PASSWORD,
                    key: str | None = None, host_id: int | None = None,
                    host_password: str | None = None) -> list[str]:
        pw = write_secret(self.tmp / f"pw-{user}-{password}", password)
        args = ["aspia", "client", "--router", self.setup.address(), "--router-key",
                key or self.setup.public_key, "--user", user, "--password-file", str(pw),
                "--host-id", str(host_id or self.host_id), "--timeout", "10"]
        args += ["--host-user", HOST_USER, "--host-password-file",
                 str(write_secret(self.tmp / "host-pw-c", host_password or HOST_PASSWORD))]
        return args

    def listen_client(self, name: str = "client") -> tuple[Process, int]:
        port = free_port()
        proc = start_process("natrelay", [*self.client_args(), "--listen", f"{HOST}:{port}"],
                             self.tmp / f"{name}.log")
        self.clients.append(proc)
        proc.wait_log("listening on", timeout=60)
        return proc, port

    def stdio_client(self, data: bytes, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*tool("natrelay"), *self.client_args(**kwargs)], input=data,
                              capture_output=True, timeout=60, env=aspia_env())


def start_host(tmp: Path, setup: RouterSetup, expose: int, *,
               state: Path | None = None) -> tuple[Process, int]:
    pw = write_secret(tmp / "host-pw", HOST_PASSWORD)
    proc = start_process("natrelay", [
        "aspia", "host", "--router", setup.address(), "--router-key", setup.public_key,
        "--expose", f"{HOST}:{expose}", "--user", HOST_USER, "--password-file", str(pw),
        "--state", str(state or tmp / "host-state.json"), "--retry-interval", "0.5"], tmp / "host.log")
    proc.wait_log("host id: ", timeout=60)
    match = re.search(r"^host id: (\d+)$", proc.log(), re.MULTILINE)
    assert match, proc.log()
    return proc, int(match.group(1))


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    setup = create_router(tmp_path / "router")
    add_router_user(setup, ROUTER_USER, ROUTER_PASSWORD)
    router = start_router(setup)
    # Host and client both connect from 127.0.0.1, so twenty sessions opened at once put up to forty
    # pending peer connections of one address on the relays: more than the default per-address cap of
    # 16 when a loaded machine delays the PeerToRelay messages. Real peers come from two addresses.
    relays = [start_relay(tmp_path / f"relay{i}", setup, RELAY_TIMERS, MaxPendingPeersPerIp="64")
              for i in (1, 2)]
    echo = EchoServer()
    procs: list[Process] = [router, *relays]
    clients: list[Process] = []
    try:
        wait_for(lambda: router.log().count("added 100 keys") >= 2, 60, "both relays to register")
        host, host_id = start_host(tmp_path, setup, echo.port)
        procs.append(host)
        peers = Peers(tmp_path, setup, router, relays, echo, host, host_id, clients)
        yield peers
        for client in clients:  # each must stop on SIGTERM; stop() fails the test otherwise
            client.stop()
    finally:
        for p in [*clients, *reversed(procs)]:  # after a failure too
            p.kill()
        echo.shutdown()
        echo.server_close()


def connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=30)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(262144):
        chunks.append(data)
    return b"".join(chunks)


def send_all_then_eof(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)


def exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload``, end our input, read until the service closes (concurrently, for big data)."""
    with connect(port) as sock:
        writer = threading.Thread(target=send_all_then_eof, args=(sock, payload))
        writer.start()
        received = read_all(sock)
        writer.join()
    return received


def relay_sessions(router: Router) -> dict[int, int]:
    """Active relayed sessions per relay (router session ID), from ``aspia_router --status --json``."""
    return {r["id"]: r["sessions"] or 0 for r in router.status()["relays"]}


def test_fifty_megabytes_and_twenty_connections_over_two_relays(peers: Peers) -> None:
    client, port = peers.listen_client()
    payload = os.urandom(50 * 1024 * 1024)
    echoed = exchange(port, payload)
    assert len(echoed) == len(payload) + len(EOF_MARK)
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(payload + EOF_MARK).hexdigest()

    # Twenty at once, held open until the router's statistics show them on both relays.
    socks = [connect(port) for _ in range(20)]
    for i, s in enumerate(socks):
        s.sendall(b"hello %d" % i)
    for i, s in enumerate(socks):
        expected = b"hello %d" % i
        got = b""
        while len(got) < len(expected):
            chunk = s.recv(100)
            assert chunk, f"connection {i} closed after {got!r}: its session was not relayed"
            got += chunk
        assert got == expected
    wait_for(lambda: sum(relay_sessions(peers.router).values()) == 20, 60, "20 sessions in the statistics")
    per_relay = relay_sessions(peers.router)
    assert len(per_relay) == 2 and all(n > 0 for n in per_relay.values()), per_relay
    status = peers.router.status()
    assert {s["host_id"] for s in status["sessions"]} == {peers.host_id}
    assert {s["user"] for s in status["sessions"]} == {ROUTER_USER}
    assert all(s["bytes"] > 0 for s in status["sessions"])
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda s: (s.shutdown(socket.SHUT_WR), read_all(s))[1], socks))
    assert results == [EOF_MARK] * 20
    for s in socks:
        s.close()
    assert client.stop() == 0


def test_stdin_client_half_close_and_exit(peers: Peers) -> None:
    data = os.urandom(2 * 1024 * 1024)
    done = peers.stdio_client(data)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == data + EOF_MARK


CLIENT_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"password": "wrong"}, "wrong user name or password"),
    ({"key": "11" * 32}, "--router-key does not match"),
    ({"host_id": 987654}, "host ID 987654 is not connected to the router (PEER_NOT_FOUND)"),
    ({"host_password": "wrong"}, "the host refused the login: wrong host user name or password"),
]


def test_client_errors_are_one_clear_line(peers: Peers) -> None:
    for kwargs, message in CLIENT_ERRORS:  # one set of processes for all cases: they are independent
        done = peers.stdio_client(b"never delivered", **kwargs)
        assert done.returncode == 1, kwargs
        err = done.stderr.decode()
        lines = [line for line in err.splitlines() if line.startswith("natrelay: error:")]
        assert len(lines) == 1 and message in lines[0], err
        assert done.stdout == b""
    assert peers.echo.connections == 0
    # Nothing else was disturbed: a correct client still gets through.
    assert peers.stdio_client(b"still fine").stdout == b"still fine" + EOF_MARK


def test_key_pool_empty_without_relays(tmp_path: Path) -> None:
    setup = create_router(tmp_path / "router")
    add_router_user(setup, ROUTER_USER, ROUTER_PASSWORD)
    router = start_router(setup)
    echo = EchoServer()
    try:
        host, host_id = start_host(tmp_path, setup, echo.port)
        pw = write_secret(tmp_path / "pw", ROUTER_PASSWORD)
        done = subprocess.run([*tool("natrelay"), "aspia", "client", "--router", setup.address(),
                               "--router-key", setup.public_key, "--user", ROUTER_USER,
                               "--password-file", str(pw), "--host-id", str(host_id)],
                              input=b"", capture_output=True, timeout=60, env=aspia_env())
        assert done.returncode == 1
        assert "KEY_POOL_EMPTY" in done.stderr.decode()
        host.stop()
    finally:
        router.kill()
        echo.shutdown()
        echo.server_close()


def test_killing_a_relay_ends_only_its_sessions(peers: Peers) -> None:
    _client, port = peers.listen_client()
    socks = [connect(port) for _ in range(6)]
    for s in socks:
        s.sendall(b"x")
        assert s.recv(10) == b"x"
    wait_for(lambda: sum(relay_sessions(peers.router).values()) == 6, 60, "6 sessions in the statistics")
    status = peers.router.status()
    by_relay = {r["id"]: [s["id"] for s in status["sessions"] if s["relay"] == r["id"]]
                for r in status["relays"]}
    assert len(by_relay) == 2 and all(by_relay.values()), by_relay
    victim_port = json.loads((peers.tmp / "relay1" / "relay.json").read_text())["PeerPort"]
    [survivor] = [r["id"] for r in status["relays"] if r["address"] != f"{HOST}:{victim_port}"]
    peers.relays[0].kill()
    wait_for(lambda: list(relay_sessions(peers.router)) == [survivor], 60, "the router to drop the relay")
    survivors, dead = [], []
    for s in socks:
        s.settimeout(10)
        try:
            s.sendall(b"y")
            (survivors if s.recv(10) == b"y" else dead).append(s)
        except OSError:
            dead.append(s)
    assert len(survivors) == len(by_relay[survivor]) and len(dead) == 6 - len(survivors)
    # New connections only get the surviving relay's keys, and work.
    assert exchange(port, b"after") == b"after" + EOF_MARK
    for s in socks:
        s.close()


def test_router_restart_keeps_sessions_and_relays_and_host_come_back(peers: Peers) -> None:
    _client, port = peers.listen_client()
    sock = connect(port)
    sock.sendall(b"before")
    assert sock.recv(100) == b"before"
    peers.router.stop()
    router = start_router(peers.setup)
    peers.router.proc = router.proc
    sock.sendall(b"during")  # the relayed session does not depend on the router
    assert sock.recv(100) == b"during"
    wait_for(lambda: router.log().count("added 100 keys") + router.log().count("added 99 keys") >= 2, 30,
             "both relays to re-register")
    peers.host.wait_log("connected to the router", count=2, timeout=30)
    wait_for(lambda: len([p for p in router.status()["peers"] if p["type"] == "host"]) == 1, 30,
             "the host to re-register")
    host_ids = [p["host_ids"] for p in router.status()["peers"] if p["type"] == "host"]
    assert host_ids == [[peers.host_id]]  # same ID: the host proved its stored key
    assert peers.host.log().count("host id: ") == 1
    # The client's router login died with the router: the next connection logs in again.
    deadline = time.monotonic() + 20
    while True:
        try:
            assert exchange(port, b"again") == b"again" + EOF_MARK
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    send_all_then_eof(sock, b"end")
    assert read_all(sock) == b"end" + EOF_MARK
    sock.close()


def test_stdin_client_exits_when_the_host_goes_away(peers: Peers) -> None:
    proc = subprocess.Popen([*tool("natrelay"), *peers.client_args()], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=aspia_env())
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"ping")
    proc.stdin.flush()
    assert proc.stdout.read(4) == b"ping"
    peers.host.kill()  # stdin stays open: only the lost connection can end the client
    assert proc.wait(20) == 1
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert "relayed connection closed" in err and "bytes, received" in err, err
    proc.stdin.close()
