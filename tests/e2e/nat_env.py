"""Both relay families inside the NAT test bed (:mod:`tests.e2e.netbed`).

Servers (``strelay``, ``aspia_router``, two ``aspia_relay``s) run in the public namespace on
10.200.0.1; the Offset listener and the Aspia host run in home 1 next to the TCP echo service
they expose on home 1's 127.0.0.1; the Offset connector and the Aspia client run in home 2 and
forward home 2's 127.0.0.1 ports, which the test reaches with :meth:`NetBed.connect`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from natrelay.ops.jsonsettings import update_settings
from tests.e2e import aspia_env, offset_env
from tests.e2e.aspia_env import Process, RouterSetup, add_router_user, create_router, write_relay_config
from tests.e2e.netbed import PUBLIC_IP, NetBed, make_bed, unavailable_reason

ROUTER_USER, ROUTER_PASSWORD = "alice", "router-pw"
HOST_USER, HOST_PASSWORD = "bob", "host-pw"
STRELAY_PORT, ROUTER_PORT, RELAY_PORTS = 22000, 22001, (22010, 22011)
OFFSET_FORWARD_PORT, ASPIA_FORWARD_PORT = 23000, 23001


def skip_without_bed() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        with contextlib.suppress(OSError):
            while data := sock.recv(262144):
                sock.sendall(data)
        sock.close()


class EchoServer(socketserver.ThreadingTCPServer):
    """A TCP echo service on 127.0.0.1 of the namespace the caller's thread is in."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def echo_roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` and end our input while reading everything the echo sends back."""
    def send() -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=send)
    writer.start()
    chunks = []
    while data := sock.recv(262144):
        chunks.append(data)
    writer.join()
    return b"".join(chunks)


def ping(sock: socket.socket, data: bytes, timeout: float = 30) -> bytes:
    """Send ``data`` on an open echo connection and read the same number of bytes back."""
    sock.settimeout(timeout)
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(len(data) - len(got))
        if not chunk:
            break
        got += chunk
    return got


@dataclass
class Bed:
    """A bed with both families running; ``procs`` are stopped (SIGTERM) at the end."""

    bed: NetBed
    tmp: Path
    echo: EchoServer | None = None
    procs: list[Process] = field(default_factory=list)
    # Offset
    strelay: Process | None = None
    listener: Process | None = None
    connector: Process | None = None
    # Aspia
    router_setup: RouterSetup | None = None
    router: Process | None = None
    relays: list[Process] = field(default_factory=list)
    host: Process | None = None
    host_id: int = 0
    client: Process | None = None

    def start(self, ns: str, name: str, argv: list[str], log: Path,
              env: Mapping[str, str] | None = None) -> Process:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            offset = out.tell()
            program = offset_env.tool(name) if name in ("strelay", "stmgr") else aspia_env.tool(name)
            proc = self.bed.popen(ns, [*program, *argv], stdout=out, stderr=out,
                                  stdin=subprocess.DEVNULL, env=aspia_env.aspia_env(env))
        p = Process(proc, log, offset)
        self.procs.append(p)
        return p

    # ---------------------------------------------------------------- Offset
    def start_offset(self, *, keepalive: str | None = None) -> None:
        d = self.tmp / "offset"
        d.mkdir(parents=True, exist_ok=True)
        ident, _ = offset_env.make_identity(d, "relay")
        ticket = d / "relay.ticket"
        subprocess.run([*offset_env.tool("stmgr"), "relay-ticket", "--address", f"{PUBLIC_IP}:{STRELAY_PORT}",
                        "--idfile", str(ident), "--output", str(ticket)], check=True, timeout=60)
        self.strelay = self.start(self.bed.pub, "strelay", [
            "--idfile", str(ident), "--laddr", f"{PUBLIC_IP}:{STRELAY_PORT}", "--log-level", "debug"],
            d / "strelay.log")
        self.strelay.wait_log("public key")
        a_ident, a_key = offset_env.make_identity(d, "a")
        b_ident, b_key = offset_env.make_identity(d, "b")
        ka = ["--keepalive", keepalive] if keepalive else []
        assert self.echo is not None
        self.listener = self.start(self.bed.home(1), "natrelay", [
            "offset", "listen", "--idfile", str(b_ident), "--relay", str(ticket), "--allow", a_key,
            "--expose", f"127.0.0.1:{self.echo.port}", *ka], d / "listener.log",
            {"NATRELAY_LOG": "info"})
        self.strelay.wait_log(f"{b_key[:10]} listens", timeout=60)
        self.connector = self.start(self.bed.home(2), "natrelay", [
            "offset", "connect", "--idfile", str(a_ident), "--relay", str(ticket), "--to", b_key,
            "--listen", f"127.0.0.1:{OFFSET_FORWARD_PORT}", *ka], d / "connector.log",
            {"NATRELAY_LOG": "info"})
        self.connector.wait_log("forwarding", timeout=60)

    def offset_connect(self) -> socket.socket:
        return self.bed.connect(self.bed.home(2), "127.0.0.1", OFFSET_FORWARD_PORT)

    # ----------------------------------------------------------------- Aspia
    def start_aspia(self, *, keepalive: list[str] | None = None) -> None:
        d = self.tmp / "aspia"
        setup = create_router(d / "router", port=ROUTER_PORT)
        update_settings(setup.config, {"ListenInterface": PUBLIC_IP})
        add_router_user(setup, ROUTER_USER, ROUTER_PASSWORD)
        self.router_setup = setup
        self.router = self.start(self.bed.pub, "aspia_router", setup.args(), d / "router" / "router.log")
        self.router.wait_log("Listening on")
        for i, port in enumerate(RELAY_PORTS, 1):
            rd = d / f"relay{i}"
            rd.mkdir(parents=True, exist_ok=True)
            config = write_relay_config(rd, setup, peer_port=port, RouterAddress=PUBLIC_IP,
                                        PeerAddress=PUBLIC_IP, ListenInterface=PUBLIC_IP)
            self.relays.append(self.start(self.bed.pub, "aspia_relay", ["--config", str(config)],
                                          rd / "relay.log", {"NATRELAY_ASPIA_RELAY_TIMERS": "reconnect=0.5"}))
        self.router.wait_log("added 100 keys", count=2, timeout=60)
        router_args = ["--router", f"{PUBLIC_IP}:{ROUTER_PORT}", "--router-key", setup.public_key,
                       *(keepalive or [])]
        host_pw = _secret(d / "host-pw", HOST_PASSWORD)
        assert self.echo is not None
        self.host = self.start(self.bed.home(1), "natrelay", [
            "aspia", "host", *router_args, "--expose", f"127.0.0.1:{self.echo.port}", "--user", HOST_USER,
            "--password-file", str(host_pw), "--state", str(d / "host-state.json"),
            "--retry-interval", "0.5"],
            d / "host.log")
        self.host.wait_log("host id: ", timeout=60)
        match = re.search(r"^host id: (\d+)$", self.host.log(), re.MULTILINE)
        assert match, self.host.log()
        self.host_id = int(match.group(1))
        self.client = self.start(self.bed.home(2), "natrelay", [
            "aspia", "client", *router_args, "--user", ROUTER_USER,
            "--password-file", str(_secret(d / "router-pw", ROUTER_PASSWORD)), "--host-id", str(self.host_id),
            "--host-user", HOST_USER, "--host-password-file", str(host_pw), "--timeout", "20",
            "--listen", f"127.0.0.1:{ASPIA_FORWARD_PORT}"], d / "client.log")
        self.client.wait_log("listening on", timeout=60)

    def aspia_connect(self) -> socket.socket:
        return self.bed.connect(self.bed.home(2), "127.0.0.1", ASPIA_FORWARD_PORT)

    def router_status(self) -> dict[str, Any]:
        assert self.router is not None and self.router_setup is not None
        router = self.router
        return aspia_env.Router(router.proc, router.log_path, router.log_offset, self.router_setup).status()


def _secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def nat_bed(tmp: Path, established_timeout: int = 300) -> Iterator[Bed]:
    """The bed with an echo service in home 1; every process is stopped and checked at the end."""
    skip_without_bed()
    net = make_bed(established_timeout)
    bed = Bed(net, tmp)
    failures: list[str] = []
    try:
        with net.inside(net.home(1)):
            bed.echo = EchoServer()
        yield bed
    finally:
        for p in reversed(bed.procs):
            try:
                p.stop(timeout=15)
            except AssertionError as exc:
                failures.append(str(exc))
        killed = net.close()
        if bed.echo is not None:
            bed.echo.shutdown()
            bed.echo.server_close()
    assert not failures and not killed, (failures, killed)
