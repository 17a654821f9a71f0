"""The router's storage contract, run with the same cases against SQLite and a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from natrelay.aspia.router.db import RouterDatabase
from natrelay.aspia.router.storage.base import (
    DatabaseError,
    HostActivity,
    RouterStorage,
    StoredHost,
    StoredUser,
    UserExistsError,
)
from natrelay.aspia.router.storage.postgres import PostgresStorage

Opener = Callable[[], RouterStorage]
Backend = tuple[str, Opener, Callable[[str], None]]


def user(name: str = "alice", **kw: object) -> StoredUser:
    fields: dict[str, object] = {"group": "4096", "salt": b"\x00\x01" * 32, "verifier": b"\x07" * 512,
                                 "sessions": 2, "flags": 1}
    fields.update(kw)
    return StoredUser(name, **fields)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """(name, open another handle on the same database, run raw SQL) with an 'admin' account stored."""
    opened: list[RouterStorage] = []
    admin = user("admin", sessions=3)
    if request.param == "sqlite":
        path = tmp_path / "router.db3"
        RouterDatabase.create(path, [admin])

        def open_sqlite() -> RouterStorage:
            opened.append(RouterDatabase.open(path))
            return opened[-1]

        def raw_sqlite(sql: str) -> None:
            import sqlite3
            with sqlite3.connect(path) as conn:
                conn.execute(sql.replace("DECODE('', 'hex')", "x''").replace("DECODE('01', 'hex')", "x'01'"))

        yield "sqlite", open_sqlite, raw_sqlite
    else:
        url: str = request.getfixturevalue("postgres_url")
        first = PostgresStorage.open(url)
        first.create_accounts([admin])
        opened.append(first)

        def open_pg() -> RouterStorage:
            opened.append(PostgresStorage.open(url))
            return opened[-1]

        def raw_pg(sql: str) -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql.encode())

        yield "postgresql", open_pg, raw_pg
    for storage in opened:
        storage.close()


@pytest.fixture
def db(backend: Backend) -> RouterStorage:
    return backend[1]()


def test_user_lookup_is_exact_and_case_sensitive(db: RouterStorage) -> None:
    found = db.find_user("admin")
    assert found is not None and found.sessions == 3 and found.entry_id == 1
    assert db.find_user("ADMIN") is None and db.find_user("admin ") is None


def test_add_modify_remove_users(db: RouterStorage) -> None:
    entry = db.add_user(user("bob", sessions=0xFFFFFFFF))
    assert db.find_user("bob") == user("bob", sessions=0xFFFFFFFF, entry_id=entry)  # 32-bit round trip
    with pytest.raises(UserExistsError):
        db.add_user(user("bob"))
    with pytest.raises(UserExistsError):
        db.modify_user(user("admin", entry_id=entry))
    assert db.modify_user(user("robert", entry_id=entry, flags=0))
    renamed = db.find_user("robert")
    assert renamed is not None and not renamed.enabled
    assert not db.modify_user(user("ghost", entry_id=999))
    assert [u.name for u in db.list_users()] == ["admin", "robert"]
    assert db.remove_user(entry) and not db.remove_user(entry)
    assert db.remove_user_by_name("admin") and db.list_users() == []
    assert not db.remove_user_by_name("admin")


def test_rows_with_empty_columns_are_skipped(backend: Backend) -> None:
    _name, opener, raw = backend
    raw('INSERT INTO users (name, "group", salt, verifier) VALUES '
        "('empty', '4096', DECODE('', 'hex'), DECODE('01', 'hex'))")
    db = opener()
    assert db.find_user("empty") is None
    assert [u.name for u in db.list_users()] == ["admin"]


def test_host_ids_start_at_one_and_are_found_by_key_hash(db: RouterStorage) -> None:
    assert db.add_host(b"a" * 64) == 1 and db.add_host(b"b" * 64) == 2
    assert db.find_host(b"b" * 64) == 2 and db.find_host(b"c" * 64) is None
    with pytest.raises(DatabaseError):
        db.add_host(b"a" * 64)  # the key column is unique
    assert list(db.iter_hosts()) == [StoredHost(1, b"a" * 64), StoredHost(2, b"b" * 64)]
    assert db.add_host(b"c" * 64) > 2  # a failed insert may burn an ID on PostgreSQL, never repeats one


def test_host_ids_are_unique_across_routers_sharing_the_database(
        backend: Backend) -> None:
    _name, opener, _raw = backend
    stores = [opener(), opener(), opener()]
    ids: list[int] = []
    errors: list[BaseException] = []

    def register(store: RouterStorage, n: int) -> None:
        # What is under test is uniqueness. SQLite's busy handler is not fair: on a loaded machine one
        # writer can wait out the 2 s busy timeout while two others keep committing, and the router
        # then answers that host's request with an error and the host asks again; so does this.
        try:
            for i in range(40):
                for attempt in range(10):
                    try:
                        ids.append(store.add_host(bytes([n, i]) * 32))
                        break
                    except DatabaseError as exc:
                        if "locked" not in str(exc) or attempt == 9:
                            raise
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(ids) == 120 and len(set(ids)) == 120
    # Every router sees every host, whichever router registered it.
    assert stores[0].find_host(bytes([2, 39]) * 32) == stores[2].find_host(bytes([2, 39]) * 32) is not None


def test_a_user_added_by_one_router_logs_in_at_another(
        backend: Backend) -> None:
    _name, opener, _raw = backend
    a, b = opener(), opener()
    a.add_user(user("carol"))
    found = b.find_user("carol")
    assert found is not None and found.verifier == b"\x07" * 512


def test_host_ids_issued_and_never_used_again_expire(db: RouterStorage) -> None:
    day = 86400.0
    unused, used, fresh = db.add_host(b"u" * 64), db.add_host(b"d" * 64), db.add_host(b"f" * 64)
    original = db.add_host(b"o" * 64)  # no activity record, as the original router writes it
    for host_id, issued in ((unused, 0.0), (used, 0.0), (fresh, 6 * day)):
        assert db.touch_host(host_id, issued, new=True)
    assert db.touch_host(used, 2 * day, new=False)
    assert db.touch_host(original, 2 * day, new=False)  # nothing to mark: still fine
    assert db.expire_unused_hosts(5 * day) == 1
    assert db.find_host(b"u" * 64) is None
    assert [h.host_id for h in db.iter_hosts()] == [used, fresh, original]
    assert db.expire_unused_hosts(5 * day) == 0  # its record went with it
    # The expired ID's record went with it; the original's ID never had one.
    assert db.host_activity() == [HostActivity(used, 0.0, True), HostActivity(fresh, 6 * day, False)]
    assert db.expire_unused_hosts(7 * day) == 1 and db.find_host(b"f" * 64) is None
    assert db.find_host(b"d" * 64) == used and db.find_host(b"o" * 64) == original


def test_host_id_expiry_is_shared_by_routers_of_one_database(backend: Backend) -> None:
    _name, opener, _raw = backend
    a, b = opener(), opener()
    first = a.add_host(b"1" * 64)
    a.touch_host(first, 0.0, new=True)
    second = a.add_host(b"2" * 64)
    a.touch_host(second, 0.0, new=True)
    assert b.touch_host(second, 10.0, new=False)  # the host came back through router B
    assert b.expire_unused_hosts(100.0) == 1
    assert a.find_host(b"1" * 64) is None and a.find_host(b"2" * 64) == second
