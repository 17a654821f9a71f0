"""The Offset relay end to end: real strelay and natrelay processes over 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.offset_env import (
    Relay,
    free_port,
    make_identity,
    peer,
    start_relay,
    tool,
    wait_for,
    wait_listening,
)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    r = start_relay(tmp_path / "relay")
    yield r
    assert r.stop() == 0, r.log()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_seed_document_commands_verbatim(tmp_path: Path) -> None:
    """The commands of offset-relay.txt, as written, with RELAY_ADDRESS and RELAY_PORT set."""
    port = free_port()
    bindir = Path(tool("strelay")[0]).parent
    script = textwrap.dedent(f"""\
        set -e
        export PATH="{bindir}:$PATH"
        # Public facing relay address
        RELAY_ADDRESS=127.0.0.1
        # Public facing relay port
        RELAY_PORT={port}
        # Create a directory for the relay's data
        mkdir relay

        # Generate a new identity for the relay
        stmgr gen-ident --output relay/relay.ident

        # Generate relay ticket
        stmgr relay-ticket \\
                --address $RELAY_ADDRESS:$RELAY_PORT \\
                --idfile relay/relay.ident \\
                --output relay/relay.relay

        # Start the relay:
        strelay --idfile relay/relay.ident --laddr$RELAY_PORT &
        echo $! > strelay.pid
        """)
    with open(tmp_path / "seed.log", "wb") as seed_log:
        subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, stderr=seed_log)
    pid = int((tmp_path / "strelay.pid").read_text())
    try:
        wait_for(lambda: "public key" in (tmp_path / "seed.log").read_text(), 20, "strelay from the seed")
        ticket = tmp_path / "relay" / "relay.relay"
        b_ident, b_key = make_identity(tmp_path, "b")
        a_ident, _ = make_identity(tmp_path, "a")
        listen_log = tmp_path / "listen.log"
        with open(listen_log, "wb") as err:
            listener = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(ticket),
                            stdin=subprocess.PIPE, stderr=err)
        assert listener.stdin is not None
        listener.stdin.write(b"pong\n")
        listener.stdin.close()  # its end of input reaches the connector after "pong"
        wait_for(lambda: "listening on relay" in listen_log.read_text(), 20, "the listener")
        connector = subprocess.run(
            [*tool("natrelay"), "offset", "connect", "--idfile", str(a_ident), "--relay", str(ticket),
             "--to", b_key], input=b"ping through the seed's relay\n", capture_output=True, timeout=60)
        assert connector.returncode == 0, connector.stderr
        assert listener.wait(30) == 0, listen_log.read_text()
        assert listener.stdout is not None
        out = listener.stdout.read()
        assert out == b"ping through the seed's relay\n", listen_log.read_text()
        assert connector.stdout == b"pong\n"
    finally:
        os.kill(pid, 15)


def test_50_mb_each_way_with_half_close(relay: Relay, tmp_path: Path) -> None:
    """Both directions at once through stdin/stdout; each side's input ends while the other still sends."""
    a_ident, _ = make_identity(tmp_path, "a")
    b_ident, b_key = make_identity(tmp_path, "b")
    a_in, b_in = tmp_path / "a.in", tmp_path / "b.in"
    a_in.write_bytes(os.urandom(50 * 1024 * 1024))
    b_in.write_bytes(os.urandom(50 * 1024 * 1024 + 12345))
    a_out, b_out = tmp_path / "a.out", tmp_path / "b.out"
    with open(b_in, "rb") as si, open(b_out, "wb") as so:
        listener = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(relay.ticket),
                        stdin=si, stdout=so)
    wait_listening(relay, b_key)
    with open(a_in, "rb") as si, open(a_out, "wb") as so:
        connector = peer("offset", "connect", "--idfile", str(a_ident), "--relay", str(relay.ticket),
                         "--to", b_key, stdin=si, stdout=so)
    assert connector.wait(120) == 0, connector.stderr.read() if connector.stderr else ""
    assert listener.wait(60) == 0, listener.stderr.read() if listener.stderr else ""
    assert sha256(b_out) == sha256(a_in)
    assert sha256(a_out) == sha256(b_in)
    relay.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: "stats {" in relay.log(), 10, "the stats line")
    stats = next(x for x in relay.log().splitlines() if "stats {" in x)
    assert "'tunnels_opened': 1," in stats and "'tunnels_active': 0," in stats, stats


def _echo_server(port_holder: list[int], stop: asyncio.Event) -> asyncio.Task[None]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_holder.append(server.sockets[0].getsockname()[1])
        await stop.wait()
        server.close()

    return asyncio.ensure_future(serve())


def test_expose_and_forward_a_tcp_service(relay: Relay, tmp_path: Path) -> None:
    """A TCP echo service behind --expose, reached through connect --listen, several connections at once."""
    a_ident, a_key = make_identity(tmp_path, "a")
    b_ident, b_key = make_identity(tmp_path, "b")

    async def scenario() -> None:
        stop = asyncio.Event()
        ports: list[int] = []
        server = _echo_server(ports, stop)
        while not ports:
            await asyncio.sleep(0.01)
        local_port = free_port()
        exposer = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(relay.ticket),
                       "--allow", a_key, "--expose", f"127.0.0.1:{ports[0]}")
        forwarder = peer("offset", "connect", "--idfile", str(a_ident), "--relay", str(relay.ticket),
                         "--to", b_key, "--listen", f"127.0.0.1:{local_port}")
        try:
            await asyncio.to_thread(wait_listening, relay, b_key)

            async def one(i: int) -> None:
                for _ in range(100):
                    try:
                        r, w = await asyncio.open_connection("127.0.0.1", local_port)
                        break
                    except OSError:
                        await asyncio.sleep(0.1)
                payload = os.urandom(200_000 + i)
                w.write(payload)
                w.write_eof()
                got = await asyncio.wait_for(r.read(-1), 60)
                assert got == payload
                w.close()

            await asyncio.gather(*(one(i) for i in range(8)))
        finally:
            for p in (exposer, forwarder):
                p.terminate()
                p.wait(10)
            stop.set()
            await server

    asyncio.run(scenario())


def test_connect_to_absent_key_fails_clearly(relay: Relay, tmp_path: Path) -> None:
    a_ident, _ = make_identity(tmp_path, "a")
    _, nobody = make_identity(tmp_path, "nobody")
    result = subprocess.run(
        [*tool("natrelay"), "offset", "connect", "--idfile", str(a_ident), "--relay", str(relay.ticket),
         "--to", nobody], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "not listening" in result.stderr and nobody in result.stderr


def test_listener_rejects_keys_not_allowed(relay: Relay, tmp_path: Path) -> None:
    a_ident, _ = make_identity(tmp_path, "a")
    _, friend = make_identity(tmp_path, "friend")
    b_ident, b_key = make_identity(tmp_path, "b")
    listener = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(relay.ticket),
                    "--allow", friend)
    try:
        wait_listening(relay, b_key)
        result = subprocess.run(
            [*tool("natrelay"), "offset", "connect", "--idfile", str(a_ident), "--relay", str(relay.ticket),
             "--to", b_key], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert "refused" in result.stderr or "not listening" in result.stderr
        assert "rejected by the listener" in relay.log()
    finally:
        listener.terminate()
        listener.wait(10)


def test_expose_requires_an_allow_list(relay: Relay, tmp_path: Path) -> None:
    b_ident, _ = make_identity(tmp_path, "b")
    result = subprocess.run(
        [*tool("natrelay"), "offset", "listen", "--idfile", str(b_ident), "--relay", str(relay.ticket),
         "--expose", "127.0.0.1:9"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "--allow" in result.stderr


def test_strelay_startup_errors_exit_nonzero(tmp_path: Path) -> None:
    missing = subprocess.run([*tool("strelay"), "--idfile", str(tmp_path / "none.ident"), "--laddr",
                              "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "none.ident" in missing.stderr
    ident, _ = make_identity(tmp_path, "r")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        in_use = subprocess.run([*tool("strelay"), "--idfile", str(ident), "--laddr", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=30)
    assert in_use.returncode == 1 and "cannot listen" in in_use.stderr
    bad = subprocess.run([*tool("strelay"), "--idfile", str(ident), "--laddr", "localhost:1"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "localhost" in bad.stderr  # a usage error, as --help says


@pytest.mark.parametrize(("option", "value", "fragment"), [
    ("--max-per-ip", "-1", "must be >= 0"),
    ("--max-connections", "many", "expected a whole number"),
    ("--max-frame", "1000", "at least 65536"),
    ("--handshake-timeout", "0", "between 0 and 3600"),
    ("--stats-interval", "nan", "seconds >= 0"),
    ("--laddr", "127.0.0.1:99999", "--laddr"),
])
def test_strelay_invalid_option_values_are_usage_errors(tmp_path: Path, option: str, value: str,
                                                        fragment: str) -> None:
    """strelay --help promises exit status 2 for usage errors: every invalid value is one."""
    ident, _ = make_identity(tmp_path, "r")
    args = {"--idfile": str(ident), "--laddr": "127.0.0.1:0", option: value}
    result = subprocess.run([*tool("strelay"), *(x for kv in args.items() for x in kv)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    assert f"strelay: error: argument {option}" in result.stderr or option in result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_listener_reconnects_after_relay_restart(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay")
    b_ident, b_key = make_identity(tmp_path, "b")
    _, a_key = make_identity(tmp_path, "a")
    listener = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(relay.ticket),
                    "--allow", a_key, "--expose", "127.0.0.1:9")
    try:
        wait_listening(relay, b_key)
        assert relay.stop() == 0
        with open(tmp_path / "again.log", "wb") as err:
            restarted = subprocess.Popen([*tool("strelay"), "--idfile", str(relay.ident), "--laddr",
                                          f"127.0.0.1:{relay.port}", "--log-level", "debug"], stderr=err)
        try:
            wait_for(lambda: f"{b_key[:10]} listens" in (tmp_path / "again.log").read_text(), 30,
                     "the listener to come back")
        finally:
            restarted.terminate()
            assert restarted.wait(10) == 0
    finally:
        listener.terminate()
        listener.wait(10)


def test_sigusr1_logs_the_close_counters(relay: Relay, tmp_path: Path) -> None:
    """Every silent close is counted by reason, and the counters can be read while the relay runs."""
    with socket.create_connection(("127.0.0.1", relay.port)) as s:
        s.sendall(b"\x00" * 7 + b"\x05" + b"\x00\x00\x00\x00\x00")  # a 5-byte version frame: wrong length
        s.settimeout(10)
        with contextlib.suppress(ConnectionError):
            while s.recv(65536):
                pass
    relay.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: "stats {" in relay.log(), 10, "the stats line")
    line = next(x for x in relay.log().splitlines() if "stats {" in x)
    assert "'accepted': 1" in line and "'protocol error': 1" in line
