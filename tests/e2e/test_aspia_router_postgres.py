"""``aspia_router`` on a real PostgreSQL: set-up, logins, host IDs across routers, ``--migrate-db``.

The server is started by the tests (tests/postgres_server.py), each test on its own database.
"""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from natrelay.aspia import crypto, srp
from natrelay.aspia.proto import router_peer_pb2
from natrelay.aspia.router.storage.postgres import PostgresStorage
from natrelay.ops.jsonsettings import update_settings
from tests.e2e.aspia_env import (
    CLIENT,
    HOST,
    HOST_SESSION,
    Router,
    RouterSetup,
    add_router_user,
    anonymous,
    free_port,
    parse_admin_password,
    run_tool,
    srp_login,
    start_router,
)
from tests.e2e.test_aspia_router import new_host, peer_msg

# The original's router.db3 schema, as spec §6.9 gives it (not our code's copy of it).
ORIGINAL_SCHEMA = (
    'CREATE TABLE "users" ("id" INTEGER UNIQUE, "name" TEXT NOT NULL UNIQUE, "group" TEXT NOT NULL, '
    '"salt" BLOB NOT NULL, "verifier" BLOB NOT NULL, "sessions" INTEGER DEFAULT 0, '
    '"flags" INTEGER DEFAULT 0, PRIMARY KEY("id" AUTOINCREMENT))',
    'CREATE TABLE "hosts" ("id" INTEGER UNIQUE, "key" BLOB NOT NULL UNIQUE, '
    'PRIMARY KEY("id" AUTOINCREMENT))',
)


def create_pg_router(directory: Path, url: str) -> RouterSetup:
    config = directory / "etc" / "router.json"
    data_dir = directory / "lib"
    done = run_tool("aspia_router", "--create-config", "--config", str(config), "--data-dir", str(data_dir),
                    "--database", url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "natrelay@127.0.0.1" in done.stdout and not (data_dir / "router.db3").exists()
    port = free_port()
    update_settings(config, {"Port": str(port), "ListenInterface": HOST})
    key = (config.parent / "router.pub").read_text().strip()
    return RouterSetup(directory, config, data_dir, key, parse_admin_password(done.stdout), port)


def second_router(first: RouterSetup, directory: Path) -> RouterSetup:
    """Another router of the same cluster: its own port and admin socket, the same keys and database."""
    (directory / "etc").mkdir(parents=True)
    config = directory / "etc" / "router.json"
    config.write_bytes(first.config.read_bytes())
    config.chmod(0o600)
    (directory / "etc" / "router.pub").write_bytes(first.pub_path.read_bytes())
    port = free_port()
    update_settings(config, {"Port": str(port)})
    return RouterSetup(directory, config, directory / "lib", first.public_key, first.admin_password, port)


@pytest.fixture
def routers(tmp_path: Path, postgres_url: str) -> Iterator[list[Router]]:
    a = create_pg_router(tmp_path / "a", postgres_url)
    add_router_user(a, "bob", "bob-secret")  # --add-user finds the database through router.json
    b = second_router(a, tmp_path / "b")
    started = [start_router(a)]
    try:
        started.append(start_router(b))
        yield started
    finally:
        codes = [r.stop() for r in started]
    assert codes == [0] * len(started), [r.log() for r in started]


def test_create_config_on_postgresql_writes_the_url_and_the_admin(tmp_path: Path, postgres_url: str) -> None:
    setup = create_pg_router(tmp_path, postgres_url)
    assert json.loads(setup.config.read_text())["Database"] == postgres_url
    assert stat.S_IMODE(setup.config.stat().st_mode) == 0o600
    with PostgresStorage.open(postgres_url) as db:
        assert [u.name for u in db.list_users()] == ["admin"]
    again = run_tool("aspia_router", "--create-config", "--config", str(tmp_path / "x" / "router.json"),
                     "--data-dir", str(tmp_path / "x"), "--database", postgres_url)
    assert again.returncode == 1 and "already holds 1 accounts" in again.stderr
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())


def test_two_routers_share_accounts_and_never_repeat_a_host_id(routers: list[Router]) -> None:
    a, b = routers
    for router in routers:
        assert "Database: postgresql://natrelay@127.0.0.1" in router.log()
        client = srp_login(router.setup.port, "bob", "bob-secret", CLIENT)
        client.close()
    ids = []
    hosts = []
    for router in (a, b, a, b):
        host, host_id, key = new_host(router)
        hosts.append((host, key))
        ids.append(host_id)
    assert sorted(ids) == [1, 2, 3, 4]
    # A host registered at A reconnects to B and keeps its ID.
    host = anonymous(b.setup.port, b.setup.public_key, HOST_SESSION)
    request = router_peer_pb2.HostIdRequest(type=router_peer_pb2.HostIdRequest.EXISTING_ID, key=hosts[0][1])
    host.send(peer_msg("host_id_request", request))
    assert host.receive(router_peer_pb2.RouterToPeer).host_id_response.host_id == ids[0]
    for h, _key in hosts:
        h.close()
    host.close()


def test_a_router_whose_database_is_down_refuses_to_start(tmp_path: Path, postgres_url: str) -> None:
    setup = create_pg_router(tmp_path, postgres_url)
    dead = f"postgresql://natrelay:pw@127.0.0.1:{free_port()}/none"
    done = run_tool("aspia_router", *setup.args(), "--database", dead, timeout=60)
    assert done.returncode != 0 and "cannot connect to the database" in done.stderr
    assert ":pw@" not in done.stderr


def make_original_db3(path: Path, password: str) -> list[bytes]:
    """A router.db3 as Aspia 2.7.0 writes it: a client account, host IDs with a gap, one broken row."""
    conn = sqlite3.connect(path)
    for statement in ORIGINAL_SCHEMA:
        conn.execute(statement)
    group, salt, verifier = srp.new_account("carol", password.encode(), b"\x05" * 64)
    insert = 'INSERT INTO users (id, name, "group", salt, verifier, sessions, flags) VALUES (?,?,?,?,?,?,?)'
    conn.execute(insert, (4, "carol", group, salt, verifier, CLIENT, 1))
    conn.execute(insert, (5, "broken", group, b"", verifier, CLIENT, 1))  # skipped, as the original would
    keys = [bytes([i]) * 512 for i in range(1, 4)]
    for host_id, key in zip((1, 2, 9), keys, strict=True):
        conn.execute("INSERT INTO hosts (id, key) VALUES (?, ?)", (host_id, crypto.h512(key)))
    conn.commit()
    conn.close()
    return keys


def test_migrate_db_copies_the_originals_router_db3(tmp_path: Path, postgres_url: str) -> None:
    old = tmp_path / "router.db3"
    keys = make_original_db3(old, "carol-secret")
    before = old.read_bytes()
    done = run_tool("aspia_router", "--migrate-db", str(old), postgres_url)
    assert done.returncode == 0, done.stderr
    assert "Copied 1 users and 3 host IDs" in done.stdout
    assert old.read_bytes() == before  # the source is only read
    again = run_tool("aspia_router", "--migrate-db", str(old), postgres_url)
    assert again.returncode == 1 and "is not empty" in again.stderr

    setup = create_pg_router_on_existing(tmp_path / "r", postgres_url)
    router = start_router(setup)
    try:
        srp_login(setup.port, "carol", "carol-secret", CLIENT).close()  # the migrated verifier works
        host = anonymous(setup.port, setup.public_key, HOST_SESSION)
        request = router_peer_pb2.HostIdRequest(type=router_peer_pb2.HostIdRequest.EXISTING_ID, key=keys[2])
        host.send(peer_msg("host_id_request", request))
        assert host.receive(router_peer_pb2.RouterToPeer).host_id_response.host_id == 9
        host.close()
        fresh, fresh_id, _key = new_host(router)
        fresh.close()
        assert fresh_id == 10  # the sequence continues after the copied IDs
    finally:
        assert router.stop() == 0, router.log()


def create_pg_router_on_existing(directory: Path, url: str) -> RouterSetup:
    """A router set up with SQLite, then pointed at ``url`` through router.json's Database."""
    config = directory / "etc" / "router.json"
    done = run_tool("aspia_router", "--create-config", "--config", str(config), "--data-dir",
                    str(directory / "lib"))
    assert done.returncode == 0, done.stderr
    port = free_port()
    update_settings(config, {"Port": str(port), "ListenInterface": HOST, "Database": url})
    key = (config.parent / "router.pub").read_text().strip()
    return RouterSetup(directory, config, directory / "lib", key, parse_admin_password(done.stdout), port)


@pytest.mark.parametrize(("source", "target", "message"), [
    ("postgresql://x@127.0.0.1/a", "postgresql://x@127.0.0.1/b", "FROM must be an SQLite"),
    ("router.db3", "/tmp/other.db3", "TO must be a postgresql:// URL"),
])
def test_migrate_db_names_a_wrong_argument(source: str, target: str, message: str) -> None:
    done = run_tool("aspia_router", "--migrate-db", source, target)
    assert done.returncode == 2 and message in done.stderr
