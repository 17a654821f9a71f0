"""Administration of a running router: the Aspia ADMIN session (spec §6.7) and ``--status``.

Both views come from the same state: the session registry, the key pool and the last
``RelayStat`` of every relay. Aspia's own admin console speaks the protobuf protocol over an
SRP-authenticated channel; local operators use the JSON snapshot of :meth:`Router.status`
through the admin socket. Relayed peer sessions are named ``RELAY.PEER`` there (router session
ID of the relay, relay-local session ID), because relay-local IDs repeat across relays.
"""

from __future__ import annotations

import logging
from typing import Any

from natrelay.aspia.messages import ROUTER_FROM_ADMIN, first_present, make_envelope, parse
from natrelay.aspia.proto import router_admin_pb2, router_common_pb2
from natrelay.aspia.router.sessions import Actions, RouterCore, RouterSession, SessionKind
from natrelay.aspia.router.storage.base import DatabaseError, StoredUser, UserExistsError, valid_user_name

log = logging.getLogger("natrelay.aspia.router")

_SessionResult = router_admin_pb2.SessionResult
_UserResult = router_admin_pb2.UserResult


def _to_admin(field_name: str, body: Any) -> router_admin_pb2.RouterToAdmin:
    return make_envelope(router_admin_pb2.RouterToAdmin, field_name, body)


class Router(RouterCore):
    """The complete router core: peers, relays and administration."""

    # ---------------------------------------------------------- admin proto
    def _from_admin(self, session: RouterSession, payload: bytes, now: float, actions: Actions) -> None:
        envelope = parse(router_admin_pb2.AdminToRouter, payload)
        found = first_present(envelope, ROUTER_FROM_ADMIN)
        if found is None:
            log.info("Unhandled message from admin session %d", session.session_id)
            return
        _name, body = found
        sid = session.session_id
        if isinstance(body, router_admin_pb2.SessionListRequest):
            actions.reply(sid, _to_admin("session_list", self.session_list()))
        elif isinstance(body, router_admin_pb2.SessionRequest):
            actions.reply(sid, _to_admin("session_result", self._session_request(body, actions)))
        elif isinstance(body, router_admin_pb2.UserListRequest):
            users = router_admin_pb2.UserList()
            for user in self.db.list_users():
                users.user.add(entry_id=user.entry_id, name=user.name, group=user.group, salt=user.salt,
                               verifier=user.verifier, sessions=user.sessions, flags=user.flags)
            actions.reply(sid, _to_admin("user_list", users))
        elif isinstance(body, router_admin_pb2.UserRequest):
            result = self._user_request(session, body)
            if result is not None:
                actions.reply(sid, _to_admin("user_result", result))
        elif isinstance(body, router_common_pb2.PeerConnectionRequest):
            forwarded = self.disconnect_peer(body.relay_session_id, body.peer_session_id)
            actions.send.extend(forwarded.send)

    def session_list(self) -> router_admin_pb2.SessionList:
        result = router_admin_pb2.SessionList()
        for s in sorted(self.sessions.values(), key=lambda s: s.session_id):
            entry = result.session.add(
                session_id=s.session_id, session_type=int(s.kind),
                timepoint=int(s.started), ip_address=s.address, os_name=s.info.os_name,
                computer_name=s.info.computer_name, architecture=s.info.arch)
            entry.version.CopyFrom(s.version.to_proto())
            if s.kind is SessionKind.HOST:
                entry.session_data = router_admin_pb2.HostSessionData(host_id=s.host_ids).SerializeToString()
            elif s.kind is SessionKind.RELAY:
                data = router_admin_pb2.RelaySessionData(pool_size=self.pool.count(s.session_id))
                if s.relay_stat is not None:
                    data.relay_stat.uptime = s.relay_stat.uptime
                    data.relay_stat.peer_connection.extend(s.relay_stat.peer_connection)
                entry.session_data = data.SerializeToString()
        return result

    def _session_request(self, request: router_admin_pb2.SessionRequest, actions: Actions) -> _SessionResult:
        result = _SessionResult(type=request.type)
        if request.type != router_admin_pb2.SESSION_REQUEST_DISCONNECT:
            result.error_code = _SessionResult.INVALID_REQUEST
        elif request.session_id not in self.sessions:
            result.error_code = _SessionResult.INVALID_SESSION_ID
        else:
            # Deferred: the shell disconnects after this event, even if it is the admin itself (§12 bug 9).
            actions.disconnect.append(request.session_id)
        return result

    def _user_request(self, admin: RouterSession,
                      request: router_admin_pb2.UserRequest) -> _UserResult | None:
        kind = request.type
        result = _UserResult(type=kind)
        u = request.user
        user = StoredUser(u.name, u.group, u.salt, u.verifier, u.sessions, u.flags, u.entry_id)
        try:
            if kind == router_admin_pb2.USER_REQUEST_DELETE:
                self.db.remove_user(u.entry_id)
            elif kind in (router_admin_pb2.USER_REQUEST_ADD, router_admin_pb2.USER_REQUEST_MODIFY):
                if kind == router_admin_pb2.USER_REQUEST_MODIFY and u.entry_id <= 0:
                    result.error_code = _UserResult.INVALID_DATA
                elif not user.complete():
                    result.error_code = _UserResult.INTERNAL_ERROR
                elif not valid_user_name(user.name):
                    result.error_code = _UserResult.INVALID_DATA
                elif kind == router_admin_pb2.USER_REQUEST_ADD:
                    self.db.add_user(user)
                else:
                    self.db.modify_user(user)
            else:
                log.info("Admin session %d: unknown user request type %d", admin.session_id, kind)
                return None
        except UserExistsError:
            result.error_code = _UserResult.ALREADY_EXISTS
        except DatabaseError as exc:
            log.error("Admin session %d: %s", admin.session_id, exc)
            result.error_code = _UserResult.INTERNAL_ERROR
        if result.error_code == _UserResult.SUCCESS:
            log.info("Admin %r: user request %d for %r done", admin.user_name, kind, u.name)
        return result

    # ------------------------------------------------------ local --status
    def status(self, now: float) -> dict[str, Any]:
        """A JSON-ready snapshot: ``relays``, relayed ``sessions`` and connected ``peers``."""
        relays: list[dict[str, Any]] = []
        sessions: list[dict[str, Any]] = []
        peers: list[dict[str, Any]] = []
        for s in sorted(self.sessions.values(), key=lambda s: s.session_id):
            if s.kind is SessionKind.RELAY:
                stat = s.relay_stat
                age = max(0, int(now - s.stat_received)) if stat is not None else 0
                relays.append({
                    "id": s.session_id,
                    "address": f"{s.peer_host}:{s.peer_port}" if s.peer_host else "",
                    "router_address": s.address,
                    "pool_size": self.pool.count(s.session_id),
                    "sessions": len(stat.peer_connection) if stat is not None else None,
                    "uptime": stat.uptime + age if stat is not None else None,
                    "connected": max(0, int(now - s.started)),
                })
                for pc in stat.peer_connection if stat is not None else ():
                    sessions.append({
                        "id": f"{s.session_id}.{pc.session_id}",
                        "relay": s.session_id,
                        "host_id": pc.host_id,
                        "client_address": pc.client_address,
                        "host_address": pc.host_address,
                        "user": pc.client_user_name,
                        "bytes": pc.bytes_transferred,
                        "duration": pc.duration,
                        "idle": pc.idle_time,
                    })
            else:
                peers.append({
                    "id": s.session_id, "type": s.kind.name.lower(), "address": s.address,
                    "user": s.user_name, "host_ids": list(s.host_ids),
                    "connected": max(0, int(now - s.started)),
                })
        return {"relays": relays, "sessions": sessions, "peers": peers,
                "pool_size": self.pool.total, "keys_handed_out": self.pool.taken_total}

    def disconnect_relayed(self, ident: str) -> tuple[Actions, str | None]:
        """Forward a disconnect for ``RELAY.PEER`` (or a bare PEER unique among relays); returns an error."""
        relay_text, _, peer_text = ident.strip().rpartition(".")
        if not peer_text.isdigit() or (relay_text and not relay_text.isdigit()):
            return Actions(), f"not a session ID: {ident!r} (expected RELAY.PEER as --status shows it)"
        peer = int(peer_text)
        matches = [
            r.session_id for r in self.relays()
            if (not relay_text or r.session_id == int(relay_text)) and r.relay_stat is not None
            and any(pc.session_id == peer for pc in r.relay_stat.peer_connection)
        ]
        if not matches:
            return Actions(), f"no relayed session {ident} (see --status)"
        if len(matches) > 1:
            choices = ", ".join(f"{r}.{peer}" for r in matches)
            return Actions(), f"session {ident} is ambiguous; use one of {choices}"
        log.info("Asking relay %d to disconnect its session %d", matches[0], peer)
        return self.disconnect_peer(matches[0], peer), None
