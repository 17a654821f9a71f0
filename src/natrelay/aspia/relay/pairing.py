"""Pending peer connections and the pairing rule (spec §7.3), sans-IO.

A pending connection is identified by whatever the shell uses (a hashable ``conn``). It gets a
deadline at accept time; once its ``PeerToRelay`` has been read, :meth:`Pairing.offer` checks it
against the key pool and either pairs it with an earlier connection presenting the same key ID
and byte-identical secret, or leaves it waiting. Roles are never looked at: any two connections
with the same credentials pair, in arrival order, as on the original.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from natrelay.aspia.crypto import open_relay_secret
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.messages import parse
from natrelay.aspia.proto import relay_peer_pb2
from natrelay.aspia.relay.keypool import KeyPool

PENDING_TIMEOUT = 30.0
"""A connection that has not paired this long after accept is closed (§7.3)."""

C = TypeVar("C", bound=Hashable)


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the router wrote into the secret about the two peers, kept for statistics (§7.4)."""

    client_address: str = ""
    client_user_name: str = ""
    host_address: str = ""
    host_id: int = 0

    @classmethod
    def from_secret(cls, secret: bytes) -> PeerInfo:
        """Parse the decrypted secret; one we cannot read still pairs, just without details.

        The secret's only job is to match byte for byte; its fields are informational, and
        refusing a pair over them would punish the peers for a router's quirk.
        """
        try:
            body = parse(relay_peer_pb2.PeerToRelay.Secret, secret)
        except AspiaProtocolError:
            return cls()
        return cls(body.client_address, body.client_user_name, body.host_address, body.host_id)


@dataclass(slots=True)
class _Pending(Generic[C]):
    conn: C
    deadline: float
    key_id: int | None = None
    secret: bytes = b""


@dataclass(frozen=True, slots=True)
class Paired(Generic[C]):
    """Two connections to join: ``first`` arrived (and presented its credentials) before ``second``."""

    first: C
    second: C
    key_id: int
    info: PeerInfo = field(default_factory=PeerInfo)


class Pairing(Generic[C]):
    """The relay's pending sessions, bounded in number and in time."""

    def __init__(
        self, pool: KeyPool, *, timeout: float = PENDING_TIMEOUT, max_pending: int | None = None
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        self.max_pending = max_pending
        self._pending: dict[C, _Pending[C]] = {}
        self._waiting: dict[tuple[int, bytes], list[C]] = {}
        self._heap: list[tuple[float, int, C]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, conn: object) -> bool:
        return conn in self._pending

    def add(self, conn: C, now: float) -> bool:
        """A TCP connection was accepted; False means "over the limit, close it now"."""
        if self.max_pending is not None and len(self._pending) >= self.max_pending:
            return False
        self._pending[conn] = _Pending(conn, now + self.timeout)
        self._seq += 1
        heapq.heappush(self._heap, (now + self.timeout, self._seq, conn))
        return True

    def offer(self, conn: C, message: relay_peer_pb2.PeerToRelay) -> Paired[C] | None:
        """``conn`` presented ``message``: pair it, or keep it waiting (None).

        Raises :class:`AspiaProtocolError` for an unknown key or a secret that does not decrypt;
        the caller closes that connection (it has already been forgotten here).
        """
        entry = self._pending.get(conn)
        if entry is None or entry.key_id is not None:
            raise ValueError("offer() needs a pending connection that has not offered yet")
        key = self.pool.get(message.key_id)
        if key is None:
            self.remove(conn)
            raise AspiaProtocolError(f"unknown or already used key {message.key_id}", ErrorCode.ACCESS_DENIED)
        try:
            secret = open_relay_secret(key.pair, key.iv, message.public_key, message.data)
        except AspiaProtocolError:
            self.remove(conn)
            raise
        slot = (message.key_id, secret)
        waiting = self._waiting.get(slot)
        if not waiting:
            entry.key_id, entry.secret = slot
            self._waiting.setdefault(slot, []).append(conn)
            return None
        first = waiting.pop(0)
        if not waiting:
            del self._waiting[slot]
        del self._pending[first]
        del self._pending[conn]
        if not self.pool.pair(message.key_id):  # pragma: no cover - get() just found it
            raise AspiaProtocolError(f"key {message.key_id} vanished while pairing")
        # Any other connection still waiting on this key can never pair now: the key is gone.
        return Paired(first, conn, message.key_id, PeerInfo.from_secret(secret))

    def remove(self, conn: C) -> bool:
        """Forget a pending connection (it closed, or failed); True if it was pending."""
        entry = self._pending.pop(conn, None)
        if entry is None:
            return False
        if entry.key_id is not None:
            slot = (entry.key_id, entry.secret)
            waiting = self._waiting.get(slot)
            if waiting is not None:
                waiting.remove(conn)
                if not waiting:
                    del self._waiting[slot]
        return True

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, conn = heap[0]
            entry = self._pending.get(conn)
            if entry is not None and entry.deadline == when:
                return when
            heapq.heappop(heap)  # paired or closed since
        return None

    def expired(self, now: float) -> list[C]:
        """Connections whose 30 s are up; they are forgotten here and must be closed."""
        out: list[C] = []
        while (when := self.next_deadline()) is not None and when <= now:
            _, _, conn = heapq.heappop(self._heap)
            self.remove(conn)
            out.append(conn)
        return out
