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


def test_strelay_session_limit_holds_within_five_percent(tmp_path: Path) -> None:
    from tests.e2e import offset_env
    from tests.e2e.http_env import scrape, value

    rate = 512 * 1024
    http_port = free_port()
    relay = offset_env.start_relay(tmp_path / "relay", "--rate-session", "512K", "--http",
                                   f"127.0.0.1:{http_port}")
    base = f"http://127.0.0.1:{http_port}/"
    try:
        a_ident, _ = offset_env.make_identity(tmp_path, "a")
        b_ident, b_key = offset_env.make_identity(tmp_path, "b")
        out_path = tmp_path / "listener.out"
        with open(out_path, "wb") as out, open(tmp_path / "listener.err", "wb") as err:
            listener = offset_env.peer("offset", "listen", "--idfile", str(b_ident), "--relay",
                                       str(relay.ticket), stdin=offset_env.subprocess.PIPE, stdout=out,
                                       stderr=err)
        try:
            assert listener.stdin is not None
            listener.stdin.close()
            offset_env.wait_listening(relay, b_key)
            payload = os.urandom(5 * rate)
            start = time.monotonic()
            done = offset_env.subprocess.run(
                [*offset_env.tool("natrelay"), "offset", "connect", "--idfile", str(a_ident), "--relay",
                 str(relay.ticket), "--to", b_key], input=payload, capture_output=True, timeout=120)
            code = listener.wait(60)
            assert done.returncode == 0, (done.stderr, code, out_path.stat().st_size)
            assert code == 0
            elapsed = time.monotonic() - start
            assert out_path.read_bytes() == payload
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait()
        s = scrape(base)
        moved = sum(value(s, "natrelay_relayed_bytes_total", family="offset", direction=d)
                    for d in ("to_acceptor", "to_connector"))
        measured = moved / elapsed
        print(f"strelay 512K: {moved} bytes in {elapsed:.2f} s = {measured / rate:.4f} of the limit")
        assert measured <= rate * 1.05, f"{measured / rate:.3f} of the limit"
        assert measured >= rate * 0.5, f"only {measured / rate:.3f} of the limit"
    finally:
        assert relay.stop() == 0, relay.log()
