"""strelaysrv's ``/status`` document, field for field, so existing relay monitoring keeps working.

Field names and units follow ``cmd/strelaysrv/status.go``: byte counters, session and connection
counts, ``kbps10s1m5m15m30m60m`` (kilobits per second averaged over 10 s ... 60 min, from 10-second
samples) and the options block (durations in seconds). Fields that describe a Go runtime carry the
nearest Python facts (interpreter version, OS, machine, usable CPUs, tasks), so a dashboard that reads
them still finds the keys.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL = 10.0
KEEP = 360


class RateCalculator:
    """Bytes per second over the last 10-second intervals (sans-IO: ``sample`` gets the counter)."""

    def __init__(self, keep: int = KEEP, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.rates = [0] * keep
        self.prev = 0

    def sample(self, counter: int) -> None:
        rate = int((counter - self.prev) / self.interval)
        self.rates = [rate, *self.rates[:-1]]
        self.prev = counter

    def rate(self, periods: int) -> int:
        return sum(self.rates[:periods]) // periods


@dataclass(frozen=True)
class StatusOptions:
    network_timeout: float
    ping_interval: float
    message_timeout: float
    per_session_rate: int
    global_rate: int
    pools: list[str]
    provided_by: str


def status_document(*, version: str, start_time: datetime.datetime, uptime: float, pending_keys: int,
                    active_sessions: int, connections: int, proxies: int, bytes_proxied: int,
                    rates: RateCalculator, options: StatusOptions, tasks: int,
                    extra: Callable[[], dict[str, object]] | None = None) -> dict[str, object]:
    doc: dict[str, object] = {
        "version": version,
        "buildHost": platform.node(),
        "buildUser": "natrelay",
        "buildDate": start_time.isoformat(),
        "startTime": start_time.isoformat(),
        "uptimeSeconds": int(uptime),
        "numPendingSessionKeys": pending_keys,
        "numActiveSessions": active_sessions,
        "numConnections": connections,
        "numProxies": proxies,
        "bytesProxied": bytes_proxied,
        "goVersion": f"python{sys.version.split()[0]}",
        "goOS": sys.platform,
        "goArch": platform.machine(),
        "goMaxProcs": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "goNumRoutine": tasks,
        "kbps10s1m5m15m30m60m": [rates.rate(p) * 8 // 1000 for p in (1, 6, 30, 90, 180, 360)],
        "options": {
            "network-timeout": int(options.network_timeout),
            "ping-interval": int(options.ping_interval),
            "message-timeout": int(options.message_timeout),
            "per-session-rate": options.per_session_rate,
            "global-rate": options.global_rate,
            "pools": options.pools,
            "provided-by": options.provided_by,
        },
    }
    if extra is not None:
        doc.update(extra())
    return doc
