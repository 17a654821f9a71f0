"""The relay's statistics message (spec §7.5), built from plain snapshots so it needs no sockets."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from natrelay.aspia.messages import make_envelope
from natrelay.aspia.proto import router_common_pb2, router_relay_pb2
from natrelay.aspia.relay.pairing import PeerInfo


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """One active session as the statistics report it; times are on the caller's clock."""

    session_id: int
    info: PeerInfo
    bytes_transferred: int
    started_at: float
    last_activity: float


def peer_connection(snap: SessionSnapshot, now: float) -> router_common_pb2.PeerConnection:
    """One ``PeerConnection`` entry. Idle time counts from the last byte, not lazily (§12 bug 14)."""
    return router_common_pb2.PeerConnection(
        session_id=snap.session_id,
        status=router_common_pb2.PEER_STATUS_ACTIVE,
        client_address=snap.info.client_address,
        client_user_name=snap.info.client_user_name,
        host_address=snap.info.host_address,
        host_id=snap.info.host_id,
        bytes_transferred=snap.bytes_transferred,
        duration=max(0, int(now - snap.started_at)),
        idle_time=max(0, int(now - snap.last_activity)),
    )


def relay_stat(
    sessions: Iterable[SessionSnapshot], uptime: float, now: float
) -> router_relay_pb2.RelayToRouter:
    """``RelayToRouter{relay_stat}``; sent even with no sessions, so the envelope field is forced present."""
    stat = router_relay_pb2.RelayStat(
        peer_connection=[peer_connection(s, now) for s in sessions], uptime=max(0, int(uptime))
    )
    return make_envelope(router_relay_pb2.RelayToRouter, "relay_stat", stat)
