"""``GET /status``: strelaysrv's status fields where they apply, plus each source's own figures.

Monitoring written for strelaysrv (its pool server, dashboards) reads ``numActiveSessions``,
``numConnections``, ``bytesProxied``, ``kbps10s1m5m15m30m60m``, ``options``, ``startTime``,
``uptimeSeconds`` and ``version``; they mean the same here, summed over the servers of this
process. Go runtime fields have Python counterparts (``pythonVersion``...). ``families`` holds
each server's own figures under its family name.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from natrelay.ops.http.rates import RateWindows
from natrelay.ops.http.source import Source


def build_status(sources: Sequence[Source], *, version: str, started_wall: float, uptime: float,
                 rates: RateWindows, now: float) -> dict[str, Any]:
    totals = [s.totals() for s in sources]
    moved = sum(t.bytes_relayed for t in totals)
    sessions = sum(t.sessions for t in totals)
    options: dict[str, Any] = {}
    for source in sources:
        options[source.family] = source.limits()
    return {
        "version": version,
        "startTime": datetime.fromtimestamp(started_wall, UTC).isoformat(),
        "uptimeSeconds": int(uptime),
        "numActiveSessions": sessions,
        "numConnections": sum(t.connections for t in totals),
        "numPendingSessionKeys": sum(t.pending for t in totals),
        "numProxies": 2 * sessions,
        "bytesProxied": moved,
        "kbps10s1m5m15m30m60m": rates.kbps(moved, now),
        "options": options,
        "pythonVersion": platform.python_version(),
        "pythonImplementation": platform.python_implementation(),
        "os": sys.platform,
        "arch": platform.machine(),
        "cpus": os.cpu_count() or 1,
        "pid": os.getpid(),
        "families": {s.family: {**s.status(), "sessions": t.sessions, "connections": t.connections,
                                "bytesRelayed": t.bytes_relayed}
                     for s, t in zip(sources, totals, strict=True)},
    }
