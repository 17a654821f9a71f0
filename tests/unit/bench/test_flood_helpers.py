"""bench/flood.py's helpers, and its flood process against a plain listener that never answers."""

import socket
import threading
import time

import flood


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
