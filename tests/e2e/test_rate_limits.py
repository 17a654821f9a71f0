"""Bandwidth limits on a real ``aspia_relay``: a 10-second transfer at the session limit.

Raw bytes between two stand-in peers paired by real router offers (as in the metrics test), so
the rate is the relay's and nothing else's. The limit must hold within 5 % (it may only be
slower on a loaded machine, so the lower bound is loose); the splice path is the one measured.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from natrelay.aspia.messages import build_peer_to_relay
from tests.e2e.aspia_env import (
    HOST,
    add_router_user,
    create_router,
    free_port,
    start_relay,
    start_router,
    wait_for,
)
from tests.e2e.http_env import status
from tests.e2e.test_http_metrics import offers

pytestmark = pytest.mark.timeout(180)
RATE = 1024 * 1024  # RateSession "1M"


def test_session_limit_holds_within_five_percent_over_ten_seconds(tmp_path: Path) -> None:
    setup = create_router(tmp_path / "router")
    add_router_user(setup, "alice", "alice-pw")
    router = start_router(setup)
    http_port = free_port()
    relay = start_relay(tmp_path / "relay", setup, MaxPeerCount="2", RateSession="1M",
                        HttpListen=f"{HOST}:{http_port}")
    try:
        wait_for(lambda: "added 2 keys" in router.log(), 60, "the relay to register")
        relay.wait_log("HTTP (dashboard")
        creds, host, client = offers(router)
        first = socket.create_connection((creds.host, creds.port), timeout=30)
        first.sendall(build_peer_to_relay(creds))
        relay.wait_log("waiting for its partner")
        second = socket.create_connection((creds.host, creds.port), timeout=30)
        second.sendall(build_peer_to_relay(creds))
        payload = os.urandom(10 * RATE)
        sender = threading.Thread(target=first.sendall, args=(payload,))
        got = 0
        start = time.monotonic()
        sender.start()
        while got < len(payload):
            chunk = second.recv(262144)
            assert chunk
            got += len(chunk)
        elapsed = time.monotonic() - start
        sender.join(30)
        rate = len(payload) / elapsed
        assert rate <= RATE * 1.05, f"{rate / RATE:.3f} of the limit in {elapsed:.2f} s"
        assert rate >= RATE * 0.5, f"only {rate / RATE:.3f} of the limit in {elapsed:.2f} s"
        options = status(f"http://{HOST}:{http_port}/")["options"]["aspia_relay"]
        assert options["per-session-rate"] == RATE and options["global-rate"] == 0
        print(f"RateSession 1M: {len(payload)} bytes in {elapsed:.2f} s = {rate / RATE:.4f} of the limit")
        for sock in (first, second):
            sock.close()
        host.close()
        client.close()
    finally:
        assert relay.stop() == 0, relay.log()
        assert router.stop() == 0, router.log()
