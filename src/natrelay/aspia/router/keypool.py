"""The router's shared pool of one-time relay keys and its selection rule (spec §6.6).

Relays upload keys; each connection request consumes one. The rule is the original's so that
load spreads the same way across mixed fleets: take from the relay holding the most keys (ties
go to the lowest router session ID), newest key first. Unlike the original (spec §12 bug 16),
a relay that cannot be used -- its session is ending, or it never said where peers should
connect -- is skipped rather than making the request fail while other relays still have keys.

Relay health (issue 8): under the original rule a relay that announces the most keys receives
every pairing, so one fake relay uploading thousands of keys captured the whole pool. Here
the keys held per relay are capped (``add(..., cap=)``), and when the caller passes ``now`` the
relay that was handed the fewest keys recently (a count decaying with a half-life of
:data:`LOAD_HALF_LIFE`) goes first; the original rule only breaks ties. Pairings therefore
spread across relays whatever each one announces, and a relay cannot capture the pool by
announcing more keys or by reconnecting (its load decays, it does not reset to zero unfairly
for long: a new relay catches up within a few pairings).
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


LOAD_HALF_LIFE = 60.0
"""Seconds for a relay's recent hand-out count to halve."""


class KeyPool:
    """Per-relay stacks of keys, keyed by the relay's router session ID."""

    def __init__(self) -> None:
        self._keys: dict[int, list[router_common_pb2.RelayKey]] = {}
        self._load: dict[int, tuple[float, float]] = {}
        """relay ID -> (recent hand-outs, when last updated)."""
        self.taken_total = 0

    def add(self, relay_id: int, keys: Sequence[router_common_pb2.RelayKey], cap: int = 0) -> int:
        """Append ``keys`` to the relay's stack, keeping at most ``cap`` (0: no cap) of them.

        Returns how many were dropped for the cap (the oldest go: they are taken last anyway).
        """
        if not keys:
            return 0
        stack = self._keys.setdefault(relay_id, [])
        for key in keys:
            copy = RelayKey()
            copy.CopyFrom(key)
            stack.append(copy)
        dropped = 0
        if cap and len(stack) > cap:
            dropped = len(stack) - cap
            del stack[:dropped]
        return dropped

    def withdraw(self, relay_id: int, key_ids: Sequence[int], limit: int = 0) -> list[int]:
        """Drop the named keys of a relay that takes them back (``key_withdraw``); returns those dropped.

        Keys already handed out are not in the stack any more and are not in the answer, which
        is how the relay learns which ones it may give to another router. At most ``limit``
        (0: all) IDs of the request are looked at: a relay never holds more keys here than the
        cap, so a longer list is padding.
        """
        stack = self._keys.get(relay_id)
        if not stack:
            return []
        wanted = set(key_ids[:limit] if limit else key_ids)
        kept = [key for key in stack if key.key_id not in wanted]
        dropped = [key.key_id for key in stack if key.key_id in wanted]
        if kept:
            self._keys[relay_id] = kept
        else:
            del self._keys[relay_id]
        return dropped

    def remove_relay(self, relay_id: int) -> int:
        """Drop every key of a relay whose session ended; returns how many were dropped."""
        self._load.pop(relay_id, None)
        return len(self._keys.pop(relay_id, ()))

    def load(self, relay_id: int, now: float) -> float:
        """Keys handed out from this relay recently (decayed)."""
        value, updated = self._load.get(relay_id, (0.0, now))
        return float(value * 0.5 ** (max(0.0, now - updated) / LOAD_HALF_LIFE))

    def count(self, relay_id: int) -> int:
        return len(self._keys.get(relay_id, ()))

    @property
    def total(self) -> int:
        return sum(len(keys) for keys in self._keys.values())

    def relays(self) -> list[int]:
        """Relays holding at least one key, in session-ID order."""
        return sorted(self._keys)

    def take(self, usable: Callable[[int], bool] = lambda _relay_id: True,
             now: float | None = None) -> TakenKey | None:
        """Remove and return the key the selection rule picks among ``usable`` relays, or None.

        With ``now``, the least recently loaded relay wins and the original rule breaks ties;
        without it, the original rule alone.
        """
        best: int | None = None
        best_rank: tuple[float, int] | None = None
        for relay_id in sorted(self._keys):
            count = len(self._keys[relay_id])
            load = round(self.load(relay_id, now), 6) if now is not None else 0.0
            rank = (load, -count)
            # Strictly better: the lowest session ID wins a tie, as in the original's map walk.
            if (best_rank is None or rank < best_rank) and usable(relay_id):
                best, best_rank = relay_id, rank
        if best is None:
            return None
        if now is not None:
            self._load[best] = (self.load(best, now) + 1.0, now)
        stack = self._keys[best]
        key = stack.pop()
        if not stack:
            del self._keys[best]
        self.taken_total += 1
        return TakenKey(best, key)
