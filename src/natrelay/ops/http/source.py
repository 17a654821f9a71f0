"""What the HTTP surface needs from one server, in terms no protocol family owns.

A :class:`Source` adapts one running server (an Offset relay, an Aspia relay, an Aspia router)
to the HTTP surface: :meth:`Source.readings` turns the server's own exact counters into metric
readings at scrape time, and the other methods feed ``/status`` and the dashboard. Nothing here
counts anything itself; that is what keeps ``/metrics`` and the servers' logs in agreement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from natrelay.engine.stats import Histogram


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample: ``name`` without the ``natrelay_`` prefix and, for counters, without ``_total``."""

    name: str
    value: float | Histogram
    labels: tuple[tuple[str, str], ...] = ()


def reading(name: str, value: float | Histogram, **labels: str) -> Reading:
    return Reading(name, value, tuple(labels.items()))


def by_label(name: str, label: str, counts: Mapping[str, int]) -> Iterable[Reading]:
    """One reading per key of ``counts`` (reason counters and the like)."""
    for key, value in sorted(counts.items()):
        yield Reading(name, value, ((label, key),))


@dataclass(frozen=True, slots=True)
class Totals:
    """The figures ``/status`` adds up across the sources of one process."""

    connections: int
    sessions: int
    pending: int
    bytes_relayed: int


class Source:
    """One server behind the HTTP surface. ``family`` is the metrics' ``family`` label."""

    family: str = "?"
    title: str = "?"
    is_router: bool = False

    def readings(self) -> Iterable[Reading]:
        """The server's counters now."""
        return ()

    def totals(self) -> Totals:
        return Totals(0, 0, 0, 0)

    def limits(self) -> dict[str, Any]:
        """The limits in force, for ``/status`` (``options`` as strelaysrv names it)."""
        return {}

    def status(self) -> dict[str, Any]:
        """Family-specific figures for ``/status``."""
        return {}

    def sessions(self) -> list[dict[str, Any]]:
        """Active sessions for the dashboard: ``id``, ``a``, ``b``, bytes, ``duration``, ``idle``."""
        return []

    def relays(self) -> list[dict[str, Any]]:
        """Router only: the relays registered with it."""
        return []

    def hosts(self) -> list[dict[str, Any]]:
        """Router only: the hosts online."""
        return []

    def disconnect_session(self, ident: str) -> str | None:
        """End one session; returns an error text for the operator, or None when done."""
        return "this server cannot disconnect sessions"

    def disconnect_host(self, ident: str) -> str | None:
        return "this server has no hosts"
