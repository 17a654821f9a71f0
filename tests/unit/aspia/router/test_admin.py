"""The ADMIN session (spec §6.7), the ``--status`` snapshot and ``--disconnect`` addressing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf.message import Message

from natrelay.aspia.messages import make_envelope, serialize
from natrelay.aspia.proto import router_admin_pb2, router_common_pb2, router_peer_pb2, router_relay_pb2
from natrelay.aspia.router.admin import Router
from natrelay.aspia.router.admin_socket import decode_request
from natrelay.aspia.router.sessions import RouterSession, SessionKind
from tests.unit.aspia.router.helpers import NOW, key_pool, make_router, open_session, peer

UserResult = router_admin_pb2.UserResult
SessionResult = router_admin_pb2.SessionResult


@pytest.fixture
def router(tmp_path: Path) -> Router:
    return make_router(tmp_path)


@pytest.fixture
def admin(router: Router) -> RouterSession:
    return open_session(router, SessionKind.ADMIN, user="admin")


def ask(router: Router, admin: RouterSession, field: str,
        body: Message) -> router_admin_pb2.RouterToAdmin | None:
    payload = serialize(make_envelope(router_admin_pb2.AdminToRouter, field, body))
    actions = router.handle(admin.session_id, payload, NOW)
    if not actions.send:
        return None
    [(to, data)] = actions.send
    assert to == admin.session_id
    return router_admin_pb2.RouterToAdmin.FromString(data)


def stat(relay_stat: router_relay_pb2.RelayStat) -> bytes:
    return serialize(make_envelope(router_relay_pb2.RelayToRouter, "relay_stat", relay_stat))


def test_session_list_carries_host_and_relay_data(router: Router, admin: RouterSession) -> None:
    host = open_session(router, SessionKind.HOST, address="10.0.0.3")
    router.handle(host.session_id, peer("host_id_request", router_peer_pb2.HostIdRequest(type=1)), NOW)
    relay = open_session(router, SessionKind.RELAY)
    router.handle(relay.session_id, key_pool(0, 1), NOW)
    conn = router_common_pb2.PeerConnection(session_id=1, status=1, host_id=1)
    router.handle(relay.session_id, stat(router_relay_pb2.RelayStat(peer_connection=[conn], uptime=9)), NOW)
    reply = ask(router, admin, "session_list_request", router_admin_pb2.SessionListRequest())
    assert reply is not None
    sessions = {s.session_id: s for s in reply.session_list.session}
    assert [s.session_type for s in reply.session_list.session] == [1, 4, 8]
    assert sessions[host.session_id].ip_address == "10.0.0.3"
    assert sessions[host.session_id].timepoint == int(NOW) and sessions[host.session_id].os_name == "Linux"
    assert router_admin_pb2.HostSessionData.FromString(sessions[host.session_id].session_data).host_id == [1]
    data = router_admin_pb2.RelaySessionData.FromString(sessions[relay.session_id].session_data)
    assert data.pool_size == 2 and data.relay_stat.uptime == 9 and data.relay_stat.peer_connection[0] == conn


def test_session_requests(router: Router, admin: RouterSession) -> None:
    host = open_session(router, SessionKind.HOST)
    disconnect = router_admin_pb2.SessionRequest(type=router_admin_pb2.SESSION_REQUEST_DISCONNECT,
                                                 session_id=host.session_id)
    envelope = serialize(make_envelope(router_admin_pb2.AdminToRouter, "session_request", disconnect))
    actions = router.handle(admin.session_id, envelope, NOW)
    assert actions.disconnect == [host.session_id]
    result = router_admin_pb2.RouterToAdmin.FromString(actions.send[0][1]).session_result
    assert result.error_code == SessionResult.SUCCESS
    missing = ask(router, admin, "session_request", router_admin_pb2.SessionRequest(type=1, session_id=99))
    assert missing is not None and missing.session_result.error_code == SessionResult.INVALID_SESSION_ID
    other = ask(router, admin, "session_request", router_admin_pb2.SessionRequest(type=0, session_id=1))
    assert other is not None and other.session_result.error_code == SessionResult.INVALID_REQUEST


def user(name: str, entry_id: int = 0, salt: bytes = b"s" * 64) -> router_admin_pb2.User:
    return router_admin_pb2.User(entry_id=entry_id, name=name, group="4096", salt=salt, verifier=b"v" * 512,
                                 sessions=2, flags=1)


@pytest.mark.parametrize(("kind", "body", "code"), [
    (1, user("carol"), UserResult.SUCCESS),
    (1, user("admin"), UserResult.ALREADY_EXISTS),
    (1, user("bad name!"), UserResult.INVALID_DATA),
    (1, user("carol", salt=b""), UserResult.INTERNAL_ERROR),
    (2, user("carol", entry_id=0), UserResult.INVALID_DATA),
    (2, user("renamed", entry_id=1), UserResult.SUCCESS),
    (3, user("", entry_id=77), UserResult.SUCCESS),
])
def test_user_requests(router: Router, admin: RouterSession, kind: int, body: router_admin_pb2.User,
                       code: int) -> None:
    reply = ask(router, admin, "user_request", router_admin_pb2.UserRequest(type=kind, user=body))  # type: ignore[arg-type]
    assert reply is not None and reply.user_result.type == kind and reply.user_result.error_code == code


def test_user_list_and_unknown_user_request(router: Router, admin: RouterSession) -> None:
    assert ask(router, admin, "user_request", router_admin_pb2.UserRequest(type=0, user=user("x"))) is None
    reply = ask(router, admin, "user_list_request", router_admin_pb2.UserListRequest())
    assert reply is not None and [u.name for u in reply.user_list.user] == ["admin"]
    assert reply.user_list.user[0].entry_id == 1 and reply.user_list.user[0].sessions == 3


def test_peer_connection_request_is_forwarded_to_its_relay(router: Router, admin: RouterSession) -> None:
    relay = open_session(router, SessionKind.RELAY)
    request = router_common_pb2.PeerConnectionRequest(relay_session_id=relay.session_id, type=1,
                                                      peer_session_id=4)
    envelope = serialize(make_envelope(router_admin_pb2.AdminToRouter, "peer_connection_request", request))
    [(to, data)] = router.handle(admin.session_id, envelope, NOW).send
    assert to == relay.session_id
    assert router_relay_pb2.RouterToRelay.FromString(data).peer_connection_request == request
    request.relay_session_id = admin.session_id  # not a relay: nothing is sent anywhere
    envelope = serialize(make_envelope(router_admin_pb2.AdminToRouter, "peer_connection_request", request))
    assert router.handle(admin.session_id, envelope, NOW).send == []


def test_status_snapshot_and_disconnect_addressing(router: Router) -> None:
    relays = [open_session(router, SessionKind.RELAY, address=f"10.0.0.{i}") for i in (1, 2)]
    router.handle(relays[0].session_id, key_pool(0, 1, 2, port=7001), NOW)
    for relay, ids in zip(relays, ((5, 6), (6,)), strict=True):
        conns = [router_common_pb2.PeerConnection(session_id=i, host_id=3, client_user_name="bob",
                                                  bytes_transferred=100 * i, duration=4, idle_time=1)
                 for i in ids]
        relay_stat = router_relay_pb2.RelayStat(peer_connection=conns, uptime=50)
        router.handle(relay.session_id, stat(relay_stat), NOW)
    open_session(router, SessionKind.CLIENT, user="bob")
    status = router.status(NOW + 10)
    json.dumps(status)  # what the admin socket sends must be plain JSON
    assert [(r["address"], r["pool_size"], r["sessions"], r["uptime"]) for r in status["relays"]] == \
        [("127.0.0.1:7001", 3, 2, 60), ("", 0, 1, 60)]
    assert [s["id"] for s in status["sessions"]] == ["1.5", "1.6", "2.6"]
    assert status["sessions"][0]["bytes"] == 500 and status["peers"][0]["user"] == "bob"

    actions, error = router.disconnect_relayed("5")
    assert error is None and [to for to, _ in actions.send] == [relays[0].session_id]
    _, error = router.disconnect_relayed("6")
    assert error is not None and "1.6, 2.6" in error
    actions, error = router.disconnect_relayed("2.6")
    assert error is None and [to for to, _ in actions.send] == [relays[1].session_id]
    for bad in ("x", "1.x", "3.5", ""):
        actions, error = router.disconnect_relayed(bad)
        assert error is not None and actions.send == []


@pytest.mark.parametrize("line", [b"[]", b"{", b"\xff\n", b"{" + b" " * 70000 + b"}"])
def test_admin_socket_requests_are_bounded_and_validated(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode_request(line)
    assert decode_request(b'{"command": "status"}\n') == {"command": "status"}
