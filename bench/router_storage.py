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
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natrelay.aspia.router.db import RouterDatabase
from natrelay.aspia.router.storage.base import RouterStorage, StoredUser
from natrelay.aspia.router.storage.postgres import PostgresStorage
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
        with PostgresStorage.open(server.url(server.new_database())) as db:
            measure("postgresql", db, args.calls)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
