"""A router core on a fresh database, and shorthands for opening sessions and decoding replies."""

from __future__ import annotations

import os
import random
from pathlib import Path

from google.protobuf.message import Message

from natrelay.aspia.handshake import SessionInfo
from natrelay.aspia.messages import ASPIA_VERSION, make_envelope, serialize
from natrelay.aspia.proto import router_common_pb2, router_peer_pb2, router_relay_pb2
from natrelay.aspia.router.admin import Router
from natrelay.aspia.router.db import RouterDatabase, StoredUser
from natrelay.aspia.router.sessions import RouterSession, SessionKind

NOW = 1_700_000_000.0


def make_router(tmp_path: Path, seed: int = 1) -> Router:
    path = tmp_path / "router.db3"
    admin = StoredUser("admin", "4096", b"s" * 64, b"v" * 512, 3)
    RouterDatabase.create(path, [admin])
    return Router(RouterDatabase.open(path), random.Random(seed).randbytes)


def open_session(router: Router, kind: SessionKind, address: str = "10.0.0.1",
                 user: str = "") -> RouterSession:
    return router.open_session(kind, address, user, ASPIA_VERSION, SessionInfo(os_name="Linux"), NOW)


def peer(field: str, body: Message) -> bytes:
    return serialize(make_envelope(router_peer_pb2.PeerToRouter, field, body))


def relay_keys(*ids: int) -> list[router_common_pb2.RelayKey]:
    return [router_common_pb2.RelayKey(key_id=i, type=1, encryption=1, public_key=os.urandom(32),
                                       iv=os.urandom(12)) for i in ids]


def key_pool(*ids: int, host: str = "127.0.0.1", port: int = 7000) -> bytes:
    pool = router_relay_pb2.RelayKeyPool(peer_host=host, peer_port=port, key=relay_keys(*ids))
    return serialize(make_envelope(router_relay_pb2.RelayToRouter, "key_pool", pool))
