"""The README's first command: `natrelay serve` runs a usable relay with no configuration."""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import threading
from pathlib import Path

from tests.e2e.offset_env import free_port, make_identity, peer, tool, wait_for


def test_serve_creates_files_prints_how_to_use_it_and_relays(tmp_path: Path) -> None:
    port, router_port, relay_port = free_port(), free_port(), free_port()
    data = tmp_path / "data"
    out_path = tmp_path / "serve.out"
    serve_args = [*tool("natrelay"), "serve", "--data-dir", str(data), "--offset-port", str(port),
                  "--router-port", str(router_port), "--relay-port", str(relay_port),
                  "--syncthing-port", str(free_port())]
    with open(out_path, "wb") as out:
        serve = subprocess.Popen(serve_args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Stop with Ctrl-C" in out_path.read_text(), 30, "natrelay serve to start")
        text = out_path.read_text()
        ticket = data / "offset" / "relay.ticket"
        key = subprocess.run([*tool("stmgr"), "show", "--key", str(ticket)], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert f"public key: {key}" in text and str(ticket) in text
        assert (data / "offset" / "relay.ident").stat().st_mode & 0o777 == 0o600

        b_ident, b_key = make_identity(tmp_path, "b")
        a_ident, _ = make_identity(tmp_path, "a")
        listener = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(ticket),
                        stdin=subprocess.PIPE)
        assert listener.stdin is not None
        listener.stdin.write(b"hello a\n")
        listener.stdin.close()
        result = None
        for _ in range(40):  # the listener may not be registered yet: retry like a node would
            result = subprocess.run([*tool("natrelay"), "offset", "connect", "--idfile", str(a_ident),
                                     "--relay", str(ticket), "--to", b_key], input=b"hello b\n",
                                    capture_output=True, timeout=60)
            if result.returncode == 0:
                break
        assert result is not None and result.returncode == 0, result
        assert result.stdout == b"hello a\n"
        assert listener.wait(30) == 0
        assert listener.stdout is not None and listener.stdout.read() == b"hello b\n"
    finally:
        serve.send_signal(signal.SIGINT)
        assert serve.wait(15) == 0, out_path.read_text()

    # A second run reuses the same identity and ticket.
    with open(out_path, "wb") as out:
        again = subprocess.Popen(serve_args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Stop with Ctrl-C" in out_path.read_text(), 30, "the second start")
        assert f"public key: {key}" in out_path.read_text()
        assert "router key: " in out_path.read_text()  # the Aspia half came back from its files too
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(15) == 0


def test_serve_aspia_instructions_work_as_printed(tmp_path: Path) -> None:
    """The printed host and client commands, run as printed, carry bytes via the embedded router and relay."""
    ports = [free_port() for _ in range(3)]
    out_path = tmp_path / "serve.out"
    with open(out_path, "wb") as out:
        serve = subprocess.Popen([*tool("natrelay"), "serve", "--data-dir", str(tmp_path / "data"),
                                  "--offset-port", str(ports[0]), "--router-port", str(ports[1]),
                                  "--relay-port", str(ports[2]), "--syncthing-port", str(free_port())],
                                 stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    echo = socket.create_server(("127.0.0.1", 0))
    echo_port = echo.getsockname()[1]

    def serve_echo() -> None:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve_echo, daemon=True).start()
    host = None
    try:
        wait_for(lambda: "Stop with Ctrl-C" in out_path.read_text(), 60, "natrelay serve to start")
        text = out_path.read_text()
        lines = [x.strip() for x in text.splitlines()]
        host_line = next(x for x in lines if x.startswith("natrelay aspia host"))
        client_line = next(x for x in lines if x.startswith("natrelay aspia client"))
        (tmp_path / "host.pw").write_text("secret\n")
        host_args = shlex.split(host_line.replace("127.0.0.1:22", f"127.0.0.1:{echo_port}"))[1:]
        host_log = tmp_path / "host.log"
        with open(host_log, "wb") as log:
            host = subprocess.Popen([*tool("natrelay"), *host_args, "--state", str(tmp_path / "host.json")],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        wait_for(lambda: "host id: " in host_log.read_text(), 60, "the host id")
        found = re.search(r"host id: (\d+)", host_log.read_text())
        assert found is not None
        client_args = shlex.split(client_line.replace("<the id the host printed>", found.group(1)))[1:]
        listen_at = client_args.index("--listen")
        del client_args[listen_at:listen_at + 2]  # stdin/stdout instead of a local port
        result = subprocess.run([*tool("natrelay"), *client_args], input=b"through aspia\n",
                                capture_output=True, timeout=120, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"through aspia\n"
    finally:
        if host is not None:
            host.terminate()
            host.wait(15)
        serve.send_signal(signal.SIGINT)
        assert serve.wait(20) == 0, out_path.read_text()
        echo.close()
