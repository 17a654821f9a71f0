"""The real ``aspia_router`` process, driven by stand-in relays, hosts, clients and admins on 127.0.0.1.

The stand-ins are built from the project's own channel and protobuf messages (tests/e2e/aspia_env.py),
so these tests check the router's wire behaviour of spec §6 without needing the relay or peers.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from natrelay.aspia.crypto import X25519KeyPair
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.framing import encode_user_frame
from natrelay.aspia.messages import ASPIA_VERSION, make_envelope, serialize
from natrelay.aspia.proto import (
    key_exchange_pb2,
    relay_peer_pb2,
    router_admin_pb2,
    router_common_pb2,
    router_peer_pb2,
    router_relay_pb2,
)
from tests.e2e.aspia_env import (
    ADMIN,
    HOST,
    HOST_SESSION,
    RELAY,
    Process,
    Router,
    RouterSetup,
    StandIn,
    add_router_user,
    anonymous,
    create_router,
    free_port,
    run_tool,
    srp_login,
    start_process,
    start_relay,
    start_router,
    tool,
    wait_for,
)

Offer = router_peer_pb2.ConnectionOffer


@pytest.fixture
def setup(tmp_path: Path) -> RouterSetup:
    s = create_router(tmp_path)
    add_router_user(s, "bob", "bob-secret")
    return s


@pytest.fixture
def router(setup: RouterSetup) -> Iterator[Router]:
    r = start_router(setup)
    yield r
    assert r.stop() == 0, r.log()


def peer_msg(field: str, body: object) -> router_peer_pb2.PeerToRouter:
    return make_envelope(router_peer_pb2.PeerToRouter, field, body)  # type: ignore[arg-type]


def relay_keys(count: int, first_id: int = 0) -> list[router_common_pb2.RelayKey]:
    return [router_common_pb2.RelayKey(key_id=first_id + i, type=1, encryption=1,
                                       public_key=X25519KeyPair.generate().public_bytes, iv=os.urandom(12))
            for i in range(count)]


def register_relay(router: Router, count: int, peer_port: int = 7777) -> StandIn:
    relay = anonymous(router.setup.port, router.setup.public_key, RELAY)
    pool = router_relay_pb2.RelayKeyPool(peer_host=HOST, peer_port=peer_port, key=relay_keys(count))
    relay.send(make_envelope(router_relay_pb2.RelayToRouter, "key_pool", pool))
    router.wait_log(f"added {count} keys")
    return relay


def new_host(router: Router) -> tuple[StandIn, int, bytes]:
    host = anonymous(router.setup.port, router.setup.public_key, HOST_SESSION)
    request = router_peer_pb2.HostIdRequest(type=router_peer_pb2.HostIdRequest.NEW_ID)
    host.send(peer_msg("host_id_request", request))
    reply = host.receive(router_peer_pb2.RouterToPeer).host_id_response
    assert reply.error_code == router_peer_pb2.HostIdResponse.SUCCESS
    assert len(reply.key) == 512
    return host, reply.host_id, reply.key


def ask(client: StandIn, host_id: int) -> router_peer_pb2.ConnectionOffer:
    client.send(peer_msg("connection_request", router_peer_pb2.ConnectionRequest(host_id=host_id)))
    reply = client.receive(router_peer_pb2.RouterToPeer)
    assert reply.HasField("connection_offer")
    return reply.connection_offer


# ------------------------------------------------------------------ files
def test_create_config_writes_three_files_private_and_refuses_to_overwrite(tmp_path: Path) -> None:
    s = create_router(tmp_path / "a")
    assert len(s.public_key) == 64 and s.pub_path.read_bytes() == s.public_key.encode()
    assert stat.S_IMODE(s.config.stat().st_mode) == 0o600
    assert stat.S_IMODE((s.data_dir / "router.db3").stat().st_mode) == 0o600
    assert s.admin_password and s.admin_password != "admin"
    again = run_tool("aspia_router", *s.args(), "--create-config")
    assert again.returncode == 1 and str(s.config) in again.stderr

    # A database already in the way: nothing else is created, and its name is in the message.
    other = tmp_path / "b"
    (other / "lib").mkdir(parents=True)
    (other / "lib" / "router.db3").write_bytes(b"x")
    done = run_tool("aspia_router", "--config", str(other / "etc" / "router.json"),
                    "--data-dir", str(other / "lib"), "--create-config")
    assert done.returncode == 1 and "router.db3" in done.stderr
    assert not (other / "etc" / "router.json").exists() and not (other / "etc" / "router.pub").exists()


def test_keygen_prints_a_pair_and_writes_nothing(tmp_path: Path) -> None:
    done = subprocess.run([*tool("aspia_router"), "--keygen"], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    private = bytes.fromhex(lines[0].removeprefix("Private key: "))
    assert lines[1] == f"Public key: {X25519KeyPair.from_private_bytes(private).public_bytes.hex().upper()}"
    assert list(tmp_path.iterdir()) == []


def test_user_management_commands(setup: RouterSetup, tmp_path: Path) -> None:
    listed = run_tool("aspia_router", *setup.args(), "--list-users")
    assert "admin" in listed.stdout and "bob" in listed.stdout
    # Without a password file and without a terminal there is no way to give a password.
    refused = run_tool("aspia_router", *setup.args(), "--add-user", "carol")
    assert refused.returncode == 1 and "--password-file" in refused.stderr
    pw = str(setup.config)
    bad = run_tool("aspia_router", *setup.args(), "--add-user", "bad name!", "--password-file", pw)
    assert bad.returncode == 1 and "invalid user name" in bad.stderr
    assert run_tool("aspia_router", *setup.args(), "--remove-user", "bob").returncode == 0
    assert "bob" not in run_tool("aspia_router", *setup.args(), "--list-users").stdout
    missing = run_tool("aspia_router", *setup.args(), "--remove-user", "bob")
    assert missing.returncode == 1 and "bob" in missing.stderr


def test_port_in_use_is_fatal_and_windows_switches_explain_themselves(setup: RouterSetup) -> None:
    with socket.create_server((HOST, setup.port)):
        done = run_tool("aspia_router", *setup.args(), timeout=20)
    assert done.returncode == 1 and f"cannot listen on {HOST}:{setup.port}" in done.stderr
    assert not (setup.data_dir / "router.sock").exists()
    done = run_tool("aspia_router", "--install")
    assert done.returncode == 1 and "only available on Windows" in done.stderr


def test_refuses_to_start_without_a_valid_database(setup: RouterSetup) -> None:
    (setup.data_dir / "router.db3").unlink()
    done = run_tool("aspia_router", *setup.args(), timeout=20)
    assert done.returncode == 78 and "router.db3" in done.stderr
    assert not (setup.data_dir / "router.db3").exists()
    (setup.data_dir / "router.db3").write_bytes(b"")
    done = run_tool("aspia_router", *setup.args(), timeout=20)
    assert done.returncode == 78 and "not a router database" in done.stderr


# ---------------------------------------------------------------- brokering
def test_host_ids_offers_and_key_pool(router: Router) -> None:
    port, key = router.setup.port, router.setup.public_key
    host, host_id, host_key = new_host(router)
    assert host_id == 1
    client = srp_login(port, "bob", "bob-secret")

    assert ask(client, 99).error_code == Offer.PEER_NOT_FOUND
    refused = ask(client, host_id)
    assert refused.error_code == Offer.KEY_POOL_EMPTY and refused.peer_role == Offer.CLIENT
    router.wait_log("no relay is connected")
    assert host.nothing_for(0.3)  # the host hears nothing about a refused request

    relay = register_relay(router, 3)
    offer = ask(client, host_id)
    assert offer.error_code == Offer.SUCCESS and offer.peer_role == Offer.CLIENT
    assert not offer.HasField("host_data")
    host_offer = host.receive(router_peer_pb2.RouterToPeer).connection_offer
    assert host_offer.peer_role == Offer.HOST and host_offer.host_data.host_id == host_id
    assert host_offer.relay.SerializeToString() == offer.relay.SerializeToString()
    assert (offer.relay.host, offer.relay.port, offer.relay.key.key_id) == (HOST, 7777, 2)  # LIFO
    used = relay.receive(router_relay_pb2.RouterToRelay)
    assert used.HasField("key_used") and used.key_used.key_id == 2
    secret = relay_peer_pb2.PeerToRelay.Secret.FromString(offer.relay.secret)
    assert (secret.client_user_name, secret.client_address, secret.host_address, secret.host_id) == \
        ("bob", HOST, HOST, host_id)
    assert len(secret.random_data) == 16

    # The host comes back on a new connection with its key: same ID, old session dropped.
    again = anonymous(port, key, HOST_SESSION)
    again.send(peer_msg("host_id_request", router_peer_pb2.HostIdRequest(
        type=router_peer_pb2.HostIdRequest.EXISTING_ID, key=host_key)))
    reply = again.receive(router_peer_pb2.RouterToPeer).host_id_response
    assert reply.host_id == host_id and not reply.key
    assert host.closed_by_router()
    client.send(peer_msg("check_host_status", router_peer_pb2.CheckHostStatus(host_id=host_id)))
    status = client.receive(router_peer_pb2.RouterToPeer).host_status.status
    assert status == router_peer_pb2.HostStatus.STATUS_ONLINE

    # A relay that leaves takes its keys along: the next request finds the pool empty.
    relay.close()
    router.wait_log("keys removed from the pool")
    assert ask(client, host_id).error_code == Offer.KEY_POOL_EMPTY


def test_status_and_disconnect_through_the_admin_socket(router: Router) -> None:
    relay = register_relay(router, 5)
    conn = router_common_pb2.PeerConnection(session_id=7, status=1, client_address="10.0.0.2",
                                            client_user_name="bob", host_address="10.0.0.3", host_id=4,
                                            bytes_transferred=12345, duration=60, idle_time=3)
    stat_msg = router_relay_pb2.RelayStat(peer_connection=[conn], uptime=100)
    relay.send(make_envelope(router_relay_pb2.RelayToRouter, "relay_stat", stat_msg))
    wait_for(lambda: bool(router.status()["sessions"]), 10, "the statistics to reach the router")
    status = router.status()
    [r] = status["relays"]
    assert (r["address"], r["pool_size"], r["sessions"]) == (f"{HOST}:7777", 5, 1) and r["uptime"] >= 100
    [s] = status["sessions"]
    assert (s["host_id"], s["user"], s["bytes"], s["duration"], s["idle"]) == (4, "bob", 12345, 60, 3)
    table = run_tool("aspia_router", *router.setup.args(), "--status")
    assert table.returncode == 0 and "12345" in table.stdout and f"{HOST}:7777" in table.stdout

    done = run_tool("aspia_router", *router.setup.args(), "--disconnect", s["id"])
    assert done.returncode == 0, done.stderr
    request = relay.receive(router_relay_pb2.RouterToRelay).peer_connection_request
    assert request.peer_session_id == 7
    assert request.type == router_common_pb2.PEER_CONNECTION_REQUEST_DISCONNECT
    unknown = run_tool("aspia_router", *router.setup.args(), "--disconnect", "9.9")
    assert unknown.returncode == 1 and "no relayed session" in unknown.stderr


def test_admin_session_lists_sessions_and_users(router: Router) -> None:
    host, host_id, _ = new_host(router)
    admin = srp_login(router.setup.port, "admin", router.setup.admin_password, ADMIN)
    admin.send(make_envelope(router_admin_pb2.AdminToRouter, "session_list_request",
                             router_admin_pb2.SessionListRequest()))
    listing = admin.receive(router_admin_pb2.RouterToAdmin).session_list
    hosts = [s for s in listing.session if s.session_type == HOST_SESSION]
    assert router_admin_pb2.HostSessionData.FromString(hosts[0].session_data).host_id == [host_id]
    admin.send(make_envelope(router_admin_pb2.AdminToRouter, "user_list_request",
                             router_admin_pb2.UserListRequest()))
    names = [u.name for u in admin.receive(router_admin_pb2.RouterToAdmin).user_list.user]
    assert names == ["admin", "bob"]
    host.close()


# ------------------------------------------------------------ misconfiguration
def test_wrong_router_key_fails_both_sides_with_a_clear_log_line(router: Router) -> None:
    wrong = X25519KeyPair.generate().public_bytes.hex()
    with pytest.raises(AspiaProtocolError) as info:
        anonymous(router.setup.port, wrong, RELAY)
    assert info.value.code is ErrorCode.ACCESS_DENIED
    router.wait_log("wrong router public key")
    assert router.setup.public_key in router.log()


def test_wrong_password_and_unknown_user_look_the_same(router: Router) -> None:
    for user, password in (("bob", "nope"), ("nobody", "nope")):
        with pytest.raises(AspiaProtocolError) as info:
            srp_login(router.setup.port, user, password)
        assert info.value.code is ErrorCode.ACCESS_DENIED
        router.wait_log(f"Login failed for user {user!r}")
    log = router.log()
    assert "wrong user name or password" in log and "nope" not in log


def test_white_list_refuses_other_addresses(tmp_path: Path) -> None:
    s = create_router(tmp_path, ClientWhiteList="10.1.2.3")
    add_router_user(s, "bob", "bob-secret")
    r = start_router(s)
    try:
        client = srp_login(s.port, "bob", "bob-secret")
        assert client.closed_by_router()
        r.wait_log("not in ClientWhiteList")
        anonymous(s.port, s.public_key, HOST_SESSION).close()  # other types are not restricted
    finally:
        assert r.stop() == 0


# ---------------------------------------------------------------- hostility
def _closed(sock: socket.socket, timeout: float = 10) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\xff",                 # a size field far over 7 MiB
    b"\x80\x80\x80\x04",                 # 8 MiB: just over the limit
    b"\x00\x07\x00\x00\x00\x01\x00\x00\x00x",  # an unknown service frame type
    b"\x05hello",                        # not a ClientHello
])
def test_garbage_closes_only_that_connection(router: Router, garbage: bytes) -> None:
    relay = register_relay(router, 1)
    with socket.create_connection((HOST, router.setup.port)) as sock:
        sock.sendall(garbage)
        assert _closed(sock)
    router.wait_log("Handshake from 127.0.0.1 failed")
    assert router.status()["relays"][0]["pool_size"] == 1  # the relay session is untouched
    relay.close()


def test_short_ciphertext_after_authentication_closes_the_session(router: Router) -> None:
    host, _, _ = new_host(router)
    host.sock.sendall(b"\x05\x00\x00abc")  # spec §12 bug 7: crashed the original
    assert host.closed_by_router()
    client = srp_login(router.setup.port, "bob", "bob-secret")  # still serving
    client.close()


def test_messages_on_other_channels_are_logged_and_ignored(router: Router) -> None:
    host, host_id, _ = new_host(router)
    request = router_peer_pb2.CheckHostStatus(host_id=host_id)
    client = srp_login(router.setup.port, "bob", "bob-secret")
    client.channel.send(serialize(peer_msg("check_host_status", request)), channel_id=5)
    client.sock.sendall(b"".join(client.channel.take_output()))
    router.wait_log("unhandled incoming message from another channel")
    assert client.nothing_for(0.3)
    client.send(peer_msg("check_host_status", request))  # channel 0 still works
    assert client.receive(router_peer_pb2.RouterToPeer).host_status.status == 2
    host.close()


def _stalled_login(port: int, user: str) -> socket.socket:
    """A connection that starts an SRP login (ClientHello, SrpIdentify) and then says nothing more."""
    sock = socket.create_connection((HOST, port), timeout=10)
    hello = key_exchange_pb2.ClientHello(encryption=1, version=ASPIA_VERSION.to_proto())
    sock.sendall(encode_user_frame(serialize(hello)))
    sock.recv(65536)  # ServerHello
    sock.sendall(encode_user_frame(serialize(key_exchange_pb2.SrpIdentify(username=user))))
    sock.recv(65536)  # SrpServerKeyExchange: the router has taken a login slot
    return sock


def test_logins_beyond_the_cap_are_refused_but_relays_and_hosts_pass(setup: RouterSetup) -> None:
    p = start_router_with(setup, "--max-logins-per-ip", "1")
    try:
        stalled = _stalled_login(setup.port, "bob")
        with pytest.raises((ConnectionError, AspiaProtocolError)):
            srp_login(setup.port, "bob", "bob-secret")
        p.wait_log("too many password logins in progress (per-IP login limit reached (1)")
        anonymous(setup.port, setup.public_key, HOST_SESSION).close()  # anonymous logins are not capped
        stalled.close()
        wait_for(lambda: "Handshake from 127.0.0.1 failed" in p.log(), 10, "the stalled login to end")
        srp_login(setup.port, "bob", "bob-secret").close()
    finally:
        assert p.stop() == 0


def start_router_with(setup: RouterSetup, *extra: str) -> Router:
    proc = start_process("aspia_router", [*setup.args(), *extra], setup.directory / "router.log")
    router = Router(proc.proc, proc.log_path, proc.log_offset, setup)
    router.wait_log("Listening on")
    return router


# ------------------------------------------------- with the real relay and peers
class EchoServer:
    """A TCP echo service on 127.0.0.1 standing for the host's exposed service."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


FAST_RELAY = {"NATRELAY_ASPIA_RELAY_TIMERS": "reconnect=1"}


@pytest.fixture
def stack(setup: RouterSetup, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Router, two real relays, a real host in front of an echo service, and a real client --listen."""
    procs: list[Process] = []
    echo = EchoServer()
    try:
        router = start_router(setup)
        procs.append(router)
        relays = [start_relay(tmp_path / f"relay{i}", setup, FAST_RELAY, MaxPeerCount="4") for i in (1, 2)]
        procs.extend(relays)
        router.wait_log("added 4 keys", count=2)
        (tmp_path / "host.pw").write_text("host-secret\n")
        common = ["--router", setup.address(), "--router-key", setup.public_key]
        host = start_process("natrelay", ["aspia", "host", *common, "--expose", f"{HOST}:{echo.port}",
                                          "--user", "bob", "--password-file", str(tmp_path / "host.pw"),
                                          "--state", str(tmp_path / "host.json"), "--retry-interval", "1"],
                             tmp_path / "host.log")
        procs.append(host)
        host.wait_log("host id: 1")
        (tmp_path / "bob.pw").write_text("bob-secret\n")
        listen = free_port()
        client = start_process("natrelay", ["aspia", "client", *common, "--user", "bob", "--password-file",
                                            str(tmp_path / "bob.pw"), "--host-id", "1",
                                            "--host-password-file", str(tmp_path / "host.pw"),
                                            "--listen", f"{HOST}:{listen}"], tmp_path / "client.log")
        procs.append(client)
        wait_for(lambda: _can_connect(listen), 20, "the client to listen")
        yield {"router": router, "relays": relays, "host": host, "client": client, "listen": listen}
    finally:
        for p in reversed(procs):
            p.kill()
        echo.close()


def _can_connect(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def _round_trip(port: int, payload: bytes) -> socket.socket:
    conn = socket.create_connection((HOST, port), timeout=20)
    conn.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = conn.recv(65536)
        assert chunk, "connection closed early"
        got += chunk
    assert got == payload
    return conn


def test_real_stack_status_shows_relayed_sessions_and_disconnect_ends_one(stack: dict[str, Any]) -> None:
    router: Router = stack["router"]
    conn = _round_trip(stack["listen"], b"ping through the relay" * 100)
    wait_for(lambda: len(router.status()["sessions"]) == 1, 20, "the relay's statistics")
    status = router.status()
    [session] = status["sessions"]
    assert (session["host_id"], session["user"], session["client_address"]) == (1, "bob", HOST)
    assert session["bytes"] >= 2 * 2200
    assert sorted(r["pool_size"] for r in status["relays"]) == [3, 4]  # one key is in use
    assert run_tool("aspia_router", *router.setup.args(), "--disconnect", session["id"]).returncode == 0
    conn.settimeout(20)
    # The relay dropped the pair, so the client side ends too: as a reset, because a relayed
    # connection that breaks is an error and streams.py aborts, never ends, the other side.
    with pytest.raises(ConnectionResetError):
        conn.recv(1)
    wait_for(lambda: router.status()["sessions"] == [], 20, "the session to leave the statistics")


def test_killed_relay_leaves_the_pool_and_the_other_relay_serves(stack: dict[str, Any]) -> None:
    router: Router = stack["router"]
    first, second = stack["relays"]
    first.kill()
    router.wait_log("keys removed from the pool")
    wait_for(lambda: len(router.status()["relays"]) == 1, 10, "the dead relay to leave")
    for _ in range(3):
        _round_trip(stack["listen"], b"still relayed").close()
    assert router.status()["relays"][0]["pool_size"] >= 1
    assert second.proc.poll() is None


def test_router_restart_keeps_sessions_and_relays_come_back(stack: dict[str, Any]) -> None:
    router: Router = stack["router"]
    conn = _round_trip(stack["listen"], b"before the restart")
    assert router.stop() == 0
    restarted = start_router(router.setup)
    stack["router"] = restarted
    try:
        conn.sendall(b"during the outage")
        got = b""
        while len(got) < len(b"during the outage"):
            got += conn.recv(65536)
        assert got == b"during the outage"
        restarted.wait_log("added", count=2, timeout=30)
        restarted.wait_log("has host ID 1", timeout=30)  # the host came back with its stored key
        _round_trip(stack["listen"], b"after the restart").close()
    finally:
        conn.close()
        restarted.kill()
