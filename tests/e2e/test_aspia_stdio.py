"""``natrelay aspia client`` in netcat mode, with every stdin/stdout, on both event loops.

A real router and relay, three hosts exposing an echoing, a sending and a receiving service.
Each case runs the client with one stdin and one stdout kind and checks the bytes both ways
(SHA-256), the exit status and that nothing is left running; then signals, a killed relay and a
host that cannot reach its service.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.aspia_env import (
    Process,
    RouterSetup,
    add_router_user,
    aspia_env,
    create_router,
    start_relay,
    start_router,
    tool,
)
from tests.e2e.stdio_cases import (
    PAYLOAD,
    SERVICES,
    STDIN_KINDS,
    STDOUT_KINDS,
    PeerRun,
    Service,
    check_transfer,
    no_leftover_peers,
    services,
    stdin_data,
    wait_for,
)
from tests.e2e.test_aspia_peers import (
    HOST_PASSWORD,
    HOST_USER,
    RELAY_TIMERS,
    ROUTER_PASSWORD,
    ROUTER_USER,
    start_host,
    write_secret,
)

pytestmark = pytest.mark.timeout(900)
__all__ = ["no_leftover_peers"]  # the autouse fixture, imported to apply here
LOOP_FLAGS = {"uvloop": [], "asyncio": ["--no-uvloop"]}


@dataclass
class Bed:
    tmp: Path
    setup: RouterSetup
    services: dict[str, Service]
    host_ids: dict[str, int]
    relay: Process

    def client_argv(self, host_id: int, loop: str = "uvloop") -> list[str]:
        pw = write_secret(self.tmp / "router-pw", ROUTER_PASSWORD)
        host_pw = write_secret(self.tmp / "host-pw-client", HOST_PASSWORD)
        return [*tool("natrelay"), "aspia", "client", "--router", self.setup.address(), "--router-key",
                self.setup.public_key, "--user", ROUTER_USER, "--password-file", str(pw),
                "--host-id", str(host_id), "--host-user", HOST_USER, "--host-password-file", str(host_pw),
                "--timeout", "20", *LOOP_FLAGS[loop]]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    tmp = tmp_path_factory.mktemp("aspia-stdio")
    setup = create_router(tmp / "router")
    add_router_user(setup, ROUTER_USER, ROUTER_PASSWORD)
    procs: list[Process] = [start_router(setup)]
    with services() as made:
        try:
            relay = start_relay(tmp / "relay", setup, RELAY_TIMERS)
            procs.append(relay)
            wait_for(lambda: "added 100 keys" in procs[0].log(), 60, "the relay to register")
            host_ids = {}
            for mode, service in made.items():
                home = tmp / f"host-{mode}"
                home.mkdir()
                host, host_ids[mode] = start_host(home, setup, service.port)
                procs.append(host)
            yield Bed(tmp, setup, made, host_ids, relay)
        finally:
            for p in reversed(procs):
                p.kill()


@pytest.mark.parametrize("loop", list(LOOP_FLAGS))
@pytest.mark.parametrize("mode", SERVICES)
def test_client_matrix(bed: Bed, mode: str, loop: str) -> None:
    """Every stdin kind x every stdout kind against one service on one loop."""
    service = bed.services[mode]
    for stdin_kind in STDIN_KINDS:
        for stdout_kind in STDOUT_KINDS:
            index = len(service.records)
            run = PeerRun(bed.client_argv(bed.host_ids[mode], loop), bed.tmp, stdin_kind, stdout_kind,
                          env=aspia_env())
            outcome = run.finish(timeout=90)
            try:
                record = service.wait_record(index)
                check_transfer(outcome, service, record, stdin_data(stdin_kind))
            except AssertionError as exc:
                raise AssertionError(f"stdin {stdin_kind}, stdout {stdout_kind}: {exc}; "
                                     f"stderr: {outcome.stderr}") from exc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_end_the_client_promptly_mid_transfer_and_idle(bed: Bed, sig: signal.Signals) -> None:
    service = bed.services["echo"]
    for phase in ("transfer", "idle"):
        index = len(service.records)
        hold = threading.Event()
        run = PeerRun(bed.client_argv(bed.host_ids["echo"]), bed.tmp, "pipe", "file",
                      data=PAYLOAD if phase == "transfer" else b"", pipe_hold=hold, env=aspia_env())
        try:
            wait_for(lambda i=index: len(service.records) > i, 60, "the session to reach the service")
            if phase == "transfer":
                wait_for(lambda i=index: len(service.records[i].received) > 0, 30, "bytes to flow")
            else:
                time.sleep(0.5)
            started = time.monotonic()
            run.proc.send_signal(sig)
            outcome = run.finish(timeout=15)
            assert time.monotonic() - started < 6
        finally:
            hold.set()
        assert outcome.code == 128 + sig, (phase, outcome.stderr)
        record = service.wait_record(index)
        assert record.ended is not None and record.ended.startswith("reset"), (phase, record.ended)
        assert outcome.stdout is not None and PAYLOAD.startswith(outcome.stdout)


def test_host_that_cannot_reach_its_service_fails_the_client_with_the_reason(tmp_path: Path,
                                                                             bed: Bed) -> None:
    dead = Service("echo")
    port = dead.port
    dead.close()
    host, host_id = start_host(tmp_path, bed.setup, port)
    try:
        outcome = PeerRun(bed.client_argv(host_id), tmp_path, "file", "file", env=aspia_env()).finish(90)
        assert outcome.code == 1, outcome.stderr
        assert "cannot reach its service" in outcome.stderr
    finally:
        host.kill()


def test_killed_relay_fails_the_client_promptly(tmp_path: Path) -> None:
    """A relay killed under a running transfer: the client says so and exits 1, no hang."""
    setup = create_router(tmp_path / "router")
    add_router_user(setup, ROUTER_USER, ROUTER_PASSWORD)
    router = start_router(setup)
    procs: list[Process] = [router]
    service = Service("echo")
    try:
        relay = start_relay(tmp_path / "relay", setup, RELAY_TIMERS)
        procs.append(relay)
        wait_for(lambda: "added 100 keys" in router.log(), 60, "the relay to register")
        host, host_id = start_host(tmp_path, setup, service.port)
        procs.append(host)
        local = Bed(tmp_path, setup, {}, {}, relay)
        hold = threading.Event()
        run = PeerRun(local.client_argv(host_id), tmp_path, "pipe", "file", pipe_hold=hold, env=aspia_env())
        try:
            wait_for(lambda: bool(service.records) and len(service.records[0].received) > 0, 60, "bytes")
            relay.kill()
            outcome = run.finish(timeout=30)
        finally:
            hold.set()
        assert outcome.code == 1 and "bytes" in outcome.stderr, outcome.stderr
    finally:
        for p in reversed(procs):
            p.kill()
        service.close()
