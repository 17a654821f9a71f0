"""Time per router storage call (what one login or host registration waits for), SQLite vs PostgreSQL.

The router runs storage calls inline on its event loop (see aspia/router/storage/base.py), so the
time of one call is the time every other connection of that router waits. This measures it for
the three calls of the hot paths: find_user (every password login), find_host (every host
connection) and add_host (every new host), on router.db3 and on a PostgreSQL server this script
starts in a temporary folder (tests/postgres_server.py; TCP over 127.0.0.1).

    python3 bench/router_storage.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natrelay.aspia.router.db import RouterDatabase
from natrelay.aspia.router.storage.base import RouterStorage, StoredUser
from natrelay.aspia.router.storage.postgres import PostgresStorage
from natrelay.aspia.router.storage.presence import (
    MESSAGE_DELIVER,
    PostgresPresence,
    RemoteMessage,
    channel_name,
)
from tests.postgres_server import PostgresServer, find_bindir

USERS = 1000


def per_call(fn: Callable[[int], object], calls: int) -> float:
    started = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - started) / calls * 1e6


def measure(name: str, db: RouterStorage, calls: int) -> None:
    for i in range(USERS):
        db.add_user(StoredUser(f"user{i}", "4096", os.urandom(64), os.urandom(512), 2))
    prefix = os.urandom(8)
    add = per_call(lambda i: db.add_host(prefix + i.to_bytes(56, "big")), calls)
    find_host = per_call(lambda i: db.find_host(prefix + (i % calls).to_bytes(56, "big")), calls)
    find_user = per_call(lambda i: db.find_user(f"user{i % USERS}"), calls)
    print(f"{name:<12} find_user {find_user:8.0f} us   find_host {find_host:8.0f} us   "
          f"add_host {add:8.0f} us")


def cluster_messages(db: PostgresStorage, url: str, count: int) -> None:
    """NOTIFY from one router to another, against polling a message table (the alternative)."""
    import psycopg

    a, b = PostgresPresence(db, "a"), PostgresPresence(db, "b")
    a.register()
    b.register()
    offer = RemoteMessage(b.router_id, MESSAGE_DELIVER, 1, os.urandom(300))  # an offer is ~300 bytes
    delays = []
    with psycopg.connect(url, autocommit=True) as inbox:
        inbox.execute(f"LISTEN {channel_name(b.router_id)}".encode())
        for _ in range(count):
            started = time.perf_counter()
            a.send(offer)
            next(inbox.notifies(timeout=5))
            delays.append((time.perf_counter() - started) * 1e6)
        inbox.execute("CREATE TABLE IF NOT EXISTS bench_inbox (id bigserial PRIMARY KEY, target bigint, "
                      "body bytea)")
        poll = "DELETE FROM bench_inbox WHERE id IN (SELECT id FROM bench_inbox WHERE target = %s " \
               "FOR UPDATE SKIP LOCKED LIMIT 100) RETURNING body"
        poll_cost = per_call(lambda _i: inbox.execute(poll, (b.router_id,)).fetchall(), count)
    delays.sort()
    p99 = delays[int(len(delays) * .99)]
    print(f"NOTIFY offer a->b: median {statistics.median(delays):.0f} us, p99 {p99:.0f} us "
          "(send + wake-up of the listener)")
    print(f"polled table: {poll_cost:.0f} us per empty poll; at 20 polls/s (25 ms mean extra delay) that "
          f"is {poll_cost * 20 / 1e4:.2f} % of a core per router, spent while nothing happens")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "router.db3"
        RouterDatabase.create(path)
        with RouterDatabase.open(path) as db:
            measure("sqlite", db, args.calls)
    bindir = find_bindir()
    if bindir is None:
        print("postgresql   skipped: initdb/pg_ctl not found")
        return
    server = PostgresServer.start(bindir)
    try:
        url = server.url(server.new_database())
        with PostgresStorage.open(url) as db:
            measure("postgresql", db, args.calls)
            assert isinstance(db, PostgresStorage)
            cluster_messages(db, url, min(args.calls, 1000))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
