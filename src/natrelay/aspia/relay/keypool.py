"""The relay's one-time X25519 keys and the MaxPeerCount accounting (spec §7.1, §7.2), sans-IO.

Capacity is enforced through key issuance: while the router link is up the pool holds exactly
``MaxPeerCount - active sessions`` keys (some of them already handed to peers by the router),
and every event that consumes capacity or gives it back maps to one method here, each returning
the new keys to announce. Keeping that arithmetic in one place, with the clock passed in, is what
lets the tests check the invariant under fake time and what fixes two 2.7.0 bugs by
construction: the initial count is clamped at zero (§12 bug 2) and every session end, idle drops
included, gives its slot back (§12 bug 1).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from natrelay.aspia.crypto import IV_SIZE, RandomBytes, X25519KeyPair, default_random
from natrelay.aspia.proto import router_common_pb2

KEY_EXPIRY = 30.0
"""A key the router handed out is dropped this long after ``key_used`` unless it paired (§7.1)."""
ANNOUNCE_DELAY = 0.1
"""How long replacement keys may wait to travel together while the router holds plenty."""
ANNOUNCE_LOW_STOCK = 256
"""Below this many keys left to hand out on the router, replacements go at once, as on 2.7.0."""
ANNOUNCE_MAX_BATCH = 1024
"""A batch this large goes at once: it bounds the message and the router's work on it."""
_KEY_ID_MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class PoolKey:
    """One one-time key: the private half stays here, the rest goes to the router."""

    key_id: int
    pair: X25519KeyPair
    iv: bytes

    def to_proto(self) -> router_common_pb2.RelayKey:
        return router_common_pb2.RelayKey(
            key_id=self.key_id,
            type=router_common_pb2.RelayKey.TYPE_X25519,
            encryption=router_common_pb2.RelayKey.ENCRYPTION_CHACHA20_POLY1305,
            public_key=self.pair.public_bytes,
            iv=self.iv,
        )


class KeyPool:
    """Keys by ID, their expiry deadlines, and the count of active sessions.

    While ``connected`` is False nothing is announced: the router could not receive it (§12 bug
    6), and the next successful (re)authentication announces ``MaxPeerCount - active`` fresh keys
    anyway, which is exactly the capacity a key made now would have stood for.

    A relay registered with several routers of a cluster (``RouterAddresses``) splits the pool
    between its ``links`` router links, numbered from 0: every key belongs to exactly one link,
    so no two routers can hand out the same key. A link that connects gets its share of the
    capacity (split between the links not known to be down), as far as the others left it free;
    a link that is lost or cannot connect takes its keys along and its capacity goes to the links
    left at once; every later key (a session ended, a key expired) goes to the connected link
    holding the fewest, so the split evens out again as keys are used. With one link all of
    this reduces to the single-router behaviour above.

    A router that comes back would otherwise get keys only as the others' are used, so when a
    link (re)connects :meth:`rebalance` asks the links holding more than their share to give
    back free keys (not handed out). A key is only taken back once its holder has confirmed
    that it dropped it (:meth:`withdrawn`): until then it stays valid and counted, since the
    holder may hand it out before the request reaches it. Each confirmed key is replaced by a
    fresh one (a new ID) for the link holding the fewest, so the capacity never exceeds
    ``MaxPeerCount`` and no key ID is ever announced to two routers. A holder that never
    confirms (the original router ignores the request) keeps its keys, as before.
    """

    def __init__(
        self, max_peer_count: int, *, expiry: float = KEY_EXPIRY, random_bytes: RandomBytes = default_random,
        links: int = 1,
    ) -> None:
        if max_peer_count < 0:
            raise ValueError("max_peer_count must not be negative")
        self.max_peer_count = max_peer_count
        self.expiry = expiry
        self._random = random_bytes
        self._keys: dict[int, PoolKey] = {}
        self._expiring: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []
        self._next_id = 0
        self.active = 0
        self._owner: dict[int, int] = {}
        """key ID -> router link holding it."""
        self._held: dict[int, int] = {}
        """router link -> keys it holds (the values of ``_owner`` counted): kept up to date with
        every change of ``_owner``, because counting them afresh for each replacement key cost
        a scan of the whole pool (12,000 keys: most of the relay's CPU per pairing)."""
        self.links = max(1, links)
        """Router links configured; the capacity is split between those not known to be down."""
        self._links: set[int] = set()
        self._down: set[int] = set()
        self._withdrawing: set[int] = set()
        """Keys asked back from their holder, not confirmed yet (still valid)."""
        self._requests: dict[int, deque[list[int]]] = {}
        """link -> withdrawal requests it was sent, oldest first (it answers each, in order)."""
        self._to_send: dict[int, list[int]] = {}
        """link -> key IDs to ask back, not sent yet (see :meth:`take_withdrawals`)."""

    @property
    def connected(self) -> bool:
        return bool(self._links)

    def owner(self, key_id: int) -> int | None:
        """The router link a key was announced to."""
        return self._owner.get(key_id)

    def held_by(self, link: int) -> int:
        return self._held.get(link, 0)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def get(self, key_id: int) -> PoolKey | None:
        """The key a peer names in PeerToRelay, if it is still valid."""
        return self._keys.get(key_id)

    @property
    def handed_out(self) -> int:
        """Keys the router reported as used that have neither paired nor expired yet."""
        return len(self._expiring)

    # ------------------------------------------------------------- router link
    def on_connected(self, link: int = 0) -> list[PoolKey]:
        """Authenticated to a router: fresh keys for it, ``MaxPeerCount - active`` with one router.

        With several links it gets its fair share of the capacity, as far as the other links
        have left any free (never negative).
        """
        self._clear(link)
        self._links.add(link)
        self._down.discard(link)
        room = max(0, self.max_peer_count - self.active)
        share = -(-room // max(1, self.links - len(self._down)))
        return self._generate(max(0, min(share, room - len(self._keys))), link)

    def on_disconnected(self, link: int = 0) -> list[PoolKey]:
        """Router link lost (or never made): its keys are void, peers holding offers will fail (§7.2).

        Returns replacement keys for the links still connected (their :meth:`owner` says which),
        so the capacity the lost router held moves to the routers left.
        """
        self._clear(link)
        self._links.discard(link)
        self._down.add(link)
        return self._generate(max(0, self.max_peer_count - self.active - len(self._keys)))

    def key_used(self, key_id: int, now: float) -> None:
        """The router handed ``key_id`` to a pair of peers: it must pair within ``expiry`` seconds.

        A key that already paired, or that we never issued, is ignored, as on the original.
        """
        if key_id in self._keys and key_id not in self._expiring:
            self._withdrawing.discard(key_id)  # handed out before the holder saw the request
            when = now + self.expiry
            self._expiring[key_id] = when
            heapq.heappush(self._heap, (when, key_id))

    # ------------------------------------------------------------- rebalancing
    def rebalance(self) -> int:
        """Ask links holding more than their share for free keys, for the links holding less.

        Call when a link (re)connects. The requests wait in :meth:`take_withdrawals`; returns
        how many keys were asked back. Nothing happens with one link or one connected link.
        """
        if self.links < 2 or len(self._links) < 2:
            return 0
        room = max(0, self.max_peer_count - self.active)
        low, high = room // len(self._links), -(-room // len(self._links))
        held = {n: 0 for n in self._links}
        free: dict[int, list[int]] = {n: [] for n in self._links}
        for key_id, owner in self._owner.items():
            if owner in held:
                held[owner] += 1
                if key_id in self._withdrawing:
                    held[owner] -= 1  # on its way to another link already
                elif key_id not in self._expiring:
                    free[owner].append(key_id)
        wanted = sum(max(0, low - count) for count in held.values()) - len(self._withdrawing)
        asked = 0
        for link in sorted(held, key=lambda n: -held[n]):
            give = min(wanted - asked, held[link] - high, len(free[link]))
            if give <= 0:
                continue
            ids = free[link][-give:]  # the newest: the router hands out its newest first, so
            self._withdrawing.update(ids)  # the oldest, handed out last, are the least likely to race
            self._to_send.setdefault(link, []).extend(ids)
            asked += give
        return asked

    def take_withdrawals(self, link: int) -> list[int]:
        """Key IDs to ask ``link`` to give back now (its router must answer with :meth:`withdrawn`)."""
        ids = self._to_send.pop(link, [])
        if ids:
            self._requests.setdefault(link, deque()).append(ids)
        return ids

    def withdrawn(self, link: int, key_ids: list[int]) -> list[PoolKey]:
        """``link``'s router answered its oldest withdrawal request: it dropped ``key_ids``.

        Those keys are void and each is replaced by a fresh key for the link holding the fewest;
        the keys of the request it did not drop (it had handed them out) stay with it.
        """
        pending = self._requests.get(link)
        if not pending:
            return []  # an answer to nothing we asked: ignore it
        asked = pending.popleft()
        self._withdrawing.difference_update(asked)
        dropped = set(key_ids).intersection(asked)
        count = 0
        for key_id in dropped:
            if self._owner.get(key_id) == link and key_id not in self._expiring:
                del self._keys[key_id]
                self._disown(key_id)
                count += 1
        return self._generate(count)

    # ---------------------------------------------------------------- sessions
    def pair(self, key_id: int) -> bool:
        """Two peers paired on ``key_id``: consume it and count an active session.

        Returns False if the key is gone (expired or consumed in the meantime), in which case
        the pair must be refused.
        """
        if self._keys.pop(key_id, None) is None:
            return False
        self._expiring.pop(key_id, None)
        self._disown(key_id)
        self._withdrawing.discard(key_id)
        self.active += 1
        return True

    def session_ended(self) -> list[PoolKey]:
        """An active session ended, for whatever reason: its slot comes back as one new key."""
        self.active = max(0, self.active - 1)
        if not self.connected or len(self._keys) + self.active >= self.max_peer_count:
            return []
        return self._generate(1)

    # ------------------------------------------------------------------- timer
    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do."""
        heap = self._heap
        while heap and self._expiring.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # paired or cleared since it was scheduled
        return heap[0][0] if heap else None

    def expire(self, now: float) -> tuple[list[int], list[PoolKey]]:
        """Drop handed-out keys whose time is up; returns their IDs and one replacement each."""
        expired: list[int] = []
        heap = self._heap
        while (when := self.next_deadline()) is not None and when <= now:
            _, key_id = heapq.heappop(heap)
            del self._expiring[key_id]
            del self._keys[key_id]
            self._disown(key_id)
            expired.append(key_id)
        return expired, self._generate(len(expired)) if self.connected else []

    # --------------------------------------------------------------- internals
    def _clear(self, link: int) -> None:
        """Void the keys of ``link`` (all keys when it is the only link ever used)."""
        gone = [k for k, owner in self._owner.items() if owner == link]
        for key_id in gone:
            del self._keys[key_id]
            del self._owner[key_id]
            self._expiring.pop(key_id, None)  # stale heap entries are skipped by next_deadline
        self._held.pop(link, None)
        self._withdrawing.difference_update(gone)
        self._requests.pop(link, None)  # a new connection answers nothing of the old one
        self._to_send.pop(link, None)
        if not self._keys:
            self._heap.clear()

    def _generate(self, count: int, link: int | None = None) -> list[PoolKey]:
        """``count`` new keys for ``link``, or each for the connected link holding the fewest."""
        keys: list[PoolKey] = []
        if count <= 0 or not self._links:
            return keys
        held = self._held
        links = sorted(self._links)
        for _ in range(count):
            target = link if link is not None else min(links, key=lambda n: (held.get(n, 0), n))
            held[target] = held.get(target, 0) + 1
            key = PoolKey(self._next_id, X25519KeyPair.generate(self._random), self._random(IV_SIZE))
            # Process-lifetime counter, not reset on reconnect (§5.1); 32 bits on the wire.
            self._next_id = (self._next_id + 1) & _KEY_ID_MASK
            self._keys[key.key_id] = key
            self._owner[key.key_id] = target
            keys.append(key)
        return keys

    def _disown(self, key_id: int) -> None:
        owner = self._owner.pop(key_id, None)
        if owner is not None:
            self._held[owner] -= 1


class AnnounceBatch:
    """Replacement keys held back briefly, so that a busy relay sends one ``key_pool`` per batch.

    Every ended session gives one key back (§7.2). Sent one by one, as 2.7.0 does, each costs
    the relay a message and the router a decryption, a parse and a pool update, on every single
    pairing, and on a loaded machine that work competes with the next pairings for the CPU. A
    key the router does not know yet is only capacity in reserve, so nothing is lost by holding
    it for :data:`ANNOUNCE_DELAY` while the router still has at least ``low_stock`` keys to hand
    out; below that, and for every pool smaller than that, keys go out at once as before. The
    wire is unchanged: the router appends however many keys a ``key_pool`` carries (§6.5).
    """

    def __init__(self, pool: KeyPool, *, delay: float = ANNOUNCE_DELAY, low_stock: int = ANNOUNCE_LOW_STOCK,
                 max_batch: int = ANNOUNCE_MAX_BATCH) -> None:
        if delay < 0 or low_stock < 0 or max_batch < 1:
            raise ValueError("delay and low_stock must not be negative, max_batch must be positive")
        self.pool = pool
        self.delay = delay
        self.low_stock = low_stock
        self.max_batch = max_batch
        self._held: list[PoolKey] = []
        self._due: float | None = None

    def __len__(self) -> int:
        return len(self._held)

    @property
    def router_stock(self) -> int:
        """Keys the router can still hand out: announced, and not reported used since."""
        return max(0, len(self.pool) - self.pool.handed_out - len(self._held))

    def add(self, keys: list[PoolKey], now: float) -> list[PoolKey]:
        """New keys to announce; returns what must be sent now (empty: held until the deadline)."""
        if not keys:
            return []
        self._held.extend(keys)
        if self.router_stock < self.low_stock or len(self._held) >= self.max_batch:
            return self.take()
        if self._due is None:
            self._due = now + self.delay
        return []

    def next_deadline(self) -> float | None:
        """When held keys must go out, or None when nothing is held."""
        return self._due

    def due(self, now: float) -> list[PoolKey]:
        """The held keys if their time has come, else nothing."""
        if self._due is None or now < self._due:
            return []
        return self.take()

    def take(self) -> list[PoolKey]:
        """Everything held, minus keys the pool has voided since (a lost router link clears it)."""
        held, self._held, self._due = self._held, [], None
        pool = self.pool
        return [key for key in held if pool.get(key.key_id) is key]

    def clear(self) -> None:
        """Forget held keys: the pool was voided, or regenerated in full for a new router link."""
        self._held.clear()
        self._due = None
