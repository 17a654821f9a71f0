"""Cluster presence on a real PostgreSQL: leases, takeover of host IDs, messages between routers."""

from __future__ import annotations

import time

import psycopg

from natrelay.aspia.router.storage.postgres import PostgresStorage
from natrelay.aspia.router.storage.presence import (
    MESSAGE_DELIVER,
    PostgresPresence,
    RemoteMessage,
    RemoteSession,
    channel_name,
    decode_message,
    encode_message,
)


def test_hosts_are_located_at_live_routers_only(postgres_url: str) -> None:
    with PostgresStorage.open(postgres_url) as db:
        assert isinstance(db, PostgresStorage)
        a, b = PostgresPresence(db, "a:1", lease=1), PostgresPresence(db, "b:1", lease=30)
        a.register()
        b.register()
        assert a.announce(5, "10.0.0.5", [7, 8]) == []
        assert b.locate(7) == RemoteSession(a.router_id, 5, "10.0.0.5")
        assert a.locate(7) is None  # its own hosts are the core's business
        b.announce(9, "10.0.0.9", [8])  # the host of ID 8 came back through B
        assert a.locate(8) == RemoteSession(b.router_id, 9, "10.0.0.9")
        a.withdraw(5, [7, 8])  # withdrawing never removes what another session took over
        assert b.locate(7) is None and a.locate(8) is not None
        a.announce(5, "10.0.0.5", [7])
        time.sleep(1.5)  # A stops renewing: its hosts read as offline
        assert b.locate(7) is None
        assert a.renew({"hosts": 1})
        assert b.locate(7) is not None
        assert [r["alive"] for r in b.routers()] == [True, True]


def test_a_router_removed_as_dead_rejoins_under_its_id(postgres_url: str) -> None:
    with PostgresStorage.open(postgres_url) as db:
        assert isinstance(db, PostgresStorage)
        a = PostgresPresence(db, "a:1")
        first = a.register()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("DELETE FROM routers")
        assert a.renew({}) is False and a.router_id == first
        assert [r["id"] for r in a.routers()] == [first]
        a.retire()
        assert a.routers() == []


def test_messages_reach_the_listening_router(postgres_url: str) -> None:
    with PostgresStorage.open(postgres_url) as db, psycopg.connect(postgres_url, autocommit=True) as inbox:
        assert isinstance(db, PostgresStorage)
        a, b = PostgresPresence(db, "a:1"), PostgresPresence(db, "b:1")
        a.register()
        b.register()
        inbox.execute(f"LISTEN {channel_name(b.router_id)}".encode())
        message = RemoteMessage(b.router_id, MESSAGE_DELIVER, 42, b"\x00offer" * 50)
        a.send(message)
        received = next(inbox.notifies(timeout=10))
        assert decode_message(b.router_id, received.payload) == message


def test_malformed_messages_decode_to_none() -> None:
    assert decode_message(1, "not base64!") is None
    assert decode_message(1, "AAAA") is None  # shorter than the header
    assert decode_message(3, encode_message(RemoteMessage(3, 2, 7))) == RemoteMessage(3, 2, 7)


def test_resync_replaces_our_rows_but_leaves_ids_another_router_took(postgres_url: str) -> None:
    with PostgresStorage.open(postgres_url) as db:
        assert isinstance(db, PostgresStorage)
        a, b = PostgresPresence(db, "a:1"), PostgresPresence(db, "b:1")
        a.register()
        b.register()
        a.announce(1, "10.0.0.1", [5, 6])
        a.announce(2, "10.0.0.2", [7])  # session 2 closed while the database was away: a stale row
        b.announce(9, "10.0.0.9", [6])  # host of ID 6 reconnected at B meanwhile
        a.resync([(1, "10.0.0.1", [5, 6]), (3, "10.0.0.3", [8])])
        assert b.locate(5) == RemoteSession(a.router_id, 1, "10.0.0.1")
        assert a.locate(6) == RemoteSession(b.router_id, 9, "10.0.0.9")  # not taken back
        assert b.locate(7) is None  # the stale row is gone
        assert b.locate(8) == RemoteSession(a.router_id, 3, "10.0.0.3")


def test_a_host_online_at_any_router_does_not_expire(postgres_url: str) -> None:
    with PostgresStorage.open(postgres_url) as db:
        assert isinstance(db, PostgresStorage)
        online, offline = db.add_host(b"n" * 64), db.add_host(b"f" * 64)
        for host_id in (online, offline):
            db.touch_host(host_id, 0.0, new=True)
        b = PostgresPresence(db, "b:1")
        b.register()
        b.announce(3, "10.0.0.3", [online])  # held by router B, which has not marked it used yet
        assert db.expire_unused_hosts(100.0) == 1
        assert db.find_host(b"n" * 64) == online and db.find_host(b"f" * 64) is None
