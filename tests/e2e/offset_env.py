"""Real processes for the Offset end-to-end tests: a ``strelay`` and ``natrelay`` peers on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(name: str) -> list[str]:
    """The installed console script, or the module when running from a checkout."""
    path = shutil.which(name)
    if path:
        return [path]
    module = {"strelay": "natrelay.cli.strelay", "stmgr": "natrelay.cli.stmgr",
              "natrelay": "natrelay.cli.natrelay"}[name]
    return [sys.executable, "-m", module]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def make_identity(directory: Path, name: str) -> tuple[Path, str]:
    """An identity file made by the real ``stmgr``, and its public key."""
    path = directory / f"{name}.ident"
    subprocess.run([*tool("stmgr"), "gen-ident", "--output", str(path)], check=True)
    key = subprocess.run([*tool("stmgr"), "show", "--key", str(path)], check=True,
                         capture_output=True, text=True).stdout.strip()
    return path, key


@dataclass
class Relay:
    """A running ``strelay`` process."""

    proc: subprocess.Popen[bytes]
    port: int
    ident: Path
    ticket: Path
    key: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("strelay did not stop on SIGTERM") from None
        return int(self.proc.returncode)


def start_relay(directory: Path, *extra: str, preexec: Callable[[], None] | None = None) -> Relay:
    directory.mkdir(parents=True, exist_ok=True)
    ident, key = make_identity(directory, "relay")
    port = free_port()
    ticket = directory / "relay.ticket"
    subprocess.run([*tool("stmgr"), "relay-ticket", "--address", f"127.0.0.1:{port}", "--idfile", str(ident),
                    "--output", str(ticket)], check=True)
    log_path = directory / "strelay.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*tool("strelay"), "--idfile", str(ident), "--laddr", f"127.0.0.1:{port}",
                                 "--log-level", "debug", *extra], stdout=log, stderr=log,
                                preexec_fn=preexec)
    relay = Relay(proc, port, ident, ticket, key, log_path)
    wait_for(lambda: "public key" in relay.log() or proc.poll() is not None, 20, "strelay to start")
    assert proc.poll() is None, relay.log()
    return relay


def peer(*args: str, stdin: int | None = subprocess.DEVNULL, stdout: int | None = subprocess.PIPE,
         stderr: int | None = subprocess.PIPE, **kw: object) -> subprocess.Popen[bytes]:
    """Start ``natrelay <args>``."""
    return subprocess.Popen([*tool("natrelay"), *args], stdin=stdin, stdout=stdout, stderr=stderr,
                            **kw)  # type: ignore[call-overload]


def wait_listening(relay: Relay, key: str, timeout: float = 20) -> None:
    """Until the relay has logged a Listen from ``key``."""
    wait_for(lambda: f"{key[:10]} listens" in relay.log(), timeout, f"{key} to listen")
