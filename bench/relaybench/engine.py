"""natrelay's engine behind the minimal pairing front end ``bench/engine_pair_relay.py``.

Each client sends ``pair TOKEN`` and is then spliced to the other client with the same token; there is no
acknowledgement, so the shared verification byte is what proves the pairing.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path

from .subject import ManagedProcess, Opener, Subject, connect, free_port, wait_port

BENCH_DIR = Path(__file__).resolve().parent.parent
SCRIPT = BENCH_DIR / "engine_pair_relay.py"


class EngineOpener(Opener):
    def __init__(self, port: int) -> None:
        self._port = port

    def open_pair(self) -> tuple[socket.socket, socket.socket]:
        line = f"pair {secrets.token_hex(16)}\n".encode("ascii")
        a = connect(self._port)
        b = connect(self._port)
        try:
            a.sendall(line)
            b.sendall(line)
        except BaseException:
            a.close()
            b.close()
            raise
        return a, b


class EngineSubject(Subject):
    name = "engine"
    title = "natrelay engine (pair line)"

    def __init__(self) -> None:
        self._proc: ManagedProcess | None = None
        self._port = 0

    def missing(self) -> str | None:
        if not SCRIPT.exists():
            return f"{SCRIPT.relative_to(BENCH_DIR.parent)} not written yet"
        return None

    def start(self, workdir: Path) -> None:
        self._port = free_port()
        d = workdir / "engine"
        d.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        src = str(BENCH_DIR.parent / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        argv = [sys.executable, str(SCRIPT), "--port", str(self._port)]
        self._proc = ManagedProcess("engine_pair_relay", argv, d / "stdout.log", cwd=d, env=env)
        wait_port(self._port, 30, self._proc)

    def opener(self, index: int) -> Opener:
        return EngineOpener(self._port)

    def relay_pids(self) -> list[int]:
        return [self._proc.pid] if self._proc else []

    def stop(self) -> None:
        if self._proc:
            self._proc.stop()
            self._proc = None
