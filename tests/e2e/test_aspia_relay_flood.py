"""The real ``aspia_relay`` (with the real ``aspia_router``) under cheap floods of silent connections.

Issue 8: a few hundred accepted-but-silent connections used to hold every pending slot for the
30-second pairing timeout, so every legitimate pairing failed meanwhile. Here hundreds of silent
connections come from one address (127.0.0.2) and from 250 addresses (127.0.0.3...), bound as
the client socket's source, while a host and a client from 127.0.0.1 pair and move 4 MiB each
way, checked by SHA-256. The relay closes every flood connection itself (refused, evicted or
past the first-message deadline), and its descriptors return to the baseline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from natrelay.aspia.messages import build_peer_to_relay
from natrelay.aspia.proto import router_common_pb2
from tests.e2e.aspia_env import (
    HOST,
    Process,
    Router,
    RouterSetup,
    add_router_user,
    create_router,
    start_relay,
    start_router,
    wait_for,
)
from tests.e2e.test_aspia_relay import get_offers, recv_exact, wait_registered

pytestmark = pytest.mark.timeout(180)

TIMERS = {"NATRELAY_ASPIA_RELAY_TIMERS": "reconnect=0.5,guard_report=0.5"}
PAYLOAD = 4 * 1024 * 1024


@dataclass
class Setup:
    tmp: Path
    router_setup: RouterSetup
    router: Router


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Setup]:
    setup = create_router(tmp_path / "router")
    add_router_user(setup, "alice", "alice-pw")
    router = start_router(setup)
    try:
        yield Setup(tmp_path, setup, router)
    finally:
        assert router.stop() == 0


def fds(proc: Process) -> int:
    return len(os.listdir(f"/proc/{proc.pid}/fd"))


def socket_fds(proc: Process) -> int:
    """Open sockets only: the forwarding engine keeps a small pool of splice pipes for reuse, which
    grows by a pipe when a session's two directions happen to splice at the same moment."""
    fd_dir = f"/proc/{proc.pid}/fd"
    count = 0
    for name in os.listdir(fd_dir):
        try:
            count += os.readlink(f"{fd_dir}/{name}").startswith("socket:")
        except FileNotFoundError:
            continue  # closed while we looked
    return count


def flood(port: int, sources: list[str], per_source: int) -> list[socket.socket]:
    """Silent connections: connect (from ``source``) and never send a byte."""
    socks = []
    for source in sources:
        for _ in range(per_source):
            sock = socket.socket()
            sock.bind((source, 0))
            sock.settimeout(10)
            try:
                sock.connect((HOST, port))
            except OSError:  # the backlog was full: still a flood connection, just a failed one
                sock.close()
                continue
            socks.append(sock)
    return socks


def all_closed_by_relay(socks: list[socket.socket], timeout: float) -> int:
    """How many of ``socks`` the relay closed within ``timeout`` (then they are closed here too)."""
    shut = 0
    for sock in socks:
        sock.settimeout(timeout)
        try:
            if sock.recv(1) == b"":
                shut += 1
        except ConnectionResetError:
            shut += 1
        except TimeoutError:
            pass
        sock.close()
    return shut


def legit_transfer(creds: router_common_pb2.RelayCredentials) -> None:
    """Host and client pair through the relay and move ``PAYLOAD`` random bytes each way intact."""
    host = socket.create_connection((creds.host, creds.port), timeout=20)
    client = socket.create_connection((creds.host, creds.port), timeout=20)
    try:
        host.sendall(build_peer_to_relay(creds))
        client.sendall(build_peer_to_relay(creds))
        up, down = os.urandom(PAYLOAD), os.urandom(PAYLOAD)
        got: dict[str, bytes] = {}

        def read(name: str, sock: socket.socket) -> None:
            got[name] = recv_exact(sock, PAYLOAD)

        readers = [threading.Thread(target=read, args=("host", host)),
                   threading.Thread(target=read, args=("client", client))]
        for t in readers:
            t.start()
        client.sendall(up)
        host.sendall(down)
        for t in readers:
            t.join(60)
        assert hashlib.sha256(got["host"]).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got["client"]).digest() == hashlib.sha256(down).digest()
    finally:
        host.close()
        client.close()


def guard_summary(relay: Process) -> dict[str, int]:
    """The latest flood-guard summary from the relay's log, as reason -> count."""
    lines = [line for line in relay.log().splitlines() if "Flood guard since start" in line]
    if not lines:
        return {}
    counts = {k: int(v) for k, v in re.findall(r"'(\w+)': (\d+)", lines[-1])}
    return counts


@pytest.mark.parametrize(("sources", "per_source"), [
    pytest.param(["127.0.0.2"], 300, id="one-address"),
    pytest.param([f"127.0.{i // 250}.{i % 250 + 3}" for i in range(250)], 2, id="250-addresses"),
])
def test_silent_flood_does_not_block_pairing_and_leaves_no_descriptor(
        env: Setup, sources: list[str], per_source: int) -> None:
    relay = start_relay(env.tmp / "relay", env.router_setup, TIMERS, MaxPeerCount="10",
                        PeerFirstMessageTimeout="2")
    socks: list[socket.socket] = []
    try:
        wait_registered(relay, env.router, 10)
        # A first session warms the forwarding engine up (it keeps its splice pipes for reuse).
        creds, *standins = get_offers(env.router)
        legit_transfer(creds)
        creds, *more = get_offers(env.router)
        standins += more
        relay.wait_log("ended (done)")
        baseline = socket_fds(relay)
        port = creds.port
        socks = flood(port, sources, per_source)
        assert len(socks) >= 0.9 * len(sources) * per_source
        # The flood is in place (give the relay a moment to accept it); a real pair still forms.
        time.sleep(1.0)
        legit_transfer(creds)
        relay.wait_log("paired with key")
        # Every flood connection is closed by the relay itself: refused at once, evicted, or past
        # the 2-second first-message deadline.
        assert all_closed_by_relay(socks, timeout=15) == len(socks)
        wait_for(lambda: socket_fds(relay) <= baseline, 20, f"the relay's sockets back to {baseline}")
        # Each flood connection is counted exactly once under a reason; the pair under none.
        wait_for(lambda: sum(guard_summary(relay).values()) == len(socks), 10,
                 f"{len(socks)} refusals and guard closes counted")
        for standin in standins:
            standin.close()
    finally:
        for sock in socks:
            sock.close()
        assert relay.stop() == 0


def test_trickling_peers_are_closed_at_the_first_message_deadline(env: Setup) -> None:
    """A byte every half second never completes a PeerToRelay: closed after PeerFirstMessageTimeout."""
    relay = start_relay(env.tmp / "relay", env.router_setup, TIMERS, MaxPeerCount="4",
                        PeerFirstMessageTimeout="2")
    socks: list[socket.socket] = []
    try:
        wait_registered(relay, env.router, 4)
        port = int(json.loads((env.tmp / "relay" / "relay.json").read_text())["PeerPort"])
        socks = flood(port, [f"127.0.2.{i}" for i in range(2, 12)], 1)
        started = time.monotonic()
        trickle = b"\x00\x00\x01\x00" + b"x" * 64
        shut: set[int] = set()
        for step in range(len(trickle)):
            for i, sock in enumerate(socks):
                if i not in shut:
                    try:
                        sock.sendall(trickle[step:step + 1])
                    except OSError:
                        shut.add(i)
            if len(shut) == len(socks) or time.monotonic() - started > 15:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        assert all_closed_by_relay(socks, timeout=10) == len(socks)
        assert 1.5 <= elapsed < 15
        wait_for(lambda: guard_summary(relay).get("first_message_timeout") == len(socks), 10,
                 "the deadline closes counted")
    finally:
        for sock in socks:
            sock.close()
        assert relay.stop() == 0


def test_sessions_end_at_the_maximum_lifetime(env: Setup) -> None:
    timers = {"NATRELAY_ASPIA_RELAY_TIMERS": "reconnect=0.5,guard_report=0.5,session_lifetime=2"}
    relay = start_relay(env.tmp / "relay", env.router_setup, timers, MaxPeerCount="2")
    try:
        wait_registered(relay, env.router, 2)
        creds, *standins = get_offers(env.router)
        host = socket.create_connection((creds.host, creds.port), timeout=20)
        client = socket.create_connection((creds.host, creds.port), timeout=20)
        host.sendall(build_peer_to_relay(creds))
        client.sendall(build_peer_to_relay(creds) + b"hello")
        assert recv_exact(host, 5) == b"hello"
        started = time.monotonic()
        for sock in (host, client):  # busy, not idle: only the lifetime ends it
            sock.settimeout(10)
        while time.monotonic() - started < 10:
            try:
                client.sendall(b".")
                if host.recv(1) == b"":
                    break
            except OSError:
                break
            time.sleep(0.1)
        assert 1.5 <= time.monotonic() - started < 10
        relay.wait_log("session lifetime of 2 s reached")
        wait_for(lambda: guard_summary(relay).get("session_lifetime") == 1, 10, "the lifetime close counted")
        for sock in (host, client, *standins):
            sock.close()
    finally:
        assert relay.stop() == 0


def test_invalid_guard_fields_stop_the_relay_with_the_field_and_range(env: Setup) -> None:
    relay = start_relay(env.tmp / "relay", env.router_setup, TIMERS, MaxPendingPeers="-1",
                        MaxBytesBeforeAuth="10")
    assert relay.proc.wait(30) == 78
    log = relay.log()
    assert "MaxPendingPeers" in log and "0 (no cap) to 1000000" in log
    assert "MaxBytesBeforeAuth" in log and "64 to 1048580" in log
