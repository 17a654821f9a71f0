"""``natrelay aspia client`` in netcat mode, with every stdin/stdout, on both event loops.

A real router and relay, three hosts exposing an echoing, a sending and a receiving service.
Each case runs the client with one stdin and one stdout kind and checks the bytes both ways
(SHA-256), the exit status and that nothing is left running; then signals, a killed relay and a
host that cannot reach its service.
"""

from __future__ import annotations

import signal
import threading
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
    start_process,
    start_relay,
    start_router,
    tool,
)
from tests.e2e.stdio_cases import (
    SERVICES,
    PeerRun,
    Service,
    check_forwarder_to_echo,
    check_forwarder_to_resetting_service,
    check_matrix,
    check_signal_ends_peer,
    no_leftover_peers,
    refusing_port,
    services,
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

    def client_args(self, host_id: int, loop: str = "uvloop") -> list[str]:
        pw = write_secret(self.tmp / "router-pw", ROUTER_PASSWORD)
        host_pw = write_secret(self.tmp / "host-pw-client", HOST_PASSWORD)
        return ["aspia", "client", "--router", self.setup.address(), "--router-key",
                self.setup.public_key, "--user", ROUTER_USER, "--password-file", str(pw),
                "--host-id", str(host_id), "--host-user", HOST_USER, "--host-password-file", str(host_pw),
                "--timeout", "20", *LOOP_FLAGS[loop]]

    def client_argv(self, host_id: int, loop: str = "uvloop") -> list[str]:
        return [*tool("natrelay"), *self.client_args(host_id, loop)]


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
    argv = bed.client_argv(bed.host_ids[mode], loop)
    check_matrix(bed.services[mode], lambda i, o: PeerRun(argv, bed.tmp, i, o, env=aspia_env()), timeout=90)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_end_the_client_promptly_mid_transfer_and_idle(bed: Bed, sig: signal.Signals) -> None:
    def start(data: bytes, hold: threading.Event) -> PeerRun:
        return PeerRun(bed.client_argv(bed.host_ids["echo"]), bed.tmp, "pipe", "file", data=data,
                       pipe_hold=hold, env=aspia_env())

    check_signal_ends_peer(bed.services["echo"], start, sig)


def test_host_that_cannot_reach_its_service_fails_the_client_with_the_reason(tmp_path: Path,
                                                                             bed: Bed) -> None:
    with refusing_port() as port:
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


def test_forwarding_turns_a_reset_on_either_side_into_a_reset_on_the_other(tmp_path: Path, bed: Bed) -> None:
    """``client --listen`` and ``host --expose``: a mid-transfer reset is never passed on as an end."""
    reset_service = Service("reset")
    home = tmp_path / "reset-host"
    home.mkdir()
    host, reset_host_id = start_host(home, bed.setup, reset_service.port)
    forwarders: list[Process] = []
    try:
        for host_id in (bed.host_ids["echo"], reset_host_id):
            with refusing_port() as port:
                pass  # a free port number for the forwarder
            args = [*bed.client_args(host_id), "--listen", f"127.0.0.1:{port}"]
            forwarder = start_process("natrelay", args, tmp_path / f"forwarder-{host_id}.log")
            forwarders.append(forwarder)
            forwarder.wait_log("listening on", timeout=60)
            if host_id == reset_host_id:
                check_forwarder_to_resetting_service(port)
            else:
                check_forwarder_to_echo(port, bed.services["echo"])
        codes = [f.stop() for f in forwarders]
        assert codes == [0] * len(codes), codes
    finally:
        for p in [*forwarders, host]:
            p.kill()
        reset_service.close()
