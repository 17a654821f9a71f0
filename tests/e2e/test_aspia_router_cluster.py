"""Routers sharing one PostgreSQL database: presence, offers across routers, leases, cluster status.

Real ``aspia_router`` processes on one database (tests/postgres_server.py), driven by stand-in
relays, hosts and clients (tests/e2e/aspia_env.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natrelay.aspia.proto import router_peer_pb2, router_relay_pb2
from tests.e2e.aspia_env import (
    CLIENT,
    HOST,
    HOST_SESSION,
    Router,
    RouterSetup,
    add_router_user,
    anonymous,
    srp_login,
    start_process,
    wait_for,
)
from tests.e2e.test_aspia_router import ask, new_host, peer_msg, register_relay
from tests.e2e.test_aspia_router_postgres import create_pg_router, second_router

Offer = router_peer_pb2.ConnectionOffer
LEASE = 3.0


def start_member(setup: RouterSetup) -> Router:
    p = start_process("aspia_router", [*setup.args(), "--lease", str(LEASE)], setup.directory / "router.log")
    router = Router(p.proc, p.log_path, p.log_offset, setup)
    router.wait_log("Joined the router cluster", timeout=30)
    router.wait_log("Listening on")
    return router


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[list[Router]]:
    a = create_pg_router(tmp_path / "a", postgres_url)
    add_router_user(a, "bob", "bob-secret")
    setups = [a, second_router(a, tmp_path / "b"), second_router(a, tmp_path / "c")]
    started: list[Router] = []
    try:
        for s in setups:
            started.append(start_member(s))
        yield started
    finally:
        codes = [r.stop() if r.proc.poll() is None else 0 for r in started]
    assert codes == [0] * len(started), [r.log() for r in started]


def host_status(client: object, host_id: int) -> int:
    client.send(peer_msg("check_host_status", router_peer_pb2.CheckHostStatus(host_id=host_id)))  # type: ignore[attr-defined]
    return int(client.receive(router_peer_pb2.RouterToPeer).host_status.status)  # type: ignore[attr-defined]


def test_a_client_at_one_router_reaches_a_host_at_another(cluster: list[Router]) -> None:
    a, b, _c = cluster
    relay = register_relay(a, 3)  # keys only at A: A chooses relay and key for its client
    host, host_id, _key = new_host(b)
    client = srp_login(a.setup.port, "bob", "bob-secret", CLIENT)
    assert host_status(client, host_id) == router_peer_pb2.HostStatus.STATUS_ONLINE

    offer = ask(client, host_id)
    assert offer.error_code == Offer.SUCCESS and offer.peer_role == Offer.CLIENT
    used = relay.receive(router_relay_pb2.RouterToRelay)
    assert used.HasField("key_used") and used.key_used.key_id == offer.relay.key.key_id
    host_offer = host.receive(router_peer_pb2.RouterToPeer).connection_offer  # delivered by B
    assert host_offer.peer_role == Offer.HOST and host_offer.host_data.host_id == host_id
    assert host_offer.relay.SerializeToString() == offer.relay.SerializeToString()
    a.wait_log(f"Host {host_id} is at router")
    b.wait_log("Connection offer from another router delivered")

    # Unknown hosts are still refused, and a client at B finds B's pool empty (keys stay at A).
    assert ask(client, 999).error_code == Offer.PEER_NOT_FOUND
    client_b = srp_login(b.setup.port, "bob", "bob-secret", CLIENT)
    assert ask(client_b, host_id).error_code == Offer.KEY_POOL_EMPTY
    for s in (relay, host, client, client_b):
        s.close()


def test_a_host_reconnecting_elsewhere_replaces_its_old_session(cluster: list[Router]) -> None:
    a, b, c = cluster
    host, host_id, key = new_host(b)
    again = anonymous(c.setup.port, c.setup.public_key, HOST_SESSION)
    again.send(peer_msg("host_id_request", router_peer_pb2.HostIdRequest(
        type=router_peer_pb2.HostIdRequest.EXISTING_ID, key=key)))
    assert again.receive(router_peer_pb2.RouterToPeer).host_id_response.host_id == host_id
    assert host.closed_by_router()  # B dropped the stale copy when C told it to
    relay = register_relay(a, 2)
    client = srp_login(a.setup.port, "bob", "bob-secret", CLIENT)
    assert ask(client, host_id).error_code == Offer.SUCCESS
    assert again.receive(router_peer_pb2.RouterToPeer).connection_offer.host_data.host_id == host_id
    for s in (again, relay, client):
        s.close()


def test_a_killed_routers_hosts_go_offline_after_the_lease_and_come_back_elsewhere(
        cluster: list[Router]) -> None:
    a, b, c = cluster
    host, host_id, key = new_host(b)
    client = srp_login(a.setup.port, "bob", "bob-secret", CLIENT)
    assert host_status(client, host_id) == router_peer_pb2.HostStatus.STATUS_ONLINE
    b.kill()  # kill -9: no goodbye, its rows stay until the lease runs out
    killed = time.monotonic()
    wait_for(lambda: host_status(client, host_id) == router_peer_pb2.HostStatus.STATUS_OFFLINE,
             LEASE * 4, "the dead router's host to read as offline")
    assert time.monotonic() - killed >= LEASE / 3  # not before the lease could have run out
    host.close()
    back = anonymous(c.setup.port, c.setup.public_key, HOST_SESSION)
    back.send(peer_msg("host_id_request", router_peer_pb2.HostIdRequest(
        type=router_peer_pb2.HostIdRequest.EXISTING_ID, key=key)))
    assert back.receive(router_peer_pb2.RouterToPeer).host_id_response.host_id == host_id
    assert host_status(client, host_id) == router_peer_pb2.HostStatus.STATUS_ONLINE
    status = a.status()
    states = {r["id"]: r["alive"] for r in status["cluster"]}
    assert sorted(states.values()) == [False, True, True]
    for s in (client, back):
        s.close()


def test_status_lists_every_router_and_a_clean_stop_leaves_the_cluster(cluster: list[Router]) -> None:
    a, b, _c = cluster
    relay = register_relay(b, 4)
    host, _host_id, _key = new_host(b)
    time.sleep(LEASE / 3 + 1)  # one renewal carries B's summary
    rows = a.status()["cluster"]
    assert len(rows) == 3 and sum(r["this"] for r in rows) == 1
    b_row = next(r for r in rows if r["address"].endswith(f":{b.setup.port}"))
    assert (b_row["hosts"], b_row["relays"], b_row["pool_size"]) == (1, 1, 4)
    from tests.e2e.aspia_env import run_tool
    text = run_tool("aspia_router", *a.setup.args(), "--status").stdout
    assert "Routers sharing the database (3 alive)" in text and "this router" in text
    relay.close()
    host.close()
    assert b.stop() == 0
    rows = a.status()["cluster"]
    assert len(rows) == 2 and HOST in rows[0]["address"]


def test_a_relay_with_two_routers_splits_its_keys_and_moves_them_when_one_dies(
        cluster: list[Router], tmp_path: Path) -> None:
    from tests.e2e.aspia_env import start_relay

    a, b, _c = cluster
    relay = start_relay(tmp_path / "relay", a.setup, {"NATRELAY_ASPIA_RELAY_TIMERS": "reconnect=0.5"},
                        MaxPeerCount="10", RouterAddresses=b.setup.address())
    try:
        def pools() -> tuple[int, int]:
            return a.status()["pool_size"], b.status()["pool_size"]

        wait_for(lambda: pools() == (5, 5), 30, "the relay's 10 keys split 5 and 5")
        # Offers from either router use keys of that router only: never the same key twice.
        host, host_id, _key = new_host(b)
        offered = []
        for router in (a, b, a, b):
            client = srp_login(router.setup.port, "bob", "bob-secret", CLIENT)
            offer = ask(client, host_id)
            assert offer.error_code == Offer.SUCCESS
            offered.append(offer.relay.key.key_id)
            host.receive(router_peer_pb2.RouterToPeer)
            client.close()
        assert len(set(offered)) == 4
        a.kill()  # its unused keys die with it; the relay gives that capacity to B
        wait_for(lambda: b.status()["pool_size"] == 8, 30, "A's keys to move to B (10 - 2 handed out at B)")
        relay.wait_log("moved to the other routers")
        host.close()
    finally:
        assert relay.stop() == 0, relay.log()


def test_status_and_disconnect_reach_relayed_sessions_at_other_routers(cluster: list[Router]) -> None:
    from natrelay.aspia.messages import make_envelope
    from natrelay.aspia.proto import router_common_pb2
    from tests.e2e.aspia_env import run_tool

    a, b, _c = cluster
    relay = register_relay(b, 2)
    conn = router_common_pb2.PeerConnection(session_id=7, status=1, client_address="10.0.0.2",
                                            client_user_name="bob", host_address="10.0.0.3", host_id=4,
                                            bytes_transferred=12345, duration=60, idle_time=3)
    relay.send(make_envelope(router_relay_pb2.RelayToRouter, "relay_stat",
                             router_relay_pb2.RelayStat(peer_connection=[conn], uptime=100)))

    def listed_at_a() -> list[str]:
        rows = [r for r in a.status()["cluster"] if not r["this"]]
        return [f"{r['id']}/{s['id']}" for r in rows for s in r.get("sessions", [])]

    wait_for(lambda: len(listed_at_a()) == 1, LEASE * 3, "B's relayed session in A's status")
    [ident] = listed_at_a()
    table = run_tool("aspia_router", *a.setup.args(), "--status").stdout
    assert "Relayed sessions at the other routers (1" in table and ident in table and "12345" in table
    done = run_tool("aspia_router", *a.setup.args(), "--disconnect", ident)
    assert done.returncode == 0 and "sent to router" in done.stdout, done.stderr
    request = relay.receive(router_relay_pb2.RouterToRelay).peer_connection_request
    assert request.peer_session_id == 7
    router_id = ident.split("/")[0]
    wrong = run_tool("aspia_router", *a.setup.args(), "--disconnect", f"{router_id}/9.9")
    assert wrong.returncode == 1 and "lists no relayed session" in wrong.stderr
    relay.close()


def test_a_returning_router_gets_its_share_of_free_keys_back_at_once(
        cluster: list[Router], tmp_path: Path) -> None:
    from tests.e2e.aspia_env import start_relay

    a, b, _c = cluster
    relay = start_relay(tmp_path / "relay", a.setup, {"NATRELAY_ASPIA_RELAY_TIMERS": "reconnect=0.5"},
                        MaxPeerCount="10", RouterAddresses=b.setup.address())
    back: Router | None = None
    try:
        def pools(second: Router) -> tuple[int, int]:
            return a.status()["pool_size"], second.status()["pool_size"]

        wait_for(lambda: pools(b) == (5, 5), 30, "the relay's 10 keys split 5 and 5")
        b.kill()
        wait_for(lambda: a.status()["pool_size"] == 10, 30, "B's keys to move to A")
        back = start_member(b.setup)  # B returns: A gives back free keys, B gets fresh ones at once
        wait_for(lambda: pools(back) == (5, 5), 30, "the split to be 5 and 5 again without any key used")
        relay.wait_log("gave back 5 keys")
        a.wait_log("took back 5 keys")
        # Every key is offered once, by one router: 10 offers, 10 different keys, then none left.
        host, host_id, _key = new_host(back)
        offered = []
        for router in (a, back) * 5:
            client = srp_login(router.setup.port, "bob", "bob-secret", CLIENT)
            offer = ask(client, host_id)
            assert offer.error_code == Offer.SUCCESS, offer
            offered.append(offer.relay.key.key_id)
            host.receive(router_peer_pb2.RouterToPeer)
            client.close()
        assert len(set(offered)) == 10, offered
        assert pools(back) == (0, 0)  # the relay never announced more than MaxPeerCount
        host.close()
    finally:
        assert relay.stop() == 0, relay.log()
        if back is not None:
            assert back.stop() == 0, back.log()
