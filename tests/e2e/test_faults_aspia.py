"""Faults with real Aspia processes on 127.0.0.1, checked with SHA-256 (issue 8, "Faults").

The namespace bed adds nothing to these (a kill -9 looks the same behind a NAT), so they run on
loopback, reusing the system test's set-up: a router, two relays, a host exposing an echo
service that appends an end-of-input mark.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.e2e.aspia_env import HOST, Process, aspia_env, start_process, start_router, tool, wait_for
from tests.e2e.test_aspia_peers import (
    EOF_MARK,
    Peers,
    connect,
    read_all,
    relay_sessions,
)
from tests.e2e.test_aspia_peers import (
    peers as peers,
)

pytestmark = pytest.mark.timeout(300)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def reaped() -> Iterator[list[Process]]:
    """Extra processes a test starts (forwarding clients, restarted servers): stopped at the end,
    and the test fails if one had to be killed."""
    procs: list[Process] = []
    yield procs
    failures = []
    for p in procs:
        try:
            p.stop()
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, failures


def relay_port(peers: Peers, i: int) -> int:
    return int(json.loads((peers.tmp / f"relay{i}" / "relay.json").read_text())["PeerPort"])


def test_router_killed_during_a_50_mb_transfer(peers: Peers, reaped: list[Process]) -> None:
    """The transfer completes intact; the relay and the host come back when the router does, and
    the returned router never offers a key of a relay that died while it was down."""
    client, port = peers.listen_client()
    reaped.append(client)
    payload = os.urandom(50 * 1024 * 1024)
    half = len(payload) // 2
    router_gone = threading.Event()
    received: list[bytes] = []
    with connect(port) as sock:
        def send() -> None:
            sock.sendall(payload[:half])
            router_gone.wait(60)
            sock.sendall(payload[half:])
            sock.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=send)
        writer.start()
        reader = threading.Thread(target=lambda: received.append(read_all(sock)))
        reader.start()
        time.sleep(0.5)  # the first half is in flight
        peers.router.proc.kill()
        peers.router.proc.wait()
        router_gone.set()
        writer.join(120)
        reader.join(120)
    assert received and sha(received[0]) == sha(payload + EOF_MARK)

    peers.relays[0].kill()  # dies while the router is down: it must never be offered again
    router = start_router(peers.setup)
    peers.router.proc = router.proc
    peers.router.log_offset = router.log_offset
    router.wait_log("added 100 keys", timeout=60)  # the surviving relay re-registers
    peers.host.wait_log("connected to the router", count=2, timeout=60)
    wait_for(lambda: [p["host_ids"] for p in router.status()["peers"] if p["type"] == "host"]
             == [[peers.host_id]], 60, "the host to re-register under its ID")
    status = router.status()
    assert [r["address"] for r in status["relays"]] == [f"{HOST}:{relay_port(peers, 2)}"], status["relays"]
    # Every new connection gets a key of the live relay, and works (the client logs in again).
    deadline = time.monotonic() + 30
    for i in range(10):
        data = os.urandom(10_000 + i)
        while True:
            with connect(port) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                got = read_all(s)
            if got == data + EOF_MARK or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # only the first may find the client's old router login dead
        assert got == data + EOF_MARK, i


def _stdio_client(peers: Peers) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*tool("natrelay"), *peers.client_args()], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=aspia_env())
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"ping")
    proc.stdin.flush()
    assert proc.stdout.read(4) == b"ping"
    return proc


@pytest.fixture
def clients() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    leftovers = [p for p in procs if p.poll() is None]
    for p in leftovers:
        p.kill()
        p.wait()
    assert not leftovers, "a client had to be killed"


def test_relay_killed_ends_its_sessions_with_a_message_and_spares_the_others(
        peers: Peers, clients: list[subprocess.Popen[bytes]]) -> None:
    clients.extend(_stdio_client(peers) for _ in range(6))
    wait_for(lambda: sum(relay_sessions(peers.router).values()) == 6, 60, "6 sessions in the statistics")
    by_relay = relay_sessions(peers.router)
    assert len(by_relay) == 2 and all(by_relay.values()), by_relay
    victim = next(r["id"] for r in peers.router.status()["relays"]
                  if r["address"] == f"{HOST}:{relay_port(peers, 1)}")
    peers.relays[0].proc.kill()
    peers.relays[0].proc.wait()
    time.sleep(3)
    ended = [p for p in clients if p.poll() is not None]
    survivors = [p for p in clients if p.poll() is None]
    assert len(ended) == by_relay[victim] and len(survivors) == 6 - by_relay[victim]
    for p in ended:
        assert p.stderr is not None
        err = p.stderr.read().decode()
        assert p.returncode != 0, err
        assert "relay" in err and "went away" in err, err
    for p in survivors:  # untouched: still echo, and end normally
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(b"more")
        p.stdin.flush()
        assert p.stdout.read(4) == b"more"
        p.stdin.close()
        assert p.wait(30) == 0
        assert p.stdout.read() == EOF_MARK
    # The host ended the sessions of the dead relay too (its side of each is gone).
    peers.host.wait_log("went away", count=len(ended), timeout=30)


def _fd_count(pid: int) -> int:
    """Open sockets of ``pid`` (the relay's engine keeps a few spare splice pipes on purpose)."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def test_client_killed_mid_transfer_frees_the_session(
        peers: Peers, clients: list[subprocess.Popen[bytes]], reaped: list[Process]) -> None:
    relays = [p.pid for p in peers.relays]
    baseline = [_fd_count(pid) for pid in relays]
    clients.append(_stdio_client(peers))
    victim = clients[0]
    _drain(victim.stdout)
    _feed(victim.stdin, 64 * 1024 * 1024)
    time.sleep(0.5)  # mid-transfer: bytes flow both ways
    victim.kill()
    victim.wait()
    # The host's side ends with a message, and the relay frees the session.
    peers.host.wait_log("went away", timeout=30)
    wait_for(lambda: sum(relay_sessions(peers.router).values()) == 0, 60, "the relays to drop the session")
    wait_for(lambda: [_fd_count(pid) for pid in relays] == baseline, 30, "relay descriptors back to baseline")
    # And the host still serves.
    forwarder, port = peers.listen_client("client-after")
    reaped.append(forwarder)
    with connect(port) as s:
        s.sendall(b"after")
        s.shutdown(socket.SHUT_WR)
        assert read_all(s) == b"after" + EOF_MARK


def _drain(stream: IO[bytes] | None) -> threading.Thread:
    """Read ``stream`` to its end in the background, as a consumer of the client's output would."""
    assert stream is not None
    reader = threading.Thread(target=lambda: stream.read(), daemon=True)
    reader.start()
    return reader


def _feed(stream: IO[bytes] | None, size: int) -> threading.Thread:
    """Write ``size`` random bytes to ``stream`` in the background (ignoring a closed pipe)."""
    assert stream is not None

    def write() -> None:
        with contextlib.suppress(OSError):
            for _ in range(size // 65536):
                stream.write(os.urandom(65536))
                stream.flush()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


def test_host_killed_mid_transfer_ends_the_client_with_a_message(
        peers: Peers, clients: list[subprocess.Popen[bytes]]) -> None:
    clients.append(_stdio_client(peers))
    proc = clients[0]
    assert proc.stdin is not None and proc.stderr is not None
    _drain(proc.stdout)
    _feed(proc.stdin, 64 * 1024 * 1024)
    time.sleep(0.5)  # bytes are flowing both ways
    peers.host.kill()
    assert proc.wait(30) != 0
    err = proc.stderr.read().decode()
    assert "went away" in err, err


def test_router_restart_keeps_its_key_and_the_hosts_id(peers: Peers) -> None:
    key_before = peers.setup.pub_path.read_text()
    peers.router.stop()
    router = start_router(peers.setup)
    peers.router.proc = router.proc
    peers.router.log_offset = router.log_offset
    assert f"public key {peers.setup.public_key.upper()}" in router.log().replace(";", "").upper() \
        or peers.setup.public_key.upper() in router.log().upper()
    assert peers.setup.pub_path.read_text() == key_before
    peers.host.wait_log("connected to the router", count=2, timeout=60)
    wait_for(lambda: [p["host_ids"] for p in router.status()["peers"] if p["type"] == "host"]
             == [[peers.host_id]], 60, "the host to re-register under its ID")
    # A restarted relay (same config) registers again and serves.
    peers.relays[0].stop()
    config = peers.tmp / "relay1" / "relay.json"
    restarted = start_process("aspia_relay", ["--config", str(config)], peers.tmp / "relay1" / "relay.log",
                              {"NATRELAY_ASPIA_RELAY_TIMERS": "reconnect=0.5"})
    # Into the fixture's own object, so the fixture ends the restarted relay too.
    peers.relays[0].proc, peers.relays[0].log_offset = restarted.proc, restarted.log_offset
    wait_for(lambda: len(router.status()["relays"]) == 2, 60, "the restarted relay to register")
    assert {r["address"] for r in router.status()["relays"]} == {
        f"{HOST}:{relay_port(peers, 1)}", f"{HOST}:{relay_port(peers, 2)}"}
