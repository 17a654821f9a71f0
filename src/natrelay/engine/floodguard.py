"""Flood guard for connections that have not authenticated yet: per-source rate, fair pending slots.

Why: a relay has to accept a TCP connection before it can tell a peer from an attacker, and
until the peer's first message proves it holds a credential, the connection costs a slot and a
descriptor for nothing. Without limits a few hundred silent connections, even from one address,
hold every slot. This module decides, sans-IO (connections are opaque hashable handles, time is
the caller's ``now``), which of those unauthenticated connections may stay:

* a deadline for the first message (short: a real peer sends it at once);
* a token bucket of new connections per source per minute; a connection that authenticates gets
  its token back, so heavy *legitimate* use (a NAT address behind which many hosts open
  sessions) is limited only by the credentials it holds, while connections that never
  authenticate are rate limited;
* a cap on unauthenticated connections per source and in total; when the total is full, a
  newcomer evicts the oldest unauthenticated connection among the other sources holding at least
  as many slots as its own, and is refused if there is none. So no set of addresses can
  monopolise the slots (an address over its share is refused while others still get in, and no
  source gets more than one slot above any other), and as a real peer authenticates within a
  round trip while a flood's connections sit silent, the oldest connection is the one to go.

A "source" is an IPv4 address, or an IPv6 /64 (one subscriber usually gets a whole /64, so
counting single IPv6 addresses would give an attacker billions of fresh sources).

The guard keeps exact counts; every admitted connection must leave through exactly one of
:meth:`FloodGuard.authenticated`, :meth:`FloodGuard.remove`, :meth:`FloodGuard.expired` or an
eviction reported by :meth:`FloodGuard.admit`.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

C = TypeVar("C", bound=Hashable)

# Reasons, as counted by the shells and (later) exported as metric labels.
REFUSED_RATE = "rate_per_ip"
REFUSED_PENDING_PER_IP = "pending_per_ip"
REFUSED_PENDING_TOTAL = "pending_total"
CLOSED_EVICTED = "evicted"
CLOSED_FIRST_MESSAGE_TIMEOUT = "first_message_timeout"


@dataclass(frozen=True)
class FloodLimits:
    """Caps on unauthenticated connections; ``0`` means "no cap" for every count and rate.

    Defaults follow Aspia's development branch (60 pending peers, 60 connections per minute per
    IP) with a per-source share well below the total, so two or three sources cannot fill it.
    """

    first_message_timeout: float = 5.0
    """Seconds from accept to the end of the first message."""
    max_pending: int = 60
    max_pending_per_source: int = 16
    connections_per_minute: int = 60
    """New connections per minute per source that do not authenticate (a token bucket)."""
    burst: int = 0
    """Bucket size; 0 means one minute's worth (``connections_per_minute``)."""
    max_sources: int = 65_536
    """Sources whose rate is remembered; the least recently seen is forgotten beyond this."""

    def __post_init__(self) -> None:
        if not self.first_message_timeout > 0:
            raise ValueError(f"first_message_timeout must be > 0, got {self.first_message_timeout}")
        for name in ("max_pending", "max_pending_per_source", "connections_per_minute", "burst"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = unlimited), got {getattr(self, name)}")
        if self.max_sources < 1:
            raise ValueError(f"max_sources must be >= 1, got {self.max_sources}")

    @property
    def bucket_size(self) -> int:
        return self.burst or self.connections_per_minute


_NOT_PARSED = frozenset(":[%")
"""Characters without which ``source_key`` returns its argument unchanged (IPv4 text, a path)."""


def source_key(ip: str) -> str:
    """The unit of fairness for ``ip``: the IPv4 address itself, or the IPv6 /64 it is in.

    IPv4-mapped IPv6 addresses (from dual-stack listeners) count as their IPv4 address; a text
    that is no IP address at all (a Unix socket path) is its own source.
    """
    if _NOT_PARSED.isdisjoint(ip):
        # A dotted quad is already its own key, and text that is no address stays as it is:
        # the parse below would give ``ip`` back either way. It cost four ``ipaddress``
        # parses per relay connection (a tenth of the relay's CPU per pairing).
        return ip
    host = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass(frozen=True, slots=True)
class Admitted(Generic[C]):
    """What :meth:`FloodGuard.admit` decided.

    ``refused`` is a reason (close the new connection) or None; ``evicted`` is an older
    connection the guard has already forgotten and the caller must close (counted as
    :data:`CLOSED_EVICTED`).
    """

    refused: str | None = None
    evicted: C | None = None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@dataclass(slots=True)
class _Entry:
    source: str
    deadline: float


class FloodGuard(Generic[C]):
    """Unauthenticated connections of one listener, bounded per source, in total and in time."""

    def __init__(self, limits: FloodLimits) -> None:
        self.limits = limits
        self._entries: dict[C, _Entry] = {}
        self._by_source: dict[str, dict[C, None]] = {}
        """Per source, its unauthenticated connections oldest first (dicts keep insertion order)."""
        self._buckets: dict[str, _Bucket] = {}
        """Least recently touched first, so the oldest can be forgotten cheaply."""
        self._heap: list[tuple[float, int, C]] = []
        self._seq = 0

    # ------------------------------------------------------------------ queries
    @property
    def pending(self) -> int:
        """Unauthenticated connections now."""
        return len(self._entries)

    def pending_from(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    @property
    def tracked_sources(self) -> int:
        """Sources whose rate bucket is remembered (bounded by ``max_sources``)."""
        return len(self._buckets)

    def __contains__(self, conn: object) -> bool:
        return conn in self._entries

    # ------------------------------------------------------------------- rate
    def _refill(self, source: str, now: float) -> _Bucket:
        size = self.limits.bucket_size
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = _Bucket(float(size), now)
        else:
            refill = max(0.0, now - bucket.stamp) * self.limits.connections_per_minute / 60.0
            bucket.tokens = min(float(size), bucket.tokens + refill)
            bucket.stamp = now
        self._buckets[source] = bucket  # most recently touched goes last
        while len(self._buckets) > self.limits.max_sources:
            del self._buckets[next(iter(self._buckets))]
        return bucket

    def _forget_old_buckets(self, now: float) -> None:
        """Drop the two least recently seen buckets if they have refilled (they would be fresh
        ones anyway), and any beyond ``max_sources``: constant work per connection, bounded memory."""
        size = float(self.limits.bucket_size)
        rate = self.limits.connections_per_minute / 60.0
        for source in list(itertools.islice(self._buckets, 2)):
            bucket = self._buckets[source]
            if bucket.tokens + (now - bucket.stamp) * rate >= size:
                del self._buckets[source]

    # -------------------------------------------------------------- admission
    def admit(self, conn: C, ip: str, now: float) -> Admitted[C]:
        """A connection from ``ip`` was accepted: may it wait for its first message?"""
        lim = self.limits
        source = source_key(ip)
        if lim.connections_per_minute:
            self._forget_old_buckets(now)
            bucket = self._refill(source, now)
            if bucket.tokens < 1.0:
                return Admitted(REFUSED_RATE)
            bucket.tokens -= 1.0
        own = self.pending_from(source)
        if lim.max_pending_per_source and own >= lim.max_pending_per_source:
            return Admitted(REFUSED_PENDING_PER_IP)
        evicted: C | None = None
        if lim.max_pending and len(self._entries) >= lim.max_pending:
            evicted = self._victim(source, own)
            if evicted is None:
                return Admitted(REFUSED_PENDING_TOTAL)
            self._forget(evicted)
        self._entries[conn] = _Entry(source, now + lim.first_message_timeout)
        self._by_source.setdefault(source, {})[conn] = None
        self._seq += 1
        heapq.heappush(self._heap, (now + lim.first_message_timeout, self._seq, conn))
        return Admitted(None, evicted)

    def _victim(self, source: str, own: int) -> C | None:
        """The oldest connection of another source holding at least ``own`` slots (at most
        ``max_pending`` sources to look at)."""
        best: C | None = None
        best_deadline = float("inf")
        for other, conns in self._by_source.items():
            if other == source or len(conns) < own:
                continue
            oldest = next(iter(conns))
            deadline = self._entries[oldest].deadline
            if deadline < best_deadline:
                best, best_deadline = oldest, deadline
        return best

    def authenticated(self, conn: C, now: float) -> bool:
        """``conn`` proved it holds a credential: it leaves the guard and its token is returned.

        Returns False if the guard did not know ``conn`` (already gone).
        """
        entry = self._forget(conn)
        if entry is None:
            return False
        if self.limits.connections_per_minute:
            bucket = self._refill(entry.source, now)
            bucket.tokens = min(float(self.limits.bucket_size), bucket.tokens + 1.0)
        return True

    def remove(self, conn: C) -> bool:
        """``conn`` closed or failed before authenticating; True if the guard knew it."""
        return self._forget(conn) is not None

    def _forget(self, conn: C) -> _Entry | None:
        entry = self._entries.pop(conn, None)
        if entry is None:
            return None
        conns = self._by_source[entry.source]
        del conns[conn]
        if not conns:
            del self._by_source[entry.source]
        return entry

    # -------------------------------------------------------------- deadlines
    def next_deadline(self) -> float | None:
        """When the earliest first-message deadline falls (None when nothing is pending)."""
        heap = self._heap
        while heap:
            when, _, conn = heap[0]
            entry = self._entries.get(conn)
            if entry is not None and entry.deadline == when:
                return when
            heapq.heappop(heap)  # authenticated, closed or evicted since
        return None

    def expired(self, now: float) -> list[C]:
        """Connections whose first-message deadline passed; forgotten here, the caller closes them."""
        out: list[C] = []
        while (when := self.next_deadline()) is not None and when <= now:
            _, _, conn = heapq.heappop(self._heap)
            self._forget(conn)
            out.append(conn)
        return out


class LogThrottle:
    """At most ``per_interval`` log lines per ``interval`` seconds, and how many were held back.

    A flood must not turn into a flood of log lines: the shell asks :meth:`allow` before each
    line and, when a line is allowed after a quiet spell, says how many it suppressed.
    """

    def __init__(self, per_interval: int = 10, interval: float = 1.0) -> None:
        self.per_interval = per_interval
        self.interval = interval
        self._window_start = float("-inf")
        self._used = 0
        self.suppressed = 0
        """Lines held back since the last allowed one."""

    def allow(self, now: float) -> int | None:
        """None: skip this line. Otherwise log it, mentioning the returned count of suppressed lines."""
        if now - self._window_start >= self.interval:
            self._window_start = now
            self._used = 0
        if self._used >= self.per_interval:
            self.suppressed += 1
            return None
        self._used += 1
        held, self.suppressed = self.suppressed, 0
        return held
