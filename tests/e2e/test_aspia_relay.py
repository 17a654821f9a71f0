"""The real ``aspia_relay`` process: its command line, and its behaviour with the real ``aspia_router``.

Hosts and clients are played by router stand-ins (``tests.e2e.aspia_env``) plus raw sockets to
the relay, so every byte the relay sees is chosen by the test. Protocol timers are shortened
through ``NATRELAY_ASPIA_RELAY_TIMERS``.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from natrelay.aspia.crypto import X25519KeyPair
from natrelay.aspia.messages import build_peer_to_relay, encode_peer_to_relay, make_envelope
from natrelay.aspia.proto import relay_peer_pb2, router_common_pb2, router_peer_pb2
from tests.e2e.aspia_env import (
    HOST,
    Process,
    Router,
    RouterSetup,
    StandIn,
    add_router_user,
    anonymous,
    create_router,
    run_tool,
    srp_login,
    start_relay,
    start_router,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

HOST_SESSION = 4
FAST = {"NATRELAY_ASPIA_RELAY_TIMERS": "reconnect=0.5,key_expiry=3,pending=3"}
Offer = router_peer_pb2.ConnectionOffer


# ------------------------------------------------------------------ command line
def test_create_config_writes_the_defaults_once_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "relay.json"
    done = run_tool("aspia_relay", "--create-config", "--config", str(path))
    assert done.returncode == 0 and str(path) in done.stdout
    values = json.loads(path.read_text())
    assert values == {"ListenInterface": "", "MaxPeerCount": "100", "PeerAddress": "", "PeerIdleTimeout": "5",
                      "PeerPort": "8070", "RouterAddress": "", "RouterPort": "8060", "RouterPublicKey": "",
                      "StatisticsEnabled": "false", "StatisticsInterval": "5"}
    before = path.read_bytes()
    again = run_tool("aspia_relay", "--create-config", "--config", str(path))
    assert again.returncode == 1 and str(path) in again.stderr and "already exists" in again.stderr
    assert path.read_bytes() == before
    # Starting with the fresh file names every field still to fill in, and exits with EX_CONFIG.
    start = run_tool("aspia_relay", "--config", str(path), timeout=20)
    assert start.returncode == 78
    for field in ("RouterAddress", "RouterPublicKey", "PeerAddress"):
        assert field in start.stderr


def test_missing_or_invalid_config_is_refused_without_creating_anything(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "relay.json"
    done = run_tool("aspia_relay", "--config", str(missing), timeout=20)
    assert done.returncode == 78 and "--create-config" in done.stderr
    assert not missing.parent.exists()
    bad = tmp_path / "relay.json"
    bad.write_text(json.dumps({"RouterAddress": "127.0.0.1", "RouterPublicKey": "ab" * 32,
                               "PeerAddress": "127.0.0.1", "PeerPort": "70000", "PeerIdleTimeout": "0"}))
    done = run_tool("aspia_relay", "--config", str(bad), timeout=20)
    assert done.returncode == 78
    assert "PeerPort" in done.stderr and "65535" in done.stderr
    assert "PeerIdleTimeout" in done.stderr and "1 to 60" in done.stderr


def test_help_lists_the_manuals_options_and_windows_switches_say_so() -> None:
    done = run_tool("aspia_relay", "--help")
    assert done.returncode == 0
    for option in ("--install", "--remove", "--start", "--stop", "--create-config", "--help", "--config"):
        assert option in done.stdout
    # The Windows switches act on systemd here: tests/e2e/test_services.py (with a stand-in systemctl).
    assert run_tool("aspia_relay", "--version").stdout.startswith("aspia_relay ")


# ------------------------------------------------------------------ with the router
@dataclass
class Setup:
    tmp: Path
    router_setup: RouterSetup
    router: Router


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Setup]:
    setup = create_router(tmp_path / "router")
    add_router_user(setup, "alice", "alice-pw")
    router = start_router(setup)
    try:
        yield Setup(tmp_path, setup, router)
    finally:
        router.kill()


def relay_status(router: Router) -> list[dict[str, Any]]:
    relays: list[dict[str, Any]] = router.status()["relays"]
    return relays


def wait_registered(relay: Process, router: Router, pool: int) -> None:
    relay.wait_log("Connected to the router")
    wait_for(lambda: [r["pool_size"] for r in relay_status(router)] == [pool], 10, f"a pool of {pool} keys")


def get_offers(router: Router) -> tuple[router_common_pb2.RelayCredentials, StandIn, StandIn]:
    """A host registers, a client asks for it: both get the same relay credentials."""
    port, key = router.setup.port, router.setup.public_key
    host = anonymous(port, key, HOST_SESSION)
    host.send(make_envelope(router_peer_pb2.PeerToRouter, "host_id_request",
                            router_peer_pb2.HostIdRequest(type=router_peer_pb2.HostIdRequest.NEW_ID)))
    host_id = host.receive(router_peer_pb2.RouterToPeer).host_id_response.host_id
    client = srp_login(port, "alice", "alice-pw")
    client.send(make_envelope(router_peer_pb2.PeerToRouter, "connection_request",
                              router_peer_pb2.ConnectionRequest(host_id=host_id)))
    offer = client.receive(router_peer_pb2.RouterToPeer).connection_offer
    assert offer.error_code == Offer.SUCCESS, offer
    host_offer = host.receive(router_peer_pb2.RouterToPeer).connection_offer
    assert host_offer.relay.SerializeToString() == offer.relay.SerializeToString()
    return offer.relay, host, client


def relay_peer(creds: router_common_pb2.RelayCredentials, early: bytes = b"") -> socket.socket:
    sock = socket.create_connection((creds.host, creds.port), timeout=10)
    sock.sendall(build_peer_to_relay(creds) + early)
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def closed(sock: socket.socket, timeout: float = 10) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_pairs_forwards_reports_statistics_and_obeys_disconnect(env: Setup) -> None:
    relay = start_relay(env.tmp / "relay", env.router_setup, FAST, MaxPeerCount="3")
    try:
        wait_registered(relay, env.router, 3)
        creds, host, client = get_offers(env.router)
        h = relay_peer(creds)
        c = relay_peer(creds, early=b"client hello")  # arrives with the PeerToRelay
        assert recv_exact(h, 12) == b"client hello"
        payload = bytes(range(256)) * 1000
        h.sendall(payload)
        assert recv_exact(c, len(payload)) == payload
        relay.wait_log("paired with key")
        wait_for(lambda: bool(env.router.status()["sessions"]), 10, "statistics to reach the router")
        [s] = env.router.status()["sessions"]
        assert s["user"] == "alice" and s["bytes"] == 12 + len(payload)
        assert [r["pool_size"] for r in relay_status(env.router)] == [2]  # one key consumed
        done = run_tool("aspia_router", *env.router_setup.args(), "--disconnect", str(s["id"]))
        assert done.returncode == 0, done.stdout + done.stderr
        assert closed(h) and closed(c)
        relay.wait_log("disconnected by the router")
        wait_for(lambda: [r["pool_size"] for r in relay_status(env.router)] == [3], 10, "the slot to return")
        for sock in (h, c):
            sock.close()
        host.close()
        client.close()
    finally:
        assert relay.stop() == 0


def test_idle_session_is_closed_and_its_key_returns(env: Setup) -> None:
    timers = {"NATRELAY_ASPIA_RELAY_TIMERS": "idle=1.5,reconnect=0.5"}
    relay = start_relay(env.tmp / "relay", env.router_setup, timers, MaxPeerCount="2")
    try:
        wait_registered(relay, env.router, 2)
        creds, host, client = get_offers(env.router)
        h, c = relay_peer(creds), relay_peer(creds)
        c.sendall(b"x")
        assert recv_exact(h, 1) == b"x"
        started = time.monotonic()
        assert closed(h) and closed(c)
        assert time.monotonic() - started >= 1.4
        relay.wait_log("ended (idle)")
        wait_for(lambda: [r["pool_size"] for r in relay_status(env.router)] == [2], 10, "the key to return")
        for sock in (h, c):
            sock.close()
        host.close()
        client.close()
    finally:
        relay.stop()


def test_hostile_peers_are_closed_with_a_log_line_and_disturb_nothing(env: Setup) -> None:
    relay = start_relay(env.tmp / "relay", env.router_setup, FAST, MaxPeerCount="5")
    try:
        wait_registered(relay, env.router, 5)
        creds, host, client = get_offers(env.router)
        address = (creds.host, creds.port)
        eph = X25519KeyPair.generate().public_bytes
        hostile = [
            struct.pack(">I", 0),
            struct.pack(">I", 1024 * 1024 + 1),
            struct.pack(">I", 6) + b"\xff" * 6,
            # §12 bug 7: a valid key ID with 5 bytes of "ciphertext" crashed the original.
            encode_peer_to_relay(relay_peer_pb2.PeerToRelay(key_id=creds.key.key_id, public_key=eph,
                                                            data=b"abcde")),
            encode_peer_to_relay(relay_peer_pb2.PeerToRelay(key_id=4242, public_key=eph, data=b"z" * 40)),
        ]
        for garbage in hostile:
            with socket.create_connection(address, timeout=10) as bad:
                bad.sendall(garbage)
                assert closed(bad)
        relay.wait_log("refused", count=len(hostile))
        # The key the short ciphertext named is still good: the real pair forms on it.
        h, c = relay_peer(creds), relay_peer(creds)
        c.sendall(b"still fine")
        assert recv_exact(h, 10) == b"still fine"
        # A third peer with the pair's key is refused: keys are single-use.
        with relay_peer(creds) as third:
            assert closed(third)
        for sock in (h, c):
            sock.close()
        host.close()
        client.close()
    finally:
        assert relay.stop() == 0


def test_wrong_router_key_is_logged_with_the_field_to_fix(env: Setup) -> None:
    wrong = X25519KeyPair.generate().public_bytes.hex()
    relay = start_relay(env.tmp / "relay", env.router_setup, FAST, RouterPublicKey=wrong)
    try:
        relay.wait_log("does not match RouterPublicKey")
        assert "relay.json" in relay.log() and "retrying in 0.5 s" in relay.log()
        assert relay_status(env.router) == []
    finally:
        relay.stop()


def test_relay_waits_for_an_unreachable_router_then_registers(tmp_path: Path) -> None:
    setup = create_router(tmp_path / "router")
    relay = start_relay(tmp_path / "relay", setup, FAST, MaxPeerCount="4")
    router = None
    try:
        relay.wait_log("cannot reach the router", count=2)
        assert "retrying in 0.5 s" in relay.log()
        router = start_router(setup)
        wait_registered(relay, router, 4)
    finally:
        relay.stop()
        if router is not None:
            router.kill()


def test_peer_port_in_use_is_fatal(env: Setup) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        relay = start_relay(env.tmp / "relay", env.router_setup, FAST, PeerPort=str(port))
        code = relay.proc.wait(20)
    assert code == 1 and "Cannot listen for peers" in relay.log()
