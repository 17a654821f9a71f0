"""bench/flood.py's helpers, and its flood process against a plain listener that never answers."""

import socket
import threading
import time

import flood
from relaybench import flood_targets


def test_source_addresses_skip_the_legitimate_peers_address() -> None:
    addrs = [flood.source_address(i) for i in range(500)]
    assert addrs[0] == "127.0.0.2" and addrs[249] == "127.0.0.251" and addrs[250] == "127.0.1.2"
    assert "127.0.0.1" not in addrs and len(set(addrs)) == 500


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert flood.percentile(values, 50) in (50.0, 51.0)
    assert flood.percentile(values, 99) == 99.0
    assert flood.percentile([], 50) != flood.percentile([], 50)  # NaN


def test_flood_reconnects_what_the_server_closes() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        port = server.getsockname()[1]
        accepted = 0

        def closer() -> None:  # a relay that closes every connection at once
            nonlocal accepted
            server.settimeout(0.2)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                accepted += 1
                conn.close()

        t = threading.Thread(target=closer)
        t.start()
        stopper = threading.Timer(2.0, lambda: flood.signal.raise_signal(flood.signal.SIGTERM))
        stopper.start()
        counts = flood.run_flood(port, silent=5, slow=2, addresses=3, reconnect=0.2, trickle=0.5, ramp=0.1)
        t.join()
    assert counts.connects > 7 and counts.closed_by_relay >= counts.connects - 7
    assert accepted >= counts.closed_by_relay


def test_slow_connections_trickle_the_given_bytes_in_order() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        got = bytearray()

        def reader() -> None:
            conn, _ = server.accept()
            conn.settimeout(3)
            with conn:
                while len(got) < 3:
                    data = conn.recv(16)
                    if not data:
                        return
                    got.extend(data)

        t = threading.Thread(target=reader)
        t.start()
        stopper = threading.Timer(2.5, lambda: flood.signal.raise_signal(flood.signal.SIGTERM))
        stopper.start()
        counts = flood.run_flood(port, silent=0, slow=1, addresses=1, reconnect=5, trickle=0.3, ramp=0.0,
                                 slow_bytes=b"abc")
        t.join()
    assert bytes(got[:3]) == b"abc" and counts.bytes_trickled >= 3


def test_slow_bytes_never_complete_a_first_message() -> None:
    """Each server's trickle announces a first message it never finishes, so no handshake can start."""
    from natrelay.offset.framing import FrameDecoder

    frames = FrameDecoder().feed(flood_targets.offset_slow_bytes()[:-1])
    assert len(frames) == 1  # the version frame only; the 256-byte handshake frame stays incomplete
    assert flood.SLOW_BYTES[:4] == (256).to_bytes(4, "big") and len(flood.SLOW_BYTES) == 260
    router = flood_targets.router_slow_bytes()
    assert router[:2] == b"\x80\x02" and len(router) == 258


def test_counters_from_metrics_text_and_their_delta() -> None:
    text = "\n".join([
        "# HELP natrelay_connections_refused_total Connections refused at admission.",
        'natrelay_connections_refused_total{family="offset",reason="per_ip"} 12.0',
        'natrelay_connections_accepted_total{family="offset"} 40.0',
        'natrelay_relayed_bytes_total{family="offset",direction="up"} 99.0',
    ])
    before = flood.parse_counters(text)
    assert before == {'connections_refused_total{reason="per_ip"}': 12.0, "connections_accepted_total": 40.0}
    after = dict(before, connections_accepted_total=45.0)
    assert flood.counter_delta(before, after) == {"connections_accepted_total": 5}


def test_bench_settings_overrides_drop_keys_set_to_none() -> None:
    from relaybench.aspia import _overridden

    assert _overridden({"A": "0", "B": "1"}, {"A": None, "C": "2"}) == {"B": "1", "C": "2"}


def test_connect_binds_the_given_source_address() -> None:
    from relaybench.subject import connect

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = connect(server.getsockname()[1], source="127.0.3.7")
        conn, (peer, _) = server.accept()
        conn.close()
        client.close()
    assert peer == "127.0.3.7"
