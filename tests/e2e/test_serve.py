"""The README's first command: `natrelay serve` runs a usable relay with no configuration."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.e2e.offset_env import free_port, make_identity, peer, tool, wait_for


def test_serve_creates_files_prints_how_to_use_it_and_relays(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    out_path = tmp_path / "serve.out"
    with open(out_path, "wb") as out:
        serve = subprocess.Popen([*tool("natrelay"), "serve", "--data-dir", str(data), "--offset-port",
                                  str(port)], stdout=out, stderr=subprocess.STDOUT)
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
        again = subprocess.Popen([*tool("natrelay"), "serve", "--data-dir", str(data), "--offset-port",
                                  str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Stop with Ctrl-C" in out_path.read_text(), 30, "the second start")
        assert f"public key: {key}" in out_path.read_text()
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(15) == 0
