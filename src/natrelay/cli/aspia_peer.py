"""``natrelay aspia host|client``: Aspia peers that forward TCP through an Aspia router and relay."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from pathlib import Path
from typing import Any

from natrelay.aspia.crypto import usable_public_key
from natrelay.aspia.peer.client import AspiaClient, ClientSettings
from natrelay.aspia.peer.host import HOST_RETRY_INTERVAL, AspiaHost, HostSettings
from natrelay.aspia.peer.relay_link import (
    PEER_KEEPALIVE_INTERVAL,
    PEER_KEEPALIVE_TIMEOUT,
    KeepAliveTiming,
    PeerError,
)
from natrelay.aspia.peer.state import StateError, default_state_path
from natrelay.aspia.peer.users import (
    Credentials,
    HostUsers,
    UsersError,
    read_password_file,
    read_users_file,
)
from natrelay.cli import stdio_mode
from natrelay.engine.sockopts import DEFAULT_TCP_KEEPALIVE, OPTION_HELP, TcpKeepAlive, parse_tcp_keepalive
from natrelay.engine.streams import bridge
from natrelay.ops.addresses import AddressError, parse_host_port
from natrelay.ops.runtime import Stop, run

log = logging.getLogger("natrelay.aspia.peer")

_HEX_KEY = re.compile(r"[0-9A-Fa-f]{64}")


def add_parser(sub: Any) -> None:
    asp = sub.add_parser("aspia", help="Aspia peers (host / client) through an Aspia router and relay",
                         description="Aspia peers: a host exposes a local TCP service, a client reaches it "
                                     "through the router and a relay, authenticated end to end.")
    asub = asp.add_subparsers(dest="aspia_command", required=True, metavar="COMMAND")

    ho = asub.add_parser(
        "host", help="register with the router and expose a TCP service",
        description="Register with the router, print 'host id: N' on stdout, and forward every client that "
                    "authenticates as one of the host's users to the --expose service. Reconnects to the "
                    "router when it is lost; running sessions continue.")
    _router_options(ho)
    ho.add_argument("--expose", required=True, metavar="HOST:PORT", help="the TCP service clients reach")
    ho.add_argument("--user", metavar="NAME", help="the host's user (with --password-file)")
    ho.add_argument("--password-file", metavar="FILE", help="that user's password (first line of the file)")
    ho.add_argument("--users-file", metavar="FILE", help="more host users, one 'name:password' per line")
    ho.add_argument("--state", metavar="PATH", type=Path,
                    help=f"where the host ID and its key are kept (default {default_state_path()})")
    ho.add_argument("--retry-interval", type=float, default=HOST_RETRY_INTERVAL, metavar="SECONDS",
                    help="delay between attempts to reach the router while it cannot be reached; a router "
                         "connection that was up and is lost is dialled again after about 1 s "
                         "(default %(default)s)")
    ho.set_defaults(handler=host_command)

    cl = asub.add_parser(
        "client", help="connect to a host's service through the router and a relay",
        description="Connect to host --host-id. Without --listen, join stdin/stdout to one connection "
                    "(stdin's end is passed on as end of input) and exit when it closes; with --listen, "
                    "open one relayed connection per local TCP connection.")
    _router_options(cl)
    cl.add_argument("--user", required=True, metavar="NAME", help="the router account")
    cl.add_argument("--password-file", required=True, metavar="FILE", help="the router account's password")
    cl.add_argument("--host-id", required=True, metavar="ID", help="the host's ID, as it printed it")
    cl.add_argument("--listen", metavar="HOST:PORT", help="accept local TCP connections here, forward each")
    cl.add_argument("--host-user", metavar="NAME", help="the host user to log in as (default: --user)")
    cl.add_argument("--host-password-file", metavar="FILE",
                    help="that host user's password (default: --password-file)")
    stdio_mode.add_options(cl)
    cl.set_defaults(handler=client_command)


def _router_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", required=True, metavar="HOST:PORT[,HOST:PORT...]",
                   help="the Aspia router; further routers of the same cluster after commas are tried in "
                        "turn when the current one cannot be reached")
    p.add_argument("--router-key", required=True, metavar="HEX",
                   help="the router's public key: the 64 hex digits of its router.pub")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="limit for reaching the router or a relay (default %(default)s)")
    p.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")
    p.add_argument("--keepalive", type=float, default=PEER_KEEPALIVE_INTERVAL, metavar="SECONDS",
                   help="ping the router and relays this often, so NATs keep the connections (15..300, "
                        "default %(default)s)")
    p.add_argument("--keepalive-timeout", type=float, default=PEER_KEEPALIVE_TIMEOUT, metavar="SECONDS",
                   help="drop a connection whose pong is this late, e.g. after a NAT forgot it (5..60, "
                        "default %(default)s)")
    p.add_argument("--tcp-keepalive", type=_tcp_keepalive, default=DEFAULT_TCP_KEEPALIVE,
                   metavar="IDLE,INTERVAL,COUNT",
                   help=OPTION_HELP.replace("the control connection", "the router connection"))


def _tcp_keepalive(text: str) -> TcpKeepAlive | None:
    """``--tcp-keepalive`` for argparse: a bad value is a usage error (status 2) with the reason."""
    try:
        return parse_tcp_keepalive(text, option="")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_fail = stdio_mode.fail


def parse_router_key(text: str) -> bytes:
    """The router's X25519 public key from its hex form (any case; spaces and colons ignored)."""
    digits = re.sub(r"[\s:]", "", text)
    if not _HEX_KEY.fullmatch(digits):
        raise ValueError(f"--router-key must be 64 hex digits (the content of router.pub), got {text!r}")
    key = bytes.fromhex(digits)
    if not usable_public_key(key):
        raise ValueError(f"--router-key {text!r} is not a usable X25519 public key (all zeros or another "
                         "low-order point); copy it from the router's router.pub")
    return key


def parse_routers(text: str) -> tuple[tuple[str, int], tuple[tuple[str, int], ...]]:
    """``--router A[,B...]``: the first router, and the cluster's others as fallbacks in order."""
    first, *rest = (parse_host_port(part, what="--router") for part in text.split(","))
    return first, tuple(rest)


def parse_host_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 1 << 64:
        raise ValueError(f"--host-id must be a host ID as the host printed it (1 .. 2^64-1), got {text!r}")
    return int(text)


def _positive(value: float, what: str) -> float:
    if not value > 0:
        raise ValueError(f"{what} must be positive")
    return value


# ----------------------------------------------------------------------- host
def host_command(args: argparse.Namespace) -> int:
    try:
        users: list[Credentials] = []
        if args.user or args.password_file:
            if not (args.user and args.password_file):
                raise UsersError("--user and --password-file go together")
            users.append(Credentials(args.user, read_password_file(args.password_file)))
        if args.users_file:
            users.extend(read_users_file(args.users_file))
        if not users:
            raise UsersError("define the host's users: --user NAME --password-file F, or --users-file F")
        routers = parse_routers(args.router)
        settings = HostSettings(
            router=routers[0], fallback_routers=routers[1],
            router_key=parse_router_key(args.router_key),
            expose=parse_host_port(args.expose, what="--expose"),
            state_path=args.state or default_state_path(),
            retry_interval=_positive(args.retry_interval, "--retry-interval"),
            connect_timeout=_positive(args.timeout, "--timeout"),
            keepalive=KeepAliveTiming(args.keepalive, args.keepalive_timeout),
            tcp_keepalive=args.tcp_keepalive)
        host = AspiaHost(settings, HostUsers(users), on_host_id=_print_host_id)
    except (ValueError, AddressError, StateError) as exc:
        return _fail(str(exc))
    if host.state.host_id:
        log.info("state file %s holds host ID %d", settings.state_path, host.state.host_id)
    return run(host.run, use_uvloop=not args.no_uvloop, grace=stdio_mode.STOP_GRACE)


def _print_host_id(host_id: int) -> None:
    print(f"host id: {host_id}", flush=True)


# --------------------------------------------------------------------- client
def client_command(args: argparse.Namespace) -> int:
    try:
        password = read_password_file(args.password_file)
        host_password = read_password_file(args.host_password_file) if args.host_password_file else password
        routers = parse_routers(args.router)
        settings = ClientSettings(
            router=routers[0], fallback_routers=routers[1],
            router_key=parse_router_key(args.router_key),
            account=Credentials(args.user, password), host_id=parse_host_id(args.host_id),
            host_account=Credentials(args.host_user or args.user, host_password),
            connect_timeout=_positive(args.timeout, "--timeout"),
            keepalive=KeepAliveTiming(args.keepalive, args.keepalive_timeout),
            tcp_keepalive=args.tcp_keepalive)
        local = parse_host_port(args.listen, what="--listen") if args.listen else None
    except (ValueError, AddressError) as exc:
        return _fail(str(exc))
    client = AspiaClient(settings)
    if local is not None:
        return run(lambda stop: _client_forward(client, local, stop), use_uvloop=not args.no_uvloop,
                   grace=stdio_mode.STOP_GRACE)
    if (code := stdio_mode.stdout_problem()) is not None:
        return code
    return run(lambda stop: _client_stdio(client, stop, args), use_uvloop=not args.no_uvloop,
               grace=stdio_mode.STOP_GRACE)


async def _client_stdio(client: AspiaClient, stop: Stop, args: argparse.Namespace) -> int:
    stopper = asyncio.ensure_future(stop.wait())
    try:
        connecting = asyncio.ensure_future(client.open())
        await asyncio.wait({connecting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            return stop.exit_code
        try:
            proto = connecting.result()
        except PeerError as exc:
            return _fail(str(exc))
        return await stdio_mode.transfer(proto.streams(), stop, args)
    finally:
        stopper.cancel()
        client.close()


async def _client_forward(client: AspiaClient, local: tuple[str, int], stop: asyncio.Event) -> int:
    host_id = client.settings.host_id
    active: set[asyncio.Task[Any]] = set()

    async def on_local(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            active.add(task)
        try:
            try:
                remote = await client.connect()
            except PeerError as exc:
                log.warning("%s", exc)
                writer.close()
                return
            try:
                await bridge((reader, writer), remote)
            except (OSError, ConnectionError) as exc:
                log.info("connection to host %d ended: %s", host_id, exc)
        finally:
            if task is not None:
                active.discard(task)

    host, port = local
    try:
        server = await asyncio.start_server(on_local, host, port)
    except OSError as exc:
        client.close()
        return _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    try:
        # Log in now, so a wrong password or router key is reported at start, not at first use.
        await client.router()
    except PeerError as exc:
        server.close()
        client.close()
        return _fail(str(exc))
    log.info("forwarding %s:%d to host %d", host, port, host_id)
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    for task in list(active):
        task.cancel()
    await server.wait_closed()
    client.close()
    return 0
