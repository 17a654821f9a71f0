"""Real processes for the Aspia end-to-end tests: ``aspia_router``, ``aspia_relay`` and peers on 127.0.0.1.

Shared by the router, relay and peer tests. Conventions: every process gets its own directory
under the test's ``tmp_path``, logs go to a file there (``ASPIA_LOG_LEVEL=0`` so info lines are
visible), and every port is a free one on 127.0.0.1. Append new helpers at the end; do not edit
someone else's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from natrelay.aspia.channel import Channel
from natrelay.aspia.handshake import Identify
from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
from natrelay.aspia.messages import parse, serialize
from natrelay.ops.jsonsettings import update_settings

HOST = "127.0.0.1"

_MODULES = {
    "aspia_router": "natrelay.cli.aspia_router",
    "aspia_relay": "natrelay.cli.aspia_relay",
    "natrelay": "natrelay.cli.natrelay",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tool(name: str) -> list[str]:
    """The installed console script, or the module when running from a checkout."""
    path = shutil.which(name)
    if path:
        return [path]
    return [sys.executable, "-m", _MODULES[name]]


def aspia_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an Aspia process: info-level logs on stderr, no log files, no /etc."""
    env = dict(os.environ)
    env.update({"ASPIA_LOG_LEVEL": "0", "ASPIA_LOG_TO_STDOUT": "1", "ASPIA_LOG_TO_FILE": "0",
                "PYTHONUNBUFFERED": "1"})
    if extra:
        env.update(extra)
    return env


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_tool(name: str, *args: str, input_text: str | None = None, timeout: float = 60,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and capture its output (never raises on a non-zero exit)."""
    return subprocess.run([*tool(name), *args], capture_output=True, text=True, input=input_text,
                          timeout=timeout, env=aspia_env(env), stdin=None if input_text is not None
                          else subprocess.DEVNULL)


@dataclass
class Process:
    """A running program whose stdout and stderr go to one log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int = 0
    """Where this process's output starts in a log file shared with an earlier run (a restart)."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(self.log_offset)
            return fh.read().decode(errors="replace")

    def wait_log(self, text: str, timeout: float = 20, count: int = 1) -> None:
        """Until ``text`` appears ``count`` times in the log (fails early if the process died)."""
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited with {self.proc.returncode}:\n{self.log()}")
            return self.log().count(text) >= count
        wait_for(seen, timeout, f"{text!r} in {self.log_path}")

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then wait; kills and fails if the process does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.log_path.name}: did not stop on SIGTERM") from None
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_process(name: str, args: list[str], log_path: Path,
                  env: Mapping[str, str] | None = None) -> Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        offset = log.tell()
        proc = subprocess.Popen([*tool(name), *args], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, env=aspia_env(env))
    return Process(proc, log_path, offset)


@dataclass
class RouterSetup:
    """What ``aspia_router --create-config`` made in a test directory."""

    directory: Path
    config: Path
    data_dir: Path
    public_key: str
    admin_password: str
    port: int

    @property
    def pub_path(self) -> Path:
        return self.config.parent / "router.pub"

    def args(self) -> list[str]:
        return ["--config", str(self.config), "--data-dir", str(self.data_dir)]

    def address(self) -> str:
        return f"{HOST}:{self.port}"


def parse_admin_password(stdout: str) -> str:
    """The one-time administrator password from ``--create-config``'s output."""
    for line in stdout.splitlines():
        if "password" in line.lower() and ":" in line:
            return line.rsplit(":", 1)[1].strip()
    raise AssertionError(f"no password in:\n{stdout}")


def create_router(directory: Path, port: int | None = None, **settings: str) -> RouterSetup:
    """``--create-config`` in ``directory`` (config in ``etc/``, database in ``lib/``), on a free port.

    ``settings`` are extra router.json keys (e.g. ``ClientWhiteList="10.0.0.1"``).
    """
    config = directory / "etc" / "router.json"
    data_dir = directory / "lib"
    done = run_tool("aspia_router", "--create-config", "--config", str(config), "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    port = free_port() if port is None else port
    update_settings(config, {"Port": str(port), "ListenInterface": HOST, **settings})
    key = (config.parent / "router.pub").read_text().strip()
    return RouterSetup(directory, config, data_dir, key, parse_admin_password(done.stdout), port)


@dataclass
class Router(Process):
    setup: RouterSetup = field(default=None)  # type: ignore[assignment]

    def status(self) -> dict[str, Any]:
        """``aspia_router --status --json`` against this router."""
        done = run_tool("aspia_router", *self.setup.args(), "--status", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result


def start_router(setup: RouterSetup, env: Mapping[str, str] | None = None) -> Router:
    """Serve with ``setup``'s files; returns once the router is listening."""
    p = start_process("aspia_router", setup.args(), setup.directory / "router.log", env)
    router = Router(p.proc, p.log_path, p.log_offset, setup)
    router.wait_log("Listening on")
    return router


def add_router_user(setup: RouterSetup, name: str, password: str, *, admin: bool = False) -> None:
    """``aspia_router --add-user`` with the password in a file next to the config."""
    pw = setup.directory / f"{name}.password"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    extra = ["--admin"] if admin else []
    done = run_tool("aspia_router", *setup.args(), "--add-user", name, "--password-file", str(pw), *extra)
    assert done.returncode == 0, done.stdout + done.stderr


def write_relay_config(directory: Path, router: RouterSetup, *, peer_port: int | None = None,
                       **settings: str) -> Path:
    """A relay.json for ``router`` on a free peer port; ``settings`` override any key."""
    from natrelay.ops.jsonsettings import write_settings

    values = {
        "RouterAddress": HOST, "RouterPort": str(router.port), "RouterPublicKey": router.public_key,
        "PeerAddress": HOST, "PeerPort": str(free_port() if peer_port is None else peer_port),
        "ListenInterface": HOST, "PeerIdleTimeout": "5", "MaxPeerCount": "100",
        "StatisticsEnabled": "true", "StatisticsInterval": "1", **settings,
    }
    path = directory / "relay.json"
    write_settings(path, values, exclusive=True)
    return path


def start_relay(directory: Path, router: RouterSetup, env: Mapping[str, str] | None = None,
                **settings: str) -> Process:
    """An ``aspia_relay --config`` process for ``router`` (does not wait for registration)."""
    config = write_relay_config(directory, router, **settings)
    return start_process("aspia_relay", ["--config", str(config)], directory / "relay.log", env)


# --- Stand-ins: a relay, host, client or admin speaking to a real router over a blocking socket ---

RELAY, HOST_SESSION, CLIENT, ADMIN = 8, 4, 2, 1


class StandIn:
    """One authenticated router session driven step by step by a test (no threads, no asyncio).

    Raises :class:`natrelay.aspia.errors.AspiaProtocolError` from the constructor when the
    handshake fails on our side (wrong router key, wrong password) and ``ConnectionError`` when
    the router closes the connection.
    """

    def __init__(self, port: int, config: ClientConfig, timeout: float = 20) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.channel = Channel(ClientHandshake(config, time.monotonic()), now=time.monotonic())
        self.inbox: deque[bytes] = deque()
        self._flush()
        try:
            while not self.channel.established:
                self._pump()
        except BaseException:
            self.sock.close()
            raise

    def _flush(self) -> None:
        for chunk in self.channel.take_output():
            self.sock.sendall(chunk)

    def _pump(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the router closed the connection")
        self.inbox.extend(self.channel.receive_data(data, time.monotonic()))
        self._flush()

    def send(self, message: Message) -> None:
        self.channel.send(serialize(message))
        self._flush()

    def receive(self, message_type: type[Any], timeout: float = 10) -> Any:
        """The next message, parsed as ``message_type``."""
        self.sock.settimeout(timeout)
        while not self.inbox:
            self._pump()
        return parse(message_type, self.inbox.popleft())

    def nothing_for(self, seconds: float) -> bool:
        """True if no message arrives within ``seconds`` (and the connection stays open)."""
        self.sock.settimeout(seconds)
        try:
            while not self.inbox:
                self._pump()
        except TimeoutError:
            return True
        return False

    def closed_by_router(self, timeout: float = 10) -> bool:
        """True once the router has closed the connection (within ``timeout``)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                self._pump()
        except TimeoutError:  # first: a timeout is an OSError too, and means "still open"
            return False
        except (ConnectionError, OSError):
            return True

    def close(self) -> None:
        self.sock.close()


def anonymous(port: int, router_key: str, session_type: int) -> StandIn:
    """A relay (8) or host (4) stand-in authenticated with the router's public key (flow A)."""
    config = ClientConfig(session_type=session_type, identify=Identify.ANONYMOUS,
                          server_public_key=bytes.fromhex(router_key))
    return StandIn(port, config)


def srp_login(port: int, user: str, password: str, session_type: int = CLIENT) -> StandIn:
    """A client (2) or admin (1) stand-in logged in with a router account (flow B)."""
    return StandIn(port, ClientConfig(session_type=session_type, username=user, password=password.encode()))
