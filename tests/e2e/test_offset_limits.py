"""strelay's limits against floods from many source addresses (127.0.0.x), with a real strelay.

Each flood is bounded in count and time. What must hold: a few addresses cannot take every
handshake slot, Listen registrations under random keys from a few hundred addresses cannot take
every listener slot, refusals are counted exactly and logged in a bounded number of lines, a
legitimate tunnel moves bytes intact alongside, and the relay's descriptors return to their count
from before the flood. Refused clients are told it was a relay limit.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natrelay.offset.client import OffsetClient, TunnelError
from natrelay.offset.crypto import Identity
from natrelay.offset.errors import ProtocolError
from natrelay.offset.files import b64url_decode, read_identity_seed, read_ticket
from natrelay.offset.link import Link
from natrelay.offset.messages import Connect, InitConnection, Listen, encode_init_connection
from tests.e2e.offset_env import Relay, make_identity, peer, start_relay, tool, wait_for, wait_listening


def stats(relay: Relay) -> dict[str, object]:
    """The relay's counters, read through SIGUSR1 (the last stats line of its log)."""
    before = relay.log().count("stats {")
    relay.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: relay.log().count("stats {") > before, 20, "the stats line")
    line = [x for x in relay.log().splitlines() if "stats {" in x][-1]
    value = ast.literal_eval(line[line.index("stats {") + len("stats "):])
    assert isinstance(value, dict)
    return value


def refusals(relay: Relay) -> dict[str, int]:
    value = stats(relay)["refusals"]
    assert isinstance(value, dict)
    return value


def stop_relay(relay: Relay) -> None:
    assert relay.stop() == 0, relay.log()[-3000:]


def end(proc: subprocess.Popen[bytes]) -> None:
    """Stop a peer process; fail if it had to be killed."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("a peer did not stop on SIGTERM") from None


async def linked(ip: str, port: int, relay_key: bytes, init: InitConnection,
                 identity: Identity | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Link]:
    """A relay connection from ``ip`` that completes the handshake and sends ``init``, then stays silent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
    link = Link(identity or Identity.generate(), now=time.monotonic(), expected_remote=relay_key)
    link.send(encode_init_connection(init))
    writer.writelines(link.take_output())
    async with asyncio.timeout(30):
        while not link.established:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            link.receive_data(data, time.monotonic())
            writer.writelines(link.take_output())
    await writer.drain()
    return reader, writer, link


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link) -> None:
    """Answer the relay's heartbeats so that a registration lasts as long as the test needs."""
    with contextlib.suppress(ConnectionError, ProtocolError):
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), 2.0)
            except TimeoutError:
                data = None
            if data == b"":
                break
            if data:
                link.receive_data(data, time.monotonic())
            link.handle_timer(time.monotonic())
            writer.writelines(link.take_output())
    writer.close()


class Echo:
    """A TCP echo service for --expose, in the test's event loop."""

    async def __aenter__(self) -> int:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.close()

        self.server = await asyncio.start_server(echo, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def tunnel_roundtrip(client: OffsetClient, key: str, size: int) -> None:
    """A tunnel to ``key``'s echo service carries ``size`` random bytes there and back intact."""
    reader, writer = await client.connect(b64url_decode(key, length=32, what="key"))
    data = os.urandom(size)

    async def send() -> None:
        for i in range(0, size, 256 * 1024):
            writer.write(data[i:i + 256 * 1024])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    got = await asyncio.wait_for(reader.read(-1), 120)
    await sender
    writer.close()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


async def first_roundtrip(client: OffsetClient, key: str, size: int,
                          exposer: subprocess.Popen[bytes]) -> None:
    """``tunnel_roundtrip`` once the exposer listens (it says so only in its own log)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await tunnel_roundtrip(client, key, size)
            return
        except TunnelError:
            if time.monotonic() > deadline or exposer.poll() is not None:
                raise
            await asyncio.sleep(0.5)


class SilentFlood:
    """Silent connections to strelay from given source addresses, each reopened when the relay ends it.

    Two flood tests differ only in how many connections each address keeps, the budget of
    connections and the pause between refills; one class keeps the flooding itself in one place.
    """

    def __init__(self, port: int, *, per_address: int, budget: int, pause: float) -> None:
        self.port = port
        self.per_address = per_address
        self.budget = budget
        self.pause = pause
        self.attempts = 0
        self.stop = asyncio.Event()
        self._watchers: set[asyncio.Task[None]] = set()

    async def hold(self, ip: str) -> None:
        """Keep ``per_address`` connections open from ``ip`` until stopped or out of budget."""
        open_: list[asyncio.StreamWriter] = []
        while not self.stop.is_set() and self.attempts < self.budget:
            open_ = [w for w in open_ if not w.transport.is_closing()]
            while len(open_) < self.per_address and self.attempts < self.budget:
                self.attempts += 1
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(ip, 0))
                except OSError:
                    continue
                open_.append(w)
                self._watchers.add(task := asyncio.create_task(self._watch(r, w)))
                task.add_done_callback(self._watchers.discard)
            await asyncio.sleep(self.pause)
        for w in open_:
            w.close()

    @staticmethod
    async def _watch(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await r.read(65536):  # the relay's handshake opening: stay silent
                pass
        w.close()


# ------------------------------------------------------------------ floods
@pytest.fixture
def default_relay(tmp_path: Path) -> Iterator[Relay]:
    r = start_relay(tmp_path / "relay", "--log-level", "info")  # info: the level operators run
    yield r
    stop_relay(r)


def test_two_addresses_cannot_exhaust_handshakes(default_relay: Relay, tmp_path: Path) -> None:
    """Two addresses keep 300 silent connections each open for 12 s; a legitimate tunnel still works.

    Before: 2 x the per-IP cap (256) filled the 512 handshake slots. Also checks that refusals are
    counted exactly, that the refusal log stays a handful of lines, and that descriptors return.
    """
    relay = default_relay
    b_ident, b_key = make_identity(tmp_path, "b")
    a_ident, _ = make_identity(tmp_path, "a")

    async def scenario() -> tuple[int, int]:
        async with Echo() as echo_port:
            exposer = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(relay.ticket),
                           "--allow-any", "--expose", f"127.0.0.1:{echo_port}")
            client = OffsetClient(Identity(read_identity_seed(a_ident)), read_ticket(relay.ticket))
            flood = SilentFlood(relay.port, per_address=300, budget=40_000, pause=0.05)
            try:
                await first_roundtrip(client, b_key, 1024, exposer)
                await asyncio.sleep(0.5)
                base_fds = relay.fd_count()

                holders = [asyncio.create_task(flood.hold(ip)) for ip in ("127.0.0.2", "127.0.0.3")]
                await asyncio.sleep(2.0)  # the flood is on: every slot these two may take is taken
                await tunnel_roundtrip(client, b_key, 2 * 1024 * 1024)
                await asyncio.sleep(10.0)  # through more than two of the relay's handshake deadlines
                await tunnel_roundtrip(client, b_key, 256 * 1024)
                flood.stop.set()
                await asyncio.gather(*holders)
                await asyncio.to_thread(wait_for, lambda: relay.fd_count() <= base_fds, 40,
                                        "the relay's descriptors to return to their count before the flood")
                return flood.attempts, base_fds
            finally:
                flood.stop.set()
                client.close()
                end(exposer)

    attempts, _ = asyncio.run(scenario())
    print(f"flood: {attempts} connections from 2 addresses")
    counted = refusals(relay)
    assert counted.get("handshakes_per_ip", 0) > 1000, counted  # the flood did meet the per-address cap
    assert "handshakes" not in counted and "connections" not in counted, counted  # never the totals
    s = stats(relay)
    assert s["refused"] == sum(counted.values()) and s["active"] == 0, s
    refusal_lines = [x for x in relay.log().splitlines() if "refused" in x and "stats {" not in x]
    # One line at once, then at most one summary per 10 s interval (the flood lasts ~15 s).
    assert 1 <= len(refusal_lines) <= 4, refusal_lines
    assert "per-IP concurrent handshake limit reached (8)" in refusal_lines[0]
    assert any("most from 127.0.0." in x for x in refusal_lines[1:]), refusal_lines


def test_listen_flood_from_300_addresses_leaves_room(tmp_path: Path) -> None:
    """1,800 Listen registrations under random keys from 300 addresses; a legitimate pair still works.

    The relay's totals are scaled down (2,000 connections, 1,000 listeners) to keep the flood short,
    with the same ratios as the defaults: filling the listener total takes 500 addresses at 2 per
    address, as it takes 625 at the default 8 under the default 5,000.
    """
    relay = start_relay(tmp_path / "relay", "--log-level", "info", "--max-connections", "2000",
                        "--max-listeners", "1000", "--max-listeners-per-ip", "2")
    relay_key = read_ticket(relay.ticket).public_key
    b_ident, b_key = make_identity(tmp_path, "b")
    a_ident, _ = make_identity(tmp_path, "a")
    addresses = [f"127.0.{1 + i // 200}.{2 + i % 200}" for i in range(300)]

    async def scenario() -> None:
        base_fds = relay.fd_count()
        held: list[asyncio.StreamWriter] = []
        keepers: list[asyncio.Task[None]] = []
        gate = asyncio.Semaphore(64)

        async def register(ip: str) -> None:
            async with gate:
                with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                    r, w, link = await linked(ip, relay.port, relay_key, Listen())
                    held.append(w)
                    keepers.append(asyncio.create_task(keep_alive(r, w, link)))

        try:
            started = time.monotonic()
            await asyncio.gather(*(register(ip) for ip in addresses for _ in range(6)))
            flood_seconds = time.monotonic() - started
            async with Echo() as echo_port:
                exposer = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(relay.ticket),
                               "--allow-any", "--expose", f"127.0.0.1:{echo_port}")
                client = OffsetClient(Identity(read_identity_seed(a_ident)), read_ticket(relay.ticket))
                try:
                    await first_roundtrip(client, b_key, 4 * 1024 * 1024, exposer)
                finally:
                    client.close()
                    end(exposer)
            await asyncio.to_thread(
                wait_for, lambda: refusals(relay).get("listeners_per_ip", 0) >= 1200, 60,
                "the relay to refuse the registrations over the per-address cap")
            counted = await asyncio.to_thread(refusals, relay)
            assert counted.get("listeners_per_ip") == 300 * 4, counted
            assert "listeners" not in counted and "connections" not in counted, counted
            print(f"flood: 1,800 Listen registrations from 300 addresses in {flood_seconds:.1f} s")
        finally:
            for w in held:
                w.close()
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
        await asyncio.to_thread(wait_for, lambda: relay.fd_count() <= base_fds, 60,
                                "the relay's descriptors to return to their count before the flood")

    try:
        asyncio.run(scenario())
        s = stats(relay)
        assert s["active"] == 0 and s["tunnels_active"] == 0, s
        lines = [x for x in relay.log().splitlines() if "refused" in x and "stats {" not in x]
        assert len(lines) <= 5, lines  # 1,200 refusals, a handful of lines
    finally:
        stop_relay(relay)


# ------------------------------------------------------- what a refused client is told
@pytest.fixture
def tight_relay(tmp_path: Path) -> Iterator[Relay]:
    r = start_relay(tmp_path / "relay", "--max-handshakes-per-ip", "1", "--handshake-timeout", "60",
                    "--max-pending", "1", "--max-listeners-per-ip", "1")
    yield r
    stop_relay(r)


def connect_cli(relay: Relay, ident: Path, to: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*tool("natrelay"), "offset", "connect", "--idfile", str(ident), "--relay",
                           str(relay.ticket), "--to", to], capture_output=True, text=True, timeout=60)


def test_client_refused_before_the_handshake_is_told_it_was_a_relay_limit(tight_relay: Relay,
                                                                            tmp_path: Path) -> None:
    a_ident, _ = make_identity(tmp_path, "a")
    _, b_key = make_identity(tmp_path, "b")
    relay = tight_relay
    with socket.create_connection(("127.0.0.1", relay.port)):
        wait_for(lambda: stats(relay)["active"] == 1, 20, "a silent connection to hold 127.0.0.1's handshake")
        result = connect_cli(relay, a_ident, b_key)
    assert result.returncode == 1
    assert "refused the connection before the secure handshake" in result.stderr, result.stderr
    assert "connection limits" in result.stderr and "not listening" not in result.stderr


def test_client_refused_after_the_handshake_is_told_it_was_a_relay_limit(tight_relay: Relay,
                                                                           tmp_path: Path) -> None:
    """A listener that never answers holds its one pending slot; the next connector hears "limit"."""
    relay = tight_relay
    relay_key = read_ticket(relay.ticket).public_key
    a_ident, _ = make_identity(tmp_path, "a")
    b_ident, b_key = make_identity(tmp_path, "b")
    deaf = Identity(read_identity_seed(b_ident))
    b = b64url_decode(b_key, length=32, what="key")

    async def scenario() -> subprocess.CompletedProcess[str]:
        _, listen_w, _ = await linked("127.0.0.2", relay.port, relay_key, Listen(), deaf)
        await asyncio.to_thread(wait_listening, relay, b_key)
        _, pending_w, _ = await linked("127.0.0.3", relay.port, relay_key, Connect(b))
        await asyncio.to_thread(wait_for, lambda: relay.log().count("connects to") >= 1, 20,
                                "the first connect to wait")
        try:
            return await asyncio.to_thread(connect_cli, relay, a_ident, b_key)
        finally:
            for w in (listen_w, pending_w):
                w.close()

    result = asyncio.run(scenario())
    assert result.returncode == 1
    assert "refused the connection at one of its limits after the handshake" in result.stderr, result.stderr
    assert "pending connection limit reached (1)" in tight_relay.log()
    # The orderly close for a key that does not listen still says so.
    _, nobody = make_identity(tmp_path, "nobody")
    absent = connect_cli(relay, a_ident, nobody)
    assert absent.returncode == 1 and "not listening" in absent.stderr and "limit" not in absent.stderr


def test_listener_refused_by_the_per_address_cap_is_told_so(tight_relay: Relay, tmp_path: Path) -> None:
    relay = tight_relay
    first_ident, first_key = make_identity(tmp_path, "first")
    second_ident, _ = make_identity(tmp_path, "second")
    first = peer("offset", "listen", "--idfile", str(first_ident), "--relay", str(relay.ticket),
                 "--allow-any")
    err = tmp_path / "second.err"
    try:
        wait_listening(relay, first_key)
        with open(err, "wb") as out:
            second = peer("offset", "listen", "--idfile", str(second_ident), "--relay", str(relay.ticket),
                          "--allow-any", stderr=out.fileno())
        try:
            wait_for(lambda: "limit refuses a listener" in err.read_text(), 30, "the listener's warning")
        finally:
            end(second)
    finally:
        end(first)
    assert "per-IP listener limit reached (1) for 127.0.0.1" in relay.log()


# ------------------------------------------------------------- descriptor limit
def test_connection_cap_fits_the_descriptor_limit(tmp_path: Path) -> None:
    """Under a 256-descriptor limit, 420 silent connections are refused by the cap, not by EMFILE.

    Past the descriptor limit accept() fails and the loop stops accepting everyone for a while;
    strelay lowers its connection cap to fit instead (with a warning), so the flood is refused,
    counted, and the relay serves again as soon as it leaves.
    """
    relay = start_relay(tmp_path / "relay", "--log-level", "info", "--max-connections", "100000",
                        preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    addresses = [f"127.0.3.{n}" for n in range(1, 61)]

    async def scenario() -> None:
        base_fds = relay.fd_count()
        writers: list[asyncio.StreamWriter] = []
        for ip in addresses:
            for _ in range(7):
                with contextlib.suppress(OSError):
                    _, w = await asyncio.open_connection("127.0.0.1", relay.port, local_addr=(ip, 0))
                    writers.append(w)
        await asyncio.to_thread(wait_for, lambda: refusals(relay).get("connections", 0) > 0, 30,
                                "refusals at the connection cap")
        for w in writers:
            w.close()
        await asyncio.to_thread(wait_for, lambda: relay.fd_count() <= base_fds, 40,
                                "the relay's descriptors to return")
        _r, w, _ = await linked("127.0.0.1", relay.port, read_ticket(relay.ticket).public_key, Listen())
        w.close()

    try:
        asyncio.run(scenario())
        log = relay.log()
        assert "does not fit the open file limit 256; using 192 (and at most 96 listeners)" in log
        assert "leaves no room" not in log
        assert "Too many open files" not in log and "out of system resource" not in log
    finally:
        stop_relay(relay)


def test_a_flood_from_many_addresses_cannot_keep_a_node_out(tmp_path: Path) -> None:
    """Issue 8: 250 addresses x 8 filled strelay's 1,024 handshake slots and no node got in.

    Scaled down (40 handshake slots, 4 per address, from 20 addresses: 80 silent connections
    wanting 40 slots, each reopened as soon as the relay ends it; once they hold 2 each, their
    third is refused): a newcomer's handshake evicts the oldest of the biggest holder, so a
    legitimate tunnel is made and carries bytes intact while the flood goes on, and the
    evictions are counted under ``evicted``.
    """
    relay = start_relay(tmp_path / "relay", "--log-level", "info", "--max-handshakes", "40",
                        "--max-handshakes-per-ip", "4", "--handshake-timeout", "120")
    b_ident, b_key = make_identity(tmp_path, "b")
    a_ident, _ = make_identity(tmp_path, "a")
    addresses = [f"127.0.3.{i}" for i in range(2, 22)]

    async def scenario() -> int:
        async with Echo() as echo_port:
            exposer = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(relay.ticket),
                           "--allow-any", "--expose", f"127.0.0.1:{echo_port}")
            client = OffsetClient(Identity(read_identity_seed(a_ident)), read_ticket(relay.ticket))
            flood = SilentFlood(relay.port, per_address=4, budget=20_000, pause=0.2)

            try:
                await first_roundtrip(client, b_key, 1024, exposer)  # the listener is in before the flood
                holders = [asyncio.create_task(flood.hold(ip)) for ip in addresses]
                # Full: the flood's addresses hold 2 each, and a third is refused (none holds more).
                await asyncio.to_thread(wait_for, lambda: refusals(relay).get("handshakes", 0) > 20, 60,
                                        "the flood to fill the 40 handshake slots")
                assert stats(relay)["gauges"]["handshakes"] == 40  # type: ignore[index]
                for _ in range(3):  # each a new relay connection and handshake, during the flood
                    await asyncio.wait_for(tunnel_roundtrip(client, b_key, 256 * 1024), 60)
                flood.stop.set()
                await asyncio.gather(*holders)
                return flood.attempts
            finally:
                flood.stop.set()
                client.close()
                end(exposer)

    try:
        attempts = asyncio.run(scenario())
        counted = refusals(relay)
        print(f"flood: {attempts} connections from {len(addresses)} addresses; refusals {counted}")
        assert counted.get("evicted", 0) >= 1, counted
        wait_for(lambda: stats(relay)["active"] == 0, 40, "every connection to be released")
        s = stats(relay)
        assert s["refused"] == sum(counted.values()), s
        assert s["closes"]["evicted"] == counted["evicted"], s  # type: ignore[index]
        gauges = s["gauges"]
        assert isinstance(gauges, dict) and gauges["handshakes"] == 0 and gauges["admission_sources"] == 0, s
    finally:
        stop_relay(relay)
