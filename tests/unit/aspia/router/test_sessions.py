"""Host, client and relay sessions of the router core (spec §6.3-§6.6, §6.8), without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natrelay.aspia.crypto import h512
from natrelay.aspia.messages import make_envelope, serialize
from natrelay.aspia.proto import relay_peer_pb2, router_peer_pb2, router_relay_pb2
from natrelay.aspia.router.admin import Router
from natrelay.aspia.router.sessions import SessionKind
from tests.unit.aspia.router.helpers import NOW, key_pool, make_router, open_session, peer

Req = router_peer_pb2.HostIdRequest
Resp = router_peer_pb2.HostIdResponse
Offer = router_peer_pb2.ConnectionOffer


@pytest.fixture
def router(tmp_path: Path) -> Router:
    return make_router(tmp_path)


def to_peer(data: bytes) -> router_peer_pb2.RouterToPeer:
    return router_peer_pb2.RouterToPeer.FromString(data)


def host_id_request(router: Router, session_id: int, request: Req) -> Resp:
    actions = router.handle(session_id, peer("host_id_request", request), NOW)
    [(to, data)] = actions.send
    assert to == session_id
    return to_peer(data).host_id_response


def test_session_ids_count_from_one(router: Router) -> None:
    ids = [open_session(router, kind).session_id for kind in SessionKind]
    assert ids == [1, 2, 3, 4]


def test_new_and_existing_host_ids(router: Router) -> None:
    host = open_session(router, SessionKind.HOST)
    first = host_id_request(router, host.session_id, Req(type=Req.NEW_ID))
    assert first.error_code == Resp.SUCCESS and first.host_id == 1 and len(first.key) == 512
    assert router.db.find_host(h512(first.key)) == 1  # only the hash is stored
    second = host_id_request(router, host.session_id, Req(type=Req.NEW_ID))
    assert second.host_id == 2 and host.host_ids == [1, 2]
    again = host_id_request(router, host.session_id, Req(type=Req.EXISTING_ID, key=first.key))
    assert again.host_id == 1
    assert again.key == b""
    unknown = host_id_request(router, host.session_id, Req(type=Req.EXISTING_ID, key=b"nope"))
    assert unknown.error_code == Resp.NO_HOST_FOUND and unknown.host_id == 0


def test_every_host_id_request_gets_an_answer(router: Router) -> None:
    host = open_session(router, SessionKind.HOST)
    assert host_id_request(router, host.session_id, Req(type=0, key=b"x")).error_code == Resp.UNKNOWN
    router.db.close()  # the database failing is answered too (spec §12 bug 10)
    failed = host_id_request(router, host.session_id, Req(type=Req.NEW_ID))
    assert failed.error_code == Resp.UNKNOWN and failed.key == b""


def test_a_host_claiming_an_id_evicts_the_stale_session(router: Router) -> None:
    old = open_session(router, SessionKind.HOST)
    key = host_id_request(router, old.session_id, Req(type=Req.NEW_ID)).key
    new = open_session(router, SessionKind.HOST)
    actions = router.handle(new.session_id, peer("host_id_request", Req(type=Req.EXISTING_ID, key=key)), NOW)
    assert actions.disconnect == [old.session_id]
    assert old.session_id in router.sessions  # only requested: the shell disconnects after the event
    host = router.host_session(1)
    assert host is not None and host.session_id == new.session_id
    router.close_session(old.session_id)  # its late teardown must not take the ID offline
    assert router.host_session(1) is new


def test_reset_host_id_takes_it_offline_without_reply(router: Router) -> None:
    host = open_session(router, SessionKind.HOST)
    host_id_request(router, host.session_id, Req(type=Req.NEW_ID))
    reset = peer("reset_host_id", router_peer_pb2.ResetHostId(host_id=1))
    actions = router.handle(host.session_id, reset, NOW)
    assert actions.send == [] and router.host_session(1) is None


def test_check_host_status(router: Router) -> None:
    host = open_session(router, SessionKind.HOST)
    host_id_request(router, host.session_id, Req(type=Req.NEW_ID))
    client = open_session(router, SessionKind.CLIENT, user="bob")

    def status(host_id: int) -> int:
        check = peer("check_host_status", router_peer_pb2.CheckHostStatus(host_id=host_id))
        [(_, data)] = router.handle(client.session_id, check, NOW).send
        return to_peer(data).host_status.status

    assert status(1) == router_peer_pb2.HostStatus.STATUS_ONLINE
    assert status(2) == router_peer_pb2.HostStatus.STATUS_OFFLINE
    router.close_session(host.session_id)
    assert status(1) == router_peer_pb2.HostStatus.STATUS_OFFLINE


def connect(router: Router, client_id: int, host_id: int) -> list[tuple[int, bytes]]:
    request = peer("connection_request", router_peer_pb2.ConnectionRequest(host_id=host_id))
    return router.handle(client_id, request, NOW).send


def test_connection_request_outcomes(router: Router, caplog: pytest.LogCaptureFixture) -> None:
    host = open_session(router, SessionKind.HOST, address="10.0.0.9")
    host_id_request(router, host.session_id, Req(type=Req.NEW_ID))
    client = open_session(router, SessionKind.CLIENT, address="10.0.0.2", user="bob")

    [(to, data)] = connect(router, client.session_id, 42)
    assert to == client.session_id
    assert to_peer(data).connection_offer == Offer(peer_role=Offer.CLIENT, error_code=Offer.PEER_NOT_FOUND)

    [(_, data)] = connect(router, client.session_id, 1)
    assert to_peer(data).connection_offer.error_code == Offer.KEY_POOL_EMPTY
    assert "no relay is connected" in caplog.text

    relay = open_session(router, SessionKind.RELAY, address="10.0.0.5")
    assert router.handle(relay.session_id, key_pool(0, 1, 2), NOW).send == []
    sent = connect(router, client.session_id, 1)
    assert [to for to, _ in sent] == [relay.session_id, host.session_id, client.session_id]
    assert router_relay_pb2.RouterToRelay.FromString(sent[0][1]).key_used.key_id == 2
    host_offer = to_peer(sent[1][1]).connection_offer
    client_offer = to_peer(sent[2][1]).connection_offer
    assert host_offer.peer_role == Offer.HOST and host_offer.host_data.host_id == 1
    assert client_offer.peer_role == Offer.CLIENT and not client_offer.HasField("host_data")
    assert host_offer.relay.SerializeToString() == client_offer.relay.SerializeToString()
    assert (client_offer.relay.host, client_offer.relay.port) == ("127.0.0.1", 7000)
    secret = relay_peer_pb2.PeerToRelay.Secret.FromString(client_offer.relay.secret)
    assert (secret.client_address, secret.client_user_name, secret.host_address, secret.host_id) == \
        ("10.0.0.2", "bob", "10.0.0.9", 1)

    connect(router, client.session_id, 1)
    connect(router, client.session_id, 1)
    caplog.clear()
    [(_, data)] = connect(router, client.session_id, 1)
    assert to_peer(data).connection_offer.error_code == Offer.KEY_POOL_EMPTY
    assert "has handed out all 3 keys" in caplog.text


def test_relay_without_peer_address_is_named_and_skipped(router: Router,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    host = open_session(router, SessionKind.HOST)
    host_id_request(router, host.session_id, Req(type=Req.NEW_ID))
    client = open_session(router, SessionKind.CLIENT, user="bob")
    silent = open_session(router, SessionKind.RELAY, address="10.0.0.7")
    router.handle(silent.session_id, key_pool(0, 1, 2, host=""), NOW)
    [(_, data)] = connect(router, client.session_id, 1)
    assert to_peer(data).connection_offer.error_code == Offer.KEY_POOL_EMPTY
    assert "10.0.0.7 has not announced its peer address" in caplog.text
    good = open_session(router, SessionKind.RELAY)
    router.handle(good.session_id, key_pool(9), NOW)
    sent = connect(router, client.session_id, 1)
    assert sent[0][0] == good.session_id  # fewer keys, but the only usable relay


def test_relay_pool_updates_stats_and_teardown(router: Router) -> None:
    relay = open_session(router, SessionKind.RELAY)
    bad = key_pool(0, port=70000)
    pool = router_relay_pb2.RelayToRouter.FromString(bad)
    pool.key_pool.key[0].iv = b"short"
    router.handle(relay.session_id, serialize(pool), NOW)
    assert relay.peer_port == 70000 & 0xFFFF
    assert router.pool.count(relay.session_id) == 0  # the malformed key was dropped
    router.handle(relay.session_id, key_pool(1, 2), NOW)
    stat = router_relay_pb2.RelayStat(uptime=5)
    message = serialize(make_envelope(router_relay_pb2.RelayToRouter, "relay_stat", stat))
    router.handle(relay.session_id, message, NOW + 3)
    assert relay.relay_stat == stat and relay.stat_received == NOW + 3
    router.close_session(relay.session_id)
    assert router.pool.total == 0 and relay.session_id not in router.sessions


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x05\x01"])
def test_malformed_messages_are_ignored(router: Router, payload: bytes) -> None:
    for kind in SessionKind:
        session = open_session(router, kind)
        actions = router.handle(session.session_id, payload, NOW)
        assert actions.send == [] and actions.disconnect == []
        assert session.session_id in router.sessions


def test_messages_for_unknown_sessions_do_nothing(router: Router) -> None:
    assert router.handle(99, key_pool(1), NOW).send == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(list(SessionKind)), payload=st.binary(max_size=200))
def test_no_input_makes_the_core_raise(router: Router, kind: SessionKind, payload: bytes) -> None:
    session = open_session(router, kind)
    actions = router.handle(session.session_id, payload, NOW)
    for to, data in actions.send:
        assert to in router.sessions and data
    router.close_session(session.session_id)


def test_an_evicted_host_takes_its_other_ids_offline_too(router: Router) -> None:
    old = open_session(router, SessionKind.HOST)
    shared = host_id_request(router, old.session_id, Req(type=Req.NEW_ID)).key
    host_id_request(router, old.session_id, Req(type=Req.NEW_ID))  # ID 2, only on the old session
    new = open_session(router, SessionKind.HOST)
    router.handle(new.session_id, peer("host_id_request", Req(type=Req.EXISTING_ID, key=shared)), NOW)
    assert router.host_session(1) is new and router.host_session(2) is None


def test_a_relay_takes_free_keys_back_and_the_router_never_offers_them(router: Router) -> None:
    from natrelay.aspia.messages import make_envelope, serialize

    host = open_session(router, SessionKind.HOST, address="10.0.0.9")
    host_id_request(router, host.session_id, Req(type=Req.NEW_ID))
    client = open_session(router, SessionKind.CLIENT, address="10.0.0.2", user="bob")
    relay = open_session(router, SessionKind.RELAY, address="10.0.0.5")
    router.handle(relay.session_id, key_pool(0, 1, 2, 3), NOW)
    sent = connect(router, client.session_id, 1)  # hands out key 3, the newest
    assert router_relay_pb2.RouterToRelay.FromString(sent[0][1]).key_used.key_id == 3

    withdraw = router_relay_pb2.RelayKeyWithdraw(key_id=[3, 2, 1])
    [(to, data)] = router.handle(relay.session_id, serialize(make_envelope(
        router_relay_pb2.RelayToRouter, "key_withdraw", withdraw)), NOW).send
    assert to == relay.session_id
    answer = router_relay_pb2.RouterToRelay.FromString(data)
    assert answer.HasField("keys_withdrawn") and sorted(answer.keys_withdrawn.key_id) == [1, 2]
    sent = connect(router, client.session_id, 1)
    assert router_relay_pb2.RouterToRelay.FromString(sent[0][1]).key_used.key_id == 0
    [(_, data)] = connect(router, client.session_id, 1)
    assert to_peer(data).connection_offer.error_code == Offer.KEY_POOL_EMPTY
