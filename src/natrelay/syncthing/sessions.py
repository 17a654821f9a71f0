"""Session-mode bookkeeping: invitations waiting for their two connections, and live sessions (sans-IO).

A ConnectRequest creates one :class:`Session` with two random keys, one per side. Each side opens a
plain connection and presents its key in a JoinSessionRequest; when both sides are there the shell hands
the two sockets to the forwarding engine. Everything is explicit state in one thread, so two joins that
arrive in the same instant both land (strelaysrv hands the second join to a goroutine that may not be
back yet and answers "already connected", losing the session). A key only answers "already connected"
when its side really holds a connection already.

Pending sessions expire ``timeout`` seconds after the invitation (strelaysrv's message timeout); their
deadlines live in the engine's :class:`~natrelay.engine.timers.TimerWheel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from natrelay.engine.timers import TimerWheel

C = TypeVar("C")

SERVER = 0
CLIENT = 1


@dataclass(eq=False)
class Session(Generic[C]):
    """One invitation: the joined device (``server_id``) and the device that asked (``client_id``)."""

    server_id: bytes
    client_id: bytes
    server_key: bytes
    client_key: bytes
    created: float
    conns: list[C | None] = field(default_factory=lambda: [None, None])
    active: bool = False
    closed: bool = False
    forward: object = None
    """The shell's forwarding handle once active."""

    def has_participant(self, device_id: bytes) -> bool:
        return device_id in (self.server_id, self.client_id)


@dataclass(frozen=True, slots=True)
class NotFound:
    """No pending session has this key (unknown, expired, or already complete)."""


@dataclass(frozen=True, slots=True)
class AlreadyConnected:
    """This key's side already holds a connection."""


@dataclass(frozen=True, slots=True)
class Waiting(Generic[C]):
    """Accepted; the other side has not joined yet."""

    session: Session[C]


@dataclass(frozen=True, slots=True)
class Paired(Generic[C]):
    """Both sides are here: forward ``server`` <-> ``client``."""

    session: Session[C]
    server: C
    client: C


JoinResult = NotFound | AlreadyConnected | Waiting[C] | Paired[C]


class SessionTable(Generic[C]):
    """Pending sessions by key (with a deadline each) and active sessions by device."""

    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("session join timeout must be positive")
        self.timeout = timeout
        self._by_key: dict[bytes, tuple[Session[C], int]] = {}
        self._pending: set[Session[C]] = set()
        self._active: set[Session[C]] = set()
        self._by_device: dict[bytes, set[Session[C]]] = {}
        self._wheel: TimerWheel[Session[C]] = TimerWheel()

    # ------------------------------------------------------------ queries
    @property
    def pending_keys(self) -> int:
        """Keys still waiting for a connection (strelaysrv's ``numPendingSessionKeys``)."""
        return len(self._by_key)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._active)

    def active_sessions(self) -> list[Session[C]]:
        return list(self._active)

    def has_sessions(self, device_id: bytes) -> bool:
        return any(s.active for s in self._by_device.get(device_id, ()))

    def next_deadline(self) -> float | None:
        return self._wheel.next_deadline()

    # ------------------------------------------------------------ changes
    def create(self, server_id: bytes, client_id: bytes, server_key: bytes, client_key: bytes,
               now: float) -> Session[C]:
        """A new pending session; the keys come from the caller (random in the shell)."""
        if server_key == client_key or server_key in self._by_key or client_key in self._by_key:
            raise ValueError("session keys must be fresh and distinct")
        s: Session[C] = Session(server_id, client_id, server_key, client_key, now)
        self._by_key[server_key] = (s, SERVER)
        self._by_key[client_key] = (s, CLIENT)
        self._pending.add(s)
        for dev in {server_id, client_id}:
            self._by_device.setdefault(dev, set()).add(s)
        self._wheel.schedule(s, now + self.timeout)
        return s

    def join(self, key: bytes, conn: C) -> JoinResult[C]:
        entry = self._by_key.get(key)
        if entry is None:
            return NotFound()
        s, side = entry
        if s.conns[side] is not None:
            return AlreadyConnected()
        s.conns[side] = conn
        other = s.conns[1 - side]
        if other is None:
            return Waiting(s)
        # Complete: no key of it may be used again.
        del self._by_key[s.server_key]
        del self._by_key[s.client_key]
        self._pending.discard(s)
        self._wheel.cancel(s)
        s.active = True
        self._active.add(s)
        server, client = s.conns[SERVER], s.conns[CLIENT]
        assert server is not None and client is not None
        return Paired(s, server, client)

    def leave(self, key: bytes, conn: C) -> bool:
        """A waiting connection went away: its side is free to join again (until the deadline)."""
        entry = self._by_key.get(key)
        if entry is None:
            return False
        s, side = entry
        if s.conns[side] is not conn:
            return False
        s.conns[side] = None
        return True

    def expired(self, now: float) -> list[Session[C]]:
        """Pending sessions past their deadline, removed; the caller closes their waiting connections."""
        out = self._wheel.expired(now)
        for s in out:
            self._forget(s)
        return out

    def end(self, s: Session[C]) -> None:
        """A session (pending or active) is over."""
        self._wheel.cancel(s)
        self._forget(s)

    def sessions_of(self, device_id: bytes) -> list[Session[C]]:
        return [s for s in self._by_device.get(device_id, ()) if s.active]

    def all_pending(self) -> list[Session[C]]:
        return list(self._pending)

    def _forget(self, s: Session[C]) -> None:
        if s.closed:
            return
        s.closed = True
        for key in (s.server_key, s.client_key):
            entry = self._by_key.get(key)
            if entry is not None and entry[0] is s:
                del self._by_key[key]
        self._pending.discard(s)
        self._active.discard(s)
        for dev in {s.server_id, s.client_id}:
            group = self._by_device.get(dev)
            if group is not None:
                group.discard(s)
                if not group:
                    del self._by_device[dev]
