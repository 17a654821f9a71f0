"""The router's shared pool of one-time relay keys and its selection rule (spec §6.6).

Relays upload keys; each connection request consumes one. The rule is the original's so that
load spreads the same way across mixed fleets: take from the relay holding the most keys (ties
go to the lowest router session ID), newest key first. Unlike the original (spec §12 bug 16),
a relay that cannot be used -- its session is ending, or it never said where peers should
connect -- is skipped rather than making the request fail while other relays still have keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from natrelay.aspia.proto import router_common_pb2

RelayKey = router_common_pb2.RelayKey


@dataclass(frozen=True, slots=True)
class TakenKey:
    relay_id: int
    key: router_common_pb2.RelayKey


class KeyPool:
    """Per-relay stacks of keys, keyed by the relay's router session ID."""

    def __init__(self) -> None:
        self._keys: dict[int, list[router_common_pb2.RelayKey]] = {}
        self.taken_total = 0

    def add(self, relay_id: int, keys: Sequence[router_common_pb2.RelayKey]) -> None:
        """Append ``keys`` to the relay's stack (an empty list is legal and changes nothing)."""
        if not keys:
            return
        stack = self._keys.setdefault(relay_id, [])
        for key in keys:
            copy = RelayKey()
            copy.CopyFrom(key)
            stack.append(copy)

    def remove_relay(self, relay_id: int) -> int:
        """Drop every key of a relay whose session ended; returns how many were dropped."""
        return len(self._keys.pop(relay_id, ()))

    def count(self, relay_id: int) -> int:
        return len(self._keys.get(relay_id, ()))

    @property
    def total(self) -> int:
        return sum(len(keys) for keys in self._keys.values())

    def relays(self) -> list[int]:
        """Relays holding at least one key, in session-ID order."""
        return sorted(self._keys)

    def take(self, usable: Callable[[int], bool] = lambda _relay_id: True) -> TakenKey | None:
        """Remove and return the key the selection rule picks among ``usable`` relays, or None."""
        best: int | None = None
        best_count = 0
        for relay_id in sorted(self._keys):
            count = len(self._keys[relay_id])
            # Strictly greater: the lowest session ID wins a tie, as in the original's map walk.
            if count > best_count and usable(relay_id):
                best, best_count = relay_id, count
        if best is None:
            return None
        stack = self._keys[best]
        key = stack.pop()
        if not stack:
            del self._keys[best]
        self.taken_total += 1
        return TakenKey(best, key)
