"""The netcat modes run as users run them: every stdin and stdout a process can be given.

Shared by the Offset and Aspia stdio matrices: TCP services behind the listening peer (one that
echoes, one that only sends, one that only receives), each recording what it received and how
the connection ended; and a launcher that starts a peer with stdin from /dev/null, an empty
file, a 3 MB file, a pipe or a closed descriptor, and stdout to a file, a pipe or /dev/null, in
a session of its own so that anything it leaves behind is found.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

HOST = "127.0.0.1"
PAYLOAD = os.urandom(3 * 1024 * 1024)
SERVICE_PAYLOAD = os.urandom(3 * 1024 * 1024 + 5)
STDIN_KINDS = ["devnull", "empty-file", "file", "pipe", "closed"]
STDOUT_KINDS = ["file", "pipe", "devnull"]
SERVICES = ["echo", "send", "receive"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Record:
    """One connection to a service: what it received, and how the client's side ended."""

    received: bytearray = field(default_factory=bytearray)
    ended: str | None = None  # "eof", or "reset: ..."


class Service:
    """A TCP service on 127.0.0.1 with one behaviour: ``echo``, ``send`` or ``receive``."""

    def __init__(self, mode: str, *, slow: bool = False) -> None:
        self.mode = mode
        self.slow = slow
        self.records: list[Record] = []
        self.lock = threading.Lock()
        self.sock = socket.create_server((HOST, 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            record = Record()
            with self.lock:
                self.records.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn: socket.socket, record: Record) -> None:
        sender: threading.Thread | None = None
        try:
            if self.mode == "send":
                sender = threading.Thread(target=self._send_all, args=(conn,), daemon=True)
                sender.start()
            elif self.mode == "receive":
                conn.shutdown(socket.SHUT_WR)
            while data := conn.recv(65536):
                record.received += data
                if self.mode == "echo":
                    conn.sendall(data)
                if self.mode == "reset" and len(record.received) >= RESET_AFTER:
                    reset(conn)
                    record.ended = "reset by the service"
                    return
                if self.slow:
                    time.sleep(0.01)
            if sender is not None:
                sender.join()
            if self.mode == "echo":
                conn.shutdown(socket.SHUT_WR)
            record.ended = "eof"
        except OSError as exc:
            record.ended = f"reset: {exc}"
        finally:
            conn.close()

    @staticmethod
    def _send_all(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(SERVICE_PAYLOAD)
            conn.shutdown(socket.SHUT_WR)

    def expected_stdout(self, sent: bytes) -> bytes:
        return {"echo": sent, "send": SERVICE_PAYLOAD, "receive": b""}[self.mode]

    def wait_record(self, index: int, timeout: float = 30) -> Record:
        """The ``index``-th connection's record, once that connection has ended."""
        wait_for(lambda: len(self.records) > index and self.records[index].ended is not None,
                 timeout, f"{self.mode} service connection {index} to end")
        return self.records[index]

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port where connections are refused: bound (so nobody else takes it) but not listening."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        yield int(s.getsockname()[1])


RESET_AFTER = 100_000


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a crashing program's kernel would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def forward_exchange(port: int, data: bytes, *, reset_after: int | None = None) -> tuple[bytes, str]:
    """Through a ``--listen`` forwarder: send ``data`` (or reset after ``reset_after`` bytes); what came
    back, and how the connection ended for us ("eof" or "reset: ...")."""
    sock = socket.create_connection((HOST, port), timeout=30)
    got = bytearray()
    if reset_after is not None:
        sock.sendall(data[:reset_after])
        time.sleep(0.5)
        reset(sock)
        return b"", "we reset"

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        while chunk := sock.recv(65536):
            got += chunk
        ended = "eof"
    except OSError as exc:
        ended = f"reset: {exc}"
    sender.join(10)
    sock.close()
    return bytes(got), ended


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Outcome:
    code: int
    stdout: bytes | None  # None for /dev/null
    stderr: str


def stdin_data(kind: str) -> bytes:
    return PAYLOAD if kind in ("file", "pipe") else b""


class PeerRun:
    """A ``natrelay`` peer started with the given stdin and stdout kinds.

    Every run is tracked until it has been waited for, so :func:`reap_leftovers` can end (and
    report) any that a failing test left running.
    """

    live: ClassVar[set[PeerRun]] = set()

    def __init__(self, argv: list[str], tmp: Path, stdin_kind: str, stdout_kind: str, *,
                 env: Mapping[str, str] | None = None, data: bytes | None = None,
                 pipe_hold: threading.Event | None = None) -> None:
        self.tmp = tmp
        self.stdin_kind, self.stdout_kind = stdin_kind, stdout_kind
        self.data = stdin_data(stdin_kind) if data is None else data
        self.out_path = tmp / f"out-{time.monotonic_ns()}"
        self.err_path = tmp / f"err-{time.monotonic_ns()}"
        stdin: int | None
        files = []
        if stdin_kind in ("empty-file", "file"):
            path = tmp / f"in-{time.monotonic_ns()}"
            path.write_bytes(self.data)
            files.append(open(path, "rb"))  # noqa: SIM115 - closed below
            stdin = files[-1].fileno()
        elif stdin_kind == "pipe":
            stdin = subprocess.PIPE
        else:
            stdin = subprocess.DEVNULL
        stdout: int | None
        if stdout_kind == "file":
            files.append(open(self.out_path, "wb"))  # noqa: SIM115
            stdout = files[-1].fileno()
        elif stdout_kind == "pipe":
            stdout = subprocess.PIPE
        else:
            stdout = subprocess.DEVNULL
        files.append(open(self.err_path, "wb"))  # noqa: SIM115
        preexec = (lambda: os.close(0)) if stdin_kind == "closed" else None
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=files[-1], env=env,
                                     preexec_fn=preexec, start_new_session=True)
        for f in files:
            f.close()
        PeerRun.live.add(self)
        self._collected = bytearray()
        self._threads: list[threading.Thread] = []  # joined on exit: the stdout collector
        if stdin_kind == "pipe":  # not joined: a held pipe stays open until the test releases it
            threading.Thread(target=self._feed, args=(pipe_hold,), daemon=True).start()
        if stdout_kind == "pipe":
            self._threads.append(threading.Thread(target=self._collect, daemon=True))
        for t in self._threads:
            t.start()

    def _feed(self, hold: threading.Event | None) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            view = memoryview(self.data)
            while view:  # in pieces, as a producer in a pipeline would write
                self.proc.stdin.write(view[:200_000])
                self.proc.stdin.flush()
                view = view[200_000:]
            if hold is not None:
                hold.wait(120)
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read(1 << 20):
            self._collected += chunk

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def finish(self, timeout: float = 60) -> Outcome:
        """Wait for the exit; fail (after killing it) if it does not come or leaves processes behind."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"peer did not exit within {timeout} s; stderr:\n{self.stderr()}") from None
        finally:
            PeerRun.live.discard(self)
        for t in self._threads:
            t.join(10)
        leftover = session_alive(self.pid)
        if leftover:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            raise AssertionError(f"processes left behind in the peer's session: {leftover}")
        if self.stdout_kind == "file":
            out: bytes | None = self.out_path.read_bytes()
        elif self.stdout_kind == "pipe":
            out = bytes(self._collected)
        else:
            out = None
        return Outcome(code, out, self.stderr())

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        PeerRun.live.discard(self)


def reap_leftovers() -> list[str]:
    """Kill every peer a test started and did not wait for; describe each for the failure."""
    left = []
    for run in list(PeerRun.live):
        alive = run.proc.poll() is None or bool(session_alive(run.pid))
        run.kill()
        if alive:
            left.append(f"{' '.join(run.proc.args[1:4])} (pid {run.pid})")  # type: ignore[index]
    return left


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 10) -> list[int | None]:
    """SIGTERM each, wait, SIGKILL what did not stop; the exit codes (None for a killed one)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            codes.append(None)
    return codes


def session_alive(sid: int) -> list[int]:
    """Processes still in session ``sid`` (the peer's own, started with start_new_session)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: session ID
            alive.append(int(entry))
    return alive


@contextlib.contextmanager
def services() -> Iterator[dict[str, Service]]:
    made = {mode: Service(mode) for mode in SERVICES}
    try:
        yield made
    finally:
        for s in made.values():
            s.close()


def check_matrix(service: Service, start: Callable[[str, str], PeerRun], timeout: float = 60) -> None:
    """Every stdin kind x every stdout kind against ``service``; ``start(stdin, stdout)`` starts the peer."""
    for stdin_kind in STDIN_KINDS:
        for stdout_kind in STDOUT_KINDS:
            index = len(service.records)
            outcome = start(stdin_kind, stdout_kind).finish(timeout)
            try:
                record = service.wait_record(index)
                check_transfer(outcome, service, record, stdin_data(stdin_kind))
            except AssertionError as exc:
                raise AssertionError(f"stdin {stdin_kind}, stdout {stdout_kind}: {exc}; "
                                     f"stderr: {outcome.stderr}") from exc


def check_forwarder_to_echo(port: int, echo: Service) -> None:
    """Through a ``--listen`` forwarder to the echo service: our reset mid-transfer reaches the
    service as a reset, and the forwarder then still carries a whole exchange."""
    index = len(echo.records)
    forward_exchange(port, PAYLOAD, reset_after=200_000)
    record = echo.wait_record(index)
    assert record.ended is not None and record.ended.startswith("reset"), record.ended
    back, ended = forward_exchange(port, PAYLOAD)
    assert ended == "eof" and sha(back) == sha(PAYLOAD)


def check_forwarder_to_resetting_service(port: int) -> None:
    """Through a forwarder to a service that resets after 100 kB: we see a reset, not an end."""
    _, ended = forward_exchange(port, PAYLOAD)
    assert ended.startswith("reset"), ended


def check_signal_ends_peer(service: Service, start: Callable[[bytes, threading.Event], PeerRun],
                           sig: int) -> None:
    """Mid-transfer and when idle: ``sig`` ends the peer within seconds with status 128 + sig, the
    service behind the other peer sees a reset (not a clean end), and stdout holds a prefix of
    what was sent back. ``start(data, hold)`` starts the peer with a held stdin pipe."""
    for phase in ("transfer", "idle"):
        index = len(service.records)
        hold = threading.Event()
        run = start(PAYLOAD if phase == "transfer" else b"", hold)
        try:
            wait_for(lambda i=index: len(service.records) > i, 60, "the connection to reach the service")
            if phase == "transfer":
                wait_for(lambda i=index: len(service.records[i].received) > 0, 30, "bytes to flow")
            else:
                time.sleep(0.5)
            started = time.monotonic()
            run.proc.send_signal(sig)
            outcome = run.finish(timeout=15)
            assert time.monotonic() - started < 6
        finally:
            hold.set()
        assert outcome.code == 128 + sig, (phase, outcome.stderr)
        record = service.wait_record(index)
        assert record.ended is not None and record.ended.startswith("reset"), (phase, record.ended)
        assert outcome.stdout is not None and PAYLOAD.startswith(outcome.stdout)


def check_transfer(outcome: Outcome, service: Service, record: Record, sent: bytes) -> None:
    """Exit 0, stdout exactly what the service sent back, the service got all of stdin."""
    assert outcome.code == 0, outcome.stderr
    if outcome.stdout is not None:
        expected = service.expected_stdout(sent)
        assert len(outcome.stdout) == len(expected) and sha(outcome.stdout) == sha(expected), outcome.stderr
    assert record.ended == "eof", record.ended
    assert len(record.received) == len(sent) and sha(bytes(record.received)) == sha(sent)


@pytest.fixture(autouse=True)
def no_leftover_peers() -> Iterator[None]:
    """Fail a test that left a peer running (after ending it)."""
    yield
    left = reap_leftovers()
    assert not left, f"peers still running at the end of the test, killed: {left}"
