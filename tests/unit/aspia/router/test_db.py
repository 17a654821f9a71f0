"""The SQLite backend's own rules: schema checks at open, typed rows, all-or-nothing creation.

The cases every backend shares are in test_storage.py, run against SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from natrelay.aspia.router.db import (
    DatabaseError,
    RouterDatabase,
    StoredUser,
    valid_user_name,
)


def user(name: str = "alice", **kw: object) -> StoredUser:
    fields: dict[str, object] = {"group": "4096", "salt": b"\x00\x01" * 32, "verifier": b"\x07" * 512,
                                 "sessions": 2, "flags": 1}
    fields.update(kw)
    return StoredUser(name, **fields)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> RouterDatabase:
    path = tmp_path / "router.db3"
    RouterDatabase.create(path, [user("admin", sessions=3)])
    return RouterDatabase.open(path)


def test_create_writes_the_original_schema_privately(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "router.db3"
    RouterDatabase.create(path, [user()])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(users)")]
    assert cols == ["id", "name", "group", "salt", "verifier", "sessions", "flags"]
    assert [r[1] for r in conn.execute("PRAGMA table_info(hosts)")] == ["id", "key"]
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left


def test_create_refuses_an_existing_file_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "router.db3"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        RouterDatabase.create(path)
    assert path.read_bytes() == b"keep"
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("content", [None, b"", b"not sqlite at all" * 100])
def test_open_refuses_missing_empty_or_foreign_files_without_creating_one(tmp_path: Path,
                                                                          content: bytes | None) -> None:
    path = tmp_path / "router.db3"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatabaseError):
        RouterDatabase.open(path)
    assert path.exists() == (content is not None)


def test_open_refuses_a_database_without_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "router.db3"
    sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.commit()
    with pytest.raises(DatabaseError, match="not a router database"):
        RouterDatabase.open(path)


def test_rows_with_empty_or_mistyped_columns_are_skipped(db: RouterDatabase) -> None:
    insert = 'INSERT INTO users (name, "group", salt, verifier) VALUES '
    db._conn.execute(insert + "('empty', '4096', x'', x'01')")
    db._conn.execute(insert + "('text', '4096', 'ab', x'01')")
    assert db.find_user("empty") is None and db.find_user("text") is None
    assert [u.name for u in db.list_users()] == ["admin"]


@pytest.mark.parametrize(("name", "ok"), [("admin", True), ("Mixed.User-1@x_y", True), ("ü", True),
                                          ("", False), ("bad name!", False), ("a" * 64, True),
                                          ("a" * 65, False), ("semi;colon", False)])
def test_user_name_rule(name: str, ok: bool) -> None:
    assert valid_user_name(name) is ok
