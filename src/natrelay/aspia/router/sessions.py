"""The router's session logic (spec §6.2-§6.8) as a sans-IO core over decrypted messages.

The asyncio shell authenticates a connection, then calls :meth:`RouterCore.open_session` and
feeds each decrypted message to :meth:`RouterCore.handle`, which returns :class:`Actions`:
messages to send to router sessions (by ID) and sessions to disconnect. Disconnects are only
requested, never done inline, so a handler never tears down the session it is running for
(spec §12 bugs 8 and 9); the shell performs them after the current event.

Every request gets an answer where the original would go silent on an internal failure
(§12 bug 10): a host-ID request that cannot be served is answered ``UNKNOWN``.

Request limits (issue 8) are :mod:`natrelay.aspia.router.request_limits`' policy; the core
asks it before serving a request. A refused connection request is answered ``ACCESS_DENIED``, a
refused host-ID request ``UNKNOWN``; each refusal is counted in :attr:`RouterCore.refused` under
a fixed reason name.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from dataclasses import dataclass, field

from google.protobuf.message import Message

from natrelay.aspia import crypto
from natrelay.aspia.crypto import RandomBytes
from natrelay.aspia.errors import AspiaProtocolError
from natrelay.aspia.handshake import SessionInfo
from natrelay.aspia.messages import (
    ROUTER_FROM_CLIENT,
    ROUTER_FROM_HOST,
    ROUTER_FROM_RELAY,
    Version,
    first_present,
    make_envelope,
    parse,
    serialize,
)
from natrelay.aspia.proto import relay_peer_pb2, router_common_pb2, router_peer_pb2, router_relay_pb2
from natrelay.aspia.router.keypool import KeyPool, TakenKey
from natrelay.aspia.router.request_limits import RELAY_KEYS_OVER_CAP, RequestLimits, RequestRates
from natrelay.aspia.router.storage.base import DatabaseError, RouterStorage
from natrelay.aspia.router.storage.presence import (
    MESSAGE_DELIVER,
    MESSAGE_DISCONNECT,
    NoCluster,
    RemoteMessage,
    RemoteSession,
)

log = logging.getLogger("natrelay.aspia.router")

HOST_KEY_SIZE = 512
SECRET_RANDOM_SIZE = 16
_Offer = router_peer_pb2.ConnectionOffer
_HostIdRequest = router_peer_pb2.HostIdRequest
_HostIdResponse = router_peer_pb2.HostIdResponse
_DEFAULT_LIMITS = RequestLimits()


class SessionKind(enum.IntEnum):
    """``proto.RouterSession``: what an authenticated connection is."""

    ADMIN = 1
    CLIENT = 2
    HOST = 4
    RELAY = 8


@dataclass
class RouterSession:
    """One authenticated connection, as the admin list and ``--status`` show it."""

    session_id: int
    kind: SessionKind
    address: str
    user_name: str
    version: Version
    info: SessionInfo
    started: float
    """Wall-clock start (Unix seconds)."""
    host_ids: list[int] = field(default_factory=list)
    peer_host: str = ""
    peer_port: int = 0
    relay_stat: router_relay_pb2.RelayStat | None = None
    stat_received: float = 0.0
    keys_received: int = 0


@dataclass
class Actions:
    """What the shell must do after a call into the core."""

    send: list[tuple[int, bytes]] = field(default_factory=list)
    disconnect: list[int] = field(default_factory=list)
    remote: list[RemoteMessage] = field(default_factory=list)
    """For sessions held by other routers of a cluster (see ``storage/presence.py``)."""

    def reply(self, session_id: int, message: Message) -> None:
        self.send.append((session_id, serialize(message)))


def _to_peer(field_name: str, body: Message) -> router_peer_pb2.RouterToPeer:
    return make_envelope(router_peer_pb2.RouterToPeer, field_name, body)


def _to_relay(field_name: str, body: Message) -> router_relay_pb2.RouterToRelay:
    return make_envelope(router_relay_pb2.RouterToRelay, field_name, body)


def _valid_key(key: router_common_pb2.RelayKey) -> bool:
    return (key.type == router_common_pb2.RelayKey.TYPE_X25519
            and key.encryption == router_common_pb2.RelayKey.ENCRYPTION_CHACHA20_POLY1305
            and len(key.public_key) == crypto.X25519_KEY_SIZE and len(key.iv) == crypto.IV_SIZE)


class RouterCore:
    """All router sessions, the host-ID map and the key pool; no I/O, no clocks of its own."""

    def __init__(self, db: RouterStorage, random_bytes: RandomBytes = crypto.default_random,
                 limits: RequestLimits = _DEFAULT_LIMITS, presence: NoCluster | None = None) -> None:
        self.db = db
        self.presence = presence if presence is not None else NoCluster()
        self.pool = KeyPool()
        self.limits = limits
        self.requests = RequestRates(limits)
        self.refused: Counter[str] = self.requests.refused
        """Refusals by reason (the names in :mod:`natrelay.aspia.router.request_limits`)."""
        self.sessions: dict[int, RouterSession] = {}
        self._random = random_bytes
        self._next_id = 1
        self._host_index: dict[int, int] = {}
        """host ID -> router session ID of the host session holding it."""

    # ------------------------------------------------------------ lifecycle
    def open_session(self, kind: SessionKind, address: str, user_name: str, version: Version,
                     info: SessionInfo, now: float) -> RouterSession:
        """Register an authenticated connection; only these take an ID (§6.2 step 5)."""
        session = RouterSession(self._next_id, kind, address, user_name, version, info, now)
        self._next_id += 1
        self.sessions[session.session_id] = session
        return session

    def close_session(self, session_id: int) -> None:
        """Forget a session: a host's IDs go offline, a relay's keys leave the pool (§6.8)."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        for host_id in session.host_ids:
            if self._host_index.get(host_id) == session_id:
                del self._host_index[host_id]
        self._withdraw(session, session.host_ids)
        if session.kind is SessionKind.RELAY:
            dropped = self.pool.remove_relay(session_id)
            log.info("Relay %d (%s) gone; %d of its keys removed from the pool", session_id,
                     session.address, dropped)

    def _withdraw(self, session: RouterSession, host_ids: list[int]) -> None:
        try:
            self.presence.withdraw(session.session_id, list(host_ids))
        except DatabaseError as exc:  # the lease ends the stale rows if the database stays away
            log.error("Host session %d: %s", session.session_id, exc)

    def _locate(self, host_id: int) -> RemoteSession | None:
        try:
            return self.presence.locate(host_id)
        except DatabaseError as exc:
            log.error("Host %d: %s", host_id, exc)
            return None

    def reannounce(self) -> None:
        """Make the cluster's presence match our host sessions again (after the database was away)."""
        held = [(s.session_id, s.address, list(s.host_ids)) for s in self.sessions.values()
                if s.kind is SessionKind.HOST and s.host_ids]
        try:
            self.presence.resync(held)
        except DatabaseError as exc:
            log.error("Cannot restore this router's hosts in the cluster: %s", exc)

    def host_session(self, host_id: int) -> RouterSession | None:
        session_id = self._host_index.get(host_id)
        return self.sessions.get(session_id) if session_id is not None else None

    # ------------------------------------------------------------- dispatch
    def handle(self, session_id: int, payload: bytes, now: float) -> Actions:
        """Process one decrypted message from a session; malformed ones are logged and ignored."""
        session = self.sessions.get(session_id)
        actions = Actions()
        if session is None:
            return actions
        try:
            if session.kind is SessionKind.HOST:
                self._from_host(session, payload, actions, now)
            elif session.kind is SessionKind.CLIENT:
                self._from_client(session, payload, actions, now)
            elif session.kind is SessionKind.RELAY:
                self._from_relay(session, payload, now, actions)
            else:
                self._from_admin(session, payload, now, actions)
        except AspiaProtocolError as exc:
            # The original logs "Could not read message" and keeps the connection (§5.6).
            log.info("Session %d (%s): could not read message: %s", session_id, session.kind.name, exc)
        return actions

    def _from_admin(self, session: RouterSession, payload: bytes, now: float, actions: Actions) -> None:
        """Administration lives in :class:`natrelay.aspia.router.admin.Router`, which overrides this."""
        log.info("Unhandled message from admin session %d", session.session_id)

    # ----------------------------------------------------------------- host
    def _from_host(self, session: RouterSession, payload: bytes, actions: Actions, now: float) -> None:
        envelope = parse(router_peer_pb2.PeerToRouter, payload)
        found = first_present(envelope, ROUTER_FROM_HOST)
        if found is None:
            log.info("Unhandled message from host session %d", session.session_id)
            return
        name, body = found
        if isinstance(body, router_peer_pb2.ResetHostId):
            if body.host_id in session.host_ids:
                session.host_ids.remove(body.host_id)
                if self._host_index.get(body.host_id) == session.session_id:
                    del self._host_index[body.host_id]
                self._withdraw(session, [body.host_id])
            return
        assert isinstance(body, _HostIdRequest), name
        response = self._host_id(session, body, actions, now)
        actions.reply(session.session_id, _to_peer("host_id_response", response))

    def _host_id(self, session: RouterSession, request: _HostIdRequest,
                 actions: Actions, now: float) -> _HostIdResponse:
        response = _HostIdResponse()
        try:
            if request.type == _HostIdRequest.NEW_ID:
                if self.requests.new_host_id_refused(session.session_id, session.address, now):
                    response.error_code = _HostIdResponse.UNKNOWN
                    return response
                key = self._random(HOST_KEY_SIZE)
                key_hash = crypto.h512(key)
                new_id = self.db.add_host(key_hash)
                self.db.touch_host(new_id, now, new=True)
                response.key = key
            elif request.type == _HostIdRequest.EXISTING_ID:
                key_hash = crypto.h512(request.key)
            else:
                log.info("Host session %d: unknown host ID request type %d", session.session_id, request.type)
                response.error_code = _HostIdResponse.UNKNOWN
                return response
            host_id = self.db.find_host(key_hash)
            if host_id is not None and request.type == _HostIdRequest.EXISTING_ID:
                self.db.touch_host(host_id, now, new=False)
        except DatabaseError as exc:
            log.error("Host session %d: %s", session.session_id, exc)
            response.ClearField("key")
            response.error_code = _HostIdResponse.UNKNOWN
            return response
        if host_id is None:
            response.error_code = _HostIdResponse.NO_HOST_FOUND
            return response
        response.host_id = host_id
        if host_id not in session.host_ids:
            session.host_ids.append(host_id)
        # Another session holding any of our IDs is a stale copy of this host: drop it (§6.3).
        for other in list(self.sessions.values()):
            if other is session or other.kind is not SessionKind.HOST:
                continue
            if any(i in other.host_ids for i in session.host_ids):
                log.info("Host session %d holds an ID of session %d; disconnecting it",
                         other.session_id, session.session_id)
                for stale in other.host_ids:  # offline at once, not when its teardown comes round
                    if self._host_index.get(stale) == other.session_id:
                        del self._host_index[stale]
                other.host_ids.clear()
                actions.disconnect.append(other.session_id)
        for i in session.host_ids:
            self._host_index[i] = session.session_id
        try:
            for held in self.presence.announce(session.session_id, session.address, list(session.host_ids)):
                log.info("Host session %d at router %d holds an ID of session %d; asking that router to "
                         "disconnect it", held.session_id, held.router_id, session.session_id)
                actions.remote.append(RemoteMessage(held.router_id, MESSAGE_DISCONNECT, held.session_id))
        except DatabaseError as exc:  # still reachable through this router; other routers do not see it
            log.error("Host session %d: %s", session.session_id, exc)
        log.info("Host session %d (%s) has host ID %d", session.session_id, session.address, host_id)
        return response

    # --------------------------------------------------------------- client
    def _from_client(self, session: RouterSession, payload: bytes, actions: Actions, now: float) -> None:
        envelope = parse(router_peer_pb2.PeerToRouter, payload)
        found = first_present(envelope, ROUTER_FROM_CLIENT)
        if found is None:
            log.info("Unhandled message from client session %d", session.session_id)
            return
        _name, body = found
        if isinstance(body, router_peer_pb2.CheckHostStatus):
            online = self.host_session(body.host_id) is not None or self._locate(body.host_id) is not None
            status = router_peer_pb2.HostStatus.STATUS_ONLINE if online \
                else router_peer_pb2.HostStatus.STATUS_OFFLINE
            reply = _to_peer("host_status", router_peer_pb2.HostStatus(status=status))
            actions.reply(session.session_id, reply)
            return
        assert isinstance(body, router_peer_pb2.ConnectionRequest)
        self._connect(session, body.host_id, actions, now)

    def prune(self, now: float) -> None:
        """Forget rate-limit buckets that are full again (no state); call now and then."""
        self.requests.prune(now)

    def expire_unused_host_ids(self, issued_before: float, now: float) -> int:
        """Delete host IDs issued before ``issued_before`` and never used since (online ones are used)."""
        for host_id in list(self._host_index):
            self.db.touch_host(host_id, now, new=False)
        return self.db.expire_unused_hosts(issued_before)

    def _connect(self, client: RouterSession, host_id: int, actions: Actions, now: float) -> None:
        host = self.host_session(host_id)
        remote = self._locate(host_id) if host is None else None
        if host is None and remote is None:
            log.info("Client %d (%s, user %r) asked for host %d, which is not connected",
                     client.session_id, client.address, client.user_name, host_id)
            self._refuse(client, _Offer.PEER_NOT_FOUND, actions)
            return
        if self.requests.connection_refused(client.user_name, client.session_id, client.address, host_id,
                                            now):
            self._refuse(client, _Offer.ACCESS_DENIED, actions)
            return
        taken = self.pool.take(self._usable_relay, now)
        if taken is None:
            log.error("Key pool empty: no connection for client %d (user %r) to host %d: %s",
                      client.session_id, client.user_name, host_id, self.empty_pool_reason())
            self._refuse(client, _Offer.KEY_POOL_EMPTY, actions)
            return
        relay = self.sessions[taken.relay_id]
        used = router_relay_pb2.RelayKeyUsed(key_id=taken.key.key_id)
        actions.reply(relay.session_id, _to_relay("key_used", used))
        host_address = host.address if host is not None else remote.address if remote is not None else ""
        credentials = self._credentials(client, host_address, host_id, relay, taken)
        host_offer = _Offer(peer_role=_Offer.HOST, error_code=_Offer.SUCCESS,
                            host_data=router_peer_pb2.HostOfferData(host_id=host_id))
        host_offer.relay.CopyFrom(credentials)
        client_offer = _Offer(peer_role=_Offer.CLIENT, error_code=_Offer.SUCCESS)
        client_offer.relay.CopyFrom(credentials)
        if host is not None:
            actions.reply(host.session_id, _to_peer("connection_offer", host_offer))
        elif remote is not None:  # the router holding the host writes it the offer
            actions.remote.append(RemoteMessage(remote.router_id, MESSAGE_DELIVER, remote.session_id,
                                                serialize(_to_peer("connection_offer", host_offer))))
            log.info("Host %d is at router %d (session %d); offer sent there", host_id, remote.router_id,
                     remote.session_id)
        actions.reply(client.session_id, _to_peer("connection_offer", client_offer))
        log.info("Connection offer: client %d (user %r) -> host %d via relay %d (%s:%d), key %d",
                 client.session_id, client.user_name, host_id, relay.session_id, relay.peer_host,
                 relay.peer_port, taken.key.key_id)

    def _credentials(self, client: RouterSession, host_address: str, host_id: int, relay: RouterSession,
                     taken: TakenKey) -> router_common_pb2.RelayCredentials:
        secret = relay_peer_pb2.PeerToRelay.Secret(
            random_data=self._random(SECRET_RANDOM_SIZE), client_address=client.address,
            client_user_name=client.user_name, host_address=host_address, host_id=host_id)
        credentials = router_common_pb2.RelayCredentials(
            host=relay.peer_host, port=relay.peer_port, secret=serialize(secret))
        credentials.key.CopyFrom(taken.key)
        return credentials

    @staticmethod
    def _refuse(client: RouterSession, code: int, actions: Actions) -> None:
        offer = _Offer(peer_role=_Offer.CLIENT, error_code=code)  # type: ignore[arg-type]
        actions.reply(client.session_id, _to_peer("connection_offer", offer))

    def _usable_relay(self, relay_id: int) -> bool:
        relay = self.sessions.get(relay_id)
        return relay is not None and relay.kind is SessionKind.RELAY and bool(relay.peer_host) \
            and relay.peer_port != 0

    def relays(self) -> list[RouterSession]:
        return [s for s in self.sessions.values() if s.kind is SessionKind.RELAY]

    def empty_pool_reason(self) -> str:
        """Why no key can be handed out, in the words an operator needs to fix it."""
        relays = self.relays()
        if not relays:
            return "no relay is connected to this router (check each relay's log for its router connection)"
        parts = []
        for relay in relays:
            if not relay.peer_host or not relay.peer_port:
                parts.append(f"relay {relay.session_id} at {relay.address} has not announced its peer "
                             "address (PeerAddress/PeerPort)")
            else:
                parts.append(f"relay {relay.session_id} at {relay.address} ({relay.peer_host}:"
                             f"{relay.peer_port}) has handed out all {relay.keys_received} keys it uploaded "
                             "(raise its MaxPeerCount or wait for sessions to end)")
        return "; ".join(parts)

    # ---------------------------------------------------------------- relay
    def _from_relay(self, session: RouterSession, payload: bytes, now: float, actions: Actions) -> None:
        envelope = parse(router_relay_pb2.RelayToRouter, payload)
        found = first_present(envelope, ROUTER_FROM_RELAY)
        if found is None:
            log.info("Unhandled message from relay session %d", session.session_id)
            return
        _name, body = found
        if isinstance(body, router_relay_pb2.RelayStat):
            stat = router_relay_pb2.RelayStat()
            stat.CopyFrom(body)
            session.relay_stat = stat
            session.stat_received = now
            return
        if isinstance(body, router_relay_pb2.RelayKeyWithdraw):  # natrelay's relays in a cluster
            gone = self.pool.withdraw(session.session_id, body.key_id, self.limits.max_keys_per_relay)
            actions.reply(session.session_id, _to_relay("keys_withdrawn", router_relay_pb2.RelayKeysWithdrawn(
                key_id=gone)))
            log.info("Relay %d (%s) took back %d keys; it now has %d in the pool", session.session_id,
                     session.address, len(gone), self.pool.count(session.session_id))
            return
        assert isinstance(body, router_relay_pb2.RelayKeyPool)
        session.peer_host = body.peer_host
        session.peer_port = body.peer_port & 0xFFFF
        keys = [k for k in body.key if _valid_key(k)]
        if len(keys) != len(body.key):
            log.error("Relay %d (%s) sent %d malformed keys; they were dropped", session.session_id,
                      session.address, len(body.key) - len(keys))
        if not session.peer_host or not session.peer_port:
            log.error("Relay %d (%s) has not announced a peer address (PeerAddress/PeerPort); its keys "
                      "cannot be handed out", session.session_id, session.address)
        session.keys_received += len(keys)
        dropped = self.pool.add(session.session_id, keys, self.limits.max_keys_per_relay)
        if dropped:
            self.requests.limited(RELAY_KEYS_OVER_CAP, now, "Relay %d (%s) holds more than MaxKeysPerRelay "
                                  "(%d) keys; its %d oldest were dropped", session.session_id,
                                  session.address, self.limits.max_keys_per_relay, dropped)
            self.refused[RELAY_KEYS_OVER_CAP] += dropped - 1  # count keys, not lines
        log.info("Relay %d (%s, peers at %s:%d) added %d keys; it now has %d in the pool",
                 session.session_id, session.address, session.peer_host, session.peer_port, len(keys),
                 self.pool.count(session.session_id))

    def disconnect_peer(self, relay_id: int, peer_session_id: int) -> Actions:
        """Ask a relay to drop one of its relayed sessions (admin ``peer_connection_request``)."""
        actions = Actions()
        relay = self.sessions.get(relay_id)
        if relay is None or relay.kind is not SessionKind.RELAY:
            return actions
        request = router_common_pb2.PeerConnectionRequest(
            relay_session_id=relay_id, type=router_common_pb2.PEER_CONNECTION_REQUEST_DISCONNECT,
            peer_session_id=peer_session_id)
        actions.reply(relay_id, _to_relay("peer_connection_request", request))
        return actions
