"""The Aspia relay and router as HTTP :class:`~natrelay.ops.http.source.Source` objects.

The relay's byte counts are the forwarding engine's (exact, per direction: ``first`` is the peer
that presented its key first); the router knows relayed sessions only from each relay's last
statistics message, so its session rows are as fresh as ``StatisticsInterval``, and carry the
relay's total bytes (the Aspia protocol reports no direction).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from natrelay.aspia.relay.controller import RouterController
from natrelay.aspia.relay.server import PeerListener
from natrelay.aspia.router.server import RouterServer
from natrelay.aspia.router.sessions import Actions, SessionKind
from natrelay.engine.forward import ForwardEngine
from natrelay.engine.stats import DURATION_BUCKETS, Histogram
from natrelay.ops.http.source import Reading, Source, Totals, by_label, reading


class AspiaRelaySource(Source):
    family = "aspia_relay"
    title = "Aspia relay"

    def __init__(self, listener: PeerListener, controller: RouterController | None = None) -> None:
        self.listener = listener
        self.controller = controller

    def _engines(self) -> list[ForwardEngine]:
        listener = self.listener
        if listener.threads is not None:
            return listener.threads.engines()
        return [listener.engine] if listener.engine is not None else []

    def readings(self) -> Iterable[Reading]:
        listener = self.listener
        stats = listener.stats
        engines = self._engines()
        totals = [e.totals for e in engines]
        yield reading("connections_accepted", listener.accepted)
        yield from by_label("connections_refused", "reason", listener.refusals)
        yield from by_label("connection_closes", "reason", listener.guard_closes)
        yield reading("connections_open", listener.pending + 2 * len(listener.sessions))
        yield from by_label("handshake_failures", "reason", stats.handshake_failures)
        yield reading("pairings", sum(t.started for t in totals))
        yield reading("sessions_active", len(listener.sessions))
        yield reading("pending_peers", listener.pending)
        yield reading("relayed_bytes", sum(t.a_to_b for t in totals), direction="first_to_second")
        yield reading("relayed_bytes", sum(t.b_to_a for t in totals), direction="second_to_first")
        ends: Counter[str] = Counter()
        for t in totals:
            ends.update(t.reasons)
        yield from by_label("session_ends", "reason", ends)
        yield reading("session_duration_seconds",
                      Histogram.merged((t.durations for t in totals), DURATION_BUCKETS))
        yield reading("pairing_latency_seconds", stats.pairing_latency)
        yield reading("key_pool_keys", len(listener.pool), relay="self")
        if self.controller is not None:
            yield reading("router_connected", 1 if self.controller.connected else 0)

    def totals(self) -> Totals:
        listener = self.listener
        moved = sum(e.totals.bytes for e in self._engines())
        return Totals(listener.pending + 2 * len(listener.sessions), len(listener.sessions), listener.pending,
                      moved)

    def limits(self) -> dict[str, Any]:
        cfg = self.listener.config
        return {"MaxPeerCount": self.listener.pool.max_peer_count, "idle_timeout": cfg.idle_timeout,
                "pending_timeout": cfg.pending_timeout, "workers": cfg.workers,
                "per-session-rate": cfg.session_rate, "global-rate": cfg.global_rate}

    def status(self) -> dict[str, Any]:
        controller = self.controller
        return {"keysInPool": len(self.listener.pool), "pendingPeers": self.listener.pending,
                "routerConnected": bool(controller is not None and controller.connected),
                "refused": dict(self.listener.refusals), "guardCloses": dict(self.listener.guard_closes),
                "failedBeforePairing": dict(self.listener.stats.handshake_failures)}

    def sessions(self) -> list[dict[str, Any]]:
        now = self.listener.loop.time()
        rows = []
        for s in list(self.listener.sessions.values()):
            forward = s.forward
            if forward is None:
                continue
            c = forward.counters
            rows.append({"id": str(s.session_id), "a": s.addresses[0], "b": s.addresses[1],
                         "host_id": s.info.host_id, "user": s.info.client_user_name,
                         "bytes_ab": c.a_to_b, "bytes_ba": c.b_to_a,
                         "duration": max(0.0, now - forward.started_at),
                         "idle": max(0.0, now - forward.last_activity)})
        return rows

    def disconnect_session(self, ident: str) -> str | None:
        if not ident.isdigit() or not self.listener.disconnect(int(ident)):
            return f"no session {ident!r}"
        return None


class AspiaRouterSource(Source):
    family = "aspia_router"
    title = "Aspia router"
    is_router = True

    def __init__(self, server: RouterServer) -> None:
        self.server = server

    def readings(self) -> Iterable[Reading]:
        server = self.server
        stats = server.stats
        core = server.core
        guard = server.guard
        # The flood guard admits every connection: its counts are the exact ones. White-list
        # refusals happen later (once the session type is known) and are counted in stats.
        yield reading("connections_accepted", guard.accepted)
        yield from by_label("connections_refused", "reason",
                            {**server.counters()["refused"], **stats.refusals})
        yield reading("connections_open", guard.connections)
        yield reading("handshakes", stats.handshakes_done)
        yield from by_label("handshake_failures", "reason", stats.handshake_failures)
        yield reading("logins", stats.logins_done)
        yield from by_label("login_failures", "reason", stats.login_failures)
        yield reading("handshakes_in_progress", guard.pending)
        kinds = Counter(s.kind.name.lower() for s in core.sessions.values())
        for kind in SessionKind:
            yield reading("router_sessions", kinds.get(kind.name.lower(), 0), kind=kind.name.lower())
        yield reading("hosts_online", sum(len(s.host_ids) for s in core.sessions.values()
                                          if s.kind is SessionKind.HOST))
        for relay in core.relays():
            yield reading("key_pool_keys", core.pool.count(relay.session_id), relay=str(relay.session_id))
        yield reading("keys_handed_out", core.pool.taken_total)
        yield reading("sessions_active", sum(len(r.relay_stat.peer_connection) for r in core.relays()
                                             if r.relay_stat is not None))

    def totals(self) -> Totals:
        # Relayed sessions and bytes belong to the relays' own totals (a relay in this process
        # would otherwise be counted twice); the router adds its connections only.
        return Totals(self.server.guard.connections, 0, 0, 0)

    def limits(self) -> dict[str, Any]:
        lim = self.server.guard.limits
        return {"max_connections": lim.max_connections, "max_per_ip": lim.max_connections_per_ip,
                "max_handshakes": lim.max_pending, "max_handshakes_per_ip": lim.max_pending_per_ip,
                "max_logins": lim.max_logins, "max_logins_per_ip": lim.max_logins_per_ip}

    def status(self) -> dict[str, Any]:
        status = self.server.core.status(self.server.wall_time())
        return {"relays": len(status["relays"]), "relayedSessions": len(status["sessions"]),
                "relayedBytes": sum(s["bytes"] for s in status["sessions"]),
                "keysInPool": status["pool_size"],
                "keysHandedOut": status["keys_handed_out"], "hostsOnline": len(self.hosts()),
                "logins": self.server.stats.logins_done,
                "loginFailures": dict(self.server.stats.login_failures)}

    def relays(self) -> list[dict[str, Any]]:
        core = self.server.core
        now = self.server.wall_time()
        rows: list[dict[str, Any]] = core.status(now)["relays"]
        for row in rows:
            session = core.sessions.get(row["id"])
            if session is None:
                continue
            row["version"] = str(session.version)
            stat = session.relay_stat
            row["bytes"] = sum(pc.bytes_transferred for pc in stat.peer_connection) if stat else None
            row["last_statistics"] = max(0.0, now - session.stat_received) if stat else None
        return rows

    def hosts(self) -> list[dict[str, Any]]:
        now = self.server.wall_time()
        return [{"id": str(s.session_id), "host_ids": list(s.host_ids), "address": s.address,
                 "since": s.started, "connected": max(0.0, now - s.started)}
                for s in sorted(self.server.core.sessions.values(), key=lambda s: s.session_id)
                if s.kind is SessionKind.HOST]

    def sessions(self) -> list[dict[str, Any]]:
        status = self.server.core.status(self.server.wall_time())
        return [{"id": s["id"], "relay": s["relay"], "a": s["client_address"], "b": s["host_address"],
                 "host_id": s["host_id"], "user": s["user"], "bytes": s["bytes"],
                 "duration": s["duration"], "idle": s["idle"]} for s in status["sessions"]]

    def disconnect_session(self, ident: str) -> str | None:
        actions, error = self.server.core.disconnect_relayed(ident)
        if error is None:
            self.server.apply(actions)
        return error

    def disconnect_host(self, ident: str) -> str | None:
        session = self.server.core.sessions.get(int(ident)) if ident.isdigit() else None
        if session is None or session.kind is not SessionKind.HOST:
            return f"no host session {ident!r}"
        self.server.apply(Actions(disconnect=[session.session_id]))
        return None
