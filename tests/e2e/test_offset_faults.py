"""Faults with real processes: strelay dies under a connected listener and comes back."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

from natrelay.offset import constants as C
from natrelay.offset.client import OffsetClient, TunnelError
from natrelay.offset.crypto import Identity
from natrelay.offset.files import read_identity_seed, read_ticket
from tests.e2e.offset_env import Relay, make_identity, peer, start_relay, tool, wait_for, wait_listening
from tests.e2e.test_offset_limits import Echo, end, first_roundtrip, tunnel_roundtrip

#: The listener retries after 1, 2, 4, ... up to C.BACKOFF seconds, each with +-20 % jitter; the
#: slack covers starting strelay and a loaded machine.
REACHABLE_WITHIN = C.BACKOFF * 1.2 + 20.0


def restart(relay: Relay, directory: Path) -> Relay:
    """A new strelay with the same identity on the same port."""
    log_path = directory / "strelay-again.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*tool("strelay"), "--idfile", str(relay.ident), "--laddr",
                                 f"127.0.0.1:{relay.port}", "--log-level", "debug"], stdout=log, stderr=log)
    again = Relay(proc, relay.port, relay.ident, relay.ticket, relay.key, log_path)
    try:
        wait_for(lambda: "public key" in again.log() or proc.poll() is not None, 20, "strelay to restart")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    assert proc.poll() is None, again.log()
    return again


def test_listener_is_reachable_again_after_strelay_is_killed_and_restarted(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay")
    b_ident, b_key = make_identity(tmp_path, "b")
    a_ident, a_key = make_identity(tmp_path, "a")
    again: Relay | None = None

    async def scenario() -> float:
        nonlocal again
        async with Echo() as echo_port:
            exposer = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(relay.ticket),
                           "--allow", a_key, "--expose", f"127.0.0.1:{echo_port}")
            client = OffsetClient(Identity(read_identity_seed(a_ident)), read_ticket(relay.ticket))
            try:
                await asyncio.to_thread(wait_listening, relay, b_key)
                await first_roundtrip(client, b_key, 1024 * 1024, exposer)
                relay.proc.send_signal(signal.SIGKILL)  # a crash: no orderly close of anything
                relay.proc.wait(10)
                again = await asyncio.to_thread(restart, relay, tmp_path)
                started = time.monotonic()
                while True:
                    try:
                        await tunnel_roundtrip(client, b_key, 8 * 1024 * 1024)
                        break
                    except TunnelError:
                        assert exposer.poll() is None, "the listener exited instead of reconnecting"
                        if time.monotonic() - started > REACHABLE_WITHIN:
                            raise
                        await asyncio.sleep(0.25)
                back_after = time.monotonic() - started
                assert f"{b_key[:10]} listens" in again.log()
                return back_after
            finally:
                client.close()
                end(exposer)

    try:
        back_after = asyncio.run(scenario())
        print(f"listener reachable again {back_after:.1f} s after strelay restarted")
    finally:
        if relay.proc.poll() is None:
            relay.proc.kill()
            relay.proc.wait()
        if again is not None:
            assert again.stop() == 0, again.log()
