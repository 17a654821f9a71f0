"""Admission limits of a relay process: connections and handshakes, in total and per source.

Why a separate object: the protocol shells decide *when* a connection starts or finishes a stage,
the limiter only answers "may it?" and keeps exact counts, so the same rules (and their log
messages) hold for every protocol family and can be tested without sockets. strelay uses both
kinds of slot, the Syncthing relay counts with it, the Aspia relay uses only the connection caps.

Why per-source caps sit well below the totals: a cap per address only protects the others if
many addresses are needed to fill the total. With the defaults below, filling the connection
total takes 157 addresses, the handshake total 128, and the listener total (counted by the Offset
pairing, with ``max_listeners_per_ip``) 625; before, two addresses (2 x 256 connections, all in
their handshake) filled the 512 handshake slots.

The engine's admission layer, concept by module (each exists once; families keep only their
policy: which limits, which defaults, which config keys, which reason names):

=====================================  =================================================
source keying (IPv4, IPv6 /64)         :mod:`natrelay.engine.sources` ``source_key``
counted slots: total, per source,      :mod:`natrelay.engine.slots` ``Slots`` (here: connections,
room kept for others                   handshakes; the router: connections, pending, logins)
fair slots with deadlines, eviction    ``slots.FairSlots`` (here: strelay's handshakes; the Aspia
                                       relay's pending peers; the router's pending connections)
of the biggest holder's oldest
rates (token buckets, per key,         :mod:`natrelay.engine.rates` ``TokenBucket``, ``KeyedRate``
refund on success, bounded memory)     (bytes: ``engine/ratelimit.py`` pauses reading with them)
deadlines as data for the caller       :mod:`natrelay.engine.timers` ``TimerWheel``
refusal reasons, bounded log lines     :mod:`natrelay.engine.refusals` ``Refusal``, ``LogLimiter``,
                                       ``RefusalLog``
=====================================  =================================================

Policies built from them: this module (strelay's ``Limits``), :mod:`natrelay.engine.floodguard`
(unauthenticated peers of the Aspia relay), ``aspia/router/guard.py`` (the router's connections,
pending connections and SRP logins) and ``aspia/router/sessions.py`` (request rates).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, fields

from natrelay.engine.refusals import Refusal
from natrelay.engine.slots import FairSlots, SlotCaps, SlotReasons, Slots
from natrelay.engine.sources import source_key

__all__ = ["EVICTED", "Admission", "HandshakeStart", "Limits"]

CONNECTIONS = SlotReasons("connections", "connections_per_ip")
HANDSHAKES = SlotReasons("handshakes", "handshakes_per_ip")
EVICTED = "evicted"
"""The reason an older handshake was ended to make room (a counter and metric label)."""


@dataclass(frozen=True, slots=True)
class HandshakeStart:
    """What :meth:`Admission.start_handshake` decided: ``refusal`` (close the new connection) or
    None; ``evicted``: the handle of an older handshake already forgotten here, which the caller
    must close (and count as :data:`EVICTED`, with ``evicted_message`` as its log text)."""

    refusal: Refusal | None = None
    evicted: Hashable | None = None
    evicted_message: str = ""


@dataclass(frozen=True)
class Limits:
    """Caps on what one relay process accepts. ``0`` means "no cap" for every field."""

    max_connections: int = 10_000
    max_per_ip: int = 64
    max_handshakes: int = 1_024
    max_handshakes_per_ip: int = 8
    max_listeners: int = 5_000
    max_listeners_per_ip: int = 8
    max_pending_per_listener: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ValueError(f"{f.name} must be >= 0 (0 = unlimited), got {value}")

    def weak_spots(self) -> list[str]:
        """Caps that leave no room for everyone else under a total (for a start-up warning)."""
        pairs = (("max_per_ip", "max_connections"), ("max_handshakes_per_ip", "max_handshakes"),
                 ("max_listeners_per_ip", "max_listeners"), ("max_listeners", "max_connections"))
        found = []
        for part, whole in pairs:
            p, w = getattr(self, part), getattr(self, whole)
            per_source = part.endswith("_per_ip")
            if w and (not p or (2 * p >= w if per_source else p >= w)):
                shown = "unlimited" if not p else str(p)
                who = "two source addresses" if per_source else "listeners alone"
                found.append(f"{part} ({shown}) leaves no room under {whole} ({w}): {who} could fill it")
        return found


class Admission:
    """Counts live connections and handshakes, and refuses new ones over a cap.

    Every successful ``admit`` must be matched by exactly one ``release``, and every successful
    ``begin_handshake`` by one ``end_handshake`` with the same ``ip``; the counts are exact so
    that tests (and operators) can see that nothing leaks.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._connections = Slots(SlotCaps(limits.max_connections, limits.max_per_ip), CONNECTIONS)
        caps = SlotCaps(limits.max_handshakes, limits.max_handshakes_per_ip)
        self._handshakes = Slots(caps, HANDSHAKES)
        self._fair: FairSlots[Hashable] = FairSlots(caps, HANDSHAKES, spare_equals=True)

    @property
    def connections(self) -> int:
        """Live connections."""
        return self._connections.held

    @property
    def handshakes(self) -> int:
        """Handshakes in progress."""
        return self._handshakes.held + len(self._fair)

    def admit(self, ip: str) -> Refusal | None:
        """Take a connection slot for ``ip``; return ``None``, or why it is refused."""
        source = source_key(ip)
        code = self._connections.take(source)
        if code is None:
            return None
        if code == CONNECTIONS.total:
            return Refusal(code, f"connection limit reached ({self.limits.max_connections})")
        return Refusal(code, f"per-IP connection limit reached ({self.limits.max_per_ip}) for {source}")

    def release(self, ip: str) -> None:
        """Give back the slot taken by ``admit``."""
        self._connections.give(source_key(ip))

    def begin_handshake(self, ip: str | None = None) -> Refusal | None:
        """Take a handshake slot (also one of ``ip``'s, if given); return ``None``, or why not."""
        source = None if ip is None else source_key(ip)
        code = self._handshakes.take(source)
        if code is None:
            return None
        if code == HANDSHAKES.total:
            return Refusal(code, f"concurrent handshake limit reached ({self.limits.max_handshakes})")
        return Refusal(code, f"per-IP concurrent handshake limit reached "
                             f"({self.limits.max_handshakes_per_ip}) for {source}")

    def end_handshake(self, ip: str | None = None) -> None:
        """Give back the slot taken by ``begin_handshake`` (with the same ``ip``)."""
        self._handshakes.give(None if ip is None else source_key(ip))

    # A process uses either begin/end_handshake (counted slots: the Syncthing relay, which
    # counts handshakes without a source) or start/finish_handshake (fair slots: strelay).
    def start_handshake(self, conn: Hashable, ip: str, deadline: float) -> HandshakeStart:
        """A handshake slot for the connection ``conn`` from ``ip`` until ``deadline``.

        Why fair slots: per-source caps alone leave the total to whoever comes first, and 250
        addresses x 8 fill 1,024 slots; silent connections refill every slot as it frees, and
        no legitimate handshake gets in. So a full total does not refuse a newcomer whose source
        holds fewer slots than the biggest holder: that holder's oldest handshake is evicted
        instead (a real node finishes its handshake within a round trip or two, a flood's
        connections sit silent, so the oldest is the one to go), and a node holding one slot is
        never evicted by flooding addresses holding one or more. A source over its own cap, or
        holding as many as every other, is refused.
        """
        source = source_key(ip)
        decision = self._fair.take(conn, source, deadline)
        code = decision.refused
        if code == HANDSHAKES.total:
            return HandshakeStart(Refusal(code, f"concurrent handshake limit reached "
                                                f"({self.limits.max_handshakes}) and {source} holds "
                                                f"as many as any other address"))
        if code is not None:
            return HandshakeStart(Refusal(code, f"per-IP concurrent handshake limit reached "
                                                f"({self.limits.max_handshakes_per_ip}) for {source}"))
        if decision.evicted is None:
            return HandshakeStart()
        return HandshakeStart(None, decision.evicted,
                              f"evicted: the oldest handshake of its address, to make room under the "
                              f"concurrent handshake limit ({self.limits.max_handshakes}) for {source}")

    def finish_handshake(self, conn: Hashable) -> bool:
        """Give back ``conn``'s slot from :meth:`start_handshake`; False if it held none (evicted)."""
        return self._fair.remove(conn) is not None

    def per_ip(self, ip: str) -> int:
        """Live connections from ``ip``'s source."""
        return self._connections.held_by(source_key(ip))

    def handshakes_per_ip(self, ip: str) -> int:
        """Handshakes in progress from ``ip``'s source."""
        source = source_key(ip)
        return self._handshakes.held_by(source) + self._fair.held_by(source)

    @property
    def sources(self) -> int:
        """Sources with a live connection or handshake (0 once every slot is back)."""
        return self._connections.sources + self._handshakes.sources + self._fair.sources
