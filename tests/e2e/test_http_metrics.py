"""``/metrics`` and ``/status`` of real servers during real transfers.

The Aspia relay test moves raw bytes between two stand-in peers through a real ``aspia_relay``
after real router offers, so the byte counters can be checked against exactly what was sent.
The strelay test checks the connection gauges under a handshake cap: a refused connection must
not be subtracted from the open count (it once went negative).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from natrelay.aspia.framing import encode_user_frame
from natrelay.aspia.messages import build_peer_to_relay, make_envelope
from natrelay.aspia.proto import router_common_pb2, router_peer_pb2
from tests.e2e import offset_env
from tests.e2e.aspia_env import (
    HOST,
    HOST_SESSION,
    Process,
    Router,
    RouterSetup,
    StandIn,
    add_router_user,
    anonymous,
    create_router,
    free_port,
    srp_login,
    start_relay,
    start_router,
    wait_for,
)
from tests.e2e.http_env import Samples, count, get, overview, scrape, status, value

pytestmark = pytest.mark.timeout(240)
Offer = router_peer_pb2.ConnectionOffer


@dataclass
class Aspia:
    tmp: Path
    setup: RouterSetup
    router: Router
    relay: Process
    router_http: str
    relay_http: str


@pytest.fixture
def aspia(tmp_path: Path) -> Iterator[Aspia]:
    router_port, relay_port = free_port(), free_port()
    setup = create_router(tmp_path / "router", HttpListen=f"{HOST}:{router_port}")
    add_router_user(setup, "alice", "alice-pw")
    router = start_router(setup)
    procs: list[Process] = [router]
    try:
        relay = start_relay(tmp_path / "relay", setup, MaxPeerCount="4", HttpListen=f"{HOST}:{relay_port}")
        procs.append(relay)
        wait_for(lambda: "added 4 keys" in router.log(), 60, "the relay to register")
        relay.wait_log("HTTP (dashboard")
        yield Aspia(tmp_path, setup, router, relay, f"http://{HOST}:{router_port}/", f"http://{HOST}:{relay_port}/")
    finally:
        for p in reversed(procs):
            assert p.stop() == 0, p.log()


def offers(router: Router) -> tuple[router_common_pb2.RelayCredentials, StandIn, StandIn]:
    port, key = router.setup.port, router.setup.public_key
    host = anonymous(port, key, HOST_SESSION)
    host.send(make_envelope(router_peer_pb2.PeerToRouter, "host_id_request",
                            router_peer_pb2.HostIdRequest(type=router_peer_pb2.HostIdRequest.NEW_ID)))
    host_id = host.receive(router_peer_pb2.RouterToPeer).host_id_response.host_id
    client = srp_login(port, "alice", "alice-pw")
    client.send(make_envelope(router_peer_pb2.PeerToRouter, "connection_request",
                              router_peer_pb2.ConnectionRequest(host_id=host_id)))
    offer = client.receive(router_peer_pb2.RouterToPeer).connection_offer
    assert offer.error_code == Offer.SUCCESS, offer
    host.receive(router_peer_pb2.RouterToPeer)
    return offer.relay, host, client


def send_and_read(sock: socket.socket, payload: bytes, expect: int, got: list[bytes],
                  halfway: threading.Event) -> None:
    """Send ``payload`` in chunks (flagging the halfway point) while reading ``expect`` bytes."""
    def reader() -> None:
        buf = bytearray()
        while len(buf) < expect:
            chunk = sock.recv(262144)
            assert chunk, f"closed after {len(buf)} of {expect}"
            buf += chunk
        got.append(bytes(buf))

    t = threading.Thread(target=reader)
    t.start()
    step = 65536
    for i in range(0, len(payload), step):
        sock.sendall(payload[i:i + step])
        if i >= len(payload) // 2:
            halfway.set()
    t.join(120)


def gauges_zero(samples: Samples, family: str) -> bool:
    return all(value(samples, n, family=family) == 0
               for n in ("natrelay_sessions_active", "natrelay_connections_open", "natrelay_pending_peers"))


def test_aspia_relay_byte_counters_are_exact_and_gauges_return_to_zero(aspia: Aspia) -> None:
    creds, host, client = offers(aspia.router)
    first = socket.create_connection((creds.host, creds.port), timeout=30)
    first.sendall(build_peer_to_relay(creds))
    aspia.relay.wait_log("waiting for its partner")
    second = socket.create_connection((creds.host, creds.port), timeout=30)
    second.sendall(build_peer_to_relay(creds))
    a_to_b, b_to_a = os.urandom(6 * 1024 * 1024 + 3), os.urandom(1024 * 1024 + 7)
    got_b: list[bytes] = []
    got_a: list[bytes] = []
    half_a, half_b = threading.Event(), threading.Event()
    ta = threading.Thread(target=send_and_read, args=(first, a_to_b, len(b_to_a), got_a, half_a))
    tb = threading.Thread(target=send_and_read, args=(second, b_to_a, len(a_to_b), got_b, half_b))
    ta.start()
    tb.start()
    # During the transfer: counters move, never past what was sent, and one session is open.
    assert half_a.wait(60)
    during = scrape(aspia.relay_http)
    assert 0 < value(during, "natrelay_relayed_bytes_total", family="aspia_relay",
                     direction="first_to_second") <= len(a_to_b)
    assert value(during, "natrelay_sessions_active", family="aspia_relay") == 1
    assert value(during, "natrelay_connections_open", family="aspia_relay") == 2
    ta.join(120)
    tb.join(120)
    assert got_b == [a_to_b] and got_a == [b_to_a]

    # Everything read by the peers: the counters are exactly the bytes moved, everywhere.
    after = scrape(aspia.relay_http)
    assert value(after, "natrelay_relayed_bytes_total", family="aspia_relay",
                 direction="first_to_second") == len(a_to_b)
    assert value(after, "natrelay_relayed_bytes_total", family="aspia_relay",
                 direction="second_to_first") == len(b_to_a)
    assert value(after, "natrelay_pairings_total", family="aspia_relay") == 1
    assert value(after, "natrelay_connections_accepted_total", family="aspia_relay") == 2
    assert value(after, "natrelay_pairing_latency_seconds_count", family="aspia_relay") == 1
    st = status(aspia.relay_http)
    assert st["bytesProxied"] == len(a_to_b) + len(b_to_a)
    assert st["numActiveSessions"] == 1 and st["numConnections"] == 2 and st["numProxies"] == 2
    assert isinstance(st["uptimeSeconds"], int) and st["uptimeSeconds"] >= 0
    assert isinstance(st["version"], str) and st["version"]
    assert datetime.fromisoformat(st["startTime"]).tzinfo is not None
    kbps = st["kbps10s1m5m15m30m60m"]
    assert len(kbps) == 6 and all(isinstance(k, int) and k >= 0 for k in kbps)
    assert st["options"]["aspia_relay"]["MaxPeerCount"] == 4
    assert st["families"]["aspia_relay"]["bytesRelayed"] == st["bytesProxied"]
    [row] = overview(aspia.relay_http)["sessions"]
    assert (row["bytes_ab"], row["bytes_ba"]) == (len(a_to_b), len(b_to_a))
    assert row["user"] == "alice"

    # The router's view: one key handed out, one login, one host online.
    r = scrape(aspia.router_http)
    assert value(r, "natrelay_keys_handed_out_total", family="aspia_router") == 1
    assert value(r, "natrelay_logins_total", family="aspia_router") == 1
    assert value(r, "natrelay_hosts_online", family="aspia_router") == 1
    assert value(r, "natrelay_router_sessions", family="aspia_router", kind="relay") == 1
    assert value(r, "natrelay_key_pool_keys", family="aspia_router", relay="1") == 3

    # Disconnect from the relay's own page: without the page's CSRF token refused, with it done.
    page = get(aspia.relay_http).decode()
    token = re.search(r'data-csrf="([^"]+)"', page)
    assert token is not None
    body = json.dumps({"family": "aspia_relay", "kind": "session", "id": row["id"]}).encode()
    forged = urllib.request.Request(aspia.relay_http + "api/disconnect", data=body, method="POST",
                                    headers={"Content-Type": "application/json", "X-CSRF-Token": "x"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(forged, timeout=20)
    assert info.value.code == 403
    assert first.fileno() != -1 and value(scrape(aspia.relay_http), "natrelay_sessions_active",
                                          family="aspia_relay") == 1
    request = urllib.request.Request(aspia.relay_http + "api/disconnect", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "X-CSRF-Token": token.group(1)})
    with urllib.request.urlopen(request, timeout=20) as answer:
        assert json.loads(answer.read()) == {"ok": True}
    for sock in (first, second):
        sock.settimeout(20)
        with contextlib.suppress(ConnectionResetError):  # closed: a FIN or a reset, never data
            assert sock.recv(1) == b""

    # The load leaves: every gauge returns to zero, the session is counted as ended once.
    first.close()
    second.close()
    host.close()
    client.close()
    wait_for(lambda: gauges_zero(scrape(aspia.relay_http), "aspia_relay"), 30, "relay gauges at zero")
    end = scrape(aspia.relay_http)
    assert value(end, "natrelay_session_duration_seconds_count", family="aspia_relay") == 1
    assert sum(v for (n, _), v in end.items() if n == "natrelay_session_ends_total") == 1
    assert count(end, "natrelay_session_ends_total", family="aspia_relay",
                 reason="disconnected by the router") == 1
    wait_for(lambda: value(scrape(aspia.router_http), "natrelay_hosts_online", family="aspia_router") == 0,
             30, "the host to leave the router")
    r = scrape(aspia.router_http)
    for kind in ("client", "host", "admin"):
        assert value(r, "natrelay_router_sessions", family="aspia_router", kind=kind) == 0
    assert value(r, "natrelay_connections_open", family="aspia_router") == 1  # the relay's link
    assert status(aspia.relay_http)["numActiveSessions"] == 0


def test_router_counts_wrong_passwords_and_healthz_is_plain(aspia: Aspia) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the stand-in fails in its own words
        srp_login(aspia.setup.port, "alice", "wrong")
    wait_for(lambda: count(scrape(aspia.router_http), "natrelay_login_failures_total", family="aspia_router",
                           reason="wrong_password") == 1, 30, "the failed login to be counted")
    assert get(aspia.router_http + "healthz") == b"ok\n"
    samples = scrape(aspia.router_http)
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "natrelay_build_info", version=status(aspia.router_http)["version"]) == 1


def test_strelay_open_connections_never_go_negative_under_the_handshake_cap(tmp_path: Path) -> None:
    http_port = free_port()
    relay = offset_env.start_relay(tmp_path / "relay", "--max-handshakes", "2", "--http",
                                   f"127.0.0.1:{http_port}")
    base = f"http://127.0.0.1:{http_port}/"
    wait_for(lambda: "HTTP on" in relay.log(), 20, "HTTP to listen")
    socks: list[socket.socket] = []
    try:
        for _ in range(10):  # none of them ever handshakes: two hold the slots, eight are refused
            socks.append(socket.create_connection(("127.0.0.1", relay.port), timeout=10))
        def refused() -> float:
            samples = scrape(base)
            return sum(count(samples, "natrelay_connections_refused_total", family="offset", reason=r)
                       for r in ("handshakes", "handshakes_per_ip"))

        wait_for(lambda: refused() == 8, 30, "eight refusals at the handshake caps")
        s = scrape(base)
        assert value(s, "natrelay_connections_open", family="offset") == 2
        assert value(s, "natrelay_connections_accepted_total", family="offset") == 10
        assert value(s, "natrelay_handshakes_in_progress", family="offset") == 2
        for sock in socks:
            sock.close()
        wait_for(lambda: value(scrape(base), "natrelay_connections_open", family="offset") == 0, 30,
                 "no connection open")
        s = scrape(base)
        assert value(s, "natrelay_handshakes_in_progress", family="offset") == 0
        assert sum(v for (n, _), v in s.items() if n == "natrelay_handshake_failures_total") == 2
        st = status(base)
        assert st["numConnections"] == 0 and st["families"]["offset"]["active"] == 0
    finally:
        for sock in socks:
            sock.close()
        assert relay.stop() == 0, relay.log()


def test_strelay_counts_a_real_transfer_and_returns_to_zero(tmp_path: Path) -> None:
    http_port = free_port()
    relay = offset_env.start_relay(tmp_path / "relay", "--http", f"127.0.0.1:{http_port}")
    base = f"http://127.0.0.1:{http_port}/"
    wait_for(lambda: "HTTP on" in relay.log(), 20, "HTTP to listen")
    try:
        a_ident, _ = offset_env.make_identity(tmp_path, "a")
        b_ident, b_key = offset_env.make_identity(tmp_path, "b")
        payload = os.urandom(3 * 1024 * 1024)
        out_path = tmp_path / "listener.out"
        with open(out_path, "wb") as out:
            listener = offset_env.peer("offset", "listen", "--idfile", str(b_ident), "--relay",
                                       str(relay.ticket), stdin=offset_env.subprocess.PIPE, stdout=out)
        try:
            assert listener.stdin is not None
            listener.stdin.write(b"pong")
            listener.stdin.close()
            offset_env.wait_listening(relay, b_key)
            done = offset_env.subprocess.run(
                [*offset_env.tool("natrelay"), "offset", "connect", "--idfile", str(a_ident), "--relay",
                 str(relay.ticket), "--to", b_key], input=payload, capture_output=True, timeout=120)
            assert done.returncode == 0, done.stderr
            assert done.stdout == b"pong"
            assert listener.wait(60) == 0
            assert out_path.read_bytes() == payload
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait()
        wait_for(lambda: value(scrape(base), "natrelay_sessions_active", family="offset") == 0, 30,
                 "no tunnel")
        s = scrape(base)
        to_acceptor = value(s, "natrelay_relayed_bytes_total", family="offset", direction="to_acceptor")
        to_connector = value(s, "natrelay_relayed_bytes_total", family="offset", direction="to_connector")
        # Encrypted frames carry the payload plus framing: more than the payload, not wildly more.
        assert len(payload) < to_acceptor < 1.1 * len(payload) + 65536
        assert 4 < to_connector < 65536
        assert status(base)["bytesProxied"] == to_acceptor + to_connector
        assert value(s, "natrelay_pairings_total", family="offset") == 1
        assert value(s, "natrelay_pairing_latency_seconds_count", family="offset") == 1
        assert value(s, "natrelay_session_duration_seconds_count", family="offset") == 1
        wait_for(lambda: value(scrape(base), "natrelay_connections_open", family="offset") == 0, 30,
                 "every connection closed")
    finally:
        assert relay.stop() == 0, relay.log()


def test_router_counts_every_failed_handshake_and_logs_few(tmp_path: Path) -> None:
    """Issue 8: the router counted a failed handshake only when its rate-limited log line was
    written (30 of 2,000 malformed connections). Every one is counted; the lines stay few."""
    http_port = free_port()
    setup = create_router(tmp_path / "router", HttpListen=f"{HOST}:{http_port}")
    router = start_router(setup)
    base = f"http://{HOST}:{http_port}/"
    garbage = encode_user_frame(b"\xff" * 40)  # a frame where the ClientHello goes, not one

    def failures() -> float:
        samples = scrape(base)
        return sum(v for (n, labels), v in samples.items()
                   if n == "natrelay_handshake_failures_total" and ("family", "aspia_router") in labels)

    try:
        wait_for(lambda: _scrapes(base), 30, "the router's HTTP surface")
        for i in range(40):
            with socket.create_connection((HOST, setup.port), timeout=10,
                                          source_address=(f"127.0.5.{2 + i}", 0)) as sock:
                sock.sendall(garbage)
                with contextlib.suppress(OSError):
                    while sock.recv(65536):
                        pass
        wait_for(lambda: failures() == 40, 30, "all 40 failed handshakes to be counted")
        lines = [x for x in router.log().splitlines() if "Handshake from" in x]
        assert 1 <= len(lines) <= 10, lines  # 5 per 10 s (the log limiter's burst), not 40
    finally:
        assert router.stop() == 0, router.log()


def _scrapes(base: str) -> bool:
    try:
        scrape(base)
    except (OSError, urllib.error.URLError):
        return False
    return True
