"""The cluster end to end with real processes: three routers on one PostgreSQL, a real relay,
the natrelay host and client; 20 MB each way; kill -9 of the host's router mid-transfer.

The relay registers with router A, the host with router B (falling back to C), the client logs
in at A: A chooses relay and key, B delivers the host's offer. Killing B must not cost the
running session a byte (relayed sessions never pass through a router), and the host must be
reachable again through C well within the lease.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.aspia_env import (
    HOST,
    Process,
    Router,
    add_router_user,
    aspia_env,
    free_port,
    start_process,
    start_relay,
    wait_for,
)
from tests.e2e.test_aspia_peers import (
    EOF_MARK,
    HOST_PASSWORD,
    HOST_USER,
    RELAY_TIMERS,
    ROUTER_PASSWORD,
    ROUTER_USER,
    EchoServer,
    exchange,
    read_all,
    write_secret,
)
from tests.e2e.test_aspia_router_cluster import LEASE, start_member
from tests.e2e.test_aspia_router_postgres import create_pg_router, second_router

pytestmark = pytest.mark.timeout(300)
MB = 1024 * 1024


class Cluster:
    def __init__(self, tmp: Path, routers: list[Router], relay: Process, echo: EchoServer) -> None:
        self.tmp = tmp
        self.routers = routers
        self.relay = relay
        self.echo = echo
        self.procs: list[Process] = []

    def start_host(self) -> tuple[Process, int]:
        _a, b, c = self.routers
        pw = write_secret(self.tmp / "host-pw", HOST_PASSWORD)
        args = [sys.executable, "-m", "tests.e2e.cluster_host", "aspia", "host", "--router",
                b.setup.address(), "--router-key", b.setup.public_key, "--expose", f"{HOST}:{self.echo.port}",
                "--user", HOST_USER, "--password-file", str(pw), "--state", str(self.tmp / "host-state.json"),
                "--retry-interval", "0.5"]
        env = {"NATRELAY_TEST_FALLBACK_ROUTERS": c.setup.address(),
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        log_path = self.tmp / "host.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    env=aspia_env(env), cwd=Path(__file__).resolve().parents[2])
        host = Process(proc, log_path)
        self.procs.append(host)
        host.wait_log("host id: ", timeout=60)
        match = re.search(r"^host id: (\d+)$", host.log(), re.MULTILINE)
        assert match, host.log()
        return host, int(match.group(1))

    def start_client(self, host_id: int) -> tuple[Process, int]:
        a = self.routers[0]
        pw = write_secret(self.tmp / "client-pw", ROUTER_PASSWORD)
        hpw = write_secret(self.tmp / "client-host-pw", HOST_PASSWORD)
        port = free_port()
        client = start_process("natrelay", [
            "aspia", "client", "--router", a.setup.address(), "--router-key", a.setup.public_key,
            "--user", ROUTER_USER, "--password-file", str(pw), "--host-id", str(host_id), "--timeout", "10",
            "--host-user", HOST_USER, "--host-password-file", str(hpw), "--listen", f"{HOST}:{port}"],
            self.tmp / "client.log")
        self.procs.append(client)
        client.wait_log("listening on", timeout=60)
        return client, port


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    a = create_pg_router(tmp_path / "a", postgres_url)
    add_router_user(a, ROUTER_USER, ROUTER_PASSWORD)
    setups = [a, second_router(a, tmp_path / "b"), second_router(a, tmp_path / "c")]
    procs: list[Process] = []
    echo = EchoServer()
    try:
        routers = []
        for s in setups:
            routers.append(start_member(s))
            procs.append(routers[-1])
        relay = start_relay(tmp_path / "relay", a, RELAY_TIMERS)
        procs.append(relay)
        routers[0].wait_log("added 100 keys", timeout=60)
        cluster = Cluster(tmp_path, routers, relay, echo)
        cluster.procs = procs  # the test's host and client join this list
        yield cluster
    finally:
        for p in reversed(procs):
            p.kill()  # only what the test did not stop itself
        echo.shutdown()
        echo.server_close()


def test_client_at_a_reaches_host_at_b_and_survives_b_being_killed(cluster: Cluster) -> None:
    a, b, c = cluster.routers
    host, host_id = cluster.start_host()
    b.wait_log(f"has host ID {host_id}")
    client, port = cluster.start_client(host_id)

    payload = os.urandom(20 * MB)
    echoed = exchange(port, payload)  # 20 MB up to the host's service and 20 MB back
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload + EOF_MARK).digest()
    a.wait_log(f"Host {host_id} is at router")

    # Mid-transfer, kill -9 the router holding the host.
    payload = os.urandom(20 * MB)
    sock = socket.create_connection((HOST, port), timeout=60)
    writer = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
    writer.start()
    first = b""
    while len(first) < 2 * MB:
        chunk = sock.recv(262144)
        assert chunk, "the session ended early"
        first += chunk
    b.kill()
    killed = time.monotonic()
    rest = read_all(sock)
    writer.join(60)
    sock.close()
    assert hashlib.sha256(first + rest).digest() == hashlib.sha256(payload + EOF_MARK).digest()

    # The host moves to C at once; the cluster finds it there well within the lease.
    host.wait_log(f"connected to the router at {c.setup.address()}", timeout=LEASE * 3)
    c.wait_log(f"has host ID {host_id}", timeout=LEASE * 3)
    moved = time.monotonic() - killed
    assert moved < LEASE * 3, moved
    assert host.log().count("host id: ") == 1  # the same ID through another router
    deadline = time.monotonic() + 20
    while exchange(port, b"again") != b"again" + EOF_MARK:
        assert time.monotonic() < deadline, client.log()
        time.sleep(0.5)
    c.wait_log("Connection offer from another router delivered")
    rows = {r["address"].rsplit(":", 1)[1]: r for r in a.status()["cluster"]}
    assert rows[str(c.setup.port)]["alive"]
    wait_for(lambda: not {r["address"].rsplit(":", 1)[1]: r for r in a.status()["cluster"]}
             [str(b.setup.port)]["alive"], LEASE * 3, "B's lease to run out")
    assert client.stop() == 0 and host.stop() == 0
    for r in (a, c):
        assert r.stop() == 0, r.log()
    assert cluster.relay.stop() == 0
