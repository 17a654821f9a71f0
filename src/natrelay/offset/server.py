"""``strelay``'s asyncio shell: accept connections, run their links, carry out pairing actions.

The rules live in ``RelayPairing`` (who pairs with whom) and ``Link`` (the wire protocol);
this module only moves bytes and time between them and the sockets. Every connection is
classified on its own clock (spec §12.2 item 2: the original handled first messages one at a
time, so one silent client stalled everyone), and every close is logged at debug level and
counted by reason.

Refusals by a limit are counted exactly by the limit's code (``RelayStats.refusals``) and logged
through a ``RefusalLog`` (one line per interval however many arrive). They end the connection
with a TCP reset (SO_LINGER 0), while an absent or rejecting listener gets an orderly close: the
protocol has no error message, and this is the one difference a client can observe and explain.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import itertools
import logging
import socket
import struct
from dataclasses import dataclass, field

from natrelay.engine.forward import rate_burst
from natrelay.engine.limits import EVICTED, Admission, Limits
from natrelay.engine.rates import TokenBucket
from natrelay.engine.refusals import RefusalLog
from natrelay.engine.sources import source_key
from natrelay.engine.stats import RelayStats
from natrelay.offset import constants as C
from natrelay.offset.channel import RandomPool
from natrelay.offset.crypto import CipherCache, Identity
from natrelay.offset.errors import ProtocolError
from natrelay.offset.link import Link
from natrelay.offset.messages import (
    Accept,
    Connect,
    Listen,
    decode_init_connection,
    decode_reject_connection,
    encode_incoming_connection,
)
from natrelay.offset.protocol import LinkProtocol, make_wheel
from natrelay.offset.relay import Action, CloseConnection, NotifyListener, RelayPairing, SpliceTunnel

log = logging.getLogger(__name__)

#: What a connector may send before its tunnel is accepted (its end-to-end handshake start,
#: normally well under 1 KiB). Past this the connection is closed rather than buffered.
MAX_PENDING_BYTES = 256 * 1024

#: How long the relay gives a new connection for the version exchange and the secure handshake.
#: Shorter than the protocol's 8 s (which a node still applies to itself): the handshake is two
#: round trips and a signature, so 4 s allows round trips of over a second, while a silent
#: connection holds a handshake slot of its address half as long as before.
RELAY_HANDSHAKE_TIMEOUT = 4.0

#: Refused connections are logged once, then summed up in one line per this many seconds.
REFUSAL_LOG_INTERVAL = 10.0

_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class RelayConfig:
    """Everything that tunes one relay process."""

    limits: Limits = field(default_factory=Limits)
    max_frame: int = C.DEFAULT_MAX_FRAME
    handshake_timeout: float = RELAY_HANDSHAKE_TIMEOUT
    init_timeout: float = C.INIT_CONNECTION_TIMEOUT
    keepalive_timeout: float = C.KEEPALIVE_TIMEOUT
    heartbeat_interval: float = C.HEARTBEAT_INTERVAL
    half_tunnel_timeout: float = C.HALF_TUNNEL_TIMEOUT
    refusal_log_interval: float = REFUSAL_LOG_INTERVAL
    session_rate: int = 0
    """Bytes per second per tunnel, both directions together; 0 = no limit."""
    global_rate: int = 0
    """Bytes per second for all tunnels together; 0 = no limit."""


class State(enum.Enum):
    HANDSHAKE = "handshake"
    AWAIT_INIT = "await-init"
    LISTENING = "listening"
    PENDING = "pending"
    TUNNEL = "tunnel"


def short_key(key: bytes | None) -> str:
    """A key as logs show it: the first characters of its URL-safe base64."""
    if key is None:
        return "?"
    return base64.urlsafe_b64encode(key).decode()[:10]


class RelayConnection(LinkProtocol):
    """One accepted connection, from handshake to close."""

    def __init__(self, server: OffsetRelayServer) -> None:
        super().__init__(server.make_link, server.timers)
        self.server = server
        self.conn_id = next(server.ids)
        self.state = State.HANDSHAKE
        self.peer: RelayConnection | None = None
        self.ip = "?"
        self._registered = False  # holds a connection slot and counts in stats.active
        self._in_handshake = False
        self._init_deadline: float | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.bucket: TokenBucket | None = None
        """The tunnel's rate limit, shared with the other end."""
        self._held: frozenset[str] = frozenset()
        """Why reading is paused: "backpressure" (the peer is full) and/or "rate" (no tokens).
        A frozenset: the empty one is shared, where an empty set cost 216 bytes per connection."""
        self.connect_at: float | None = None
        """When this node sent Connect (loop time): it is the connector of its tunnel."""
        self.spliced_at = 0.0
        self.bytes_out = 0
        """Bytes this end sent into its tunnel (what the dashboard shows per session)."""

    # ----------------------------------------------------------- admission
    def on_connected(self) -> bool:
        server = self.server
        assert self.transport is not None
        peername = self.transport.get_extra_info("peername")
        self.ip = str(peername[0]) if peername else "?"
        server.stats.accepted += 1
        admission = server.admission
        refusal = admission.admit(self.ip)
        evicted = None
        if refusal is None:
            start = admission.start_handshake(self.conn_id, self.ip,
                                              self.loop.time() + server.config.handshake_timeout)
            refusal, evicted = start.refusal, start.evicted
            if refusal is not None:
                admission.release(self.ip)  # never counted as active: give the slot back now
        if refusal is not None:
            server.refused(refusal.code, self.ip, refusal)
            self.refuse(f"refused: {refusal}")
            return False
        self._in_handshake = True
        self._registered = True
        server.stats.active += 1
        server.connections[self.conn_id] = self
        if evicted is not None:
            server.evict(evicted, start.evicted_message)
        return True

    def refuse(self, reason: str) -> None:
        """End the connection with a TCP reset: how this relay says "a limit refused you"."""
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.abort(reason)

    def on_established(self) -> None:
        self._end_handshake()
        self.server.stats.handshakes_done += 1
        self.state = State.AWAIT_INIT
        self._init_deadline = self.loop.time() + self.server.config.init_timeout

    def _end_handshake(self) -> None:
        if self._in_handshake:
            self._in_handshake = False
            self.server.admission.finish_handshake(self.conn_id)

    # ----------------------------------------------------------- messages
    def on_messages(self, messages: list[bytes]) -> None:
        for index, payload in enumerate(messages):
            if self.closing:
                return
            state = self.state
            if state is State.TUNNEL:
                self._forward(messages[index:])
                return
            if state is State.PENDING:
                self._buffer(payload)
            elif state is State.AWAIT_INIT:
                self._init(payload)
            elif state is State.LISTENING:
                try:
                    key = decode_reject_connection(payload)
                except ProtocolError as exc:
                    # spec §7.2: an unparsable payload ends the listener, as if it had closed.
                    self.close(f"unparsable payload on a listen connection: {exc}")
                    return
                self.server.apply(self.server.pairing.reject(self.conn_id, key))

    def _init(self, payload: bytes) -> None:
        self._init_deadline = None
        key = self.link.remote_public_key if self.link else None
        assert key is not None
        try:
            init = decode_init_connection(payload)
        except ProtocolError as exc:
            self.close(f"first payload is not an InitConnection: {exc}")
            return
        pairing = self.server.pairing
        if isinstance(init, Listen):
            self.state = State.LISTENING
            log.debug("conn %d: %s listens", self.conn_id, short_key(key))
            self.server.apply(pairing.listen(self.conn_id, key, source_key(self.ip)))
        elif isinstance(init, Connect):
            self.state = State.PENDING
            self.connect_at = self.loop.time()
            log.debug("conn %d: %s connects to %s", self.conn_id, short_key(key),
                      short_key(init.public_key))
            self.server.apply(pairing.connect(self.conn_id, key, init.public_key, self.loop.time()))
        elif isinstance(init, Accept):
            log.debug("conn %d: %s accepts %s", self.conn_id, short_key(key), short_key(init.public_key))
            self.server.apply(pairing.accept(self.conn_id, key, init.public_key))

    def _buffer(self, payload: bytes) -> None:
        self._pending_bytes += len(payload)
        if self._pending_bytes > MAX_PENDING_BYTES:
            self.close("too much data before the tunnel was accepted")
            return
        self._pending.append(payload)

    def _forward(self, payloads: list[bytes]) -> None:
        peer = self.peer
        if peer is None or peer.closing:
            return
        moved = sum(map(len, payloads))
        self.bytes_out += moved
        if self.bucket is not None or self.server.global_bucket is not None:
            self._charge(moved)
        stats = self.server.stats
        stats.bytes_forwarded += moved
        if self.connect_at is not None:
            stats.bytes_to_acceptor += moved
        else:
            stats.bytes_to_connector += moved
        peer.send_many(payloads)

    def splice(self, peer: RelayConnection) -> None:
        """Become one end of a tunnel; hand over anything buffered while pending."""
        self.peer = peer
        self.state = State.TUNNEL
        self.spliced_at = self.loop.time()
        if self._pending:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            self._forward(pending)

    # -------------------------------------------------------- backpressure
    def on_pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.hold("backpressure")

    def on_resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.release("backpressure")

    def hold(self, why: str) -> None:
        """Stop reading for ``why``; reading resumes once every reason is released."""
        if self.transport is None or self.closing:
            return
        if not self._held:
            self.transport.pause_reading()
        self._held = self._held | {why}

    def release(self, why: str) -> None:
        if why not in self._held:
            return
        self._held = self._held - {why}
        if not self._held and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    # ---------------------------------------------------------- rate limits
    def _charge(self, moved: int) -> None:
        """Take ``moved`` bytes from the tunnel's and the relay's buckets; out of tokens, stop reading
        until they are back (what was read is forwarded: the debt is paid by waiting)."""
        now = self.loop.time()
        wait = 0.0
        for bucket in (self.bucket, self.server.global_bucket):
            if bucket is not None:
                wait = max(wait, bucket.take(moved, now))
        if wait > 0 and "rate" not in self._held:
            self.hold("rate")
            self.loop.call_later(wait, self._rate_resume)

    def _rate_resume(self) -> None:
        wait = max((b.delay(self.loop.time()) for b in (self.bucket, self.server.global_bucket)
                    if b is not None), default=0.0)
        if wait > 0:
            self.loop.call_later(wait, self._rate_resume)
        else:
            self.release("rate")

    # -------------------------------------------------------------- timers
    def extra_deadline(self) -> float | None:
        return self._init_deadline

    def on_extra_timer(self, now: float) -> None:
        if self._init_deadline is not None and now >= self._init_deadline:
            self.close("no InitConnection in time")

    # --------------------------------------------------------------- close
    def on_closed(self, reason: str) -> None:
        server = self.server
        if self._in_handshake:
            server.stats.handshake_failures[_reason_class(reason)] += 1
        self._end_handshake()
        server.stats.closed(_reason_class(reason))
        if not self._registered:
            return  # refused on arrival: counted and logged (bounded) by ``server.refused``
        self._registered = False
        server.admission.release(self.ip)
        server.stats.active -= 1
        server.connections.pop(self.conn_id, None)
        log.debug("conn %d from %s closed (%s): %s", self.conn_id, self.ip, self.state.value, reason)
        if self.state is State.TUNNEL:
            peer, self.peer = self.peer, None
            if peer is not None:  # the first end to go ends the tunnel; the second finds no peer
                server.stats.tunnels_active -= 1
                server.stats.session_durations.observe(self.loop.time() - self.spliced_at)
                peer.peer = None
                peer.close("the other end of the tunnel closed")
        self._pending.clear()
        server.apply(server.pairing.connection_closed(self.conn_id))


def _reason_class(reason: str) -> str:
    """The counter a close reason is filed under: its text up to the first colon."""
    return reason.split(":", 1)[0]


class OffsetRelayServer:
    """An Offset relay: listeners, connectors and acceptors paired by public key."""

    def __init__(self, identity: Identity, config: RelayConfig | None = None) -> None:
        self.identity = identity
        self.config = config or RelayConfig()
        self.loop = asyncio.get_running_loop()
        self.timers = make_wheel(self.loop)
        self.ciphers = CipherCache()
        """AEAD contexts of the busiest links; an idle session holds only its keys."""
        self.padding = RandomPool()
        """Padding bytes for every link's frames, drawn a block at a time."""
        self.admission = Admission(self.config.limits)
        self.stats = RelayStats()
        self.pairing = RelayPairing(
            half_tunnel_timeout=self.config.half_tunnel_timeout,
            max_listeners=self.config.limits.max_listeners,
            max_pending_per_listener=self.config.limits.max_pending_per_listener,
            max_listeners_per_source=self.config.limits.max_listeners_per_ip,
        )
        self.refusal_log = RefusalLog(self.config.refusal_log_interval)
        self._refusal_timer: asyncio.TimerHandle | None = None
        self.connections: dict[int, RelayConnection] = {}
        self.ids = itertools.count(1)
        self._servers: list[asyncio.Server] = []
        self._half_timer: asyncio.TimerHandle | None = None
        self.global_bucket = (TokenBucket(self.config.global_rate, rate_burst(self.config.global_rate),
                                          self.loop.time())
                              if self.config.global_rate else None)

    def make_link(self, now: float) -> Link:
        cfg = self.config
        return Link(self.identity, now=now, expected_remote=None, framed=True, version_prefix=True,
                    max_frame=cfg.max_frame, handshake_timeout=cfg.handshake_timeout,
                    keepalive_timeout=cfg.keepalive_timeout, heartbeat_interval=cfg.heartbeat_interval,
                    ciphers=self.ciphers, padding=self.padding)

    async def start(self, host: str | None, port: int) -> list[tuple[str, int]]:
        """Listen on ``host:port`` (``None``/"" = every interface); return the bound addresses."""
        server = await self.loop.create_server(
            lambda: RelayConnection(self), host or None, port, reuse_address=True, backlog=1024)
        self._servers.append(server)
        addrs: list[tuple[str, int]] = []
        for sock in server.sockets:
            name = sock.getsockname()
            addrs.append((str(name[0]), int(name[1])))
        return addrs

    def apply(self, actions: list[Action]) -> None:
        """Carry out what the pairing machine decided."""
        for action in actions:
            if isinstance(action, NotifyListener):
                listener = self.connections.get(action.listener)
                if listener is not None:
                    listener.send(encode_incoming_connection(action.connector_key))
            elif isinstance(action, CloseConnection):
                conn = self.connections.get(action.conn)
                if conn is not None:
                    if action.limit is None:
                        conn.close(action.reason)
                    else:
                        self.refused(action.limit, conn.ip, action.reason)
                        conn.refuse(f"refused: {action.reason}")
            elif isinstance(action, SpliceTunnel):
                connector = self.connections.get(action.connector)
                acceptor = self.connections.get(action.acceptor)
                if connector is None or acceptor is None:
                    continue
                self.stats.tunnels_opened += 1
                self.stats.tunnels_active += 1
                if connector.connect_at is not None:
                    self.stats.pairing_latency.observe(self.loop.time() - connector.connect_at)
                if self.config.session_rate:
                    rate = self.config.session_rate
                    acceptor.bucket = connector.bucket = TokenBucket(rate, rate_burst(rate), self.loop.time())
                acceptor.splice(connector)
                connector.splice(acceptor)
        self._arm_half_tunnels()

    def evict(self, conn_id: object, message: str) -> None:
        """End a handshake the admission evicted to make room (its slot is already free)."""
        conn = self.connections.get(conn_id) if isinstance(conn_id, int) else None
        if conn is None or conn.closing:
            return
        self.refused(EVICTED, conn.ip, message)
        conn.refuse(message)

    def refused(self, code: str, ip: str, message: str) -> None:
        """Count a refusal by the limit ``code`` exactly, and log it within the log's bound."""
        self.stats.refused_by(code)
        line = self.refusal_log.record(code, ip, message, self.loop.time())
        if line is not None:
            log.info("%s", line)
        when = self.refusal_log.deadline()
        if when is not None and self._refusal_timer is None:
            self._refusal_timer = self.loop.call_at(when, self._flush_refusals)

    def _flush_refusals(self) -> None:
        self._refusal_timer = None
        line = self.refusal_log.flush(self.loop.time())
        if line is not None:
            log.info("%s", line)
        when = self.refusal_log.deadline()
        if when is not None:
            self._refusal_timer = self.loop.call_at(when, self._flush_refusals)

    def status(self) -> dict[str, object]:
        """The counters and the gauges, for the stats log line (and status output)."""
        return {**self.stats.snapshot(), "gauges": self.gauges()}

    def gauges(self) -> dict[str, int]:
        """Every quantity that must return to zero when the load leaves (for tests and metrics)."""
        adm, pairing = self.admission, self.pairing
        return {
            "active": self.stats.active, "tunnels_active": self.stats.tunnels_active,
            "connections": len(self.connections), "admitted": adm.connections,
            "handshakes": adm.handshakes, "admission_sources": adm.sources,
            "listeners": pairing.listener_count, "listener_sources": pairing.listener_sources,
            "half_tunnels": pairing.half_tunnel_count,
        }

    def _arm_half_tunnels(self) -> None:
        """One loop timer for the earliest half-tunnel expiry."""
        when = self.pairing.next_deadline()
        if self._half_timer is not None:
            if when is not None and self._half_timer.when() <= when:
                return
            self._half_timer.cancel()
            self._half_timer = None
        if when is not None:
            self._half_timer = self.loop.call_at(when, self._expire_half_tunnels)

    def _expire_half_tunnels(self) -> None:
        self._half_timer = None
        self.apply(self.pairing.expire(self.loop.time()))

    async def close(self) -> None:
        """Stop accepting, close every connection, release the timers."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections.values()):
            conn.abort("relay shutting down")
        for server in self._servers:
            await server.wait_closed()
        if self._half_timer is not None:
            self._half_timer.cancel()
        if self._refusal_timer is not None:
            self._refusal_timer.cancel()
            self._refusal_timer = None
        line = self.refusal_log.flush(float("inf"))
        if line is not None:
            log.info("%s", line)
        self.timers.close()
