"""What only the PostgreSQL backend does: migrations, failures of the server, bulk copy, URLs."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from natrelay.aspia.router.storage.base import DatabaseError, HostActivity, StoredHost, StoredUser
from natrelay.aspia.router.storage.migrations import MIGRATIONS
from natrelay.aspia.router.storage.postgres import PostgresStorage, redact
from tests.postgres_server import PostgresServer, _free_port

ADMIN = StoredUser("admin", "4096", b"s" * 64, b"v" * 512, 3)


def test_migrations_run_once_and_are_recorded(postgres_url: str) -> None:
    with PostgresStorage.open(postgres_url) as first:
        assert isinstance(first, PostgresStorage)
        assert first.schema_versions() == [m.version for m in MIGRATIONS]
    with PostgresStorage.open(postgres_url) as again:  # a second start finds the schema complete
        assert isinstance(again, PostgresStorage)
        assert again.schema_versions() == [m.version for m in MIGRATIONS]


def test_routers_starting_together_migrate_once(postgres_url: str) -> None:
    stores: list[PostgresStorage] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(PostgresStorage.open(postgres_url))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors and len(stores) == 5
        assert stores[0].schema_versions() == [m.version for m in MIGRATIONS]
    finally:
        for s in stores:
            s.close()


def test_a_database_from_a_newer_router_is_refused(postgres_url: str) -> None:
    PostgresStorage.open(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO natrelay_schema (version, description) VALUES (999, 'future')")
    with pytest.raises(DatabaseError, match=r"schema versions \[999\].*upgrade the router"):
        PostgresStorage.open(postgres_url)


def test_a_foreign_users_table_is_reported_not_overwritten(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (x int)")
        conn.execute("INSERT INTO users VALUES (42)")
    with pytest.raises(DatabaseError, match=r"cannot bring the schema up to date.*users"):
        PostgresStorage.open(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT x FROM users").fetchall() == [(42,)]


def test_an_unreachable_server_fails_fast_without_showing_the_password() -> None:
    url = f"postgresql://router:s3cret@127.0.0.1:{_free_port()}/aspia"
    started = time.monotonic()
    with pytest.raises(DatabaseError) as info:
        PostgresStorage.open(url, timeout=2)
    assert time.monotonic() - started < 15
    assert "s3cret" not in str(info.value) and "router@127.0.0.1" in str(info.value)


def test_redact_drops_only_the_password() -> None:
    assert redact("postgresql://u:pw@db.example:5433/aspia") == "postgresql://u@db.example:5433/aspia"
    assert "pw" not in redact("postgresql://u@h/d?password=pw")


def test_connections_killed_by_the_server_are_replaced(postgres_url: str,
                                                       postgres_server: PostgresServer) -> None:
    with PostgresStorage.open(postgres_url) as db:
        db.add_host(b"k" * 64)
        with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                          (postgres_url.rsplit("/", 1)[1],))
        answers = []
        for _ in range(3):  # the broken connection fails one call at most, then the pool replaces it
            try:
                answers.append(db.find_host(b"k" * 64))
            except DatabaseError:
                answers.append(None)
        assert answers[-1] == 1 and answers.count(None) <= 1


def test_create_accounts_refuses_a_second_time(postgres_url: str) -> None:
    with PostgresStorage.open(postgres_url) as db:
        assert isinstance(db, PostgresStorage)
        db.create_accounts([ADMIN])
        with pytest.raises(DatabaseError, match="already holds 1 accounts"):
            db.create_accounts([StoredUser("admin2", "4096", b"s", b"v", 3)])
        assert [u.name for u in db.list_users()] == ["admin"]


def test_import_keeps_ids_and_continues_the_sequences_after_them(postgres_url: str) -> None:
    users = [StoredUser("a", "4096", b"s", b"v", 2, 1, 5), StoredUser("b", "8192", b"s", b"v", 3, 0, 9)]
    hosts = [StoredHost(7, b"x" * 64), StoredHost(1000, b"y" * 64)]
    with PostgresStorage.open(postgres_url) as db:
        assert isinstance(db, PostgresStorage)
        assert db.import_all(users, hosts) == (2, 2)
        assert db.list_users() == users and list(db.iter_hosts()) == hosts
        assert db.add_host(b"z" * 64) == 1001
        assert db.add_user(StoredUser("c", "4096", b"s", b"v", 2)) == 10
        with pytest.raises(DatabaseError, match="is not empty"):
            db.import_all([], [StoredHost(2000, b"w" * 64)])
        assert db.find_host(b"w" * 64) is None


def test_import_copies_the_issue_records_of_the_hosts_it_copies(postgres_url: str) -> None:
    hosts = [StoredHost(3, b"x" * 64), StoredHost(4, b"y" * 64)]
    records = [HostActivity(3, 10.0, False), HostActivity(4, 10.0, True), HostActivity(8, 10.0, False)]
    with PostgresStorage.open(postgres_url) as db:
        assert isinstance(db, PostgresStorage)
        assert db.import_all([], hosts, records) == (0, 2)
        assert db.host_activity() == records[:2]  # host 8 was not copied (a broken row): no record
        assert db.expire_unused_hosts(20.0) == 1 and list(db.iter_hosts()) == [hosts[1]]
