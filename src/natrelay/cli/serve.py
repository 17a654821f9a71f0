"""``natrelay serve``: the main job on an embedded default, with no configuration to write.

First run: creates an Offset identity and ticket, and an Aspia router and relay configuration,
in the data folder. Every run: starts the Offset relay, the Aspia router and one Aspia relay on
127.0.0.1, and prints what peers need (ticket, keys, addresses) and how to attach them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from natrelay import __version__
from natrelay.aspia.relay.controller import RouterController
from natrelay.aspia.relay.server import PeerListener
from natrelay.cli.serve_aspia import AspiaSetup, RunningAspia, ensure_aspia_files, run_aspia, usage_text
from natrelay.cli.serve_syncthing import DEFAULT_SYNCTHING_PORT, start_syncthing
from natrelay.engine.resources import raise_nofile_limit
from natrelay.offset.crypto import Identity
from natrelay.offset.files import (
    RelayTicket,
    b64url_encode,
    read_identity_seed,
    read_ticket,
    write_identity,
    write_ticket,
)
from natrelay.offset.server import OffsetRelayServer
from natrelay.ops import sdnotify
from natrelay.ops.aspia_settings import ConfigError
from natrelay.ops.http.aspia_sources import AspiaRelaySource, AspiaRouterSource
from natrelay.ops.http.auth import Authenticator, RouterAccounts
from natrelay.ops.http.offset_source import OffsetSource
from natrelay.ops.http.options import HttpConfigError, HttpOptions, add_http_arguments, http_options
from natrelay.ops.http.server import HttpServer
from natrelay.ops.http.source import Source
from natrelay.ops.http.syncthing_source import SyncthingSource
from natrelay.ops.runtime import run

log = logging.getLogger("natrelay.serve")

DEFAULT_DATA_DIR = "natrelay-data"
DEFAULT_OFFSET_PORT = 4180
DEFAULT_ROUTER_PORT = 8060
DEFAULT_RELAY_PORT = 8070
DEFAULT_HTTP = "127.0.0.1:8080"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the relay on an embedded default (no configuration needed)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="where identities and tickets live (default: ./%(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--offset-port", type=int, default=DEFAULT_OFFSET_PORT,
                   help="the Offset relay's port (default %(default)s)")
    p.add_argument("--router-port", type=int, default=DEFAULT_ROUTER_PORT,
                   help="the Aspia router's port, set on first run (default %(default)s)")
    p.add_argument("--relay-port", type=int, default=DEFAULT_RELAY_PORT,
                   help="the Aspia relay's peer port, set on first run (default %(default)s)")
    p.add_argument("--no-aspia", action="store_true", help="run only the Offset relay")
    p.add_argument("--syncthing-port", type=int, default=DEFAULT_SYNCTHING_PORT,
                   help="the Syncthing relay's port (default %(default)s)")
    p.add_argument("--no-syncthing", action="store_true", help="do not run the Syncthing relay")
    p.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")
    add_http_arguments(p)
    p.set_defaults(handler=serve_command)


def ensure_offset_files(data: Path, host: str, port: int) -> tuple[Identity, Path]:
    """The relay's identity and ticket in ``data``, created on first use."""
    ident_path = data / "offset" / "relay.ident"
    ticket_path = data / "offset" / "relay.ticket"
    if not ident_path.exists():
        write_identity(ident_path, Identity.generate().seed)
        log.info("created identity %s", ident_path)
    identity = Identity(read_identity_seed(ident_path))
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if ticket_path.exists():
        ticket = read_ticket(ticket_path)
        if ticket.public_key != identity.public_key or ticket.address != shown:
            raise ValueError(f"{ticket_path} does not match {ident_path} and {shown}; "
                             "remove it to have it written again")
    else:
        write_ticket(ticket_path, RelayTicket(public_key=identity.public_key, address=shown))
        log.info("created ticket %s", ticket_path)
    return identity, ticket_path


def serve_command(args: argparse.Namespace) -> int:
    data = Path(args.data_dir)
    aspia: AspiaSetup | None = None
    try:
        http = None if args.http == "off" else http_options(args, DEFAULT_HTTP)
    except HttpConfigError as exc:
        print(f"natrelay: error: {exc}", file=sys.stderr)
        return 2
    try:
        identity, ticket_path = ensure_offset_files(data, args.host, args.offset_port)
        if not args.no_aspia:
            aspia = ensure_aspia_files(data, args.host, args.router_port, args.relay_port)
    except (OSError, ValueError, ConfigError) as exc:
        lines = exc.lines() if isinstance(exc, ConfigError) else [str(exc)]
        for line in lines:
            print(f"natrelay: error: {line}", file=sys.stderr)
        return 1

    async def main(stop: asyncio.Event) -> int:
        raise_nofile_limit()
        server = OffsetRelayServer(identity)
        try:
            await server.start(args.host, args.offset_port)
        except OSError as exc:
            print(f"natrelay: error: cannot listen on {args.host}:{args.offset_port}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        syncthing = None
        if not args.no_syncthing:
            syncthing = await start_syncthing(data, args.host, args.syncthing_port)
            if syncthing is None:
                await server.close()
                return 1
        running: RunningAspia | None = None
        web: HttpServer | None = None
        relay_sources: list[Source] = []

        def relay_ready(listener: PeerListener, link: RouterController) -> None:
            relay_sources.append(AspiaRelaySource(listener, link))
            if web is not None:
                web.add_source(relay_sources[-1])

        if aspia is not None:
            try:
                running = await run_aspia(aspia, stop, on_relay_ready=relay_ready)
            except OSError as exc:
                await server.close()
                if syncthing is not None:
                    await syncthing.close()
                print(f"natrelay: error: cannot start the Aspia router on {args.host}:"
                      f"{args.router_port}: {exc.strerror or exc}", file=sys.stderr)
                return 1
        if http is not None:
            try:
                web = await start_http(http, args.http is None, server, running)
                if web is not None and syncthing is not None:
                    web.add_source(SyncthingSource(syncthing.relay))
                for source in relay_sources:  # a relay that became ready while HTTP was starting
                    if web is not None:
                        web.add_source(source)
            except (OSError, HttpConfigError) as exc:
                stop.set()
                if running is not None:
                    await running.close()
                if syncthing is not None:
                    await syncthing.close()
                await server.close()
                print(f"natrelay: error: cannot start HTTP on {http.host}:{http.port}: {exc}",
                      file=sys.stderr)
                return 1
        key = b64url_encode(identity.public_key)
        print(f"Offset relay listening on {args.host}:{args.offset_port}\n"
              f"  public key: {key}\n"
              f"  ticket:     {ticket_path}\n"
              f"Try it (two other terminals):\n"
              f"  stmgr gen-ident --output a.ident && stmgr gen-ident --output b.ident\n"
              f"  natrelay offset listen --idfile b.ident --relay {ticket_path}\n"
              f"  natrelay offset connect --idfile a.ident --relay {ticket_path} "
              f"--to \"$(stmgr show --key b.ident)\"", flush=True)
        if aspia is not None:
            print(usage_text(aspia), flush=True)
        if web is not None:
            print(f"Dashboard, metrics and status: {web.url} (/metrics, /status)", flush=True)
        print("Stop with Ctrl-C.", flush=True)
        sdnotify.ready("serving")
        if running is not None:
            # The relay ends by itself only on a start-up failure (its port in use): then stop all.
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({running.relay, waiter}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            code = await running.close()
            if web is not None:
                await web.close()
            await server.close()
            if syncthing is not None:
                await syncthing.close()
            return code
        await stop.wait()
        if web is not None:
            await web.close()
        await server.close()
        if syncthing is not None:
            await syncthing.close()
        return 0

    return run(main, use_uvloop=not args.no_uvloop)


async def start_http(options: HttpOptions, by_default: bool, server: OffsetRelayServer,
                     running: RunningAspia | None) -> HttpServer | None:
    """The HTTP surface for every server of this process; logins are the embedded router's admins.

    On by default: if the default port is taken, serve goes on without HTTP (and says so) rather
    than refusing to start; an address the operator chose must work.
    """
    accounts: Authenticator | None = RouterAccounts(running.db) if running is not None else None
    sources: list[Source] = [OffsetSource(server)]
    if running is not None:
        sources.insert(0, AspiaRouterSource(running.router))
    web = HttpServer(options, version=__version__, title="natrelay serve", sources=sources,
                     authenticator=accounts)
    try:
        await web.start()
    except OSError as exc:
        if not by_default:
            raise
        print(f"natrelay: warning: no HTTP dashboard: cannot listen on {DEFAULT_HTTP}: {exc.strerror or exc} "
              "(choose another with --http HOST:PORT)", file=sys.stderr, flush=True)
        return None
    return web
