"""The router's PostgreSQL backend: one database shared by every router of a cluster.

Driver: psycopg 3 with psycopg_pool. The router's storage calls are synchronous (see
``base``), and psycopg is the one maintained driver with both a synchronous and an asyncio API
over the same connection code: the storage uses the synchronous pool today, and the cluster's
asynchronous parts (LISTEN/NOTIFY, leases) can use ``psycopg.AsyncConnection`` without a second
driver. asyncpg has no synchronous API, so every handshake lookup would have had to become a
round trip through the event loop first.

Each call borrows a pooled connection in autocommit mode for one statement. Statements are
bounded by ``statement_timeout`` and connections by ``connect_timeout`` and the pool's wait, so
a database that is down or stuck fails a call into :class:`DatabaseError` within seconds, and
the pool replaces broken connections on its own once the server is back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, Final

import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg_pool

from natrelay.aspia.router.storage.base import (
    DatabaseError,
    HostActivity,
    RouterStorage,
    StoredHost,
    StoredUser,
    UserExistsError,
    i32,
    row_to_user,
)
from natrelay.aspia.router.storage.migrations import ADVISORY_LOCK_KEY, MIGRATIONS, SCHEMA_TABLE
from natrelay.ops.aspia_settings import DATABASE_URL_SCHEMES

log = logging.getLogger("natrelay.aspia.router")

DEFAULT_POOL_MIN: Final = 1
DEFAULT_POOL_MAX: Final = 4
CONNECT_TIMEOUT: Final = 5.0
"""Seconds to open a connection or to wait for a free one in the pool."""
STATEMENT_TIMEOUT_MS: Final = 2000
_USER_SELECT: Final = 'SELECT id, name, "group", salt, verifier, sessions, flags FROM users'


def is_postgres_url(text: str) -> bool:
    return text.startswith(DATABASE_URL_SCHEMES)


def redact(url: str) -> str:
    """The URL as a log line may show it: the password replaced, everything else kept."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(unparsable URL)"
    user = params.get("user")
    host = params.get("host", "")
    port = params.get("port")
    where = f"{user}@" if user else ""
    where += str(host) + (f":{port}" if port else "")
    return f"postgresql://{where}/{params.get('dbname', '')}"


class PostgresStorage(RouterStorage):
    """A pool of connections to the cluster's database, with the schema migrated at open."""

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], url: str) -> None:
        self._pool = pool
        self._where = redact(url)

    @property
    def description(self) -> str:
        return self._where

    @property
    def pool(self) -> psycopg_pool.ConnectionPool[Any]:
        """The connection pool, shared with the cluster's presence (``presence``)."""
        return self._pool

    # ----------------------------------------------------------- open/close
    @classmethod
    def open(cls, url: str, *, min_size: int = DEFAULT_POOL_MIN, max_size: int = DEFAULT_POOL_MAX,
             timeout: float = CONNECT_TIMEOUT) -> PostgresStorage:
        """Connect, apply missing migrations and return the storage; :class:`DatabaseError` if not."""
        where = redact(url)
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise DatabaseError(f"Database: not a valid PostgreSQL URL ({exc})") from None

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")

        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            url, min_size=min_size, max_size=max_size, timeout=timeout, open=False, configure=configure,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout))},
            name="natrelay-router")
        try:
            pool.open(wait=True, timeout=timeout)
        except (psycopg_pool.PoolTimeout, psycopg.Error) as exc:
            pool.close()
            raise DatabaseError(f"{where}: cannot connect to the database within {timeout:g} s "
                                f"({_first_line(exc)})") from None
        storage = cls(pool, url)
        try:
            storage._migrate()
        except BaseException:
            pool.close()
            raise
        return storage

    def close(self) -> None:
        self._pool.close()

    def _migrate(self) -> None:
        known = {m.version for m in MIGRATIONS}
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version integer PRIMARY KEY, "
                             "description text NOT NULL, applied timestamptz NOT NULL DEFAULT now())")
                have = {int(r[0]) for r in conn.execute(f"SELECT version FROM {SCHEMA_TABLE}")}
                newer = sorted(have - known)
                if newer:
                    raise DatabaseError(f"{self._where}: the database has schema versions {newer} that this "
                                        f"router does not know (it knows up to {max(known)}); upgrade the "
                                        "router")
                for migration in MIGRATIONS:
                    if migration.version in have:
                        continue
                    for statement in migration.statements:
                        conn.execute(statement.encode())
                    conn.execute(f"INSERT INTO {SCHEMA_TABLE} (version, description) VALUES (%s, %s)",
                                 (migration.version, migration.description))
                    log.info("Database %s: applied migration %d (%s)", self._where, migration.version,
                             migration.description)
        except psycopg.Error as exc:
            raise DatabaseError(f"{self._where}: cannot bring the schema up to date: "
                                f"{_first_line(exc)}") from None

    def schema_versions(self) -> list[int]:
        with self._pool.connection() as conn:
            return [int(r[0]) for r in conn.execute(f"SELECT version FROM {SCHEMA_TABLE} ORDER BY version")]

    # ---------------------------------------------------------------- users
    def find_user(self, name: str) -> StoredUser | None:
        try:
            with self._pool.connection() as conn:
                row = conn.execute(_USER_SELECT + " WHERE name = %s", (name,)).fetchone()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            log.error("Database %s: cannot look user %r up: %s", self._where, name, _first_line(exc))
            return None
        return row_to_user(tuple(row)) if row is not None else None

    def list_users(self) -> list[StoredUser]:
        rows = self._fetch("cannot list users", _USER_SELECT + " ORDER BY id")
        return [u for u in (row_to_user(tuple(r)) for r in rows) if u is not None]

    def add_user(self, user: StoredUser) -> int:
        row = self._one(f"cannot add user {user.name!r}",
                        'INSERT INTO users (name, "group", salt, verifier, sessions, flags) '
                        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                        (user.name, user.group, user.salt, user.verifier, i32(user.sessions),
                         i32(user.flags)), taken=user.name)
        return int(row[0])

    def modify_user(self, user: StoredUser) -> bool:
        return self._count(f"cannot modify user {user.entry_id}",
                           'UPDATE users SET name=%s, "group"=%s, salt=%s, verifier=%s, sessions=%s, '
                           "flags=%s WHERE id=%s",
                           (user.name, user.group, user.salt, user.verifier, i32(user.sessions),
                            i32(user.flags), user.entry_id), taken=user.name) > 0

    def remove_user(self, entry_id: int) -> bool:
        return self._count(f"cannot remove user {entry_id}", "DELETE FROM users WHERE id = %s",
                           (entry_id,)) > 0

    def remove_user_by_name(self, name: str) -> bool:
        return self._count(f"cannot remove user {name!r}", "DELETE FROM users WHERE name = %s", (name,)) > 0

    # ---------------------------------------------------------------- hosts
    def add_host(self, key_hash: bytes) -> int:
        return int(self._one("cannot add a host", "INSERT INTO hosts (key) VALUES (%s) RETURNING id",
                             (key_hash,))[0])

    def find_host(self, key_hash: bytes) -> int | None:
        rows = self._fetch("cannot look a host up", "SELECT id FROM hosts WHERE key = %s", (key_hash,))
        return int(rows[0][0]) if rows else None

    def iter_hosts(self) -> Iterator[StoredHost]:
        for host_id, key in self._fetch("cannot list hosts", "SELECT id, key FROM hosts ORDER BY id"):
            yield StoredHost(int(host_id), bytes(key))

    def touch_host(self, host_id: int, now: float, *, new: bool) -> bool:
        if new:
            sql = ("INSERT INTO host_activity (id, issued, used) VALUES (%s, %s, false) "
                   "ON CONFLICT (id) DO UPDATE SET issued = EXCLUDED.issued, used = false")
            params: tuple[object, ...] = (host_id, now)
        else:
            sql = "UPDATE host_activity SET used = true WHERE id = %s AND NOT used"
            params = (host_id,)
        try:
            self._count("cannot record host activity", sql, params)
        except DatabaseError as exc:
            log.warning("Database %s: host %d: %s", self._where, host_id, exc)
            return False
        return True

    def host_activity(self) -> list[HostActivity]:
        rows = self._fetch("cannot list host activity",
                           "SELECT id, issued, used FROM host_activity ORDER BY id")
        return [HostActivity(int(i), float(issued), bool(used)) for i, issued, used in rows]

    def expire_unused_hosts(self, issued_before: float) -> int:
        # One statement, so atomic; host_activity rows go with their hosts (ON DELETE CASCADE).
        # A host online at any router of the cluster (a presence row) is in use, whichever
        # router runs this first: the others may not have marked their hosts used yet.
        rows = self._fetch(
            "cannot expire unused host IDs",
            "WITH gone AS (DELETE FROM hosts h USING host_activity a "
            "WHERE h.id = a.id AND NOT a.used AND a.issued < %s "
            "AND NOT EXISTS (SELECT 1 FROM presence p WHERE p.host_id = h.id) RETURNING h.id) "
            "SELECT count(*) FROM gone", (issued_before,))
        return int(rows[0][0]) if rows else 0

    # ------------------------------------------------------ bulk operations
    def create_accounts(self, users: Iterable[StoredUser]) -> None:
        """``--create-config``: the first accounts of an empty database, all or none.

        Refuses a database that already holds accounts, as creating ``router.db3`` refuses an
        existing file: a second ``--create-config`` must not add a second administrator.
        """
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("LOCK TABLE users IN EXCLUSIVE MODE")
                row = conn.execute("SELECT count(*) FROM users").fetchone()
                if row is not None and int(row[0]):
                    raise DatabaseError(f"{self._where} already holds {int(row[0])} accounts; refusing to "
                                        "add more (use --add-user)")
                for user in users:
                    conn.execute('INSERT INTO users (name, "group", salt, verifier, sessions, flags) '
                                 "VALUES (%s, %s, %s, %s, %s, %s)",
                                 (user.name, user.group, user.salt, user.verifier, i32(user.sessions),
                                  i32(user.flags)))
        except psycopg.Error as exc:
            raise DatabaseError(f"{self._where}: cannot create the accounts: {_first_line(exc)}") from None

    def import_all(self, users: Iterable[StoredUser], hosts: Iterable[StoredHost],
                   activity: Iterable[HostActivity] = ()) -> tuple[int, int]:
        """Copy users and hosts with their IDs into an empty database, in one transaction.

        ``activity`` (the issue records of unused-ID expiry) is copied for the hosts copied, so
        IDs that were due to expire still do; records of hosts not copied are left behind.

        The identity sequences then continue after the highest copied ID, so no host ID of the
        old database is ever handed out again. Returns (users, hosts) copied.
        """
        n_users = n_hosts = 0
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("LOCK TABLE users, hosts IN EXCLUSIVE MODE")
                row = conn.execute("SELECT (SELECT count(*) FROM users), "
                                   "(SELECT count(*) FROM hosts)").fetchone()
                if row is not None and (int(row[0]) or int(row[1])):
                    raise DatabaseError(f"{self._where} is not empty ({int(row[0])} users, "
                                        f"{int(row[1])} hosts); copy into a new database")
                with conn.cursor() as cur:
                    for user in users:
                        cur.execute('INSERT INTO users (id, name, "group", salt, verifier, sessions, flags) '
                                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                                    (user.entry_id, user.name, user.group, user.salt, user.verifier,
                                     i32(user.sessions), i32(user.flags)))
                        n_users += 1
                    copied: set[int] = set()
                    with cur.copy("COPY hosts (id, key) FROM STDIN") as copy:
                        for host in hosts:
                            copy.write_row((host.host_id, host.key_hash))
                            copied.add(host.host_id)
                    n_hosts = len(copied)
                    with cur.copy("COPY host_activity (id, issued, used) FROM STDIN") as copy:
                        for record in activity:
                            if record.host_id in copied:
                                copy.write_row((record.host_id, record.issued, record.used))
                    for table in ("users", "hosts"):
                        cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                    f"(SELECT COALESCE(max(id), 0) + 1 FROM {table}), false)")
        except psycopg.Error as exc:
            raise DatabaseError(f"{self._where}: copy failed, nothing was written: "
                                f"{_first_line(exc)}") from None
        return n_users, n_hosts

    # --------------------------------------------------------------- helpers
    def _fetch(self, what: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._pool.connection() as conn:
                return list(conn.execute(sql.encode(), params).fetchall())
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise DatabaseError(f"{what}: {_first_line(exc)}") from None

    def _one(self, what: str, sql: str, params: tuple[object, ...], taken: str = "") -> tuple[Any, ...]:
        try:
            with self._pool.connection() as conn:
                row = conn.execute(sql.encode(), params).fetchone()
        except psycopg.errors.UniqueViolation:
            if taken:
                raise UserExistsError(f"a user named {taken!r} already exists") from None
            raise DatabaseError(f"{what}: the value is already stored") from None
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise DatabaseError(f"{what}: {_first_line(exc)}") from None
        if row is None:
            raise DatabaseError(f"{what}: the database returned no row")
        return tuple(row)

    def _count(self, what: str, sql: str, params: tuple[object, ...], taken: str = "") -> int:
        try:
            with self._pool.connection() as conn:
                return int(conn.execute(sql.encode(), params).rowcount)
        except psycopg.errors.UniqueViolation:
            raise UserExistsError(f"a user named {taken!r} already exists") from None
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise DatabaseError(f"{what}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
