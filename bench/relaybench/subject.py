"""What every subject (a relay under test, or direct TCP as the ceiling) provides, and shared helpers.

A subject starts its server processes on 127.0.0.1 only, hands out *openers* that produce paired
connections, names the pids whose memory and CPU count as "the relay", and stops what it started.
Openers exist per process and per index because the pairing benchmarks fork worker processes, and some
relays need a distinct identity (a client certificate, a node pair) for each concurrent opener.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path

LOOPBACK = "127.0.0.1"
PAIR_TIMEOUT = 15.0


class SubjectError(Exception):
    """A subject could not start, or a pairing failed."""


def free_port() -> int:
    """A port that was free a moment ago; servers are started on it right away."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def connect(port: int, timeout: float = PAIR_TIMEOUT, source: str | None = None) -> socket.socket:
    """A TCP connection to 127.0.0.1:port with Nagle off (the round-trip test writes 64-byte messages).

    ``source`` binds the client end to another loopback address (127.x.y.z), so that a server's
    per-address limits see a peer of its own rather than one more connection from 127.0.0.1.
    """
    s = socket.create_connection((LOOPBACK, port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SubjectError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_line(sock: socket.socket, limit: int = 256) -> bytes:
    """Read one line byte by byte so nothing after the newline (relayed data) is consumed."""
    buf = bytearray()
    while not buf.endswith(b"\n"):
        if len(buf) >= limit:
            raise SubjectError("handshake line too long")
        b = sock.recv(1)
        if not b:
            raise SubjectError(f"connection closed during handshake line {bytes(buf)!r}")
        buf += b
    return bytes(buf)


def listening_ports() -> set[int]:
    """Ports in LISTEN state on this host, read from /proc so that checking creates no connection
    (a probe connection would be tunnelled by a node and reach the far end as a stray session)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def wait_port(port: int, timeout: float, proc: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise SubjectError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}")
        if port in listening_ports():
            return
        time.sleep(0.05)
    raise SubjectError(f"nothing listening on port {port} after {timeout:.0f}s")


class ManagedProcess:
    """A server process in its own process group, logging to a file; stop() ends that group only."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(grace)
        self._log.close()


class Opener(ABC):
    """Produces paired connections: bytes written on the first socket arrive on the second, and back."""

    retries: int = 0  # pairings that had to start over because of a relay-side race (reported)

    @abstractmethod
    def open_pair(self) -> tuple[socket.socket, socket.socket]: ...

    def close(self) -> None:
        """Release per-opener state (a permanent relay connection, a listener)."""
        return None


def open_verified_pair(opener: Opener) -> tuple[socket.socket, socket.socket]:
    """Open a pair and prove it carries data both ways, so a pairing counts only once it is usable."""
    a, b = opener.open_pair()
    try:
        a.sendall(b"\x01")
        if recv_exact(b, 1) != b"\x01":
            raise SubjectError("pair delivered a wrong byte")
        b.sendall(b"\x02")
        if recv_exact(a, 1) != b"\x02":
            raise SubjectError("pair delivered a wrong byte")
    except BaseException:
        a.close()
        b.close()
        raise
    return a, b


class Subject(ABC):
    name: str = ""
    title: str = ""

    def missing(self) -> str | None:
        """Why this subject cannot run here (a program not installed), or None."""
        return None

    @abstractmethod
    def start(self, workdir: Path) -> None: ...

    def prepare_openers(self, count: int) -> None:
        """Make ``count`` concurrent openers possible; called in the main process before workers fork."""
        return None

    @abstractmethod
    def opener(self, index: int) -> Opener: ...

    def relay_pids(self) -> list[int]:
        """Roots of the process trees whose RSS/CPU count as the relay; empty for direct TCP."""
        return []

    def endpoint_pids(self) -> list[int]:
        """Helper processes on the ends (tunnel nodes) whose CPU is reported apart from the relay's."""
        return []

    def sessions_per_fd_budget(self) -> int:
        """File descriptors one idle paired session costs the busiest relay process."""
        return 2

    @abstractmethod
    def stop(self) -> None: ...
