"""The Syncthing relay as an HTTP :class:`~natrelay.ops.http.source.Source` (metrics and dashboard).

Its strelaysrv-compatible ``/status`` stays where Syncthing's tools expect it (``-status-srv``,
:mod:`natrelay.syncthing.status`); this adds the Prometheus view and the dashboard rows. Bytes
and session ends come from the forwarding engine's exact totals (``first`` is the device whose
connection joined its session first).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from natrelay.engine.session import ForwardSession
from natrelay.ops.http.source import Reading, Source, Totals, by_label, reading
from natrelay.syncthing.deviceid import format_device_id
from natrelay.syncthing.server import SyncthingRelay


class SyncthingSource(Source):
    family = "syncthing"
    title = "Syncthing relay"

    def __init__(self, relay: SyncthingRelay) -> None:
        self.relay = relay

    def readings(self) -> Iterable[Reading]:
        relay = self.relay
        totals = relay.engine.totals
        yield reading("connections_open", relay.admission.connections)
        yield reading("handshakes_in_progress", relay.admission.handshakes)
        yield reading("pairings", relay.sessions_started)
        yield reading("sessions_active", relay.table.active)
        yield reading("pending_peers", relay.table.pending_keys)
        yield reading("relayed_bytes", totals.a_to_b, direction="first_to_second")
        yield reading("relayed_bytes", totals.b_to_a, direction="second_to_first")
        yield from by_label("session_ends", "reason", totals.reasons)
        yield reading("session_duration_seconds", totals.durations)

    def totals(self) -> Totals:
        relay = self.relay
        return Totals(relay.protocol_connections, relay.table.active, relay.table.pending_keys,
                      relay.bytes_proxied)

    def limits(self) -> dict[str, Any]:
        options = self.relay.options
        return {"per-session-rate": options.per_session_rate, "global-rate": options.global_rate,
                "max-sessions": options.max_sessions}

    def status(self) -> dict[str, Any]:
        return {"protocolConnections": self.relay.protocol_connections,
                "sessionsStarted": self.relay.sessions_started}

    def sessions(self) -> list[dict[str, Any]]:
        now = self.relay.loop.time()
        rows = []
        for index, s in enumerate(self.relay.table.active_sessions()):
            forward = s.forward
            if not isinstance(forward, ForwardSession):
                continue
            c = forward.counters
            rows.append({"id": str(index + 1), "a": format_device_id(s.server_id)[:15],
                         "b": format_device_id(s.client_id)[:15], "bytes_ab": c.a_to_b, "bytes_ba": c.b_to_a,
                         "duration": max(0.0, now - forward.started_at),
                         "idle": max(0.0, now - forward.last_activity)})
        return rows

    def disconnect_session(self, ident: str) -> str | None:
        sessions = [s for s in self.relay.table.active_sessions() if isinstance(s.forward, ForwardSession)]
        if not ident.isdigit() or not 1 <= int(ident) <= len(sessions):
            return f"no session {ident!r}"
        forward = sessions[int(ident) - 1].forward
        assert isinstance(forward, ForwardSession)
        forward.close("disconnected by the operator")
        return None
