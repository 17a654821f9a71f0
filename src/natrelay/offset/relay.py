"""Who pairs with whom on an Offset relay: listeners, half tunnels, accept and reject (sans-IO).

This is the relay's bookkeeping of spec §7.2-7.7 kept apart from any transport, in the way
magic-wormhole's transit relay keeps pending and active connections apart from its sockets:
the asyncio shell reports what a connection asked for (its authenticated key and its
``InitConnection``), and gets back *actions* to carry out. Time only comes in as ``now``.

Where the original misbehaves (spec §12.2) this machine does better, compatibly:

* a new Listen from a key that is already listening *replaces* the old listener (item 7);
* a pending connector that goes away is forgotten at once (item 8);
* several Connects from the same key to the same listener may be pending together. The
  original drops the second while the first waits, which would serialise a node that opens
  several tunnels at once. They are kept in arrival order: ``IncomingConnection`` is sent for
  each, and an ``Accept(pk)`` or ``Reject(pk)`` takes the oldest one. Any pairing of them is
  valid, because each tunnel runs its own end-to-end handshake with fresh nonces;
* notifications are never dropped (item 5): each one is an action for the shell to send,
  and the number pending per listener is capped instead;
* listeners are counted against their source (an address, or an IPv6 /64, as the shell
  decides) as well as in total, so that Listen registrations under random keys from a few
  hundred addresses cannot take every listener slot (the original has no cap at all).

The counting and the deadlines are the engine's (:class:`~natrelay.engine.slots.Slots` for the
listener caps, :class:`~natrelay.engine.timers.TimerWheel` for half-tunnel timeouts), as for
every other family; this module only says what they are for.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from natrelay.engine.slots import SlotCaps, SlotReasons, Slots
from natrelay.engine.timers import TimerWheel

ConnId = int


@dataclass(frozen=True)
class NotifyListener:
    """Send ``IncomingConnection{connector_key}`` on the listen connection ``listener``."""

    listener: ConnId
    connector_key: bytes


@dataclass(frozen=True)
class CloseConnection:
    """Close ``conn``; ``reason`` is for the log and the close counters, never for the wire.

    ``limit`` is set when a relay limit refused the connection (its counter code, e.g.
    ``listeners_per_ip``): the shell counts it as a refusal and ends the connection in the way
    that tells the client it met a limit, not an absent listener.
    """

    conn: ConnId
    reason: str
    limit: str | None = None


@dataclass(frozen=True)
class SpliceTunnel:
    """Join ``connector`` and ``acceptor``: forward each one's payloads to the other."""

    connector: ConnId
    acceptor: ConnId


Action = NotifyListener | CloseConnection | SpliceTunnel

_LISTENER_LIMITS = SlotReasons(total="listeners", per_source="listeners_per_ip")
"""The refusal codes of the listener caps (counter and metric labels, as before)."""


@dataclass
class _Listener:
    conn: ConnId
    key: bytes
    source: str = ""
    # connector key -> pending connector connections, oldest first
    pending: dict[bytes, deque[ConnId]] = field(default_factory=dict)
    pending_count: int = 0


@dataclass
class _HalfTunnel:
    listener_key: bytes
    connector_key: bytes


class RelayPairing:
    """The relay's table of listeners and half tunnels."""

    def __init__(self, *, half_tunnel_timeout: float, max_listeners: int = 0,
                 max_pending_per_listener: int = 0, max_listeners_per_source: int = 0) -> None:
        self.half_tunnel_timeout = half_tunnel_timeout
        self.max_pending_per_listener = max_pending_per_listener
        self._slots = Slots(SlotCaps(total=max_listeners, per_source=max_listeners_per_source),
                            _LISTENER_LIMITS)
        self._listeners: dict[bytes, _Listener] = {}
        self._listener_by_conn: dict[ConnId, _Listener] = {}
        self._half: dict[ConnId, _HalfTunnel] = {}
        self._deadlines: TimerWheel[ConnId] = TimerWheel()

    # ----------------------------------------------------------------- queries
    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    @property
    def half_tunnel_count(self) -> int:
        return len(self._half)

    def listeners_from(self, source: str) -> int:
        """Live listeners registered from ``source``."""
        return self._slots.held_by(source)

    @property
    def listener_sources(self) -> int:
        """Sources with a live listener (0 once every listener is gone)."""
        return self._slots.sources

    def is_listening(self, key: bytes) -> bool:
        return key in self._listeners

    def listener_conn(self, key: bytes) -> ConnId | None:
        listener = self._listeners.get(key)
        return listener.conn if listener else None

    def next_deadline(self) -> float | None:
        """When ``expire`` next has work to do (``None``: no half tunnel is pending)."""
        return self._deadlines.next_deadline()

    # ------------------------------------------------------------------ events
    def listen(self, conn: ConnId, key: bytes, source: str = "") -> list[Action]:
        """``InitConnection.listen`` from ``conn``, authenticated as ``key``, coming from ``source``."""
        actions: list[Action] = []
        old = self._listeners.get(key)
        slots = self._slots
        if old is None:
            refused = slots.check(source)
        else:  # a replacement is checked as if the old listener's slot were free already
            slots.give(old.source)
            refused = slots.check(source)
            slots.add(old.source)
        if refused is not None:
            return [self._refusal(conn, refused, source)]
        if old is not None:
            actions += self._drop_listener(old, "listener replaced by a new Listen from the same key")
            actions.append(CloseConnection(old.conn, "listener replaced by a new Listen from the same key"))
        slots.add(source)
        listener = _Listener(conn=conn, key=key, source=source)
        self._listeners[key] = listener
        self._listener_by_conn[conn] = listener
        return actions

    def _refusal(self, conn: ConnId, reason: str, source: str) -> CloseConnection:
        caps = self._slots.caps
        if reason == _LISTENER_LIMITS.per_source:
            return CloseConnection(conn, f"per-IP listener limit reached ({caps.per_source}) for {source}",
                                   limit=reason)
        return CloseConnection(conn, f"listener limit reached ({caps.total})", limit=reason)

    def connect(self, conn: ConnId, key: bytes, target: bytes, now: float) -> list[Action]:
        """``InitConnection.connect(target)`` from ``conn``, authenticated as ``key``."""
        listener = self._listeners.get(target)
        if listener is None:
            return [CloseConnection(conn, "connect to a key that is not listening")]
        cap = self.max_pending_per_listener
        if cap and listener.pending_count >= cap:
            return [CloseConnection(conn, f"pending connection limit reached ({cap}) for listener",
                                    limit="pending_per_listener")]
        listener.pending.setdefault(key, deque()).append(conn)
        listener.pending_count += 1
        self._half[conn] = _HalfTunnel(listener_key=target, connector_key=key)
        self._deadlines.schedule(conn, now + self.half_tunnel_timeout)
        return [NotifyListener(listener.conn, key)]

    def accept(self, conn: ConnId, key: bytes, initiator: bytes) -> list[Action]:
        """``InitConnection.accept(initiator)`` from ``conn``, authenticated as ``key``.

        The acceptor must hold the same identity as a live listener (spec §7.4).
        """
        listener = self._listeners.get(key)
        if listener is None:
            return [CloseConnection(conn, "accept from a key that is not listening")]
        connector = self._take_pending(listener, initiator)
        if connector is None:
            return [CloseConnection(conn, "accept with no pending connection from that key")]
        return [SpliceTunnel(connector=connector, acceptor=conn)]

    def reject(self, listener_conn: ConnId, connector_key: bytes) -> list[Action]:
        """``RejectConnection(connector_key)`` received on a listen connection."""
        listener = self._listener_by_conn.get(listener_conn)
        if listener is None:
            return []
        connector = self._take_pending(listener, connector_key)
        if connector is None:
            return []  # spec §7.5: nothing pending for that key is ignored
        return [CloseConnection(connector, "rejected by the listener")]

    def connection_closed(self, conn: ConnId) -> list[Action]:
        """``conn`` went away, for whatever reason. Forget everything that waits on it."""
        listener = self._listener_by_conn.get(conn)
        if listener is not None:
            return self._drop_listener(listener, "listener went away")
        half = self._half.get(conn)
        if half is not None:
            owner = self._listeners.get(half.listener_key)
            if owner is not None:
                self._unlink_pending(owner, half.connector_key, conn)
            self._forget_half(conn)
        return []

    def expire(self, now: float) -> list[Action]:
        """Close half tunnels whose timeout has passed (spec §7.7)."""
        actions: list[Action] = []
        for conn in self._deadlines.expired(now):
            half = self._half.pop(conn)
            owner = self._listeners.get(half.listener_key)
            if owner is not None:
                self._unlink_pending(owner, half.connector_key, conn)
            actions.append(CloseConnection(conn, "connect not accepted in time"))
        return actions

    # ----------------------------------------------------------------- helpers
    def _take_pending(self, listener: _Listener, connector_key: bytes) -> ConnId | None:
        queue = listener.pending.get(connector_key)
        if not queue:
            return None
        conn = queue.popleft()
        if not queue:
            del listener.pending[connector_key]
        listener.pending_count -= 1
        self._forget_half(conn)
        return conn

    def _forget_half(self, conn: ConnId) -> None:
        del self._half[conn]
        self._deadlines.cancel(conn)

    @staticmethod
    def _unlink_pending(listener: _Listener, connector_key: bytes, conn: ConnId) -> None:
        queue = listener.pending.get(connector_key)
        if queue is None:
            return
        try:
            queue.remove(conn)
        except ValueError:
            return
        listener.pending_count -= 1
        if not queue:
            del listener.pending[connector_key]

    def _drop_listener(self, listener: _Listener, reason: str) -> list[Action]:
        del self._listeners[listener.key]
        del self._listener_by_conn[listener.conn]
        self._slots.give(listener.source)
        actions: list[Action] = []
        for queue in listener.pending.values():
            for conn in queue:
                self._forget_half(conn)
                actions.append(CloseConnection(conn, f"{reason} before accepting"))
        listener.pending.clear()
        listener.pending_count = 0
        return actions
