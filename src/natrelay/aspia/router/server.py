"""The router's asyncio shell: listener, one :class:`ChannelProtocol` per connection, admin socket.

Everything the router decides lives in the sans-IO :class:`~natrelay.aspia.router.admin.Router`;
this module authenticates connections, applies the white lists, turns the core's
:class:`Actions` into writes and deferred disconnects, and explains failed handshakes in the
log in the terms an operator can act on (wrong router key, wrong password), since the peer is
never told why (spec §4.9).

SRP logins are expensive (an unknown user name costs about a second of CPU in the 8192-bit fake
group), and they run on the event loop, so password logins in progress are capped in total and
per source address, and a login beyond the cap is refused at its first SRP step, before any
expensive arithmetic. The cap counts only SRP logins: anonymous relay and host handshakes are
cheap, and idle connections that never start a login must not lock relays and hosts out. Fake
verifiers are cached per name, so repeating a probe costs no extra verifier computation.

Every connection also passes the flood guard (:mod:`natrelay.aspia.router.guard`): new
connections per minute per address, connections and unauthenticated connections in total and
per address, bytes before authentication, a short deadline to authenticate and a shorter one
for a started password login (half-open logins from a few addresses used to lock every password
login out for a minute). Refusals are counted by reason and logged at debug level, rate-limited.

Relays may register only from loopback unless RelayWhiteList lists addresses or the operator
sets RelayAllowAnyAddress (the original's behaviour): a relay receives every pairing's sealed
secrets, so "anyone with the public key" is not a safe default.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natrelay.aspia import srp
from natrelay.aspia.channel import Channel
from natrelay.aspia.connection import ChannelProtocol
from natrelay.aspia.errors import AspiaProtocolError, DecryptionError, ErrorCode
from natrelay.aspia.handshake import HANDSHAKE_TIMEOUT, ServerConfig, ServerHandshake, UserRecord
from natrelay.aspia.router import guard as flood
from natrelay.aspia.router.admin import Router
from natrelay.aspia.router.admin_socket import AdminSocketServer
from natrelay.aspia.router.cluster_link import ClusterLink
from natrelay.aspia.router.guard import FloodGuard, GuardLimits
from natrelay.aspia.router.sessions import Actions, RequestLimits, SessionKind
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
from natrelay.ops.aspia_config import IPAddress, RouterConfig, address_allowed

log = logging.getLogger("natrelay.aspia.router")

ANONYMOUS_SESSIONS = SessionKind.HOST | SessionKind.RELAY
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


def relay_allowed(config: RouterConfig, ip: str, local_ip: str = "") -> bool:
    """RelayWhiteList if set; else any address if RelayAllowAnyAddress; else this machine only.

    "This machine" is loopback (all of 127.0.0.0/8 and ::1: a relay bound to 127.0.0.2 is local)
    and a connection whose source is the very address it arrived at (``local_ip``): a relay on
    the router's machine that connects to the machine's public address, as ``natrelay serve
    --host`` sets it up. TCP's handshake keeps others from using that source. A relay elsewhere
    needs the white list.
    """
    if config.relay_white_list:
        return address_allowed(config.relay_white_list, ip)
    if config.relay_any_address:
        return True
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback or (bool(local_ip) and ip == local_ip)


def local_ip(transport: asyncio.BaseTransport) -> str:
    """The address the connection arrived at, in :func:`peer_ip`'s form."""
    return peer_ip(transport, "sockname")


def peer_ip(transport: asyncio.BaseTransport, which: str = "peername") -> str:
    """The peer's IP as the original prints it: dotted IPv4 also for v4-mapped IPv6 (§6.2 step 4)."""
    peer = transport.get_extra_info(which)
    if not peer:
        return ""
    try:
        addr = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return str(peer[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class RouterConnection(ChannelProtocol):
    """One accepted connection: handshake, then a router session."""

    def __init__(self, server: RouterServer) -> None:
        self.server = server
        self.ip = ""
        self.local_ip = ""
        self.session_id: int | None = None
        self.is_relay = False
        self.admitted = False
        self.pending = False
        self.bytes_before_auth = 0
        self.in_login = False
        self.login_deadline: float | None = None
        self.login_refused = False
        self.attempted_user: str | None = None
        self.handshake: ServerHandshake | None = None
        super().__init__(self._make_channel, server.timers)

    def _lookup(self, name: str) -> UserRecord | None:
        # Called at SrpIdentify, just before the expensive part of an SRP login.
        self.attempted_user = name
        if not self.in_login:
            guard = self.server.guard
            refusal = guard.begin_login(self.ip)
            if refusal is not None:
                self.login_refused = True
                # Error level, not debug: a legitimate user may be the one refused, and the
                # operator must see why; rate-limited, and the guard's counter has every one.
                skipped = guard.log.allow("login refused", self.loop.time())
                if skipped is not None:
                    more = f" ({skipped} more not logged)" if skipped else ""
                    log.error("Refused login of %r from %s: too many password logins in progress (%s)%s",
                              name, self.ip, flood.describe(refusal, guard.limits), more)
                raise AspiaProtocolError("too many logins in progress", ErrorCode.ACCESS_DENIED)
            self.in_login = True
            self.login_deadline = guard.login_deadline(self.loop.time())
        return self.server.lookup_user(name)

    def _make_channel(self, now: float) -> Channel:
        opts = self.server.options
        config = ServerConfig(private_key=opts.config.private_key, seed_key=opts.config.seed_key,
                              anonymous_sessions=int(ANONYMOUS_SESSIONS), users=self._lookup,
                              timeout=self.server.guard.limits.pending_timeout or HANDSHAKE_TIMEOUT)
        self.handshake = ServerHandshake(config, now)
        return Channel(self.handshake, now=now, keepalive=True)

    def on_connected(self) -> bool:
        assert self.transport is not None
        self.ip = peer_ip(self.transport)
        self.local_ip = local_ip(self.transport)
        refusal = self.server.guard.admit(self.ip, self.loop.time())
        if refusal is None:
            self.admitted = self.pending = True
            with contextlib.suppress(OSError):
                sock = self.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return True
        self.login_refused = True  # nothing to explain later: the refusal is logged here
        self.server.refusal(refusal, self.ip)
        self.abort(f"refused: {refusal}")
        return False

    def _end_handshake(self) -> None:
        if self.pending:
            self.pending = False
            self.server.guard.authenticated(self.ip)
        if self.in_login:
            self.in_login = False
            self.login_deadline = None
            self.server.guard.end_login(self.ip)

    def extra_deadline(self) -> float | None:
        return self.login_deadline

    def on_extra_timer(self, now: float) -> None:
        # A login that stalls after its user name holds a scarce slot: end it early.
        if self.login_deadline is not None and not self.closing:
            self.login_refused = True
            self.server.refusal(flood.LOGIN_DEADLINE, self.ip, counted=False)
            self.abort(f"refused: {flood.LOGIN_DEADLINE}")

    def on_established(self) -> None:
        self._end_handshake()
        result = self.channel.result
        assert result is not None
        self.server.stats.handshakes_done += 1
        if self.attempted_user is not None:
            self.server.stats.logins_done += 1
        try:
            kind = SessionKind(result.session_type)
        except ValueError:
            # Only possible for an account whose stored session mask has bits the router does not serve.
            log.error("Refused session type %d from %s (user %r): not a router session type",
                      result.session_type, self.ip, result.user_name)
            self.abort("not a router session type")
            return
        config = self.server.options.config
        if kind is SessionKind.RELAY and not relay_allowed(config, self.ip, self.local_ip):
            log.error("Refused relay session from %s: relays may register only from this machine unless "
                      "RelayWhiteList lists the address (or RelayAllowAnyAddress is true)", self.ip)
            self.abort("relay address not allowed")
            return
        white_list = self.server.white_list(kind)
        if not address_allowed(white_list, self.ip):
            self.server.stats.refused_by("white_list")
            log.error("Refused %s session from %s: the address is not in %sWhiteList", kind.name.lower(),
                      self.ip, kind.name.capitalize())
            self.abort("not in the white list")
            return
        session = self.server.core.open_session(kind, self.ip, result.user_name, result.peer_version,
                                                result.peer_info, self.server.wall_time())
        self.session_id = session.session_id
        self.is_relay = kind is SessionKind.RELAY
        self.server.connections[session.session_id] = self
        user = f", user {result.user_name!r}" if result.user_name else ""
        log.info("New %s session %d from %s%s (version %s)", kind.name.lower(), session.session_id,
                 self.ip, user, result.peer_version)

    def data_received(self, data: bytes) -> None:
        if self.pending:
            self.bytes_before_auth += len(data)
            if self.server.guard.too_many_bytes(self.bytes_before_auth):
                self.login_refused = True
                self.server.refusal(flood.BYTES_BEFORE_AUTH, self.ip)
                self.abort(f"refused: {flood.BYTES_BEFORE_AUTH}")
                return
        link = self.link
        ignored = link.ignored_messages if link is not None else 0
        super().data_received(data)
        if link is not None and link.ignored_messages != ignored and self.session_id is not None:
            # The original logs and ignores messages on channel IDs other than 0 (spec §2.3).
            log.info("Session %d: unhandled incoming message from another channel", self.session_id)

    def on_messages(self, messages: list[bytes]) -> None:
        if self.session_id is None:
            return
        for message in messages:
            self.server.apply(self.server.core.handle(self.session_id, message, self.server.wall_time()))

    def on_closed(self, reason: str) -> None:
        self._end_handshake()
        if self.admitted:
            self.admitted = False
            self.server.guard.release(self.ip, pending=False)
        if self.session_id is not None:
            self.server.connections.pop(self.session_id, None)
            session = self.server.core.sessions.get(self.session_id)
            if session is not None:
                log.info("%s session %d (%s) ended: %s", session.kind.name.capitalize(), self.session_id,
                         self.ip, reason)
            self.server.core.close_session(self.session_id)
            self.session_id = None
        elif self.link is not None and not self.link.established and not self.login_refused:
            self._explain_failed_handshake(reason)

    def _explain_failed_handshake(self, reason: str) -> None:
        # Rate-limited: a flood of connections that time out must not become a flood of lines.
        skipped = self.server.guard.log.allow("handshake failed", self.loop.time())
        if skipped is None:
            return
        if skipped:
            log.error("%d more failed handshakes were not logged", skipped)
        handshake = self.handshake
        error = self.link.error if self.link is not None else None
        # Keys were installed and the peer then walked away (or sent what our key cannot open).
        key_refused = handshake is not None and handshake.cipher is not None and (
            error is None or isinstance(error, DecryptionError))
        if self.attempted_user is not None and key_refused:
            # The SRP client gives up when it cannot open our challenge: that is what a wrong
            # password and an unknown user look like, and the log must not say which of them.
            self.server.stats.login_failures["wrong_password"] += 1
            self.server.stats.handshake_failures["wrong_password"] += 1
            log.error("Login failed for user %r from %s: wrong user name or password", self.attempted_user,
                      self.ip)
        elif self.attempted_user is None and key_refused:
            self.server.stats.handshake_failures["wrong_router_key"] += 1
            log.error(
                "Handshake from %s failed after the router's challenge: the relay or host there most "
                "likely uses the wrong router public key (its RouterPublicKey must equal router.pub: %s)",
                self.ip, self.server.options.public_key_hex or "see router.pub")
        else:
            label = reason.split(":", 1)[0].strip().lower().replace(" ", "_") or "other"
            self.server.stats.handshake_failures[label[:32]] += 1
            log.error("Handshake from %s failed: %s", self.ip, reason)


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
