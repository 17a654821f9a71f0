"""The Aspia half of ``natrelay serve``: a router and one relay on 127.0.0.1, configured on first run.

Nothing here is new machinery: the router's own ``--create-config`` makes router.json, router.pub
and the database; a relay.json is written with the router's key and local addresses; then both run
in the serve process's event loop, exactly as ``aspia_router`` and ``aspia_relay`` would.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from natrelay.aspia import srp
from natrelay.aspia.crypto import X25519KeyPair
from natrelay.aspia.relay.app import serve_relay
from natrelay.aspia.relay.controller import RouterController
from natrelay.aspia.relay.server import PeerListener
from natrelay.aspia.router.db import RouterDatabase, StoredUser
from natrelay.aspia.router.server import RouterOptions, RouterServer
from natrelay.aspia.router.sessions import SessionKind
from natrelay.cli import aspia_router
from natrelay.ops.aspia_config import RelayConfig, RouterConfig
from natrelay.ops.jsonsettings import update_settings

log = logging.getLogger("natrelay.serve")

#: The router account the printed client command uses (client sessions only).
CLIENT_USER = "natrelay"


@dataclass(frozen=True)
class AspiaSetup:
    """Where the embedded router and relay keep their files, and what a peer needs to know."""

    folder: Path
    router: RouterConfig
    relay: RelayConfig
    router_key_hex: str
    client_password_file: Path

    @property
    def database(self) -> Path:
        return self.folder / "router.db3"

    @property
    def admin_socket(self) -> Path:
        return self.folder / "router.sock"


def ensure_aspia_files(data: Path, host: str, router_port: int, relay_port: int) -> AspiaSetup:
    """Router and relay configuration in ``data/aspia``, created on first use."""
    folder = data / "aspia"
    router_json, relay_json = folder / "router.json", folder / "relay.json"
    password_file = folder / f"{CLIENT_USER}.password"
    if not router_json.exists():
        paths = aspia_router._Paths(argparse.Namespace(config=router_json, data_dir=folder))
        if aspia_router.create_config(paths) != 0:
            raise ValueError(f"could not create the router configuration in {folder}")
        update_settings(router_json, {"Port": str(router_port), "ListenInterface": host})
        _add_client_user(folder / "router.db3", password_file)
    router = RouterConfig.load(router_json)
    router_key = X25519KeyPair.from_private_bytes(router.private_key).public_bytes
    if not relay_json.exists():
        RelayConfig(router_address=host, router_port=router.port, router_public_key=router_key,
                    listen_interface=host, peer_address=host, peer_port=relay_port,
                    statistics_enabled=True).write_new(relay_json)
    relay = RelayConfig.load(relay_json)
    if router.port != router_port or relay.peer_port != relay_port:
        raise ValueError(f"{folder} was set up for router port {router.port} and relay port "
                         f"{relay.peer_port}; remove it to have it set up again")
    return AspiaSetup(folder, router, relay, router_key.hex().upper(), password_file)


def _add_client_user(database: Path, password_file: Path) -> None:
    """A router account for the printed client command, its password kept in a 0600 file."""
    password = secrets.token_urlsafe(15)
    group, salt, verifier = srp.new_account(CLIENT_USER, password.encode(), secrets.token_bytes(64))
    db = RouterDatabase.open(database)
    try:
        db.add_user(StoredUser(CLIENT_USER, group, salt, verifier, int(SessionKind.CLIENT)))
    finally:
        db.close()
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")


@dataclass
class RunningAspia:
    """The embedded router and relay of one serve process."""

    router: RouterServer
    db: RouterDatabase
    relay: asyncio.Task[int]

    async def close(self) -> int:
        """Wait for the relay (its ``stop`` must be set), then stop the router; the relay's status."""
        code = await self.relay
        await self.router.close()
        self.db.close()
        return code


async def run_aspia(setup: AspiaSetup, stop: asyncio.Event,
                    on_relay_ready: Callable[[PeerListener, RouterController], None] | None = None,
                    ) -> RunningAspia:
    """Start the router, then the relay (which registers with it); both stop with ``stop``."""
    db = RouterDatabase.open(setup.database)
    options = RouterOptions(config=setup.router, database=setup.database, admin_socket=setup.admin_socket,
                            public_key_hex=setup.router_key_hex)
    router = RouterServer(options, db)
    try:
        await router.start()
    except OSError:
        await router.close()
        db.close()
        raise
    relay = asyncio.create_task(serve_relay(setup.relay, stop, source=str(setup.folder / "relay.json"),
                                            on_ready=on_relay_ready))
    return RunningAspia(router, db, relay)


def usage_text(setup: AspiaSetup) -> str:
    """How to attach a host and a client to the embedded router."""
    router = f"{setup.relay.router_address}:{setup.router.port}"
    key = setup.router_key_hex
    return (
        f"Aspia router on {router}, relay on {setup.relay.peer_address}:{setup.relay.peer_port}\n"
        f"  router key: {key}\n"
        f"  files:      {setup.folder}\n"
        f"Try it (two other terminals), with a host user of your choice:\n"
        f"  echo secret > host.pw\n"
        f"  natrelay aspia host --router {router} --router-key {key} --expose 127.0.0.1:22 "
        f"--user me --password-file host.pw\n"
        f"  natrelay aspia client --router {router} --router-key {key} --user {CLIENT_USER} "
        f"--password-file {setup.client_password_file} --host-user me --host-password-file host.pw "
        f"--host-id <the id the host printed> --listen 127.0.0.1:2222"
    )
