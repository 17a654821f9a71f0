"""The router shell's pure parts: fake accounts for unknown names, white-list addresses, stale sockets."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from natrelay.aspia.router.connection import peer_ip
from natrelay.aspia.router.db import RouterDatabase, StoredUser
from natrelay.aspia.router.server import RouterOptions, RouterServer, remove_stale_socket
from natrelay.ops.aspia_config import RouterConfig

SEED = bytes(range(0x80, 0xC0))
GHOST_SALT = bytes.fromhex(  # spec §4.8, verified against the real router
    "40824e5205d8cd848538d4aeb2877f37ebf53d29988b75f0d9fb96a85930c7073ae41b314fe953075146bed9fde61b1a"
    "23257757bbba2ad1ce1010ce69fe425d")


def lookups(tmp_path: Path, names: list[str], seed: bytes = SEED) -> list[Any]:
    path = tmp_path / "router.db3"
    RouterDatabase.create(path, [StoredUser("alice", "4096", b"s" * 64, b"v" * 512, 2),
                                 StoredUser("off", "4096", b"s" * 64, b"v" * 512, 2, flags=0)])
    db = RouterDatabase.open(path)
    config = RouterConfig(private_key=bytes(range(32)), seed_key=seed)

    async def run() -> list[Any]:
        server = RouterServer(RouterOptions(config=config, database=path), db)
        try:
            return [server.lookup_user(name) for name in names]
        finally:
            server.timers.close()

    return asyncio.run(run())


def test_unknown_disabled_and_wrongly_cased_names_get_the_spec_fake(tmp_path: Path) -> None:
    alice, ghost, again, off, upper = lookups(tmp_path, ["alice", "Ghost", "Ghost", "off", "ALICE"])
    assert alice.sessions == 2 and alice.salt == b"s" * 64
    assert ghost.salt == GHOST_SALT and ghost.group == "8192" and ghost.sessions == 0
    assert again is ghost  # cached: the 8192-bit verifier is computed once per name
    assert off.group == "8192" and off.sessions == 0 and off.salt != b"s" * 64
    assert upper.group == "8192"  # lookups are case-sensitive like the original's


def test_without_a_seed_the_handshake_makes_its_own_fake(tmp_path: Path) -> None:
    [ghost] = lookups(tmp_path, ["Ghost"], seed=b"")
    assert ghost is None


class _Transport:
    def __init__(self, peer: Any) -> None:
        self.peer = peer

    def get_extra_info(self, name: str) -> Any:
        return self.peer if name == "peername" else None


@pytest.mark.parametrize(("peer", "text"), [
    (("::ffff:10.1.2.3", 5, 0, 0), "10.1.2.3"),
    (("10.1.2.3", 5), "10.1.2.3"),
    (("fe80::1%eth0", 5, 0, 2), "fe80::1"),
    (("2001:DB8::1", 5, 0, 0), "2001:db8::1"),
    (None, ""),
])
def test_peer_ip_is_printed_like_the_original(peer: Any, text: str) -> None:
    assert peer_ip(_Transport(peer)) == text  # type: ignore[arg-type]


def test_stale_admin_socket_is_removed_but_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "router.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(OSError, match="already running"):
            remove_stale_socket(path)
    assert path.exists()  # closed now, but the file stays behind like after a crash
    remove_stale_socket(path)
    assert not path.exists()
    remove_stale_socket(path)  # nothing there: nothing to do
