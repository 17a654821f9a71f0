"""One structure for the coarse deadlines of every session and connection.

A relay with 10,000 sessions must not keep 10,000 timer handles (each one a heap
entry and an object inside the event loop) nor poll its sessions.  Instead every
deadline lives in this single min-heap keyed by whatever the caller uses to name
its sessions, and the asyncio side (:mod:`natrelay.engine.clock`) keeps exactly one
loop timer for the earliest of them.

Idle deadlines move later all the time (each byte forwarded pushes them back), so
moving a deadline later must cost a dict store and nothing else.  The heap may
therefore hold an entry that is *earlier* than the key's real deadline; when that
entry surfaces it is re-pushed at the real deadline.  Moving a deadline earlier
pushes a new entry and orphans the old one.  Orphans are recognised by a sequence
number and dropped when they surface, and the heap is rebuilt if they ever
outnumber the live entries, so memory stays proportional to the number of keys.

This module is sans-IO: it never reads a clock; callers pass ``now``.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["TimerWheel"]

K = TypeVar("K", bound=Hashable)

# Rebuild the heap once orphaned entries exceed live ones by this factor (plus a
# small floor so tiny wheels never bother).
_COMPACT_FACTOR = 2
_COMPACT_FLOOR = 64


class TimerWheel(Generic[K]):
    """Many coarse deadlines in one lazy min-heap.

    Every key has at most one *current* heap entry, whose time is never later than
    the key's deadline; that invariant is what lets :meth:`next_deadline` and
    :meth:`expired` look only at the top of the heap.
    """

    __slots__ = ("_deadline", "_entry", "_heap", "_seq")

    def __init__(self) -> None:
        self._deadline: dict[K, float] = {}
        # key -> sequence number of its current heap entry
        self._entry: dict[K, int] = {}
        # (time, seq, key): seq breaks ties so keys themselves are never compared
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._deadline)

    def __contains__(self, key: object) -> bool:
        return key in self._deadline

    def deadline(self, key: K) -> float | None:
        """The key's current deadline, or None when it is not armed."""
        return self._deadline.get(key)

    def schedule(self, key: K, when: float) -> None:
        """Arm ``key`` at ``when``, replacing any earlier or later deadline."""
        old = self._deadline.get(key)
        self._deadline[key] = when
        if old is not None and when >= old:
            # The existing entry is at or before ``old`` <= ``when``: it will
            # surface in time and be re-pushed then.  This is the hot path.
            return
        self._push(key, when)

    def cancel(self, key: K) -> None:
        """Disarm ``key``; unknown keys are ignored so callers need not track state."""
        if self._deadline.pop(key, None) is not None:
            del self._entry[key]
            self._maybe_compact()

    def next_deadline(self) -> float | None:
        """The earliest current deadline, or None when nothing is armed."""
        heap = self._heap
        while heap:
            when, seq, key = heap[0]
            if self._entry.get(key) != seq:
                heapq.heappop(heap)
                continue
            real = self._deadline[key]
            if real != when:
                self._seq += 1
                self._entry[key] = self._seq
                heapq.heapreplace(heap, (real, self._seq, key))
                continue
            return when
        return None

    def expired(self, now: float) -> list[K]:
        """Remove and return the keys whose deadline is at or before ``now``.

        Keys come out in deadline order.  Callers re-arm what they want to keep.
        """
        out: list[K] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, seq, key = heap[0]
            if self._entry.get(key) != seq:
                heapq.heappop(heap)
                continue
            real = self._deadline[key]
            if real != when:
                # Moved later since this entry was pushed: re-queue at the real
                # deadline, even if that too has passed, so keys leave in order.
                self._seq += 1
                self._entry[key] = self._seq
                heapq.heapreplace(heap, (real, self._seq, key))
                continue
            heapq.heappop(heap)
            del self._deadline[key]
            del self._entry[key]
            out.append(key)
        return out

    def clear(self) -> None:
        """Disarm everything."""
        self._deadline.clear()
        self._entry.clear()
        self._heap.clear()

    def _push(self, key: K, when: float) -> None:
        self._seq += 1
        self._entry[key] = self._seq
        heapq.heappush(self._heap, (when, self._seq, key))
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        heap = self._heap
        live = len(self._entry)
        if len(heap) <= _COMPACT_FACTOR * live + _COMPACT_FLOOR:
            return
        entry = self._entry
        deadline = self._deadline
        # Rebuilding at the real deadlines also retires the lazy early entries.
        self._heap = [(deadline[k], s, k) for (_, s, k) in heap if entry.get(k) == s]
        heapq.heapify(self._heap)
