"""magic-wormhole-transit-relay (Twisted) run with twistd on 127.0.0.1.

Pairing: both ends send ``please relay TOKEN for side SIDE`` (64 hex, 16 hex, distinct sides) and
receive ``ok`` once the relay has glued them together.
"""

from __future__ import annotations

import importlib.util
import secrets
import shutil
import socket
import sys
from pathlib import Path

from .subject import ManagedProcess, Opener, Subject, SubjectError, connect, free_port, recv_line, wait_port


def _twistd() -> list[str] | None:
    exe = shutil.which("twistd")
    if exe:
        return [exe]
    if any(importlib.util.find_spec(m) is None for m in ("twisted", "wormhole_transit_relay")):
        return None
    return [sys.executable, "-m", "twisted.scripts.twistd"]


def handshake_line(token: str, side: str) -> bytes:
    return f"please relay {token} for side {side}\n".encode("ascii")


class WormholeOpener(Opener):
    def __init__(self, port: int) -> None:
        self._port = port

    def open_pair(self) -> tuple[socket.socket, socket.socket]:
        token = secrets.token_hex(32)
        a = connect(self._port)
        b = connect(self._port)
        try:
            a.sendall(handshake_line(token, secrets.token_hex(8)))
            b.sendall(handshake_line(token, secrets.token_hex(8)))
            for s in (a, b):
                line = recv_line(s)
                if line != b"ok\n":
                    raise SubjectError(f"transit relay answered {line!r}")
        except BaseException:
            a.close()
            b.close()
            raise
        return a, b


class WormholeSubject(Subject):
    name = "wormhole"
    title = "magic-wormhole-transit-relay"

    def __init__(self) -> None:
        self._proc: ManagedProcess | None = None
        self._port = 0

    def missing(self) -> str | None:
        if _twistd() is None:
            return "magic-wormhole-transit-relay not installed (pip install magic-wormhole-transit-relay)"
        return None

    def start(self, workdir: Path) -> None:
        cmd = _twistd()
        assert cmd is not None
        self._port = free_port()
        d = workdir / "wormhole"
        d.mkdir(parents=True, exist_ok=True)
        argv = [
            *cmd, "--nodaemon", "--pidfile=", f"--logfile={d / 'twistd.log'}",
            "transitrelay", f"--port=tcp:{self._port}:interface=127.0.0.1",
        ]
        self._proc = ManagedProcess("twistd transitrelay", argv, d / "stdout.log", cwd=d)
        wait_port(self._port, 30, self._proc)

    def opener(self, index: int) -> Opener:
        return WormholeOpener(self._port)

    def relay_pids(self) -> list[int]:
        return [self._proc.pid] if self._proc else []

    def stop(self) -> None:
        if self._proc:
            self._proc.stop()
            self._proc = None
