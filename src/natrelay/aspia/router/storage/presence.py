"""Which router holds which host, for routers sharing one database (a cluster).

Each router keeps the connections it holds; what the others must know goes through the
database: a ``routers`` row per running router with a lease it renews, and a ``presence`` row
per online host ID naming the router and session holding it. A router that dies stops renewing,
so after the lease its hosts read as offline everywhere, and a host that reconnects to another
router takes its IDs over at once. Messages for a session at another router (a host's
ConnectionOffer, a disconnect of a stale host session) are sent with NOTIFY on that router's
channel; :mod:`natrelay.aspia.router.cluster_link` listens and delivers them.

Why NOTIFY and not a polled table: an offer has a client and a host waiting on it; NOTIFY
reaches a listening router in well under a millisecond on loopback (bench/router_storage.py)
with no load while idle, while a polled table costs one query per router per interval and adds
half an interval of delay on average. NOTIFY is not stored: a message to a router that is not
listening (dead or reconnecting) is lost, which for an offer is right (its host is gone with
that router) and for the client means the usual timeout.

The calls are synchronous, one or two short statements each, like every storage call (see
``base``); the core calls them inline. :class:`NoCluster` is the single-router default.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from dataclasses import dataclass
from typing import Any, Final

import psycopg
import psycopg_pool

from natrelay.aspia.router.storage.base import DatabaseError
from natrelay.aspia.router.storage.postgres import PostgresStorage

log = logging.getLogger("natrelay.aspia.router")

DEFAULT_LEASE: Final = 10.0
"""Seconds a router's hosts stay visible to the others after its last renewal."""
FORGET_DEAD_AFTER: Final = 300.0
"""Seconds after its lease ended that a dead router's rows are removed."""
MAX_NOTIFY_PAYLOAD: Final = 7900  # PostgreSQL's limit is 8000 bytes
MESSAGE_DELIVER: Final = 1
"""Deliver the payload to the named session (a host's ConnectionOffer)."""
MESSAGE_DISCONNECT: Final = 2
"""Disconnect the named session (a stale copy of a host that reconnected elsewhere)."""
MESSAGE_DISCONNECT_RELAYED: Final = 3
"""End a relayed session ``RELAY.PEER`` (payload, as that router's --status names it)."""
MAX_PUBLISHED_SESSIONS: Final = 200
"""Relayed sessions a router lists in its published status (the rest only counted)."""
_HEADER = struct.Struct(">BQ")


@dataclass(frozen=True, slots=True)
class RemoteSession:
    """A host session held by another router of the cluster."""

    router_id: int
    session_id: int
    address: str


@dataclass(frozen=True, slots=True)
class RemoteMessage:
    router_id: int
    kind: int
    session_id: int
    payload: bytes = b""


def channel_name(router_id: int) -> str:
    return f"natrelay_router_{router_id}"


def encode_message(message: RemoteMessage) -> str:
    return base64.b64encode(_HEADER.pack(message.kind, message.session_id) + message.payload).decode()


def decode_message(router_id: int, text: str) -> RemoteMessage | None:
    """The message in a NOTIFY payload, or None for anything malformed (logged by the caller)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    if len(raw) < _HEADER.size:
        return None
    kind, session_id = _HEADER.unpack_from(raw)
    return RemoteMessage(router_id, kind, session_id, raw[_HEADER.size:])


class NoCluster:
    """A router alone: every host it knows is its own."""

    router_id = 0

    def announce(self, session_id: int, address: str, host_ids: list[int]) -> list[RemoteSession]:
        return []

    def withdraw(self, session_id: int, host_ids: list[int]) -> None:
        return None

    def locate(self, host_id: int) -> RemoteSession | None:
        return None

    def resync(self, held: list[tuple[int, str, list[int]]]) -> None:
        return None


class PostgresPresence(NoCluster):
    """This router's row in ``routers`` and its hosts in ``presence``."""

    def __init__(self, storage: PostgresStorage, address: str, lease: float = DEFAULT_LEASE) -> None:
        self._pool = storage.pool
        self.address = address
        self.lease = lease
        self.router_id = 0

    def _run(self, what: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._pool.connection() as conn:
                cur = conn.execute(sql.encode(), params)
                return list(cur.fetchall()) if cur.description is not None else []
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise DatabaseError(f"cluster: cannot {what}: {str(exc).strip().splitlines()[0]}") from None

    # ------------------------------------------------------------ the router
    def register(self) -> int:
        """Join the cluster with a new router ID (one per process start, never reused)."""
        rows = self._run("register this router",
                         "INSERT INTO routers (address, lease_until) "
                         "VALUES (%s, now() + make_interval(secs => %s)) RETURNING id",
                         (self.address, self.lease))
        self.router_id = int(rows[0][0])
        return self.router_id

    def renew(self, status: dict[str, Any]) -> bool:
        """Extend the lease and publish a status summary; False if our row had been removed.

        A row goes only when the router was silent for :data:`FORGET_DEAD_AFTER`; it is put back
        under the same ID and the caller announces its hosts again (their rows went with it).
        """
        rows = self._run("renew the lease",
                         "UPDATE routers SET lease_until = now() + make_interval(secs => %s), status = %s "
                         "WHERE id = %s RETURNING id", (self.lease, json.dumps(status), self.router_id))
        if rows:
            self._run("forget dead routers", "DELETE FROM routers WHERE lease_until < now() - "
                      "make_interval(secs => %s)", (FORGET_DEAD_AFTER,))
            return True
        self._run("register this router again",
                  "INSERT INTO routers (id, address, lease_until, status) OVERRIDING SYSTEM VALUE "
                  "VALUES (%s, %s, now() + make_interval(secs => %s), %s)",
                  (self.router_id, self.address, self.lease, json.dumps(status)))
        return False

    def retire(self) -> None:
        """Leave the cluster on a clean stop: our hosts read as offline at once."""
        if self.router_id:
            self._run("remove this router", "DELETE FROM routers WHERE id = %s", (self.router_id,))

    def routers(self) -> list[dict[str, Any]]:
        rows = self._run("list routers", "SELECT id, address, extract(epoch FROM started)::bigint, "
                         "lease_until > now(), status FROM routers ORDER BY id")
        return [{"id": int(r[0]), "address": str(r[1]), "started": int(r[2]), "alive": bool(r[3]),
                 "this": int(r[0]) == self.router_id, **(r[4] if isinstance(r[4], dict) else {})}
                for r in rows]

    # ------------------------------------------------------------- the hosts
    def announce(self, session_id: int, address: str, host_ids: list[int]) -> list[RemoteSession]:
        """Take ``host_ids`` for our session; returns the live sessions elsewhere that held them."""
        if not host_ids:
            return []
        try:
            with self._pool.connection() as conn, conn.transaction():
                rows = conn.execute(
                    "SELECT DISTINCT p.router_id, p.session_id, p.address FROM presence p "
                    "JOIN routers r ON r.id = p.router_id WHERE p.host_id = ANY(%s) AND p.router_id <> %s "
                    "AND r.lease_until > now()", (host_ids, self.router_id)).fetchall()
                conn.cursor().executemany(
                    "INSERT INTO presence (host_id, router_id, session_id, address) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (host_id) DO UPDATE SET router_id = EXCLUDED.router_id, "
                    "session_id = EXCLUDED.session_id, address = EXCLUDED.address, since = now()",
                    [(h, self.router_id, session_id, address) for h in host_ids])
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise DatabaseError(f"cluster: cannot announce hosts {host_ids}: {exc}") from None
        return [RemoteSession(int(r[0]), int(r[1]), str(r[2])) for r in rows]

    def resync(self, held: list[tuple[int, str, list[int]]]) -> None:
        """Replace our presence rows by ``held`` (session, address, host IDs), in one transaction.

        For after the database was away: announcements and withdrawals made meanwhile were lost.
        IDs another router holds now stay with it (that host reconnected there meanwhile).
        """
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("DELETE FROM presence WHERE router_id = %s", (self.router_id,))
                conn.cursor().executemany(
                    "INSERT INTO presence (host_id, router_id, session_id, address) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (host_id) DO NOTHING",
                    [(h, self.router_id, session, address) for session, address, ids in held for h in ids])
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise DatabaseError(f"cluster: cannot restore presence: {exc}") from None

    def withdraw(self, session_id: int, host_ids: list[int]) -> None:
        if host_ids:
            self._run("withdraw hosts", "DELETE FROM presence WHERE router_id = %s AND session_id = %s "
                      "AND host_id = ANY(%s)", (self.router_id, session_id, host_ids))

    def locate(self, host_id: int) -> RemoteSession | None:
        rows = self._run("locate a host",
                         "SELECT p.router_id, p.session_id, p.address FROM presence p JOIN routers r "
                         "ON r.id = p.router_id WHERE p.host_id = %s AND r.lease_until > now()", (host_id,))
        if not rows or int(rows[0][0]) == self.router_id:
            return None  # ours: the core's own index is the truth for local sessions
        return RemoteSession(int(rows[0][0]), int(rows[0][1]), str(rows[0][2]))

    def send(self, message: RemoteMessage) -> None:
        text = encode_message(message)
        if len(text) > MAX_NOTIFY_PAYLOAD:
            raise DatabaseError(f"cluster: message of {len(text)} bytes is over the NOTIFY limit")
        self._run("send to another router", "SELECT pg_notify(%s, %s)",
                  (channel_name(message.router_id), text))
