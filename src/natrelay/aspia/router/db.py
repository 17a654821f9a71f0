"""The router's SQLite store, the default backend of :class:`RouterStorage` (spec §6.9).

The schema, column order and lookup rules are the original's, so a ``router.db3`` written by
Aspia 2.7.0 works here and the other way round. Two deliberate differences (spec §12 bug 10):
opening never creates a file, and a database without the expected tables is refused at start
instead of silently sending every login down the fake-user path and leaving host-ID requests
unanswered. Creation happens in a temporary file that is linked into place only when complete,
so an interrupted ``--create-config`` never leaves a half-made database behind.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from natrelay.aspia.router.storage.base import (
    MAX_NAME_LENGTH,
    DatabaseError,
    HostActivity,
    RouterStorage,
    StoredHost,
    StoredUser,
    UserExistsError,
    i32,
    row_to_user,
    valid_user_name,
)

__all__ = ["DB_FILE_MODE", "DB_FILE_NAME", "MAX_NAME_LENGTH", "DatabaseError", "RouterDatabase", "StoredUser",
           "UserExistsError", "valid_user_name"]

DB_FILE_NAME: Final = "router.db3"
DB_FILE_MODE: Final = 0o600  # verifiers and host-key hashes: not for other local users

_SCHEMA: Final = (
    'CREATE TABLE "users" ('
    '"id" INTEGER UNIQUE, "name" TEXT NOT NULL UNIQUE, "group" TEXT NOT NULL, '
    '"salt" BLOB NOT NULL, "verifier" BLOB NOT NULL, "sessions" INTEGER DEFAULT 0, '
    '"flags" INTEGER DEFAULT 0, PRIMARY KEY("id" AUTOINCREMENT))',
    'CREATE TABLE "hosts" ("id" INTEGER UNIQUE, "key" BLOB NOT NULL UNIQUE, '
    'PRIMARY KEY("id" AUTOINCREMENT))',
)
# Ours, not the original's (which ignores tables it does not know): when each host ID was issued
# and whether it was ever presented again, so IDs handed to anonymous requests and never used
# can expire (issue 8: host-ID floods grew router.db3 without limit). IDs without a row here
# (written by the original) never expire.
_ACTIVITY_TABLE: Final = ('CREATE TABLE IF NOT EXISTS "host_activity" ("id" INTEGER PRIMARY KEY, '
                          '"issued" REAL NOT NULL, "used" INTEGER NOT NULL DEFAULT 0)')
_USER_COLUMNS: Final = ("id", "name", "group", "salt", "verifier", "sessions", "flags")
_HOST_COLUMNS: Final = ("id", "key")


def _columns(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    return tuple(str(row[1]) for row in conn.execute(f'PRAGMA table_info("{table}")'))


class RouterDatabase(RouterStorage):
    """An open ``router.db3``. Every call is one short statement; the router runs them inline."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @property
    def description(self) -> str:
        return str(self.path)

    # ----------------------------------------------------------- open/create
    @classmethod
    def open(cls, path: Path, *, read_only: bool = False) -> RouterDatabase:
        """Open an existing database and check its schema; never creates anything.

        ``read_only`` (``--migrate-db``'s source) also leaves the file exactly as it was: no
        ``host_activity`` table is added.
        """
        if not path.is_file():
            raise DatabaseError(f"{path}: database does not exist; create it with --create-config")
        mode = "ro" if read_only else "rw"
        try:
            conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise DatabaseError(f"{path}: cannot open the database: {exc}") from None
        try:
            users, hosts = _columns(conn, "users"), _columns(conn, "hosts")
        except sqlite3.Error as exc:
            conn.close()
            raise DatabaseError(f"{path}: not a router database: {exc}") from None
        if users[: len(_USER_COLUMNS)] != _USER_COLUMNS or hosts[: len(_HOST_COLUMNS)] != _HOST_COLUMNS:
            conn.close()
            raise DatabaseError(
                f"{path}: not a router database (tables 'users' and 'hosts' missing or with other columns)"
            )
        conn.execute("PRAGMA busy_timeout = 2000")
        if not read_only:
            with contextlib.suppress(sqlite3.Error):  # a read-only file still serves; nothing expires
                conn.execute(_ACTIVITY_TABLE)
        return cls(conn, path)

    @classmethod
    def create(cls, path: Path, users: list[StoredUser] = []) -> None:  # noqa: B006 - never mutated
        """Create a new database with the schema and ``users``; refuses if ``path`` exists.

        Raises ``FileExistsError`` naming nothing else: the caller words the message.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            raise FileExistsError(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            os.chmod(tmp, DB_FILE_MODE)
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("BEGIN")
                for statement in _SCHEMA:
                    conn.execute(statement)
                for user in users:
                    _insert_user(conn, user)
                conn.execute("COMMIT")
            finally:
                conn.close()
            os.link(tmp, path)  # fails if anything appeared at path meanwhile
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def close(self) -> None:
        self._conn.close()

    # ---------------------------------------------------------------- users
    def find_user(self, name: str) -> StoredUser | None:
        """Exact, case-sensitive lookup by name, as the C++ router does (§4.8, §12 bug 22)."""
        try:
            row = self._conn.execute(
                'SELECT "id","name","group","salt","verifier","sessions","flags" FROM users WHERE name = ?',
                (name,),
            ).fetchone()
        except sqlite3.Error:
            return None
        return row_to_user(tuple(row)) if row is not None else None

    def list_users(self) -> list[StoredUser]:
        rows = self._conn.execute(
            'SELECT "id","name","group","salt","verifier","sessions","flags" FROM users ORDER BY id'
        ).fetchall()
        return [u for u in (row_to_user(tuple(r)) for r in rows) if u is not None]

    def add_user(self, user: StoredUser) -> int:
        """Insert and return the new entry ID; :class:`UserExistsError` for a taken name."""
        try:
            return _insert_user(self._conn, user)
        except sqlite3.IntegrityError:
            raise UserExistsError(f"a user named {user.name!r} already exists") from None
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot add user {user.name!r}: {exc}") from None

    def modify_user(self, user: StoredUser) -> bool:
        """Overwrite every column of row ``user.entry_id``; False if there is no such row."""
        try:
            cur = self._conn.execute(
                'UPDATE users SET "name"=?,"group"=?,"salt"=?,"verifier"=?,"sessions"=?,"flags"=? WHERE id=?',
                (user.name, user.group, user.salt, user.verifier, i32(user.sessions), i32(user.flags),
                 user.entry_id),
            )
        except sqlite3.IntegrityError:
            raise UserExistsError(f"a user named {user.name!r} already exists") from None
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot modify user {user.entry_id}: {exc}") from None
        return cur.rowcount > 0

    def remove_user(self, entry_id: int) -> bool:
        try:
            return self._conn.execute("DELETE FROM users WHERE id = ?", (entry_id,)).rowcount > 0
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot remove user {entry_id}: {exc}") from None

    def remove_user_by_name(self, name: str) -> bool:
        try:
            return self._conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot remove user {name!r}: {exc}") from None

    # ---------------------------------------------------------------- hosts
    def add_host(self, key_hash: bytes) -> int:
        """Store a new host key hash; its row ID is the new host ID (starting at 1)."""
        try:
            cur = self._conn.execute("INSERT INTO hosts (key) VALUES (?)", (key_hash,))
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot add a host: {exc}") from None
        return int(cur.lastrowid or 0)

    def find_host(self, key_hash: bytes) -> int | None:
        try:
            row = self._conn.execute("SELECT id FROM hosts WHERE key = ?", (key_hash,)).fetchone()
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot look a host up: {exc}") from None
        if row is None or not isinstance(row[0], int) or row[0] <= 0:
            return None
        return int(row[0])

    def iter_hosts(self) -> Iterator[StoredHost]:
        try:
            rows = self._conn.execute("SELECT id, key FROM hosts ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot list hosts: {exc}") from None
        for host_id, key in rows:
            if isinstance(host_id, int) and host_id > 0 and isinstance(key, bytes) and key:
                yield StoredHost(host_id, key)

    def host_activity(self) -> list[HostActivity]:
        """The issue records; none in a file only the original has written (no such table)."""
        try:
            rows = self._conn.execute(
                'SELECT "id","issued","used" FROM host_activity ORDER BY "id"').fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise DatabaseError(f"cannot list host activity: {exc}") from None
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot list host activity: {exc}") from None
        return [HostActivity(i, float(issued), bool(used)) for i, issued, used in rows
                if isinstance(i, int) and isinstance(issued, int | float) and isinstance(used, int)]

    def touch_host(self, host_id: int, now: float, *, new: bool) -> bool:
        """Record that host ``host_id`` was just issued (``new``) or presented again (used).

        Best effort (False on failure): the bookkeeping must never cost a host its answer.
        """
        try:
            if new:
                self._conn.execute(
                    'INSERT OR REPLACE INTO host_activity ("id","issued","used") VALUES (?,?,0)',
                    (host_id, now))
            else:
                self._conn.execute('UPDATE host_activity SET "used" = 1 WHERE "id" = ? AND "used" = 0',
                                   (host_id,))
        except sqlite3.Error:
            return False
        return True

    def expire_unused_hosts(self, issued_before: float) -> int:
        """Delete host IDs issued before ``issued_before`` and never presented since; returns how many."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.execute(
                    'DELETE FROM hosts WHERE id IN (SELECT "id" FROM host_activity WHERE "used" = 0 '
                    'AND "issued" < ?)', (issued_before,))
                self._conn.execute('DELETE FROM host_activity WHERE "used" = 0 AND "issued" < ?',
                                   (issued_before,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot expire unused host IDs: {exc}") from None
        return int(cur.rowcount)


def _insert_user(conn: sqlite3.Connection, user: StoredUser) -> int:
    cur = conn.execute(
        'INSERT INTO users ("name","group","salt","verifier","sessions","flags") VALUES (?,?,?,?,?,?)',
        (user.name, user.group, user.salt, user.verifier, i32(user.sessions), i32(user.flags)),
    )
    return int(cur.lastrowid or 0)
