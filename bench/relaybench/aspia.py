"""natrelay's ``aspia_relay`` with a paired raw session, brokered by the real ``aspia_router``.

Path of a pairing, as Aspia peers make it: the opener keeps two router sessions, a host (anonymous,
pinned to the router key, with its own host ID) and a client (SRP login with a router account). Per
pair, the client sends ``ConnectionRequest{host_id}``; both sessions receive a ``ConnectionOffer``
with the same relay credentials; each side connects to the relay and writes its ``PeerToRelay``. The
two sockets are then the pair: the relay forwards raw bytes between them with the engine (splice), so
what bulk and round-trip figures measure is the relay's forwarding, and what pairings/s measures is
router brokering plus the relay's key check and pairing. Only ``aspia_relay`` counts as "the relay"
for memory and CPU; the router's CPU is reported apart, as an endpoint helper.

The peers' own end-to-end Aspia channel (SRP against the host's users) is not run on top: the relay
never sees anything but ciphertext bytes either way, and the benchmark measures the relay.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from .subject import (
    LOOPBACK,
    ManagedProcess,
    Opener,
    Subject,
    SubjectError,
    connect,
    free_port,
    wait_port,
)

REPO = Path(__file__).resolve().parent.parent.parent
SRC = REPO / "src"
USER = "bench"
# Enough keys for the idle-session measure (capped at about 10,000 sessions by RLIMIT_NOFILE).
MAX_PEER_COUNT = 12_000
HOST_SESSION = 4
CLIENT_SESSION = 2
LOGIN_PATIENCE = 45.0
"""Seconds an opener keeps retrying a login the router refused for too many logins at once."""
BENCH_UNLIMITED = ("NewConnectionsPerMinutePerIp", "MaxPendingConnectionsPerIp", "ClientRequestsPerMinute",
                   "HostRequestsPerMinute", "HostIdRequestsPerMinute")


def _ensure_importable() -> str | None:
    if str(SRC) not in sys.path and (SRC / "natrelay").is_dir():
        sys.path.insert(0, str(SRC))
    try:
        import natrelay.aspia.relay.app
        import natrelay.cli.aspia_router  # noqa: F401
    except ImportError as exc:
        return f"natrelay's Aspia relay or router cannot be imported: {exc}"
    return None


def _cli(module: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; from natrelay.cli.{module} import main; sys.exit(main())"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # The original's default: fatal messages only, so logging costs nothing per pairing.
    env.update({"ASPIA_LOG_LEVEL": "2", "ASPIA_LOG_TO_STDOUT": "1", "ASPIA_LOG_TO_FILE": "0"})
    return env


class _RouterSession:
    """One authenticated router session driven synchronously (the opener's processes have no loop).

    Nagle is off, as on the router's side: every message here is a request waiting for an
    answer, and a small write held back for an ACK is pure latency on the pairing path.
    """

    def __init__(self, port: int, config: Any, source: str | None = None) -> None:
        from natrelay.aspia.channel import Channel
        from natrelay.aspia.handshake_client import ClientHandshake

        self.sock = connect(port, source=source)
        self.channel = Channel(ClientHandshake(config, time.monotonic()), now=time.monotonic())
        self.inbox: deque[bytes] = deque()
        try:
            self._flush()
            while not self.channel.established:
                self._pump()
        except BaseException:
            self.sock.close()
            raise

    def _flush(self) -> None:
        chunks = self.channel.take_output()
        if chunks:
            # One write per burst: a frame's header and body never go out as separate segments.
            self.sock.sendall(b"".join(chunks))

    def _pump(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the router closed the connection")
        # Pings from the router are answered here too, so a long-lived opener stays connected.
        self.inbox.extend(self.channel.receive_data(data, time.monotonic()))
        self._flush()

    def send_payload(self, payload: bytes) -> None:
        """Send an already serialised ``PeerToRouter`` (encrypted per call, as every message is)."""
        self.channel.send(payload)
        self._flush()

    def send(self, envelope: Any) -> None:
        from natrelay.aspia.messages import serialize

        self.send_payload(serialize(envelope))

    def receive(self) -> Any:
        from natrelay.aspia.messages import parse
        from natrelay.aspia.proto import router_peer_pb2

        while not self.inbox:
            self._pump()
        return parse(router_peer_pb2.RouterToPeer, self.inbox.popleft())

    def close(self) -> None:
        self.sock.close()


class AspiaOpener(Opener):
    """A host and a client logged in to the router; every pair is one brokered relay session.

    Both router sessions log in when the opener is made, before any timing starts, as a real host
    and client stay logged in across many connections (and as the other subjects' openers make their
    permanent connections up front): an SRP login costs tens of milliseconds and is no part of a
    pairing. Per pair the opener still does all a peer does: one ConnectionRequest, both offers, two
    relay connections, and one X25519 + AEAD ``PeerToRelay`` per side.
    """

    def __init__(self, router_port: int, router_key: bytes, password: str) -> None:
        self._router_port = router_port
        self._router_key = router_key
        self._password = password
        self._host: _RouterSession | None = None
        self._client: _RouterSession | None = None
        self._host_id = 0
        self._request = b""
        self._login()

    def _login(self) -> None:
        from natrelay.aspia.handshake import Identify
        from natrelay.aspia.handshake_client import ClientConfig
        from natrelay.aspia.messages import make_envelope, serialize
        from natrelay.aspia.proto import router_peer_pb2

        self.close()
        host_config = ClientConfig(session_type=HOST_SESSION, identify=Identify.ANONYMOUS,
                                   server_public_key=self._router_key)
        self._host = _RouterSession(self._router_port, host_config)
        request = router_peer_pb2.HostIdRequest(type=router_peer_pb2.HostIdRequest.NEW_ID)
        self._host.send(make_envelope(router_peer_pb2.PeerToRouter, "host_id_request", request))
        reply = self._host.receive()
        if not reply.HasField("host_id_response") or not reply.host_id_response.host_id:
            raise SubjectError(f"the router gave no host ID: {reply}")
        self._host_id = reply.host_id_response.host_id
        # The same bytes every time (same host ID); each send still encrypts them afresh.
        self._request = serialize(make_envelope(router_peer_pb2.PeerToRouter, "connection_request",
                                                router_peer_pb2.ConnectionRequest(host_id=self._host_id)))
        client_config = ClientConfig(session_type=CLIENT_SESSION, username=USER,
                                     password=self._password.encode(), server_public_key=self._router_key)
        # The router admits only a few password logins at once per address (2), and all the
        # concurrent openers log in together: one that is turned away waits and tries again.
        deadline = time.monotonic() + LOGIN_PATIENCE
        pause = 0.02
        while True:
            try:
                self._client = _RouterSession(self._router_port, client_config)
                return
            except (OSError, ConnectionError):
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

    def _offers(self) -> tuple[Any, Any]:
        from natrelay.aspia.proto import router_peer_pb2

        if self._host is None or self._client is None:
            self._login()
        assert self._host is not None and self._client is not None
        self._client.send_payload(self._request)
        offer = self._client.receive().connection_offer
        if offer.error_code != router_peer_pb2.ConnectionOffer.SUCCESS:
            raise SubjectError(f"the router refused the connection: error {offer.error_code}")
        host_offer = self._host.receive().connection_offer
        return host_offer.relay, offer.relay

    def open_pair(self) -> tuple[socket.socket, socket.socket]:
        from natrelay.aspia.messages import build_peer_to_relay

        try:
            host_creds, client_creds = self._offers()
        except (OSError, ConnectionError):
            # A router session that went away while the opener sat idle: log in again, once.
            self.retries += 1
            self._login()
            host_creds, client_creds = self._offers()
        a = connect(host_creds.port)
        try:
            # Each side writes its PeerToRelay as soon as its connection is up, as two separate
            # peers would: the relay checks the host's while the client's is still being sealed.
            a.sendall(build_peer_to_relay(host_creds))
            b = connect(client_creds.port)
        except BaseException:
            a.close()
            raise
        try:
            b.sendall(build_peer_to_relay(client_creds))
        except BaseException:
            a.close()
            b.close()
            raise
        return a, b

    def close(self) -> None:
        for session in (self._host, self._client):
            if session is not None:
                session.close()
        self._host = self._client = None


def _overridden(values: dict[str, str], overrides: dict[str, str | None]) -> dict[str, str]:
    """``values`` with ``overrides`` applied; an override of None drops the key."""
    merged: dict[str, str | None] = {**values, **overrides}
    return {key: value for key, value in merged.items() if value is not None}


class AspiaSubject(Subject):
    name = "aspia"
    title = "natrelay aspia_relay (raw session, real aspia_router)"

    def __init__(self, relay_settings: dict[str, str | None] | None = None,
                 router_settings: dict[str, str | None] | None = None) -> None:
        """``relay_settings`` / ``router_settings`` override the bench's values; None removes a key
        (the server's default then applies), as the flood bench does for the limits lifted here."""
        self._relay_settings = relay_settings or {}
        self._router_settings = router_settings or {}
        self._router: ManagedProcess | None = None
        self._relay: ManagedProcess | None = None
        self._router_port = 0
        self._router_key = b""
        self._password = ""
        self._router_args: list[str] = []

    def missing(self) -> str | None:
        return _ensure_importable()

    def start(self, workdir: Path) -> None:
        from natrelay.ops.jsonsettings import update_settings, write_settings

        d = workdir / "aspia"
        d.mkdir(parents=True, exist_ok=True)
        env = _env()
        config = d / "etc" / "router.json"
        self._router_args = ["--config", str(config), "--data-dir", str(d / "lib")]
        self._run([*_cli("aspia_router"), "--create-config", *self._router_args], env)
        self._router_port = free_port()
        # The bench is the router's only user and measures pairing capacity, not the router's
        # flood guard: every opener logs in, takes a host ID and pairs as fast as it can from one
        # address, so the per-address and per-account limits are off here.
        # The router holds at most MaxKeysPerRelay of one relay's keys (default 1,000); the idle-session
        # measure needs the relay's whole pool.
        update_settings(config, _overridden({"Port": str(self._router_port), "ListenInterface": LOOPBACK,
                                             "MaxKeysPerRelay": str(MAX_PEER_COUNT),
                                             **{key: "0" for key in BENCH_UNLIMITED}},
                                            self._router_settings))
        self._router_key = bytes.fromhex((config.parent / "router.pub").read_text().strip())
        self._password = secrets.token_hex(12)
        pw = d / "bench.password"
        pw.write_text(self._password + "\n")
        pw.chmod(0o600)
        self._run([*_cli("aspia_router"), *self._router_args, "--add-user", USER, "--password-file", str(pw)],
                  env)
        self._router = ManagedProcess("aspia_router", _cli("aspia_router") + self._router_args,
                                      d / "router.log", cwd=d, env=env)
        wait_port(self._router_port, 30, self._router)
        peer_port = free_port()
        relay_config = d / "relay.json"
        write_settings(relay_config, _overridden({
            "RouterAddress": LOOPBACK, "RouterPort": str(self._router_port),
            "RouterPublicKey": self._router_key.hex(), "ListenInterface": LOOPBACK, "PeerAddress": LOOPBACK,
            "PeerPort": str(peer_port), "MaxPeerCount": str(MAX_PEER_COUNT), "PeerIdleTimeout": "60",
            "StatisticsEnabled": "false",
            # Every bench session comes from 127.0.0.1: the per-address caps that guard a public relay
            # (256 connections per address by default) would refuse the soak's 1,000 sessions.
            "MaxConnectionsPerIp": "0", "MaxConnections": "0",
        }, self._relay_settings), exclusive=True)
        self._relay = ManagedProcess("aspia_relay", [*_cli("aspia_relay"), "--config", str(relay_config)],
                                     d / "relay.log", cwd=d, env=env)
        wait_port(peer_port, 30, self._relay)
        self._wait_registered(env)

    def _run(self, argv: list[str], env: dict[str, str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        if done.returncode != 0:
            raise SubjectError(f"{' '.join(argv[-4:])} failed: {done.stderr or done.stdout}")

    def _wait_registered(self, env: dict[str, str]) -> None:
        """Until the router holds the relay's whole pool (a pairing before that could find it empty)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = subprocess.run([*_cli("aspia_router"), *self._router_args, "--status", "--json"],
                                  capture_output=True, text=True, env=env, timeout=30)
            if done.returncode == 0:
                relays = json.loads(done.stdout).get("relays", [])
                if relays and relays[0].get("pool_size", 0) >= MAX_PEER_COUNT:
                    return
            time.sleep(0.2)
        raise SubjectError("aspia_relay did not register its key pool with aspia_router in 60 s")

    def opener(self, index: int) -> Opener:
        return AspiaOpener(self._router_port, self._router_key, self._password)

    def relay_pids(self) -> list[int]:
        return [self._relay.pid] if self._relay else []

    def endpoint_pids(self) -> list[int]:
        return [self._router.pid] if self._router else []

    def stop(self) -> None:
        for proc in (self._relay, self._router):
            if proc is not None:
                proc.stop()
        self._relay = self._router = None
