"""``GET /metrics``: the sources' counters in Prometheus' exposition format.

A custom collector reads every source at scrape time (prometheus-client's own metric objects
would be a second set of counters to keep in step). Names follow Prometheus' conventions: the
``natrelay_`` prefix, ``_total`` on counters, units in the name, a ``family`` label per protocol
family and reason labels from short fixed vocabularies, never a label per peer. Process CPU,
memory and descriptors come from prometheus-client's process collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from natrelay.engine.stats import Histogram
from natrelay.ops.http.source import Reading, Source

PREFIX = "natrelay_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: name -> (type, help). Counters are named without ``_total`` (prometheus-client adds it).
CATALOGUE: dict[str, tuple[str, str]] = {
    "connections_accepted": ("counter", "TCP connections accepted (before any admission check)."),
    "connections_refused": ("counter", "Connections refused at admission, by the limit that refused them."),
    "connections_open": ("gauge", "Connections open now (admitted and not yet closed)."),
    "connection_closes": ("counter", "Closed connections by reason."),
    "handshakes": ("counter", "Handshakes completed."),
    "handshake_failures": ("counter", "Connections that ended before completing their handshake, by reason."),
    "handshakes_in_progress": ("gauge", "Handshakes in progress now."),
    "logins": ("counter", "Password (SRP) logins that succeeded."),
    "login_failures": ("counter", "Password (SRP) logins that failed or were refused, by reason."),
    "pairings": ("counter", "Peers paired into a relayed session."),
    "sessions_active": ("gauge", "Relayed sessions open now (router: as of the relays' last statistics)."),
    "pending_peers": ("gauge", "Peers connected and waiting for their partner."),
    "session_ends": ("counter", "Relayed sessions that ended, by reason."),
    "relayed_bytes": ("counter", "Bytes relayed, by direction."),
    "session_duration_seconds": ("histogram", "Lifetime of relayed sessions that ended."),
    "pairing_latency_seconds": ("histogram", "From a peer's arrival to its pairing."),
    "key_pool_keys": ("gauge", "One-time relay keys available, per relay."),
    "keys_handed_out": ("counter", "Relay keys handed to peers by the router."),
    "hosts_online": ("gauge", "Host IDs online at the router."),
    "router_sessions": ("gauge", "Authenticated router sessions, by kind."),
    "router_connected": ("gauge", "1 while the relay is registered with its router."),
}


class SourcesCollector(Collector):
    """Reads the sources on every scrape; ``sources`` is called each time (servers come and go)."""

    def __init__(self, sources: Callable[[], Sequence[Source]], version: str) -> None:
        self._sources = sources
        self._version = version

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily(PREFIX + "build", "natrelay version.")
        info.add_metric([], {"version": self._version})
        yield info
        grouped: dict[str, list[tuple[str, Reading]]] = {}
        for source in self._sources():
            for r in source.readings():
                grouped.setdefault(r.name, []).append((source.family, r))
        for name, readings in grouped.items():
            kind, doc = CATALOGUE[name]
            label_names = ["family", *(k for k, _ in readings[0][1].labels)]
            full = PREFIX + name
            family: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(full, doc, labels=label_names)
            elif kind == "gauge":
                family = GaugeMetricFamily(full, doc, labels=label_names)
            else:
                family = HistogramMetricFamily(full, doc, labels=label_names)
            for fam, r in readings:
                values = [fam, *(v for _, v in r.labels)]
                value = r.value
                if isinstance(family, HistogramMetricFamily):
                    assert isinstance(value, Histogram)
                    buckets = [(_le(bound), float(n)) for bound, n in value.cumulative()]
                    family.add_metric(values, buckets, value.sum)
                else:
                    assert not isinstance(value, Histogram)
                    family.add_metric(values, float(value))
            yield family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def make_registry(sources: Callable[[], Sequence[Source]], version: str) -> CollectorRegistry:
    """A registry of our own (prometheus-client's global one would be process-wide mutable state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SourcesCollector(sources, version))
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
