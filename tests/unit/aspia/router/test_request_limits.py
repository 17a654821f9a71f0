"""Request limits of the router core (issue 8): per account, per host, host IDs per address,
keys per relay and relay load, plus the expiry of host IDs never used; fake time throughout."""

from __future__ import annotations

import random
from pathlib import Path

from natrelay.aspia.proto import router_peer_pb2
from natrelay.aspia.router.admin import Router
from natrelay.aspia.router.db import RouterDatabase
from natrelay.aspia.router.keypool import KeyPool
from natrelay.aspia.router.request_limits import (
    CLIENT_RATE,
    HOST_ID_RATE,
    HOST_RATE,
    RELAY_KEYS_OVER_CAP,
    RequestLimits,
)
from natrelay.aspia.router.sessions import SessionKind
from tests.unit.aspia.router.helpers import NOW, key_pool, open_session, peer, relay_keys

Req = router_peer_pb2.HostIdRequest
Resp = router_peer_pb2.HostIdResponse
Offer = router_peer_pb2.ConnectionOffer


def make(tmp_path: Path, limits: RequestLimits) -> Router:
    path = tmp_path / "router.db3"
    RouterDatabase.create(path)
    return Router(RouterDatabase.open(path), random.Random(1).randbytes, limits=limits)


def new_host(router: Router, session_id: int, now: float = NOW) -> Resp:
    actions = router.handle(session_id, peer("host_id_request", Req(type=Req.NEW_ID)), now)
    return router_peer_pb2.RouterToPeer.FromString(actions.send[0][1]).host_id_response


def request(router: Router, client_id: int, host_id: int, now: float) -> int:
    actions = router.handle(client_id, peer("connection_request",
                                            router_peer_pb2.ConnectionRequest(host_id=host_id)), now)
    for to, data in actions.send:
        if to == client_id:
            return int(router_peer_pb2.RouterToPeer.FromString(data).connection_offer.error_code)
    raise AssertionError("no answer to the client")


def test_one_account_cannot_drain_the_pool(tmp_path: Path) -> None:
    router = make(tmp_path, RequestLimits(client_per_minute=20, host_per_minute=0))
    relay = open_session(router, SessionKind.RELAY)
    router.handle(relay.session_id, key_pool(*range(100)), NOW)
    host = open_session(router, SessionKind.HOST)
    host_id = new_host(router, host.session_id).host_id
    greedy = open_session(router, SessionKind.CLIENT, user="greedy")
    codes = [request(router, greedy.session_id, host_id, NOW) for _ in range(50)]
    assert codes.count(Offer.SUCCESS) == 10 and codes.count(Offer.ACCESS_DENIED) == 40
    other = open_session(router, SessionKind.CLIENT, "10.0.0.9", user="other")
    assert request(router, other.session_id, host_id, NOW) == Offer.SUCCESS
    assert router.pool.total == 89 and router.refused[CLIENT_RATE] == 40
    assert request(router, greedy.session_id, host_id, NOW + 3.0) == Offer.SUCCESS  # 20/min refills


def test_one_host_is_not_flooded_by_many_accounts(tmp_path: Path) -> None:
    router = make(tmp_path, RequestLimits(client_per_minute=0, host_per_minute=8))
    relay = open_session(router, SessionKind.RELAY)
    router.handle(relay.session_id, key_pool(*range(100)), NOW)
    target = new_host(router, open_session(router, SessionKind.HOST).session_id).host_id
    spare = new_host(router, open_session(router, SessionKind.HOST, "10.0.0.2").session_id).host_id
    clients = [open_session(router, SessionKind.CLIENT, user=f"u{i}") for i in range(10)]
    codes = [request(router, c.session_id, target, NOW) for c in clients]
    assert codes.count(Offer.SUCCESS) == 4 and router.refused[HOST_RATE] == 6
    assert request(router, clients[0].session_id, spare, NOW) == Offer.SUCCESS


def test_new_host_ids_are_rate_limited_per_address(tmp_path: Path) -> None:
    router = make(tmp_path, RequestLimits(new_host_ids_per_minute=10))
    flooder = open_session(router, SessionKind.HOST, "10.0.0.66")
    answers = [new_host(router, flooder.session_id) for _ in range(200)]
    assert sum(a.error_code == Resp.SUCCESS for a in answers) == 10
    assert router.refused[HOST_ID_RATE] == 190
    honest = open_session(router, SessionKind.HOST, "10.0.0.7")
    assert new_host(router, honest.session_id).error_code == Resp.SUCCESS
    assert new_host(router, flooder.session_id, NOW + 6.0).error_code == Resp.SUCCESS


def test_unused_host_ids_expire_and_used_or_online_ones_stay(tmp_path: Path) -> None:
    router = make(tmp_path, RequestLimits(new_host_ids_per_minute=0))
    issuer = open_session(router, SessionKind.HOST, "10.0.0.1")
    unused = [new_host(router, issuer.session_id, NOW).host_id for _ in range(3)]
    router.close_session(issuer.session_id)
    used_resp = new_host(router, open_session(router, SessionKind.HOST).session_id, NOW)
    again = open_session(router, SessionKind.HOST, "10.0.0.2")
    router.handle(again.session_id, peer("host_id_request", Req(type=Req.EXISTING_ID, key=used_resp.key)),
                  NOW + 10)
    online = open_session(router, SessionKind.HOST, "10.0.0.3")
    online_id = new_host(router, online.session_id, NOW).host_id
    fresh_issuer = open_session(router, SessionKind.HOST, "10.0.0.4")
    fresh = new_host(router, fresh_issuer.session_id, NOW + 86400 * 6).host_id
    router.close_session(fresh_issuer.session_id)
    later = NOW + 86400 * 8
    assert router.expire_unused_host_ids(later - 86400 * 7, later) == 3
    db = router.db
    remaining = {row[0] for row in db._conn.execute("SELECT id FROM hosts")}
    assert remaining == {used_resp.host_id, online_id, fresh} and not remaining & set(unused)
    assert router.expire_unused_host_ids(later - 86400 * 7, later) == 0


def test_keys_per_relay_are_capped(tmp_path: Path) -> None:
    router = make(tmp_path, RequestLimits(max_keys_per_relay=10))
    relay = open_session(router, SessionKind.RELAY)
    router.handle(relay.session_id, key_pool(*range(25)), NOW)
    assert router.pool.count(relay.session_id) == 10 and router.refused[RELAY_KEYS_OVER_CAP] == 15


def test_a_relay_announcing_many_keys_does_not_capture_the_pool() -> None:
    pool = KeyPool()
    pool.add(1, relay_keys(*range(1000)))  # the "fake" relay, first and with the most keys
    pool.add(2, relay_keys(*range(10)))
    taken = [pool.take(now=NOW + i) for i in range(10)]
    per_relay = [sum(t is not None and t.relay_id == r for t in taken) for r in (1, 2)]
    assert per_relay == [5, 5]
    assert pool.take() is not None and pool.count(1) == 994  # without ``now``: the original rule
