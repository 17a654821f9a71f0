"""The Offset relay (``strelay``) as an HTTP :class:`~natrelay.ops.http.source.Source`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from natrelay.offset.server import OffsetRelayServer, State
from natrelay.ops.http.source import Reading, Source, Totals, by_label, reading


class OffsetSource(Source):
    family = "offset"
    title = "Offset relay"

    def __init__(self, server: OffsetRelayServer) -> None:
        self.server = server

    def readings(self) -> Iterable[Reading]:
        s = self.server.stats
        yield reading("connections_accepted", s.accepted)
        yield from by_label("connections_refused", "reason", s.refusals)
        yield reading("connections_open", s.active)
        yield from by_label("connection_closes", "reason", s.closes)
        yield reading("handshakes", s.handshakes_done)
        yield from by_label("handshake_failures", "reason", s.handshake_failures)
        yield reading("pairings", s.tunnels_opened)
        yield reading("sessions_active", s.tunnels_active)
        yield reading("relayed_bytes", s.bytes_to_acceptor, direction="to_acceptor")
        yield reading("relayed_bytes", s.bytes_to_connector, direction="to_connector")
        yield reading("session_duration_seconds", s.session_durations)
        yield reading("pairing_latency_seconds", s.pairing_latency)
        yield reading("handshakes_in_progress", self.server.admission.handshakes)

    def totals(self) -> Totals:
        s = self.server.stats
        pending = sum(1 for c in self.server.connections.values() if c.state is State.PENDING)
        return Totals(s.active, s.tunnels_active, pending, s.bytes_forwarded)

    def limits(self) -> dict[str, Any]:
        cfg = self.server.config
        return {**asdict(cfg.limits), "max_frame": cfg.max_frame,
                "network-timeout": cfg.keepalive_timeout, "ping-interval": cfg.heartbeat_interval,
                "per-session-rate": cfg.session_rate, "global-rate": cfg.global_rate}

    def status(self) -> dict[str, Any]:
        s = self.server.stats
        return {"accepted": s.accepted, "refused": dict(s.refusals), "active": s.active,
                "handshakes": s.handshakes_done, "tunnelsOpened": s.tunnels_opened,
                "tunnelsActive": s.tunnels_active, "bytesToAcceptor": s.bytes_to_acceptor,
                "bytesToConnector": s.bytes_to_connector, "closes": dict(s.closes)}

    def sessions(self) -> list[dict[str, Any]]:
        now = self.server.loop.time()
        rows = []
        for conn in list(self.server.connections.values()):
            peer = conn.peer
            if conn.state is not State.TUNNEL or conn.connect_at is None or peer is None:
                continue
            rows.append({"id": str(conn.conn_id), "a": conn.ip, "b": peer.ip, "bytes_ab": conn.bytes_out,
                         "bytes_ba": peer.bytes_out, "duration": max(0.0, now - conn.spliced_at),
                         "idle": None})
        return rows

    def disconnect_session(self, ident: str) -> str | None:
        conn = self.server.connections.get(int(ident)) if ident.isdigit() else None
        if conn is None or conn.state is not State.TUNNEL:
            return f"no tunnel {ident!r}"
        conn.close("disconnected by the operator")
        return None
