"""The main end-to-end scenarios of both families with every peer behind its own NAT.

The relays must see only the NATs' public addresses (10.200.<i>.2), never the homes'
(10.201.<i>.2): that is what a relay on the internet sees, and what its limits are keyed on.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.aspia_env import wait_for
from tests.e2e.nat_env import echo_roundtrip, nat_bed, sha256
from tests.e2e.netbed import home_ip, nat_public_ip

pytestmark = pytest.mark.timeout(300)


def test_offset_through_two_nats(tmp_path: Path) -> None:
    with nat_bed(tmp_path) as bed:
        bed.start_offset()
        payload = os.urandom(20 * 1024 * 1024)
        with bed.offset_connect() as sock:
            assert sha256(echo_roundtrip(sock, payload)) == sha256(payload)

        def small(i: int) -> bool:
            data = os.urandom(100_000 + i)
            with bed.offset_connect() as s:
                return echo_roundtrip(s, data) == data

        with ThreadPoolExecutor(6) as pool:
            assert all(pool.map(small, range(6)))
        assert bed.listener is not None and bed.connector is not None and bed.strelay is not None
        assert bed.listener.stop() == 0 and bed.connector.stop() == 0
        bed.strelay.wait_log(f"from {nat_public_ip(1)} closed", timeout=30)
        log = bed.strelay.log()
        seen = set(re.findall(r"conn \d+ from (\S+) closed", log))
        # listener + 7 accepts from home 1's NAT, 7 connects from home 2's
        assert seen == {nat_public_ip(1), nat_public_ip(2)}, seen
        assert home_ip(1) not in log and home_ip(2) not in log


def test_aspia_through_two_nats(tmp_path: Path) -> None:
    with nat_bed(tmp_path) as bed:
        bed.start_aspia()
        payload = os.urandom(20 * 1024 * 1024)
        with bed.aspia_connect() as sock:
            assert sha256(echo_roundtrip(sock, payload)) == sha256(payload)
        open_socks = [bed.aspia_connect() for _ in range(4)]
        try:
            for i, s in enumerate(open_socks):
                s.sendall(b"hi %d" % i)
                assert s.recv(100) == b"hi %d" % i

            def sessions_reported() -> bool:
                return len(bed.router_status()["sessions"]) == 4

            wait_for(sessions_reported, 60, "the relays to report 4 sessions")
            status = bed.router_status()
            sessions = status["sessions"]
            assert isinstance(sessions, list)
            for s in sessions:
                assert s["client_address"].split(":")[0] == nat_public_ip(2), s
                assert s["host_address"].split(":")[0] == nat_public_ip(1), s
            peers = status["peers"]
            assert isinstance(peers, list)
            addresses = {p["type"]: p["address"].split(":")[0] for p in peers}
            assert addresses == {"host": nat_public_ip(1), "client": nat_public_ip(2)}, peers
        finally:
            for s in open_socks:
                s.close()
