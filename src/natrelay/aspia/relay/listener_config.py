"""What the relay's peer listener is told: the peer side of relay.json, with times in seconds.

Kept apart from :mod:`natrelay.aspia.relay.server` because two readers need it without the
listener itself: :mod:`natrelay.aspia.relay.app` builds it from relay.json, and tests build
their own. The defaults here are the listener's; relay.json's own defaults are in
:mod:`natrelay.ops.aspia_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from natrelay.aspia.messages import MAX_PEER_TO_RELAY_SIZE
from natrelay.aspia.relay.pairing import PENDING_TIMEOUT
from natrelay.engine.floodguard import FloodLimits
from natrelay.engine.limits import Limits

MAX_BYTES_BEFORE_AUTH = 16 * 1024
MAX_SESSION = 24 * 3600.0
REPORT_INTERVAL = 60.0


@dataclass(frozen=True)
class PeerListenerConfig:
    """The peer side of relay.json, with times in seconds."""

    listen_host: str
    """Empty: every interface, IPv6 and IPv4 (``[::]`` dual-stack, as the original)."""
    port: int
    idle_timeout: float
    pending_timeout: float = PENDING_TIMEOUT
    max_message: int = MAX_PEER_TO_RELAY_SIZE
    workers: int = 0
    """Forwarding threads; 0 forwards on the listener's own loop."""
    session_rate: int = 0
    """Bytes per second per session, both directions together; 0 = no limit."""
    global_rate: int = 0
    """Bytes per second for all sessions together (split evenly over forwarding threads); 0 = none."""
    guard: FloodLimits = field(default_factory=FloodLimits)
    limits: Limits = field(default_factory=lambda: connection_limits(10_000, 256))
    """Open connections in total and per source (only the connection caps of ``Limits`` apply)."""
    max_bytes_before_auth: int = MAX_BYTES_BEFORE_AUTH
    """Bytes a connection may send up to the end of its PeerToRelay (4-byte length included)."""
    max_session: float = MAX_SESSION
    """Seconds a paired session may last; 0 = no cap."""
    report_interval: float = REPORT_INTERVAL
    """Seconds between info-level summaries of refusals (only when something changed)."""


def connection_limits(total: int, per_ip: int) -> Limits:
    """An :class:`Admission` rule set with only the total and per-source connection caps."""
    return Limits(max_connections=total, max_per_ip=per_ip, max_handshakes=0, max_listeners=0,
                  max_pending_per_listener=0)
