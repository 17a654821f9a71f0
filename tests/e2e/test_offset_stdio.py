"""``natrelay offset listen|connect`` in netcat mode, with every stdin/stdout, on both event loops.

A real strelay; three listeners (``--expose``) in front of an echoing, a sending and a receiving
service; each case starts ``natrelay offset connect`` with one stdin and one stdout kind and checks
the bytes both ways (SHA-256), the exit status, and that nothing is left running. Then the
listening side in netcat mode, signals, a relay that dies, and the README's background-job recipe
as a shell script.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.offset_env import Relay, make_identity, peer, start_relay, tool, wait_listening
from tests.e2e.stdio_cases import (
    PAYLOAD,
    SERVICES,
    STDIN_KINDS,
    STDOUT_KINDS,
    PeerRun,
    Service,
    check_forwarder_to_echo,
    check_forwarder_to_resetting_service,
    check_matrix,
    check_signal_ends_peer,
    no_leftover_peers,
    refusing_port,
    services,
    sha,
    stdin_data,
    stop_all,
    wait_for,
)

pytestmark = pytest.mark.timeout(900)
__all__ = ["no_leftover_peers"]  # the autouse fixture, imported to apply here
LOOP_FLAGS = {"uvloop": [], "asyncio": ["--no-uvloop"]}


def listens_seen(relay: Relay, key: str) -> int:
    return relay.log().count(f"{key[:10]} listens")


def wait_new_listen(relay: Relay, key: str, before: int) -> None:
    """Until the relay logs one more Listen from ``key`` than ``before`` (a key that listened earlier)."""
    wait_for(lambda: listens_seen(relay, key) > before, 30, f"{key} to listen again")


@dataclass
class Bed:
    tmp: Path
    relay: Relay
    services: dict[str, Service]
    keys: dict[str, str]
    listeners: list[subprocess.Popen[bytes]]
    ident: Path

    def connect_argv(self, mode: str, loop: str, *extra: str) -> list[str]:
        return [*tool("natrelay"), "offset", "connect", "--idfile", str(self.ident), "--relay",
                str(self.relay.ticket), "--to", self.keys[mode], *LOOP_FLAGS[loop], *extra]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    tmp = tmp_path_factory.mktemp("offset-stdio")
    relay = start_relay(tmp / "relay")
    listeners: list[subprocess.Popen[bytes]] = []
    with services() as made:
        try:
            keys = {}
            for mode, service in made.items():
                ident, key = make_identity(tmp, f"listener-{mode}")
                keys[mode] = key
                listeners.append(peer("offset", "listen", "--idfile", str(ident), "--relay",
                                      str(relay.ticket), "--expose", f"127.0.0.1:{service.port}",
                                      "--allow-any", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                wait_listening(relay, key)
            ident, _ = make_identity(tmp, "connector")
            yield Bed(tmp, relay, made, keys, listeners, ident)
        finally:
            codes = stop_all(listeners)
            relay.stop()
            assert codes == [0] * len(listeners), f"listeners' exit codes on SIGTERM: {codes}"


@pytest.mark.parametrize("loop", list(LOOP_FLAGS))
@pytest.mark.parametrize("mode", SERVICES)
def test_connect_matrix(bed: Bed, mode: str, loop: str) -> None:
    """Every stdin kind x every stdout kind against one service on one loop."""
    check_matrix(bed.services[mode], lambda i, o: PeerRun(bed.connect_argv(mode, loop), bed.tmp, i, o))


@pytest.mark.parametrize("loop", list(LOOP_FLAGS))
def test_listen_matrix(bed: Bed, loop: str) -> None:
    """The listening side in netcat mode, every stdin/stdout kind, against a connector from a file."""
    ident, key = make_identity(bed.tmp, f"nc-listener-{loop}")
    for stdin_kind in STDIN_KINDS:
        for stdout_kind in STDOUT_KINDS:
            before = listens_seen(bed.relay, key)
            listen = PeerRun([*tool("natrelay"), "offset", "listen", "--idfile", str(ident), "--relay",
                              str(bed.relay.ticket), *LOOP_FLAGS[loop]], bed.tmp, stdin_kind, stdout_kind)
            wait_new_listen(bed.relay, key, before)
            connect = PeerRun([*tool("natrelay"), "offset", "connect", "--idfile", str(bed.ident),
                               "--relay", str(bed.relay.ticket), "--to", key, *LOOP_FLAGS[loop]],
                              bed.tmp, "file", "file")
            got_listen, got_connect = listen.finish(), connect.finish()
            where = f"listen stdin {stdin_kind}, stdout {stdout_kind}"
            assert got_listen.code == 0 and got_connect.code == 0, (
                where, got_listen.stderr, got_connect.stderr)
            if got_listen.stdout is not None:
                assert sha(got_listen.stdout) == sha(PAYLOAD), where
            assert got_connect.stdout is not None
            assert sha(got_connect.stdout) == sha(stdin_data(stdin_kind)), where


def test_readme_background_job_recipe(tmp_path: Path, bed: Bed) -> None:
    """The README's netcat example pasted into a non-interactive script: listen as a background job."""
    home, home_key = make_identity(tmp_path, "home")
    laptop, _ = make_identity(tmp_path, "laptop")
    (tmp_path / "somedir").mkdir()
    (tmp_path / "somedir" / "data.bin").write_bytes(PAYLOAD)
    script = f"""
set -u
cd {tmp_path}
natrelay offset listen --idfile home.ident --relay {bed.relay.ticket} > received.tar 2> listen.err &
LISTENER=$!
for i in $(seq 100); do grep -q "listening as" listen.err && break; sleep 0.1; done
sleep 0.5
tar c somedir | natrelay offset connect --idfile laptop.ident --relay {bed.relay.ticket} --to {home_key}
echo "connect=$?"
wait $LISTENER
echo "listen=$?"
mkdir out && tar x -C out -f received.tar && cmp out/somedir/data.bin somedir/data.bin && echo same
"""
    assert home.name == "home.ident" and laptop.name == "laptop.ident"
    done = subprocess.run(["bash", "-c", script], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, start_new_session=True)
    assert "connect=0" in done.stdout and "listen=0" in done.stdout and "same" in done.stdout, (
        done.stdout, done.stderr, (tmp_path / "listen.err").read_text())


def test_closed_stdout_is_refused_with_status_3(bed: Bed) -> None:
    done = subprocess.run(bed.connect_argv("echo", "uvloop"), stdin=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=60, preexec_fn=lambda: os.close(1))
    assert done.returncode == 3, done.stderr
    assert "standard output is closed" in done.stderr


def test_unreachable_service_is_a_failure_with_the_reason(tmp_path: Path, bed: Bed) -> None:
    ident, key = make_identity(tmp_path, "dead-end")
    with refusing_port() as port:
        _expose_unreachable(bed, ident, key, port, tmp_path)


def _expose_unreachable(bed: Bed, ident: Path, key: str, port: int, tmp_path: Path) -> None:
    listener = peer("offset", "listen", "--idfile", str(ident), "--relay", str(bed.relay.ticket),
                    "--expose", f"127.0.0.1:{port}", "--allow-any", stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    try:
        wait_listening(bed.relay, key)
        run = PeerRun([*tool("natrelay"), "offset", "connect", "--idfile", str(bed.ident), "--relay",
                       str(bed.relay.ticket), "--to", key], tmp_path, "file", "file")
        outcome = run.finish()
        assert outcome.code == 1, outcome.stderr
        assert "cannot reach its service" in outcome.stderr
    finally:
        stop_all([listener])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_end_connect_promptly_mid_transfer_and_idle(bed: Bed, sig: signal.Signals) -> None:
    def start(data: bytes, hold: threading.Event) -> PeerRun:
        return PeerRun(bed.connect_argv("echo", "uvloop"), bed.tmp, "pipe", "file", data=data, pipe_hold=hold)

    check_signal_ends_peer(bed.services["echo"], start, sig)


def test_sigterm_with_stdin_from_a_big_file_to_a_slow_reader(tmp_path: Path, bed: Bed) -> None:
    """What ``timeout 2 natrelay offset connect ... < file`` does: it must end at the signal."""
    slow = Service("receive", slow=True)
    ident, key = make_identity(tmp_path, "slow")
    listener = peer("offset", "listen", "--idfile", str(ident), "--relay", str(bed.relay.ticket),
                    "--expose", f"127.0.0.1:{slow.port}", "--allow-any", stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    try:
        wait_listening(bed.relay, key)
        big = os.urandom(1024 * 1024) * 64
        run = PeerRun([*tool("natrelay"), "offset", "connect", "--idfile", str(bed.ident), "--relay",
                       str(bed.relay.ticket), "--to", key], tmp_path, "file", "devnull", data=big)
        wait_for(lambda: bool(slow.records) and len(slow.records[0].received) > 0, 30, "bytes to flow")
        started = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        outcome = run.finish(timeout=15)
        assert outcome.code == 143 and time.monotonic() - started < 6, outcome.stderr
    finally:
        stop_all([listener])
        slow.close()


def test_listen_signals_when_idle_and_mid_transfer(tmp_path: Path, bed: Bed) -> None:
    ident, key = make_identity(tmp_path, "sig-listener")
    argv = [*tool("natrelay"), "offset", "listen", "--idfile", str(ident), "--relay", str(bed.relay.ticket)]
    idle = PeerRun(argv, tmp_path, "devnull", "file")
    wait_listening(bed.relay, key)
    idle.proc.send_signal(signal.SIGTERM)
    assert idle.finish(timeout=15).code == 143

    before = listens_seen(bed.relay, key)
    busy = PeerRun(argv, tmp_path, "devnull", "file")
    wait_new_listen(bed.relay, key, before)
    hold = threading.Event()
    connect = PeerRun([*tool("natrelay"), "offset", "connect", "--idfile", str(bed.ident), "--relay",
                       str(bed.relay.ticket), "--to", key], tmp_path, "pipe", "file", pipe_hold=hold)
    try:
        wait_for(lambda: busy.out_path.exists() and busy.out_path.stat().st_size > 0, 30, "bytes to arrive")
        busy.proc.send_signal(signal.SIGINT)
        got = busy.finish(timeout=15)
        assert got.code == 130, got.stderr
        assert got.stdout is not None and PAYLOAD.startswith(got.stdout)
        other = connect.finish(timeout=15)
        assert other.code == 1 and "interrupted" in other.stderr, other.stderr
    finally:
        hold.set()


def test_relay_killed_mid_transfer_fails_both_peers_promptly(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay")
    try:
        ident, key = make_identity(tmp_path, "victim")
        connector, _ = make_identity(tmp_path, "c")
        listen = PeerRun([*tool("natrelay"), "offset", "listen", "--idfile", str(ident), "--relay",
                          str(relay.ticket)], tmp_path, "devnull", "file")
        wait_listening(relay, key)
        hold = threading.Event()
        connect = PeerRun([*tool("natrelay"), "offset", "connect", "--idfile", str(connector), "--relay",
                           str(relay.ticket), "--to", key], tmp_path, "pipe", "file", pipe_hold=hold)
        try:
            wait_for(lambda: listen.out_path.exists() and listen.out_path.stat().st_size > 0, 30, "bytes")
            relay.proc.kill()
            a, b = listen.finish(timeout=30), connect.finish(timeout=30)
        finally:
            hold.set()
        assert a.code == 1 and "bytes" in a.stderr, a.stderr
        assert b.code == 1 and "bytes" in b.stderr, b.stderr
    finally:
        relay.stop()


def test_forwarding_turns_a_reset_on_either_side_into_a_reset_on_the_other(tmp_path: Path, bed: Bed) -> None:
    """``connect --listen`` and ``listen --expose``: a mid-transfer reset is never passed on as an end."""
    reset_service = Service("reset")
    ident, key = make_identity(tmp_path, "resetting")
    listener = peer("offset", "listen", "--idfile", str(ident), "--relay", str(bed.relay.ticket),
                    "--expose", f"127.0.0.1:{reset_service.port}", "--allow-any",
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    forwarders = []
    try:
        wait_listening(bed.relay, key)
        for target in (bed.keys["echo"], key):
            with refusing_port() as port:
                pass  # a free port number for the forwarder
            log = tmp_path / f"forwarder-{len(forwarders)}.log"
            with open(log, "wb") as err:
                forwarders.append(peer("offset", "connect", "--idfile", str(bed.ident), "--relay",
                                       str(bed.relay.ticket), "--to", target, "--listen",
                                       f"127.0.0.1:{port}", stdout=subprocess.DEVNULL, stderr=err))
            # Not by connecting: a probe would itself be forwarded to the service.
            wait_for(lambda f=log: "forwarding 127.0.0.1" in f.read_text(), 30, "the forwarder to listen")
            if target == key:
                check_forwarder_to_resetting_service(port)
            else:
                check_forwarder_to_echo(port, bed.services["echo"])
    finally:
        codes = stop_all([*forwarders, listener])
        reset_service.close()
    assert codes == [0] * len(codes), codes

