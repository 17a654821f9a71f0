"""The relay's protocol mode as a state machine (sans-IO): joins, pings, connect requests, invitations.

The shell reports what happened on a protocol-mode (TLS) connection -- it opened with a device ID, a
message arrived, it closed, time passed -- and carries out the actions returned: send a message, close
a connection (after what was sent is flushed), close a forwarded session. Connections are opaque
hashable handles of the shell's choosing.

Behaviour follows strelaysrv (``cmd/strelaysrv/listener.go``): a device joins with JoinRelayRequest
(token checked on private relays, RelayFull when over limits, "already connected" when the device is
joined on another connection); any connection may send ConnectRequest for a joined device, which answers
the requester with a SessionInvitation (ServerSocket false) and the joined device with one naming the
requester (ServerSocket true), then closes the requester. Every received message pushes the network
timeout back; every ping interval the relay pings a joined connection, and closes one that has not
joined. When a joined device leaves, its active sessions are closed so its peer notices at once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from natrelay.engine.timers import TimerWheel
from natrelay.syncthing import xdr
from natrelay.syncthing.deviceid import DEVICE_ID_LENGTH, format_device_id
from natrelay.syncthing.sessions import Session, SessionTable

C = TypeVar("C", bound=Hashable)


@dataclass(frozen=True)
class RelayConfig:
    """What the protocol mode needs to know (times in seconds)."""

    session_address: bytes = b""
    """Advertised in invitations: 4 or 16 bytes of IP, or empty for "the address you reached me on"."""
    session_port: int = 22067
    token: str = ""
    ping_interval: float = 60.0
    network_timeout: float = 120.0
    message_timeout: float = 60.0

    def __post_init__(self) -> None:
        if len(self.session_address) not in (0, 4, 16):
            raise ValueError("session_address must be empty, 4 or 16 bytes")
        if not 0 <= self.session_port <= 0xFFFF:
            raise ValueError(f"session_port must be 0..65535, got {self.session_port}")
        for name in ("ping_interval", "network_timeout", "message_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, slots=True)
class Send(Generic[C]):
    conn: C
    message: xdr.Message


@dataclass(frozen=True, slots=True)
class Close(Generic[C]):
    """Close after flushing what was sent; ``reason`` is for the log."""

    conn: C
    reason: str
    abort: bool = False
    """Drop without flushing: the peer is silent, flushing to it would only hold resources."""


@dataclass(frozen=True, slots=True)
class EndSession:
    """Close a session's connections (pending or forwarding)."""

    session: Session[Any]
    reason: str


Action = Send[C] | Close[C] | EndSession


class _Conn:
    __slots__ = ("closing", "device_id", "joined", "last_rx", "next_ping")

    def __init__(self, device_id: bytes, now: float, ping_interval: float) -> None:
        self.device_id = device_id
        self.joined = False
        self.closing = False
        self.last_rx = now
        self.next_ping = now + ping_interval


class ProtocolRelay(Generic[C]):
    """Every protocol-mode connection of one relay, the joined devices, and the session table.

    ``random_key`` returns fresh random bytes (the shell passes ``os.urandom``; tests a counter).
    ``over_limit`` is the shell's verdict on its descriptor and session limits.
    """

    def __init__(self, config: RelayConfig, sessions: SessionTable[Any], random_key: Callable[[int], bytes],
                 over_limit: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.sessions = sessions
        self._random_key = random_key
        self._over_limit = over_limit
        self._conns: dict[C, _Conn] = {}
        self.joined: dict[bytes, C] = {}
        self._wheel: TimerWheel[C] = TimerWheel()
        self.invitations = 0
        self.refused_full = 0

    def __len__(self) -> int:
        return len(self._conns)

    # ------------------------------------------------------------ events
    def opened(self, conn: C, device_id: bytes, now: float) -> None:
        """A TLS handshake finished; ``device_id`` is the SHA-256 of the client's certificate."""
        if conn in self._conns:
            raise ValueError("connection opened twice")
        state = _Conn(device_id, now, self.config.ping_interval)
        self._conns[conn] = state
        self._arm(conn, state)

    def received(self, conn: C, msg: xdr.Message, now: float) -> list[Action[C]]:
        state = self._conns.get(conn)
        if state is None or state.closing:
            return []
        state.last_rx = now
        self._arm(conn, state)
        if isinstance(msg, xdr.JoinRelayRequest):
            return self._join(conn, state, msg)
        if isinstance(msg, xdr.ConnectRequest):
            return self._connect(conn, state, msg, now)
        if isinstance(msg, xdr.Ping):
            return [Send(conn, xdr.Pong())]
        if isinstance(msg, xdr.Pong):
            return []
        return self._close(conn, state, "unexpected message", xdr.RESPONSE_UNEXPECTED_MESSAGE)

    def closed(self, conn: C) -> list[Action[C]]:
        """The connection is gone (either side closed it, or it failed); forget it."""
        state = self._conns.pop(conn, None)
        if state is None:
            return []
        self._wheel.cancel(conn)
        actions: list[Action[C]] = []
        if state.joined and self.joined.get(state.device_id) is conn:
            del self.joined[state.device_id]
            # Its peers learn at once that it is gone, and a restarting device is not refused as
            # "already connected" by sessions of its former self.
            for s in self.sessions.sessions_of(state.device_id):
                actions.append(EndSession(s, f"{format_device_id(state.device_id)} left the relay"))
        return actions

    def tick(self, now: float) -> list[Action[C]]:
        """Deadlines that passed: network timeouts, pings, join deadlines."""
        actions: list[Action[C]] = []
        cfg = self.config
        for conn in self._wheel.expired(now):
            state = self._conns.get(conn)
            if state is None or state.closing:
                continue
            if now >= state.last_rx + cfg.network_timeout:
                actions += self._close(conn, state, f"silent for {cfg.network_timeout:g} s", abort=True)
                continue
            if now >= state.next_ping:
                if not state.joined:
                    actions += self._close(conn, state, f"did not join within {cfg.ping_interval:g} s")
                    continue
                state.next_ping = now + cfg.ping_interval
                actions.append(Send(conn, xdr.Ping()))
                if self._over_limit() and not self.sessions.has_sessions(state.device_id):
                    self.refused_full += 1
                    actions += self._close(conn, state, "idle while the relay is over its limits",
                                           xdr.RelayFull())
                    continue
            self._arm(conn, state)
        return actions

    def next_deadline(self) -> float | None:
        return self._wheel.next_deadline()

    # ------------------------------------------------------------ messages
    def _join(self, conn: C, state: _Conn, msg: xdr.JoinRelayRequest) -> list[Action[C]]:
        token = self.config.token
        if token and msg.token != token:
            return self._close(conn, state, "wrong token", xdr.RESPONSE_WRONG_TOKEN)
        if self._over_limit():
            self.refused_full += 1
            return self._close(conn, state, "relay full", xdr.RelayFull())
        if state.device_id in self.joined:
            return self._close(conn, state, "device already joined", xdr.RESPONSE_ALREADY_CONNECTED)
        self.joined[state.device_id] = conn
        state.joined = True
        return [Send(conn, xdr.RESPONSE_SUCCESS)]

    def _connect(self, conn: C, state: _Conn, msg: xdr.ConnectRequest, now: float) -> list[Action[C]]:
        target = msg.device_id
        peer = self.joined.get(target) if len(target) == DEVICE_ID_LENGTH else None
        if peer is None:
            return self._close(conn, state, "asked for a device that is not here", xdr.RESPONSE_NOT_FOUND)
        if self._over_limit():
            self.refused_full += 1
            return self._close(conn, state, "relay full", xdr.RelayFull())
        while True:
            server_key, client_key = self._random_key(32), self._random_key(32)
            try:
                self.sessions.create(target, state.device_id, server_key, client_key, now)
            except ValueError:
                continue  # a repeated key: astronomically rare with real randomness
            break
        self.invitations += 1
        cfg = self.config
        to_client = xdr.SessionInvitation(target, client_key, cfg.session_address, cfg.session_port, False)
        to_server = xdr.SessionInvitation(state.device_id, server_key, cfg.session_address,
                                          cfg.session_port, True)
        actions: list[Action[C]] = [Send(conn, to_client)]
        if peer is not conn:
            actions.append(Send(peer, to_server))
            actions += self._close(conn, state, "invitation sent")
        else:
            # A joined device asking for itself gets both invitations and keeps its connection.
            actions.append(Send(conn, to_server))
        return actions

    def _close(self, conn: C, state: _Conn, reason: str, last: xdr.Message | None = None, *,
               abort: bool = False) -> list[Action[C]]:
        """Send ``last``, close, and forget the connection now: its device may join again at once,
        even while the TLS shutdown of the old connection is still under way."""
        state.closing = True
        self._wheel.cancel(conn)
        out: list[Action[C]] = []
        if last is not None:
            out.append(Send(conn, last))
        out.append(Close(conn, reason, abort))
        out += self.closed(conn)
        return out

    def _arm(self, conn: C, state: _Conn) -> None:
        self._wheel.schedule(conn, min(state.next_ping, state.last_rx + self.config.network_timeout))
