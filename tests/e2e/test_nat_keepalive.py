"""NAT mappings that expire or vanish, with every peer at its default keep-alive settings.

The NATs of the bed are strict (see :mod:`tests.e2e.netbed`): once a mapping is gone, the
connection is a black hole in both directions. So an idle connection survives only if some
packet crosses the NAT more often than its established-connection timeout, and a flushed table
is noticed only through keep-alives: the protocols' own (Offset 32 s, Aspia 20 + 15 s) or, much
sooner, the kernel TCP keep-alive the peers set on their control connections
(``engine/sockopts.py``: 3 + 1 * 3 = 6 s after the last answer by default, up to twice that if a
protocol keep-alive was written into the black hole).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.nat_env import Bed, echo_roundtrip, nat_bed, ping

NAT_TIMEOUT = 30
IDLE = 180.0
RECOVERY_LIMIT = 20.0
"""After a flush the listener and the host must be reachable again within this: the kernel
keep-alive gives up after 6-12 s, the listener redials after about 1 s, the host too, plus the
handshakes on a loaded machine. The protocols' keep-alives alone take 28-35 s, which this bound
is meant to fail."""


def _works(connect: Callable[[], socket.socket]) -> bool:
    """A new relayed connection through a forwarder echoes 64 KiB (False if it fails or stalls)."""
    data = os.urandom(65536)
    try:
        with connect() as sock:
            sock.settimeout(45)
            return echo_roundtrip(sock, data) == data
    except OSError:
        return False


def _start_both(bed: Bed) -> None:
    bed.start_offset()
    bed.start_aspia()
    assert bed.bed.conntrack_count(1) > 0 and bed.bed.conntrack_count(2) > 0


@pytest.mark.timeout(600)
def test_idle_listener_host_and_sessions_survive_three_minutes_behind_a_30_s_nat(tmp_path: Path) -> None:
    """One scenario for every idle case, to keep CI time low: 3 minutes of silence at once."""
    with nat_bed(tmp_path, established_timeout=NAT_TIMEOUT) as bed:
        _start_both(bed)
        assert bed.listener and bed.host and bed.client and bed.strelay
        offset_session, aspia_session = bed.offset_connect(), bed.aspia_connect()
        try:
            assert ping(offset_session, b"offset before") == b"offset before"
            assert ping(aspia_session, b"aspia before") == b"aspia before"
            time.sleep(IDLE)  # nobody sends anything but keep-alives
            for p in bed.procs:
                assert p.proc.poll() is None, p.log()
            # The idle relayed sessions still carry bytes ...
            assert ping(offset_session, b"offset after") == b"offset after"
            assert ping(aspia_session, b"aspia after") == b"aspia after"
        finally:
            offset_session.close()
            aspia_session.close()
        # ... the idle listener and host are still reachable ...
        assert _works(bed.offset_connect)
        assert _works(bed.aspia_connect)
        # ... and none of them had to reconnect on the way (a reconnect would also pass the above).
        assert "lost the relay" not in bed.listener.log(), bed.listener.log()
        assert bed.host.log().count("connected to the router") == 1, bed.host.log()
        assert bed.client.log().count("logged in to the router") == 1, bed.client.log()
        assert bed.strelay.log().count(" listens") == 1


@pytest.mark.timeout(600)
def test_flushed_nat_tables_lead_to_a_prompt_reconnect(tmp_path: Path) -> None:
    with nat_bed(tmp_path) as bed:
        _start_both(bed)
        assert bed.listener and bed.host and bed.client
        assert _works(bed.offset_connect) and _works(bed.aspia_connect)
        time.sleep(5)
        bed.bed.flush_conntrack(1)
        bed.bed.flush_conntrack(2)
        flushed = time.monotonic()
        # Try a new connection through each family once its listener or host has reconnected (a try
        # through the dead mapping would only stall); the figure is the time from the flush until
        # a new relayed connection works again.
        families = (("offset", bed.offset_connect, bed.listener, "listening on relay"),
                    ("aspia", bed.aspia_connect, bed.host, "connected to the router"))
        recovered: dict[str, float] = {}
        while len(recovered) < 2 and time.monotonic() - flushed < RECOVERY_LIMIT + 60:
            for name, connect, peer, up_again in families:
                if name not in recovered and peer.log().count(up_again) > 1 and _works(connect):
                    recovered[name] = time.monotonic() - flushed
            time.sleep(0.5)
        print(f"reachable again after the flush (s): "
              f"{ {name: round(t, 1) for name, t in sorted(recovered.items())} }")
        assert set(recovered) == {"offset", "aspia"}, (recovered, bed.listener.log(), bed.host.log())
        assert max(recovered.values()) < RECOVERY_LIMIT, (recovered, bed.listener.log(), bed.host.log())
        # Each found out through its kernel keep-alive (ETIMEDOUT), and says so once it is back.
        assert "lost the relay (connection lost: [Errno 110]" in bed.listener.log(), bed.listener.log()
        assert "after the TCP keep-alive found the listen connection dead" in bed.listener.log()
        assert "lost the router connection (connection lost: [Errno 110]" in bed.host.log(), bed.host.log()
        assert "after the TCP keep-alive found the router connection dead" in bed.host.log()
        assert bed.host.log().count("connected to the router") == 2
