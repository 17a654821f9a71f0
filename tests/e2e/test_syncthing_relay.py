"""Real Syncthing devices sync 20 MB through our relay, and nothing but our relay.

Two Debian ``syncthing`` instances with their own homes, GUI/API on loopback, discovery, NAT traversal,
pools and direct listening off; each joins our relay (its listen address is the relay URL) and knows
the other only by that URL. The files that arrive must hash the same, and the relay's own counters
must have carried the bytes.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.e2e.syncthing_env import RelayProcess, configure, make_syncthing, start_relay, syncthing_available

pytestmark = [pytest.mark.skipif(syncthing_available() is None, reason="syncthing is not installed"),
              pytest.mark.timeout(420)]

TOTAL = 20 * 1024 * 1024
FILES = 10
SYNC_TIMEOUT = 240.0


def _write_files(folder: Path) -> dict[str, str]:
    hashes = {}
    size = TOTAL // FILES
    for i in range(FILES):
        data = os.urandom(size)
        name = f"file{i:02d}.bin"
        (folder / name).write_bytes(data)
        hashes[name] = hashlib.sha256(data).hexdigest()
    return hashes


def _sync_through(tmp_path: Path, relay: RelayProcess, relay_url: str) -> None:
    a = make_syncthing(tmp_path, "a")
    b = make_syncthing(tmp_path, "b")
    configure(a, b, relay_url)
    configure(b, a, relay_url)
    hashes = _write_files(a.folder)
    try:
        a.start()
        b.start()
        deadline = time.monotonic() + SYNC_TIMEOUT
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                status = b.api("/rest/db/status?folder=data")
            except OSError:
                status = {}
            if (status.get("globalFiles") == FILES and status.get("needFiles") == 0
                    and status.get("inSyncFiles") == FILES):
                break
            time.sleep(2)
        else:
            raise AssertionError(f"b never had the files: {status}\n--- relay\n{relay.log()[-3000:]}\n"
                                 f"--- a\n{a.log()[-3000:]}\n--- b\n{b.log()[-3000:]}")
        connections = b.api("/rest/system/connections")["connections"]
        peer = connections[a.device_id]
        assert peer["connected"] and peer["type"].startswith("relay"), peer
    finally:
        try:
            b.stop()
        finally:
            a.stop()
    for name, digest in hashes.items():
        assert hashlib.sha256((b.folder / name).read_bytes()).hexdigest() == digest, name
    # Our relay carried the files (Syncthing's TLS and protocol add a little on top).
    assert relay.status()["bytesProxied"] >= TOTAL


def test_two_syncthing_devices_sync_20mb_through_our_relay(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay")
    try:
        _sync_through(tmp_path, relay, relay.url)
    finally:
        relay.stop()


def test_private_relay_refuses_syncthing_without_the_token(tmp_path: Path) -> None:
    """Syncthing learned to send a relay token in 1.22.1; Debian's 1.19.2 joins without one, so a
    private relay must refuse it ("wrong token") and carry nothing. (Joins with the right token are
    tested with our protocol client in test_syncthing_protocol.py.)"""
    relay = start_relay(tmp_path / "relay", "-token", "s3cret-token")
    a = make_syncthing(tmp_path, "a")
    b = make_syncthing(tmp_path, "b")
    url = f"{relay.url}&token=s3cret-token"
    configure(a, b, url)
    configure(b, a, url)
    _write_files(a.folder)
    try:
        a.start()
        b.start()
        deadline = time.monotonic() + 120
        while "wrong token" not in a.log() or "wrong token" not in b.log():
            assert time.monotonic() < deadline, f"no refusal seen:\n{a.log()[-2000:]}"
            time.sleep(1)
        status = relay.status()
        assert status["numActiveSessions"] == 0 and status["bytesProxied"] == 0, status
        assert not [p for p in b.folder.iterdir() if not p.name.startswith(".st")]  # .stfolder only
    finally:
        try:
            b.stop()
        finally:
            try:
                a.stop()
            finally:
                relay.stop()
