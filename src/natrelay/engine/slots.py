"""Counted slots per source: a total cap, a per-source cap, room kept for others (sans-IO).

Why one structure: every scarce thing a relay hands to a connection before it knows who is
behind it (a connection, a handshake, an unauthenticated "pending" connection, a password
login) is the same problem: exact counts in total and per source, a per-source cap well below
the total so that a few addresses cannot fill it, and sometimes the last slots kept for sources
that hold none yet. strelay, the Aspia relay and the Aspia router each counted that with their
own ``Counter`` pairs; :class:`Slots` is now the only place that counts it, and each family only
chooses the caps and the reason names (its counters' and metrics' labels).

:class:`FairSlots` adds what the Aspia relay's pending connections need: the slots belong to
connection handles with a deadline each (handed to the caller's timer as data:
:meth:`FairSlots.next_deadline`, :meth:`FairSlots.expired`), and a newcomer facing a full total
evicts the oldest connection of another source holding at least as many slots instead of being
refused, so no set of sources can monopolise them (an address over its share is refused while
others still get in, and no source holds more than one slot above any other). With
``spare_equals`` (strelay's handshakes, the router's pending connections) only the biggest
holder loses its oldest, and only to a source holding fewer, so a peer holding one slot is safe
from any number of flooding addresses that each hold at least one.

Sources are keys from :func:`natrelay.engine.sources.source_key`; this module takes them as given.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, fields
from typing import Generic, TypeVar

from natrelay.engine.timers import TimerWheel

__all__ = ["Admitted", "FairSlots", "SlotCaps", "SlotReasons", "Slots"]

C = TypeVar("C", bound=Hashable)


@dataclass(frozen=True, slots=True)
class SlotCaps:
    """``0`` turns a cap off. ``reserve``: the last slots under ``total`` that only sources
    holding none may take."""

    total: int = 0
    per_source: int = 0
    reserve: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0 (0 = no cap), got {getattr(self, f.name)}")


@dataclass(frozen=True, slots=True)
class SlotReasons:
    """The refusal codes a family counts (stable: they are metric labels)."""

    total: str
    per_source: str
    reserve: str = "reserved"


class Slots:
    """Exact counts of slots taken, in total and per source; every ``take`` (or ``add``) is
    matched by one ``give`` with the same source. A ``None`` source takes only a total slot."""

    __slots__ = ("_by_source", "caps", "held", "reasons")

    def __init__(self, caps: SlotCaps, reasons: SlotReasons) -> None:
        self.caps = caps
        self.reasons = reasons
        self.held = 0
        self._by_source: dict[str, int] = {}

    def check(self, source: str | None) -> str | None:
        """Why ``source`` may not take a slot now (total, then per source, then reserve), or None."""
        caps = self.caps
        if caps.total and self.held >= caps.total:
            return self.reasons.total
        if source is None:
            return None
        own = self._by_source.get(source, 0)
        if caps.per_source and own >= caps.per_source:
            return self.reasons.per_source
        if own and caps.reserve and caps.total and self.held >= caps.total - caps.reserve:
            return self.reasons.reserve
        return None

    def add(self, source: str | None) -> None:
        """Take a slot without checking (after :meth:`check` said yes)."""
        self.held += 1
        if source is not None:
            by_source = self._by_source
            by_source[source] = by_source.get(source, 0) + 1

    def take(self, source: str | None) -> str | None:
        """Take a slot for ``source``: None, or the reason it is refused (nothing taken then)."""
        reason = self.check(source)
        if reason is None:
            self.add(source)
        return reason

    def give(self, source: str | None) -> None:
        """Give back a slot taken for ``source``."""
        self.held -= 1
        if source is not None:
            by_source = self._by_source
            left = by_source[source] - 1
            if left > 0:
                by_source[source] = left
            else:
                del by_source[source]

    def held_by(self, source: str) -> int:
        return self._by_source.get(source, 0)

    @property
    def sources(self) -> int:
        """Sources holding a slot (0 once every slot is back)."""
        return len(self._by_source)


@dataclass(frozen=True, slots=True)
class Admitted(Generic[C]):
    """What :meth:`FairSlots.take` decided.

    ``refused`` is a reason (close the new connection) or None; ``evicted`` is an older
    connection already forgotten here, which the caller must close.
    """

    refused: str | None = None
    evicted: C | None = None


class FairSlots(Generic[C]):
    """Slots held by connection handles, each until its deadline; a full total evicts fairly.

    ``caps.reserve`` does not apply: eviction is how these slots keep room for everyone else.
    Every handle taken leaves through exactly one of :meth:`remove`, :meth:`expired` or an
    eviction reported by :meth:`take`.
    """

    def __init__(self, caps: SlotCaps, reasons: SlotReasons, *, spare_equals: bool = False) -> None:
        self.caps = caps
        self.reasons = reasons
        self.spare_equals = spare_equals
        """True: evict only from the source holding the most, and only if it holds more than the
        newcomer's source (the oldest of that source goes). A source holding one slot is then
        never evicted by a flood whose sources hold one or more each: what strelay's handshakes
        and the router's pending logins need, where a legitimate peer holds one slot among
        hundreds of flooding addresses. False (the Aspia relay): any source holding at least as
        many, earliest deadline first."""
        self._source: dict[C, str] = {}
        self._by_source: dict[str, dict[C, None]] = {}
        """Per source, its handles oldest first (dicts keep insertion order)."""
        self._levels: dict[int, dict[str, None]] = {}
        """With ``spare_equals``: sources by the number of slots they hold, in the order they
        reached it, so the biggest holder is found without a scan (a flood from a thousand
        addresses made every admission scan them all: ~75 us instead of ~2)."""
        self._top = 0
        self._deadlines: TimerWheel[C] = TimerWheel()

    def __len__(self) -> int:
        return len(self._source)

    def __contains__(self, conn: object) -> bool:
        return conn in self._source

    def held_by(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    @property
    def sources(self) -> int:
        """Sources holding a slot (0 once every slot is back)."""
        return len(self._by_source)

    def take(self, conn: C, source: str, deadline: float) -> Admitted[C]:
        """A slot for ``conn`` until ``deadline``, perhaps at the cost of an older one."""
        caps = self.caps
        own = self.held_by(source)
        if caps.per_source and own >= caps.per_source:
            return Admitted(self.reasons.per_source)
        evicted: C | None = None
        if caps.total and len(self._source) >= caps.total:
            evicted = self._victim(source, own)
            if evicted is None:
                return Admitted(self.reasons.total)
            self.remove(evicted)
        self._source[conn] = source
        self._by_source.setdefault(source, {})[conn] = None
        self._deadlines.schedule(conn, deadline)
        if self.spare_equals:
            self._relevel(source, own, own + 1)
        return Admitted(None, evicted)

    def _relevel(self, source: str, before: int, after: int) -> None:
        levels = self._levels
        if before:
            level = levels[before]
            del level[source]
            if not level:
                del levels[before]
        if after:
            levels.setdefault(after, {})[source] = None
            self._top = max(self._top, after)
        while self._top and self._top not in levels:
            self._top -= 1

    def _victim(self, source: str, own: int) -> C | None:
        if self.spare_equals:
            return self._biggest_holders_oldest(source, own)
        return self._oldest_of_at_least(source, own)

    def _biggest_holders_oldest(self, source: str, own: int) -> C | None:
        """The oldest connection of the source holding the most slots, if it holds more than
        ``own`` (ties: the source that reached that many first)."""
        if self._top <= own:
            return None
        biggest = next(iter(self._levels[self._top]))  # not ``source``: it holds only ``own``
        return next(iter(self._by_source[biggest]))

    def _oldest_of_at_least(self, source: str, own: int) -> C | None:
        """The connection with the earliest deadline among the oldest of each other source holding
        at least ``own`` slots (at most ``total`` sources to look at)."""
        best: C | None = None
        best_deadline = float("inf")
        deadlines = self._deadlines
        for other, conns in self._by_source.items():
            if other == source or len(conns) < own:
                continue
            oldest = next(iter(conns))
            deadline = deadlines.deadline(oldest)
            if deadline is not None and deadline < best_deadline:
                best, best_deadline = oldest, deadline
        return best

    def remove(self, conn: C) -> str | None:
        """Free ``conn``'s slot; its source, or None if it held none (already gone)."""
        source = self._source.pop(conn, None)
        if source is None:
            return None
        self._forget(conn, source)
        self._deadlines.cancel(conn)
        return source

    def _forget(self, conn: C, source: str) -> None:
        """Take ``conn`` out of its source's bookkeeping (its entry in ``_source`` is gone)."""
        conns = self._by_source[source]
        del conns[conn]
        if not conns:
            del self._by_source[source]
        if self.spare_equals:
            self._relevel(source, len(conns) + 1, len(conns))

    def next_deadline(self) -> float | None:
        """When the earliest deadline falls (None when no slot is held)."""
        return self._deadlines.next_deadline()

    def expired(self, now: float) -> list[C]:
        """Handles whose deadline passed, oldest first; their slots are free, the caller closes them."""
        out = self._deadlines.expired(now)
        for conn in out:
            self._forget(conn, self._source.pop(conn))
        return out
