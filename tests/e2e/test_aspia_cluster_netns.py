"""The router cluster across "machines": every router, relay, host, client and the database in
its own network namespace on a private bridge, so each really is a different host to the others.

Three routers share one PostgreSQL; two relays are each registered with two routers; two hosts
are spread over routers, each with a fallback; their clients log in at other routers. Both
clients move 20 MB each way at once; meanwhile router r2 (holding host1) is killed with -9.
Running sessions must lose no byte, host1 must come back through r3 within the lease, new
connections must work, and relay1 must void the keys r2 held and give the capacity to r1.
Skipped where namespaces cannot be created (not root, no iproute2) or PostgreSQL is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from natrelay.ops.jsonsettings import update_settings
from tests.e2e.aspia_env import (
    Process,
    Router,
    RouterSetup,
    add_router_user,
    aspia_env,
    parse_admin_password,
    run_tool,
    tool,
    wait_for,
    write_relay_config,
)
from tests.e2e.netns_lan import Lan, unavailable
from tests.e2e.test_aspia_peers import HOST_PASSWORD, HOST_USER, ROUTER_PASSWORD, ROUTER_USER, write_secret
from tests.e2e.test_aspia_router_postgres import second_router
from tests.postgres_server import PostgresServer, find_bindir

pytestmark = pytest.mark.timeout(480)
REPO = Path(__file__).resolve().parents[2]
LEASE = 3.0
PORT = 8060
EXPOSED = 7000


class Machines:
    def __init__(self, lan: Lan, tmp: Path) -> None:
        self.lan = lan
        self.tmp = tmp
        self.procs: list[Process] = []
        self.env = aspia_env({"PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
                              "NATRELAY_ASPIA_RELAY_TIMERS": "reconnect=0.5"})

    def start(self, machine: str, args: list[str], name: str, env: dict[str, str] | None = None,
              pipe: bool = False) -> Process:
        log_path = self.tmp / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([*self.lan.run(machine), *args], stdout=subprocess.PIPE if pipe else log,
                                    stderr=log, stdin=subprocess.DEVNULL, cwd=REPO,
                                    env={**self.env, **(env or {})})
        process = Process(proc, log_path)
        self.procs.append(process)
        return process

    def python(self, machine: str, module: str, args: list[str], name: str, **kw: object) -> Process:
        return self.start(machine, [sys.executable, "-m", module, *args], name, **kw)  # type: ignore[arg-type]


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[Machines]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"network namespaces: {reason}")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    lan = Lan()
    m = Machines(lan, tmp_path)
    try:
        lan.open()
        for name in ("db", "r1", "r2", "r3", "relay1", "relay2", "host1", "host2", "client1", "client2"):
            lan.add(name)
        yield m
    finally:
        for p in reversed(m.procs):
            p.kill()
        lan.close()


def read_line(stream: IO[bytes] | None, timeout: float) -> str:
    assert stream is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(stream.fileno(), False)
    buffer = b""
    while time.monotonic() < deadline:
        chunk = stream.read(4096)
        if chunk:
            buffer += chunk
            if b"\n" in buffer:
                return buffer.split(b"\n", 1)[0].decode()
        time.sleep(0.05)
    raise AssertionError(f"no line within {timeout} s (got {buffer!r})")


def test_cluster_across_namespaces_survives_a_killed_router(machines: Machines, tmp_path: Path) -> None:
    lan, ip = machines.lan, machines.lan.machines
    bindir = find_bindir()
    assert bindir is not None
    db = PostgresServer.start(bindir, host=ip["db"], prefix=tuple(lan.run("db")),
                              trust_network="10.77.0.0/24")
    try:
        run_cluster(machines, db, tmp_path)
    finally:
        assert db.stop(), "PostgreSQL had to be killed"


def run_cluster(m: Machines, db: PostgresServer, tmp_path: Path) -> None:
    ip = m.lan.machines
    name = db.new_database()
    # Set up through the Unix socket (this test process is not on the LAN), then point the
    # routers at the database's LAN address.
    config = tmp_path / "r1" / "etc" / "router.json"
    done = run_tool("aspia_router", "--create-config", "--config", str(config), "--data-dir",
                    str(tmp_path / "r1" / "lib"), "--database", db.socket_url(name))
    assert done.returncode == 0, done.stderr
    key = (config.parent / "router.pub").read_text().strip()
    first = RouterSetup(tmp_path / "r1", config, tmp_path / "r1" / "lib", key,
                        parse_admin_password(done.stdout), PORT)
    add_router_user(first, ROUTER_USER, ROUTER_PASSWORD)
    # The relays are other machines: routers admit only relays from their own machine unless the
    # operator white-lists them, as one would here.
    relays_allowed = f"{ip['relay1']};{ip['relay2']}"
    update_settings(config, {"Database": db.url(name), "Port": str(PORT), "ListenInterface": ip["r1"],
                             "RelayWhiteList": relays_allowed})
    setups = {"r1": first}
    for r in ("r2", "r3"):
        setups[r] = second_router(first, tmp_path / r)
        update_settings(setups[r].config, {"Port": str(PORT), "ListenInterface": ip[r],
                                           "RelayWhiteList": relays_allowed})
    routers: dict[str, Router] = {}
    for r, setup in setups.items():
        p = m.start(r, [*tool("aspia_router"), *setup.args(), "--lease", str(LEASE)], r)
        routers[r] = Router(p.proc, p.log_path, 0, setup)
        routers[r].wait_log("Joined the router cluster", timeout=60)

    for relay, (home, other) in {"relay1": ("r1", "r2"), "relay2": ("r3", "r1")}.items():
        path = write_relay_config(tmp_path / relay, setups[home], peer_port=8070, RouterAddress=ip[home],
                                  RouterPort=str(PORT), PeerAddress=ip[relay], ListenInterface=ip[relay],
                                  MaxPeerCount="20", RouterAddresses=f"{ip[other]}:{PORT}")
        m.start(relay, [*tool("aspia_relay"), "--config", str(path)], relay)
    wait_for(lambda: all(routers[r].log().count("added") >= 1 for r in routers), 60, "relays at every router")

    hpw = write_secret(tmp_path / "host-pw", HOST_PASSWORD)
    hosts: dict[str, Process] = {}
    host_ids: dict[str, int] = {}
    for host, (home, fallback) in {"host1": ("r2", "r3"), "host2": ("r1", "r3")}.items():
        m.python(host, "tests.e2e.netns_tools", ["echo", "127.0.0.1", str(EXPOSED)], f"{host}-service")
        hosts[host] = m.python(host, "tests.e2e.cluster_host", [
            "aspia", "host", "--router", f"{ip[home]}:{PORT}", "--router-key", key,
            "--expose", f"127.0.0.1:{EXPOSED}", "--user", HOST_USER, "--password-file", str(hpw),
            "--state", str(tmp_path / f"{host}-state.json"), "--retry-interval", "0.5"], host,
            env={"NATRELAY_TEST_FALLBACK_ROUTERS": f"{ip[fallback]}:{PORT}"})
        hosts[host].wait_log("host id: ", timeout=60)
        host_ids[host] = int(hosts[host].log().split("host id: ", 1)[1].split()[0])

    cpw = write_secret(tmp_path / "client-pw", ROUTER_PASSWORD)
    for client, (router, host) in {"client1": ("r1", "host1"), "client2": ("r3", "host2")}.items():
        c = m.start(client, [*tool("natrelay"), "aspia", "client", "--router", f"{ip[router]}:{PORT}",
                             "--router-key", key, "--user", ROUTER_USER, "--password-file", str(cpw),
                             "--host-id", str(host_ids[host]), "--timeout", "20", "--host-user", HOST_USER,
                             "--host-password-file", str(hpw), "--listen", "127.0.0.1:9000"], client)
        c.wait_log("listening on", timeout=60)

    transfers = {c: m.python(c, "tests.e2e.netns_tools", ["transfer", "127.0.0.1", "9000", "20", str(n)],
                             f"{c}-transfer", pipe=True)
                 for n, c in enumerate(("client1", "client2"))}
    assert read_line(transfers["client1"].proc.stdout, 120) == "progress"
    routers["r2"].proc.send_signal(signal.SIGKILL)  # the router holding host1, mid-transfer
    routers["r2"].proc.wait()
    killed = time.monotonic()
    for c, t in transfers.items():
        assert t.proc.wait(180) == 0, (c, t.proc.stdout.read() if t.proc.stdout else b"", t.log())

    hosts["host1"].wait_log(f"connected to the router at {ip['r3']}:{PORT}", timeout=LEASE * 3)
    routers["r3"].wait_log(f"has host ID {host_ids['host1']}", timeout=LEASE * 3)
    assert time.monotonic() - killed < LEASE * 3
    again = m.python("client1", "tests.e2e.netns_tools", ["transfer", "127.0.0.1", "9000", "1", "9"],
                     "client1-again", pipe=True)
    assert again.proc.wait(120) == 0, again.log()
    wait_for(lambda: "moved to the other routers" in (tmp_path / "relay1.log").read_text(), 30,
             "relay1 to give r2's capacity to r1")
    status = routers["r1"].status()
    alive = {r["address"].split(":")[0]: r["alive"] for r in status["cluster"]}
    assert alive[ip["r1"]] and alive[ip["r3"]]

    for p in reversed(m.procs):  # everything still running stops cleanly on SIGTERM
        if p.proc.poll() is None and p is not routers["r2"]:
            assert p.stop(20) in (0, -signal.SIGTERM), p.log()
