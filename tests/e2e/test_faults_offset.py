"""Faults with real Offset processes on 127.0.0.1, checked with SHA-256 (issue 8, "Faults").

Peers run in stdio mode here because that is where a session's end is a process's end: each
``listen`` serves one connection and exits, so "both peers of the session exit non-zero with a
message" can be asserted directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.e2e.offset_env import Relay, make_identity, peer, start_relay, tool, wait_for, wait_listening

pytestmark = pytest.mark.timeout(300)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Pair:
    """A stdio listener and a stdio connector joined through one relay; outputs go to files."""

    listener: subprocess.Popen[bytes]
    connector: subprocess.Popen[bytes]
    listener_out: Path
    connector_out: Path
    listener_err: Path
    connector_err: Path

    def procs(self) -> list[subprocess.Popen[bytes]]:
        return [self.listener, self.connector]


class Feeder:
    """Writes random bytes to a pipe until stopped (a transfer that is surely in progress)."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        self.stream = stream
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while not self.stop.is_set():
                self.stream.write(os.urandom(65536))
                self.stream.flush()
                self.sent += 65536
            self.stream.close()


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every peer a test starts; any still running at the end is killed and fails the test."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    leftovers = [p for p in procs if p.poll() is None]
    for p in leftovers:
        p.kill()
        p.wait()
    assert not leftovers, f"{len(leftovers)} peer(s) had to be killed"


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[Relay]]:
    rs = [start_relay(tmp_path / f"relay{i}") for i in (1, 2)]
    yield rs
    for r in rs:
        if r.proc.poll() is None:
            r.stop()


def make_pair(tmp: Path, relay: Relay, name: str, started: list[subprocess.Popen[bytes]],
              listener_in: int | IO[bytes], connector_in: int | IO[bytes]) -> Pair:
    a_ident, _ = make_identity(tmp, f"{name}-a")
    b_ident, b_key = make_identity(tmp, f"{name}-b")
    paths = [tmp / f"{name}.{x}" for x in ("listener.out", "connector.out", "listener.err", "connector.err")]
    with open(paths[0], "wb") as lo, open(paths[2], "wb") as le:
        listener = subprocess.Popen([*tool("natrelay"), "offset", "listen", "--idfile", str(b_ident),
                                     "--relay", str(relay.ticket)], stdin=listener_in, stdout=lo, stderr=le)
    started.append(listener)
    wait_listening(relay, b_key)
    with open(paths[1], "wb") as co, open(paths[3], "wb") as ce:
        connector = subprocess.Popen([*tool("natrelay"), "offset", "connect", "--idfile", str(a_ident),
                                      "--relay", str(relay.ticket), "--to", b_key],
                                     stdin=connector_in, stdout=co, stderr=ce)
    started.append(connector)
    return Pair(listener, connector, *paths)


def test_relay_killed_ends_both_peers_of_its_sessions_and_spares_the_other_relay(
        tmp_path: Path, relays: list[Relay], started: list[subprocess.Popen[bytes]]) -> None:
    victim, survivor = relays
    # On the victim: both directions keep sending until the relay dies.
    doomed = make_pair(tmp_path, victim, "doomed", started, subprocess.PIPE, subprocess.PIPE)
    feeders = [Feeder(doomed.listener.stdin), Feeder(doomed.connector.stdin)]
    # On the survivor: a 20 MB exchange each way from files, checked at the end.
    a_in, b_in = tmp_path / "a.in", tmp_path / "b.in"
    a_in.write_bytes(os.urandom(20 * 1024 * 1024))
    b_in.write_bytes(os.urandom(20 * 1024 * 1024 + 7))
    with open(b_in, "rb") as bi, open(a_in, "rb") as ai:
        safe = make_pair(tmp_path, survivor, "safe", started, bi, ai)
    wait_for(lambda: doomed.listener_out.stat().st_size > 1024 * 1024
             and doomed.connector_out.stat().st_size > 1024 * 1024, 60, "bytes flowing on the doomed pair")
    victim.proc.kill()
    victim.proc.wait()
    try:
        for p, err in ((doomed.listener, doomed.listener_err), (doomed.connector, doomed.connector_err)):
            code = p.wait(45)
            text = err.read_text()
            assert code != 0, text
            assert "went away" in text and "relay" in text, text
    finally:
        for f in feeders:
            f.stop.set()
    assert safe.connector.wait(120) == 0, safe.connector_err.read_text()
    assert safe.listener.wait(60) == 0, safe.listener_err.read_text()
    assert sha(safe.listener_out.read_bytes()) == sha(a_in.read_bytes())
    assert sha(safe.connector_out.read_bytes()) == sha(b_in.read_bytes())


def _sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def _stats(relay: Relay) -> str:
    before = relay.log().count("stats {")
    relay.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: relay.log().count("stats {") > before, 10, "the stats line")
    return [x for x in relay.log().splitlines() if "stats {" in x][-1]


def test_peer_killed_mid_transfer_ends_the_other_and_frees_the_tunnel(
        tmp_path: Path, relays: list[Relay], started: list[subprocess.Popen[bytes]]) -> None:
    relay = relays[0]
    baseline = _sockets(relay.pid)
    pair = make_pair(tmp_path, relay, "p", started, subprocess.PIPE, subprocess.PIPE)
    feeders = [Feeder(pair.listener.stdin), Feeder(pair.connector.stdin)]
    try:
        wait_for(lambda: pair.listener_out.stat().st_size > 1024 * 1024, 60, "bytes flowing")
        pair.connector.kill()
        pair.connector.wait()
        code = pair.listener.wait(45)
    finally:
        for f in feeders:
            f.stop.set()
    err = pair.listener_err.read_text()
    assert code != 0, err
    assert "went away" in err, err
    wait_for(lambda: "'tunnels_active': 0," in _stats(relay), 30, "the relay to free the tunnel")
    wait_for(lambda: _sockets(relay.pid) == baseline, 30, "relay sockets back to the baseline")


def test_relay_killed_and_restarted_under_a_listener(tmp_path: Path,
                                                     started: list[subprocess.Popen[bytes]]) -> None:
    """Same identity file, same key; the listener is back within its backoff and reachable."""
    relay = start_relay(tmp_path / "relay")
    b_ident, b_key = make_identity(tmp_path, "b")
    a_ident, a_key = make_identity(tmp_path, "a")
    listener = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(relay.ticket),
                    "--allow", a_key, "--expose", "127.0.0.1:9")  # discard: the connect itself is the check
    started.append(listener)
    wait_listening(relay, b_key)
    relay.proc.kill()
    relay.proc.wait()
    log = tmp_path / "again.log"
    with open(log, "wb") as err:
        again = subprocess.Popen([*tool("strelay"), "--idfile", str(relay.ident), "--laddr",
                                  f"127.0.0.1:{relay.port}", "--log-level", "debug"], stdout=err, stderr=err)
    try:
        wait_for(lambda: "public key" in log.read_text(), 20, "the restarted strelay")
        assert relay.key in log.read_text()  # the same identity
        restarted = time.monotonic()
        wait_for(lambda: f"{b_key[:10]} listens" in log.read_text(), 20, "the listener to come back")
        print(f"listener back {time.monotonic() - restarted:.1f} s after the relay")
        subprocess.run([*tool("natrelay"), "offset", "connect", "--idfile", str(a_ident), "--relay",
                        str(relay.ticket), "--to", b_key], input=b"", capture_output=True, timeout=60)
        assert f"{b_key[:10]} accepts" in log.read_text(), log.read_text()  # reachable: it accepted
    finally:
        again.terminate()
        assert again.wait(10) == 0
        listener.terminate()
        listener.wait(10)
