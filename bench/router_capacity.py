"""The Aspia router's capacity: one router on SQLite, and 1 or 3 routers sharing PostgreSQL.

Measures, on real ``aspia_router`` processes driven by stand-in peers (tests/e2e/aspia_env.py):
memory per connected host, and router CPU per anonymous host registration (X25519 handshake +
new host ID), per password login (SRP) and per connection offer (with 3 routers: client at one
router, host at another, the offer crossing through PostgreSQL). CPU comes from the routers'
/proc/PID/stat (user + system), so the stand-ins' own work in this process does not count.
Rates are what one core of router CPU sustains (1 / CPU per operation): the stand-ins share
this machine, so wall-clock rates here would measure them, not the router.

    python3 bench/router_capacity.py [--hosts 600] [--logins 20] [--offers 300]
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natrelay.aspia.messages import make_envelope
from natrelay.aspia.proto import router_peer_pb2, router_relay_pb2
from tests.e2e.aspia_env import (
    CLIENT,
    HOST_SESSION,
    RELAY,
    Router,
    RouterSetup,
    StandIn,
    add_router_user,
    anonymous,
    create_router,
    srp_login,
    start_router,
)
from tests.e2e.test_aspia_router import peer_msg, relay_keys
from tests.e2e.test_aspia_router_cluster import start_member
from tests.e2e.test_aspia_router_postgres import create_pg_router, second_router
from tests.postgres_server import PostgresServer, find_bindir

TICK = os.sysconf("SC_CLK_TCK")
_create_connection = socket.create_connection
_sources = itertools.cycle(f"127.0.{b}.{c}" for b in range(1, 4) for c in range(2, 250))


def _from_many_addresses(address: tuple[str, int], timeout: float | None = None) -> socket.socket:
    """Stand-ins from 127.0.x.y in turn: the router admits at most 256 connections per address."""
    return _create_connection(address, timeout, source_address=(next(_sources), 0))


socket.create_connection = _from_many_addresses  # type: ignore[assignment]
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


@contextmanager
def routers_on(kind: str, count: int, tmp: Path) -> Iterator[list[Router]]:
    server: PostgresServer | None = None
    started: list[Router] = []
    try:
        if kind == "sqlite":
            setup = create_router(tmp / "r0")
            add_router_user(setup, "bob", "bob-secret")
            started.append(start_router(setup))
        else:
            bindir = find_bindir()
            if bindir is None:
                raise SystemExit("PostgreSQL binaries not found")
            server = PostgresServer.start(bindir)
            first = create_pg_router(tmp / "r0", server.url(server.new_database()))
            add_router_user(first, "bob", "bob-secret")
            others = [second_router(first, tmp / f"r{i}") for i in range(1, count)]
            setups: list[RouterSetup] = [first, *others]
            for s in setups:
                started.append(start_member(s))
        yield started
    finally:
        for r in started:
            r.stop(30)
        if server is not None:
            server.stop()


def per_op(routers: list[Router], count: int, work: Callable[[], None]) -> tuple[float, float]:
    """(router CPU ms per operation, wall seconds) for ``count`` operations done by ``work``."""
    pids = [r.pid for r in routers]
    before, started = cpu_seconds(pids), time.monotonic()
    work()
    time.sleep(0.3)  # let the routers finish what the last replies started (logging, presence)
    return (cpu_seconds(pids) - before) * 1000 / count, time.monotonic() - started


def run(kind: str, count: int, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    with routers_on(kind, count, tmp) as routers:
        result: dict[str, float] = {}
        rss_before = sum(rss_bytes(r.pid) for r in routers)
        hosts: list[StandIn] = []

        def register() -> None:
            for i in range(args.hosts):
                r = routers[i % len(routers)]
                host = anonymous(r.setup.port, r.setup.public_key, HOST_SESSION)
                host.send(peer_msg("host_id_request", router_peer_pb2.HostIdRequest(
                    type=router_peer_pb2.HostIdRequest.NEW_ID)))
                reply = host.receive(router_peer_pb2.RouterToPeer).host_id_response
                assert reply.error_code == 0, reply
                host.host_id = reply.host_id  # type: ignore[attr-defined]
                hosts.append(host)

        result["cpu_ms_per_registration"], wall = per_op(routers, args.hosts, register)
        result["registrations_per_s_wall"] = args.hosts / wall
        time.sleep(1)
        result["kib_per_host"] = (sum(rss_bytes(r.pid) for r in routers) - rss_before) / args.hosts / 1024
        idle_before = cpu_seconds([r.pid for r in routers])
        time.sleep(args.idle)  # keep-alives and lease renewals only
        result["idle_cpu_pct_per_1000_hosts"] = (cpu_seconds([r.pid for r in routers]) - idle_before) \
            / args.idle * 100 * 1000 / args.hosts

        def logins() -> None:
            for i in range(args.logins):
                r = routers[i % len(routers)]
                srp_login(r.setup.port, "bob", "bob-secret", CLIENT).close()

        result["cpu_ms_per_login"], _ = per_op(routers, args.logins, logins)

        # Offers: a relay with plenty of keys at the client's router (A); hosts on every router.
        a = routers[0]
        relay = anonymous(a.setup.port, a.setup.public_key, RELAY)
        for start in range(0, args.offers, 1000):
            pool = router_relay_pb2.RelayKeyPool(peer_host="127.0.0.1", peer_port=7777,
                                                 key=relay_keys(min(1000, args.offers - start), start))
            relay.send(make_envelope(router_relay_pb2.RelayToRouter, "key_pool", pool))
        a.wait_log(f"it now has {args.offers} in the pool", timeout=60)
        client = srp_login(a.setup.port, "bob", "bob-secret", CLIENT)
        remote = [h for h in hosts[1:len(routers) * 50:len(routers)]] if len(routers) > 1 else hosts[:50]

        def offers() -> None:
            for i in range(args.offers):
                host = remote[i % len(remote)]
                client.send(peer_msg("connection_request", router_peer_pb2.ConnectionRequest(
                    host_id=host.host_id)))  # type: ignore[attr-defined]
                offer = client.receive(router_peer_pb2.RouterToPeer).connection_offer
                assert offer.error_code == 0, offer
                host.receive(router_peer_pb2.RouterToPeer)  # the host's offer arrived (possibly via B)

        result["cpu_ms_per_offer"], _ = per_op(routers, args.offers, offers)
        for s in [client, relay, *hosts]:
            s.close()
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=600)
    parser.add_argument("--logins", type=int, default=20)
    parser.add_argument("--offers", type=int, default=300)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle hosts to time")
    args = parser.parse_args()
    print(f"{'setup':<22} {'KiB/host':>9} {'ms CPU/reg':>10} {'reg/s wall':>10} {'ms CPU/login':>12} "
          f"{'ms CPU/offer':>12} {'idle %CPU/1000 hosts':>20}")
    for kind, count in (("sqlite", 1), ("postgresql", 1), ("postgresql", 3)):
        with tempfile.TemporaryDirectory() as tmp:
            r = run(kind, count, args, Path(tmp))
        print(f"{kind + ' x' + str(count):<22} {r['kib_per_host']:>9.1f} "
              f"{r['cpu_ms_per_registration']:>10.2f} {r['registrations_per_s_wall']:>10.0f} "
              f"{r['cpu_ms_per_login']:>12.1f} {r['cpu_ms_per_offer']:>12.2f} "
              f"{r['idle_cpu_pct_per_1000_hosts']:>20.2f}", flush=True)


if __name__ == "__main__":
    main()
