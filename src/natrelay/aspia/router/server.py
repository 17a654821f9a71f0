"""The router's asyncio shell: the listener, the sessions' dispatch, the cluster link, the admin socket.

Everything the router decides lives in the sans-IO :class:`~natrelay.aspia.router.admin.Router`;
this module owns it and carries out what it decides: the core's :class:`Actions` become writes
to sessions (peers first, relays last) and deferred disconnects, messages from other routers of
a cluster reach their host sessions, and the admin socket's requests are answered. One accepted
connection, from admission by the flood guard through the handshake and login to an open
session, is :class:`~natrelay.aspia.router.connection.RouterConnection`; it calls back here for
the shared state (the guard, the core, the user lookup, the counters).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natrelay.aspia import srp
from natrelay.aspia.handshake import HANDSHAKE_TIMEOUT
from natrelay.aspia.handshake_server import UserRecord
from natrelay.aspia.router import guard as flood
from natrelay.aspia.router.admin import Router
from natrelay.aspia.router.admin_socket import AdminSocketServer
from natrelay.aspia.router.cluster_link import ClusterLink
from natrelay.aspia.router.connection import RouterConnection
from natrelay.aspia.router.guard import FloodGuard, GuardLimits
from natrelay.aspia.router.request_limits import RequestLimits
from natrelay.aspia.router.sessions import Actions, SessionKind
from natrelay.aspia.router.storage.base import DatabaseError, RouterStorage
from natrelay.aspia.router.storage.presence import (
    MAX_PUBLISHED_SESSIONS,
    MESSAGE_DELIVER,
    MESSAGE_DISCONNECT,
    MESSAGE_DISCONNECT_RELAYED,
    PostgresPresence,
    RemoteMessage,
)
from natrelay.engine.clock import WheelDriver
from natrelay.engine.endpoint import make_wheel
from natrelay.engine.stats import RelayStats
from natrelay.ops.aspia_config import RouterConfig
from natrelay.ops.aspia_settings import IPAddress

log = logging.getLogger("natrelay.aspia.router")

DEFAULT_MAX_LOGINS = 16
DEFAULT_MAX_LOGINS_PER_IP = 2
FAKE_USER_CACHE = 1024
HOUSEKEEPING_INTERVAL = 3600.0
"""Seconds between expiring unused host IDs and pruning rate-limit state."""


@dataclass(frozen=True)
class RouterOptions:
    """Everything the server needs besides router.json."""

    config: RouterConfig
    database: Path
    admin_socket: Path | None = None
    public_key_hex: str = ""
    max_logins: int = DEFAULT_MAX_LOGINS
    """SRP (password) logins in progress at once."""
    max_logins_per_ip: int = DEFAULT_MAX_LOGINS_PER_IP
    cluster_url: str = ""
    """The PostgreSQL URL when this router is one of a cluster (a ``presence`` is then given)."""
    guard: GuardLimits | None = None
    """Overrides the flood-guard limits router.json sets (tests)."""

    def guard_limits(self) -> GuardLimits:
        if self.guard is not None:
            return self.guard
        c = self.config
        return GuardLimits(
            max_connections=c.max_connections, max_connections_per_ip=c.max_connections_per_ip,
            connections_per_minute_per_ip=c.connections_per_minute_per_ip, max_pending=c.max_pending,
            max_pending_per_ip=c.max_pending_per_ip, max_bytes_before_auth=c.max_bytes_before_auth,
            pending_timeout=min(float(c.auth_timeout), HANDSHAKE_TIMEOUT), max_logins=self.max_logins,
            max_logins_per_ip=self.max_logins_per_ip,
            login_reserve=min(GuardLimits.login_reserve, self.max_logins // 4),
            login_timeout=float(c.login_timeout))

    def request_limits(self) -> RequestLimits:
        c = self.config
        return RequestLimits(client_per_minute=c.client_requests_per_minute,
                             host_per_minute=c.host_requests_per_minute,
                             new_host_ids_per_minute=c.host_id_requests_per_minute,
                             max_keys_per_relay=c.max_keys_per_relay)


class RouterServer:
    """Owns the listener, the core, the connections and the admin socket."""

    def __init__(self, options: RouterOptions, db: RouterStorage,
                 presence: PostgresPresence | None = None) -> None:
        self.options = options
        self.core = Router(db, limits=options.request_limits(), presence=presence)
        self.cluster: ClusterLink | None = None
        if presence is not None:
            self.cluster = ClusterLink(presence, options.cluster_url, self.deliver_remote,
                                       self.cluster_status, self.core.reannounce)
        self.loop = asyncio.get_running_loop()
        self.timers: WheelDriver[Any] = make_wheel(self.loop)
        self.guard = FloodGuard(options.guard_limits())
        self._housekeeping: asyncio.TimerHandle | None = None
        self.connections: dict[int, RouterConnection] = {}
        self.stats = RelayStats()
        """Connections, refusals, handshakes and logins by outcome, read by the HTTP metrics."""
        self._fakes: OrderedDict[str, UserRecord] = OrderedDict()
        self._server: asyncio.Server | None = None
        self._admin: AdminSocketServer | None = None
        self._wall_offset = self._wall_now() - self.loop.time()
        self.sockets: list[tuple[str, int]] = []

    @staticmethod
    def _wall_now() -> float:
        return time.time()  # the shell reads clocks; the cores get times passed in

    def wall_time(self) -> float:
        return self.loop.time() + self._wall_offset

    def refusal(self, reason: str, ip: str, *, counted: bool = True) -> None:
        """Count (unless the guard already did) and log a refused connection, rate-limited."""
        if not counted:
            self.guard.count(reason)
        skipped = self.guard.log.allow(reason, self.loop.time())
        if skipped is not None and log.isEnabledFor(logging.DEBUG):
            more = f" ({skipped} more like it not logged)" if skipped else ""
            log.debug("Refused connection from %s: %s%s", ip, flood.describe(reason, self.guard.limits), more)

    def counters(self) -> dict[str, Any]:
        """The flood guard's counts and every refusal by reason (guard and session core), exact."""
        counts: dict[str, Any] = dict(self.guard.status())
        counts["refused"] = {**self.guard.refused, **self.core.refused}
        return counts

    def housekeeping(self) -> None:
        """Hourly: expire host IDs issued but never used, forget idle rate-limit state."""
        now = self.wall_time()
        self.guard.prune(self.loop.time())
        self.core.prune(now)
        days = self.options.config.unused_host_id_days
        if days:
            try:
                dropped = self.core.expire_unused_host_ids(now - days * 86400.0, now)
            except DatabaseError as exc:
                log.error("Cannot expire unused host IDs: %s", exc)
            else:
                if dropped:
                    log.info("Deleted %d host IDs issued more than %d days ago and never used since",
                             dropped, days)
        self._housekeeping = self.loop.call_later(HOUSEKEEPING_INTERVAL, self.housekeeping)

    def white_list(self, kind: SessionKind) -> tuple[IPAddress, ...]:
        config = self.options.config
        return {
            SessionKind.CLIENT: config.client_white_list,
            SessionKind.HOST: config.host_white_list,
            SessionKind.ADMIN: config.admin_white_list,
            SessionKind.RELAY: config.relay_white_list,
        }[kind]

    def lookup_user(self, name: str) -> UserRecord | None:
        """The account for an SRP login, or a cached deterministic fake (§4.8)."""
        user = self.core.db.find_user(name)
        if user is not None and user.enabled and user.group in srp.GROUPS:
            return user.record()
        seed = self.options.config.seed_key
        if not seed:
            return None  # the handshake draws a fresh random seed per attempt
        fake = self._fakes.get(name)
        if fake is None:
            group, salt, verifier = srp.fake_user(seed, name)
            fake = UserRecord(name, group.name, salt, verifier, sessions=0)
            self._fakes[name] = fake
            if len(self._fakes) > FAKE_USER_CACHE:
                self._fakes.popitem(last=False)
        else:
            self._fakes.move_to_end(name)
        return fake

    def apply(self, actions: Actions) -> None:
        # Peers first, relays last: a connection offer has a host and a client waiting on it,
        # while ``key_used`` only starts a 30-second timer on the relay. Each write to loopback
        # also wakes its reader, so the relay's wake-up no longer sits in front of the peers'.
        relays: list[tuple[RouterConnection, bytes]] = []
        for session_id, payload in actions.send:
            conn = self.connections.get(session_id)
            if conn is None:
                continue
            if conn.is_relay:
                relays.append((conn, payload))
            else:
                conn.send(payload)
        for conn, payload in relays:
            conn.send(payload)
        if self.cluster is not None:
            for message in actions.remote:
                self.cluster.send(message)
        for session_id in actions.disconnect:
            conn = self.connections.get(session_id)
            if conn is not None:
                # After the current event: the handler that asked may belong to this very session.
                self.loop.call_soon(conn.close, "disconnected by the router")

    def deliver_remote(self, message: RemoteMessage) -> None:
        """A message another router of the cluster sent to one of our host sessions (or relays)."""
        if message.kind == MESSAGE_DISCONNECT_RELAYED:
            ident = message.payload.decode(errors="replace")
            actions, error = self.core.disconnect_relayed(ident)
            log.info("Disconnect of relayed session %s asked by another router: %s", ident, error or "sent")
            self.apply(actions)
            return
        conn = self.connections.get(message.session_id)
        session = self.core.sessions.get(message.session_id)
        if conn is None or session is None or session.kind is not SessionKind.HOST:
            log.info("Cluster message for session %d, which is not one of our host sessions; dropped",
                     message.session_id)
            return
        if message.kind == MESSAGE_DELIVER:
            conn.send(message.payload)
            log.info("Connection offer from another router delivered to host session %d", message.session_id)
        elif message.kind == MESSAGE_DISCONNECT:
            log.info("Host session %d reconnected through another router; disconnecting this copy",
                     message.session_id)
            # Closing withdraws only this router's presence rows: the new holder's stay.
            self.loop.call_soon(conn.close, "the host reconnected through another router")

    def cluster_status(self) -> dict[str, Any]:
        """What this router publishes with each lease renewal, for ``--status`` anywhere in the cluster."""
        kinds = [s.kind for s in self.core.sessions.values()]
        relayed = self.core.status(self.wall_time())["sessions"]
        return {"hosts": kinds.count(SessionKind.HOST), "clients": kinds.count(SessionKind.CLIENT),
                "relays": kinds.count(SessionKind.RELAY), "pool_size": self.core.pool.total,
                "keys_handed_out": self.core.pool.taken_total, "relayed": len(relayed),
                "sessions": relayed[:MAX_PUBLISHED_SESSIONS]}

    async def start(self) -> None:
        config = self.options.config
        host = config.listen_interface or None
        try:
            self._server = await self.loop.create_server(lambda: RouterConnection(self), host, config.port,
                                                         reuse_address=True)
        except OSError as exc:
            raise OSError(f"cannot listen on {config.listen_interface or '*'}:{config.port}: "
                          f"{exc.strerror or exc}") from None
        for sock in self._server.sockets:
            name = sock.getsockname()
            self.sockets.append((str(name[0]), int(name[1])))
        where = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sockets)
        log.info("Listening on %s", where)
        if not config.relay_white_list:
            if config.relay_any_address:
                log.warning("RelayAllowAnyAddress is true and RelayWhiteList is empty: any address "
                            "holding the router's public key can register as a relay and receive "
                            "pairings; list your relays in RelayWhiteList")
            else:
                log.warning("RelayWhiteList is empty: relays may register only from this machine "
                            "(loopback, or the router's own address); list remote relays' addresses "
                            "in RelayWhiteList, or set "
                            "RelayAllowAnyAddress to true for the original's behaviour")
        if self.cluster is not None:
            try:
                await self.cluster.start(where)
            except (DatabaseError, TimeoutError) as exc:
                self.cluster = None
                raise OSError(f"cannot join the router cluster: {exc}") from None
        self.housekeeping()
        if self.options.admin_socket is not None:
            self._admin = AdminSocketServer(self.options.admin_socket, self._admin_request)
            try:
                await self._admin.start()
            except OSError as exc:
                self._admin = None
                raise OSError(f"cannot create the admin socket {self.options.admin_socket}: "
                              f"{exc.strerror or exc}") from None

    def _admin_request(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command == "status":
            status = self.core.status(self.wall_time())
            status["guard"] = self.counters()
            if self.cluster is not None:
                try:
                    status["cluster"] = self.cluster.presence.routers()
                except DatabaseError as exc:
                    status["cluster_error"] = str(exc)
            return {"ok": True, "status": status}
        if command == "disconnect":
            ident = str(request.get("id", ""))
            router_text, slash, local = ident.partition("/")
            if slash and self.cluster is not None and router_text.isdigit() \
                    and int(router_text) != self.cluster.presence.router_id:
                return self._forward_disconnect(int(router_text), local)
            actions, error = self.core.disconnect_relayed(local if slash else ident)
            if error is not None:
                return {"ok": False, "error": error}
            self.apply(actions)
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def _forward_disconnect(self, router_id: int, local: str) -> dict[str, Any]:
        """``--disconnect ROUTER/RELAY.PEER`` for a session another router of the cluster lists."""
        assert self.cluster is not None
        try:
            routers = {r["id"]: r for r in self.cluster.presence.routers()}
        except DatabaseError as exc:
            return {"ok": False, "error": str(exc)}
        target = routers.get(router_id)
        if target is None or not target["alive"]:
            return {"ok": False,
                    "error": f"router {router_id} is not a live router of this cluster (see --status)"}
        if not any(s.get("id") == local for s in target.get("sessions", [])):
            return {"ok": False,
                    "error": f"router {router_id} lists no relayed session {local} (see --status)"}
        self.cluster.send(RemoteMessage(router_id, MESSAGE_DISCONNECT_RELAYED, 0, local.encode()))
        return {"ok": True, "forwarded": router_id}

    async def close(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._server is not None:
            self._server.close()
        if self.cluster is not None:
            await self.cluster.close()
        if self._admin is not None:
            await self._admin.close()
        for conn in list(self.connections.values()):
            conn.abort("router stopping")
        with contextlib.suppress(Exception):
            if self._server is not None:
                await asyncio.wait_for(self._server.wait_closed(), 2)
        self.timers.close()


def remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a router that died; refuse if a router still answers there."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(f"another router is already running with the admin socket {path}")
