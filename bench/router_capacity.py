"""The Aspia router's capacity: 1 router on SQLite, and 1 or N routers sharing PostgreSQL.

Starts real ``aspia_router`` processes (and, for PostgreSQL, a real PostgreSQL 15 server in a
temporary folder, as the tests do: tests/postgres_server.py) and drives them with stand-in
hosts, clients and relays (tests/e2e/aspia_env.py) from ``--workers`` load-generator processes,
spread over the routers. Each phase starts in every worker at once and measures:

* anonymous host registrations (X25519 handshake + a new host ID), the hosts staying online;
* memory per connected host (the routers' RSS growth over those hosts) and the idle CPU of
  hosts that only keep alive (plus lease renewals in a cluster);
* password logins (SRP-6a, 4096-bit group);
* connection offers (client at one router, host at another when there are several, so the offer
  crosses routers through PostgreSQL).

For each phase it reports the wall-clock rate of the whole setup and the CPU per operation of
the routers (``/proc/PID/stat``, all routers summed) and of the PostgreSQL server (the
postmaster and its backends, including backends that exited). The load generators share the
machine's cores with the routers, so on a loaded or small machine the wall rates measure the
machine, not the router: read the CPU per operation, and "1 / CPU per op" as what one core of
router sustains. N routers on one machine share its cores: their CPU per operation is what N
machines would each spend.

    python3 bench/router_capacity.py                       # the three standard setups
    python3 bench/router_capacity.py --routers 3 --database postgresql --hosts 3000 --workers 6
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import selectors
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natrelay.aspia.messages import make_envelope
from natrelay.aspia.proto import router_peer_pb2, router_relay_pb2
from natrelay.ops.jsonsettings import update_settings
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
    start_process,
    start_router,
)
from tests.e2e.test_aspia_router import peer_msg, relay_keys
from tests.e2e.test_aspia_router_postgres import create_pg_router, second_router
from tests.postgres_server import PostgresServer, find_bindir

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
KEYS_PER_MESSAGE = 1000
# The bench's stand-ins all come from this machine: lift the per-address and per-account limits
# that would otherwise (rightly) throttle them; they are not what is measured.
UNLIMITED = {key: "0" for key in (
    "MaxConnections", "MaxConnectionsPerIp", "NewConnectionsPerMinutePerIp", "MaxPendingConnections",
    "MaxPendingConnectionsPerIp", "ClientRequestsPerMinute", "HostRequestsPerMinute",
    "HostIdRequestsPerMinute")}
UNLIMITED["MaxKeysPerRelay"] = "1000000"


# ----------------------------------------------------------------------------- CPU and memory
def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` (threads included)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def tree_cpu_seconds(root: int) -> float:
    """CPU of ``root`` and its children, living and exited (exited ones are in cutime/cstime)."""
    fields = _stat(root)
    total = sum(int(f) for f in fields[11:15])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat(int(entry.name))
        except (OSError, ValueError):
            continue  # it exited meanwhile (its CPU is then in root's cutime)
        if int(child[1]) == root:
            total += int(child[11]) + int(child[12])
    return total / TICK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# ----------------------------------------------------------------------------- the setup
@dataclass
class Setup:
    routers: list[Router]
    database: PostgresServer | None = None
    postmaster: int | None = None

    def router_cpu(self) -> float:
        return cpu_seconds([r.pid for r in self.routers])

    def database_cpu(self) -> float:
        return tree_cpu_seconds(self.postmaster) if self.postmaster else 0.0


def start_member(setup: RouterSetup, lease: float) -> Router:
    p = start_process("aspia_router", [*setup.args(), "--lease", str(lease)], setup.directory / "router.log")
    router = Router(p.proc, p.log_path, p.log_offset, setup)
    router.wait_log("Joined the router cluster", timeout=60)
    router.wait_log("Listening on", timeout=60)
    return router


@contextmanager
def routers_on(kind: str, count: int, tmp: Path, lease: float) -> Iterator[Setup]:
    server: PostgresServer | None = None
    started: list[Router] = []
    setup = Setup(started)
    try:
        if kind == "sqlite":
            first = create_router(tmp / "r0")
            update_settings(first.config, UNLIMITED)
            add_router_user(first, "bob", "bob-secret")
            started.append(start_router(first))
        else:
            bindir = find_bindir()
            if bindir is None:
                raise SystemExit("PostgreSQL binaries (initdb, pg_ctl) not found; set PG_BINDIR")
            server = PostgresServer.start(bindir)
            setup.database = server
            setup.postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
            first = create_pg_router(tmp / "r0", server.url(server.new_database()))
            update_settings(first.config, UNLIMITED)
            add_router_user(first, "bob", "bob-secret")
            setups = [first, *(second_router(first, tmp / f"r{i}") for i in range(1, count))]
            for s in setups:
                started.append(start_member(s, lease))
        yield setup
    finally:
        try:
            for r in started:
                try:
                    r.stop(30)
                except AssertionError as e:  # killed instead: say so, stop the rest anyway
                    print(e, file=sys.stderr)
        finally:
            if server is not None:
                server.stop()


# ----------------------------------------------------------------------------- load generators
@dataclass
class Target:
    port: int
    public_key: str


_sources: Iterator[str] = iter(())


def _from_many_addresses(address: tuple[str, int], timeout: float | None = None,
                         source_address: tuple[str, int] | None = None) -> socket.socket:
    """Stand-ins from 127.0.x.y in turn, so per-address bookkeeping sees many peers, as in real life."""
    return _create_connection(address, timeout, source_address=(next(_sources), 0))


_create_connection = socket.create_connection


@dataclass
class Worker:
    """One load-generator process: its hosts at ``host_router``, its client at ``client_router``."""

    index: int
    host_router: Target
    client_router: Target
    hosts: list[tuple[StandIn, int]] = field(default_factory=list)
    asking: StandIn | None = None

    def _service(self, timeout: float) -> None:
        """Answer the routers' keep-alive pings, as real hosts do (else they are dropped after 90 s)."""
        sel = selectors.DefaultSelector()
        try:
            for host, _ in self.hosts:
                sel.register(host.sock, selectors.EVENT_READ, host)
            for key, _ in sel.select(timeout):
                host = key.data
                host.sock.settimeout(10)
                host._pump()  # the channel answers a ping by itself; anything else stays in the inbox
        finally:
            sel.close()

    def idle(self, seconds: int) -> int:
        """Keep the hosts connected and silent for ``seconds``: only keep-alives flow."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._service(min(left, 1.0))
        return 0

    def register(self, count: int) -> int:
        for i in range(count):
            if i % 100 == 99:
                self._service(0)  # a long registration phase must not lose its first hosts
            host = anonymous(self.host_router.port, self.host_router.public_key, HOST_SESSION)
            host.send(peer_msg("host_id_request", router_peer_pb2.HostIdRequest(
                type=router_peer_pb2.HostIdRequest.NEW_ID)))
            reply = host.receive(router_peer_pb2.RouterToPeer, timeout=60).host_id_response
            assert reply.error_code == 0, reply
            self.hosts.append((host, reply.host_id))
        return count

    def logins(self, count: int) -> int:
        for _ in range(count):
            srp_login(self.client_router.port, "bob", "bob-secret", CLIENT).close()
        return count

    def client(self, _count: int) -> int:
        """Log the client in that asks for the offers (its SRP login is not an offer's cost)."""
        self.asking = srp_login(self.client_router.port, "bob", "bob-secret", CLIENT)
        return 1

    def offers(self, count: int) -> int:
        client, targets = self.asking, self.hosts[:50]
        assert client is not None, "the client command comes first"
        try:
            for i in range(count):
                host, host_id = targets[i % len(targets)]
                request = router_peer_pb2.ConnectionRequest(host_id=host_id)
                client.send(peer_msg("connection_request", request))
                offer = client.receive(router_peer_pb2.RouterToPeer, timeout=60).connection_offer
                assert offer.error_code == 0, offer
                host.receive(router_peer_pb2.RouterToPeer, timeout=60)  # the host's copy (via its router)
        finally:
            client.close()
        return count


def worker_main(conn: multiprocessing.connection.Connection, worker: Worker) -> None:
    global _sources
    _sources = itertools.cycle(f"127.{worker.index + 1}.{b}.{c}"
                               for b in range(1, 200) for c in range(2, 250))
    socket.create_connection = _from_many_addresses  # type: ignore[assignment]
    while True:
        command, count = conn.recv()
        if command == "stop":
            break
        try:
            conn.send(("ok", getattr(worker, command)(count)))
        except Exception as e:  # reported to the parent, which stops the run
            conn.send(("error", f"worker {worker.index} {command}: {e!r}"))
    for host, _ in worker.hosts:
        host.close()
    conn.close()


class Workers:
    def __init__(self, setup: Setup, count: int) -> None:
        rs = setup.routers
        ctx = multiprocessing.get_context("fork")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[Any] = []
        for i in range(count):
            # hosts at router i, clients at router i+1: with several routers every offer crosses routers
            host_r, client_r = rs[i % len(rs)].setup, rs[(i + 1) % len(rs)].setup
            ours, theirs = ctx.Pipe()
            w = Worker(i, Target(host_r.port, host_r.public_key), Target(client_r.port, client_r.public_key))
            p = ctx.Process(target=worker_main, args=(theirs, w), daemon=True)
            p.start()
            self.pipes.append(ours)
            self.procs.append(p)

    def run(self, command: str, total: int, *, each: bool = False) -> float:
        """Wall seconds for ``total`` operations split over the workers (``each``: all get ``total``)."""
        n = len(self.pipes)
        share = [total if each else total // n + (1 if i < total % n else 0) for i in range(n)]
        started = time.monotonic()
        for pipe, n in zip(self.pipes, share, strict=True):
            pipe.send((command, n))
        errors = [reply[1] for reply in (pipe.recv() for pipe in self.pipes) if reply[0] != "ok"]
        if errors:
            raise SystemExit("\n".join(errors))
        return time.monotonic() - started

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(("stop", 0))
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


# ----------------------------------------------------------------------------- one setup
def phase(setup: Setup, workers: Workers, command: str, count: int, name: str, out: dict[str, float]) -> None:
    router0, db0 = setup.router_cpu(), setup.database_cpu()
    wall = workers.run(command, count)
    time.sleep(0.5)  # what the last replies started (logging, presence, NOTIFY) still counts
    out[f"{name}_per_s_wall"] = count / wall
    out[f"router_ms_per_{name}"] = (setup.router_cpu() - router0) * 1000 / count
    out[f"db_ms_per_{name}"] = (setup.database_cpu() - db0) * 1000 / count


def give_keys(setup: Setup, offers: int) -> list[StandIn]:
    """A stand-in relay at every router with a key for every offer that router may answer."""
    relays = []
    for r in setup.routers:
        relay = anonymous(r.setup.port, r.setup.public_key, RELAY)
        for start in range(0, offers, KEYS_PER_MESSAGE):
            pool = router_relay_pb2.RelayKeyPool(peer_host="127.0.0.1", peer_port=7777,
                                                 key=relay_keys(min(KEYS_PER_MESSAGE, offers - start), start))
            relay.send(make_envelope(router_relay_pb2.RelayToRouter, "key_pool", pool))
        r.wait_log(f"it now has {offers} in the pool", timeout=120)
        relays.append(relay)
    return relays


def run(kind: str, count: int, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    result: dict[str, float] = {"routers": count, "load_before": load_average()}
    with routers_on(kind, count, tmp, args.lease) as setup:
        relays: list[StandIn] = []
        rss_before = [rss_bytes(r.pid) for r in setup.routers]
        workers = Workers(setup, args.workers)
        try:
            phase(setup, workers, "register", args.hosts, "registration", result)
            time.sleep(1)
            grown = sum(rss_bytes(r.pid) for r in setup.routers) - sum(rss_before)
            result["kib_per_host"] = grown / args.hosts / 1024
            result["hosts_per_router"] = args.hosts / count
            result["rss_mib_per_router"] = sum(rss_bytes(r.pid) for r in setup.routers) / count / 2**20
            router0, db0 = setup.router_cpu(), setup.database_cpu()
            workers.run("idle", args.idle, each=True)  # keep-alives (and lease renewals) only
            result["idle_router_pct_per_1000_hosts"] = (setup.router_cpu() - router0) / args.idle * 100 \
                * 1000 / args.hosts
            result["idle_db_pct"] = (setup.database_cpu() - db0) / args.idle * 100
            phase(setup, workers, "logins", args.logins, "login", result)
            relays = give_keys(setup, args.offers)  # now: these stand-ins do not answer keep-alives
            workers.run("client", args.workers)
            phase(setup, workers, "offers", args.offers, "offer", result)
        finally:
            workers.close()
            for relay in relays:
                relay.close()
    result["load_after"] = load_average()
    return result


COLUMNS = (  # (key, header, format)
    ("kib_per_host", "KiB/host", ".1f"),
    ("registration_per_s_wall", "reg/s", ".0f"),
    ("router_ms_per_registration", "router ms/reg", ".2f"),
    ("db_ms_per_registration", "db ms/reg", ".2f"),
    ("login_per_s_wall", "login/s", ".1f"),
    ("router_ms_per_login", "router ms/login", ".1f"),
    ("db_ms_per_login", "db ms/login", ".2f"),
    ("offer_per_s_wall", "offer/s", ".0f"),
    ("router_ms_per_offer", "router ms/offer", ".2f"),
    ("db_ms_per_offer", "db ms/offer", ".2f"),
    ("idle_router_pct_per_1000_hosts", "idle %/1000h", ".2f"),
    ("idle_db_pct", "idle db %", ".2f"),
    ("load_before", "load", ".1f"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"),
                        help="one setup on this database (default: the three standard setups)")
    parser.add_argument("--routers", type=int,
                        help="routers in the setup (several need --database postgresql)")
    parser.add_argument("--hosts", type=int, default=600,
                        help="hosts registered and kept online (over all routers)")
    parser.add_argument("--logins", type=int, default=40)
    parser.add_argument("--offers", type=int, default=600)
    parser.add_argument("--workers", type=int, default=4, help="load-generator processes")
    parser.add_argument("--idle", type=int, default=65,
                        help="seconds of idle hosts to time; at least the 60 s keep-alive interval, or "
                             "the hosts' first pings fall after it")
    parser.add_argument("--lease", type=float, default=10.0, help="the cluster's lease (routers' --lease)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))  # cleans up like Ctrl-C
    if args.database is None and args.routers is None:
        setups = [("sqlite", 1), ("postgresql", 1), ("postgresql", 3)]
    else:
        database = args.database or ("postgresql" if (args.routers or 1) > 1 else "sqlite")
        routers = args.routers or 1
        if database == "sqlite" and routers != 1:
            parser.error("--routers: several routers share a PostgreSQL database; use --database postgresql")
        if routers < 1:
            parser.error("--routers must be at least 1")
        setups = [(database, routers)]
    if args.workers < 1 or args.hosts < args.workers or min(args.logins, args.offers) < args.workers:
        parser.error("--hosts, --logins and --offers must each be at least --workers")
    print(f"{'setup':<16}" + "".join(f"{h:>{max(len(h), 6) + 2}}" for _, h, _ in COLUMNS), flush=True)
    results = {}
    for kind, count in setups:
        with tempfile.TemporaryDirectory() as tmp:
            r = run(kind, count, args, Path(tmp))
        name = f"{kind} x{count}"
        results[name] = r
        print(f"{name:<16}" + "".join(f"{r[k]:>{max(len(h), 6) + 2}{f}}" for k, h, f in COLUMNS), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()
