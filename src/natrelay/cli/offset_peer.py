"""``natrelay offset listen|connect``: Offset peers as netcat or as TCP port forwarders."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from typing import Any

from natrelay.cli import stdio_mode
from natrelay.engine.sockopts import DEFAULT_TCP_KEEPALIVE, OPTION_HELP, TcpKeepAlive, parse_tcp_keepalive
from natrelay.engine.streams import abort_stream, bridge
from natrelay.offset import constants as C
from natrelay.offset.client import OffsetClient, TunnelError
from natrelay.offset.crypto import Identity
from natrelay.offset.files import b64url_decode, b64url_encode, read_identity_seed, read_ticket
from natrelay.ops.addresses import AddressError, parse_host_port
from natrelay.ops.runtime import Stop, run

log = logging.getLogger("natrelay.offset.peer")

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def add_parser(sub: Any) -> None:
    off = sub.add_parser("offset", help="Offset relay peers (listen / connect)",
                         description="Offset relay peers. Keys are URL-safe base64 as `stmgr show` prints.")
    osub = off.add_subparsers(dest="offset_command", required=True, metavar="COMMAND")

    li = osub.add_parser(
        "listen", help="listen on the relay under this identity",
        description="Listen on the relay under this identity. Without --expose, serve one connection on "
                    "stdin/stdout (like `nc -l`) and exit when it closes; with --expose, forward every "
                    "accepted connection to a local TCP service, reconnecting to the relay when it is "
                    "lost.")
    _common(li)
    li.add_argument("--allow", action="append", default=[], metavar="PUBKEY",
                    help="accept connections from this key (repeatable)")
    li.add_argument("--allow-any", action="store_true", help="accept connections from any key")
    li.add_argument("--expose", metavar="HOST:PORT", help="forward accepted connections to this TCP service")
    li.add_argument("--tcp-keepalive", type=_tcp_keepalive, default=DEFAULT_TCP_KEEPALIVE,
                    metavar="IDLE,INTERVAL,COUNT",
                    help=OPTION_HELP.replace("the control connection", "the listen connection"))
    stdio_mode.add_options(li)
    li.set_defaults(handler=listen_command)

    co = osub.add_parser(
        "connect", help="connect to a listening key through the relay",
        description="Connect to the node listening as --to. Without --listen, join stdin/stdout to it "
                    "(stdin's end is passed on as end of input); with --listen, open one relayed "
                    "connection per local TCP connection.")
    _common(co)
    co.add_argument("--to", required=True, metavar="PUBKEY", help="the listening node's public key")
    co.add_argument("--listen", metavar="HOST:PORT", help="accept local TCP connections here, forward each")
    stdio_mode.add_options(co)
    co.set_defaults(handler=connect_command)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--idfile", required=True, help="this node's identity file (stmgr gen-ident)")
    p.add_argument("-r", "--relay", required=True, metavar="TICKET", help="the relay's ticket file")
    p.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")
    p.add_argument("--keepalive", type=float, default=C.HEARTBEAT_INTERVAL, metavar="SECONDS",
                   help="send a heartbeat after this many idle seconds, so NATs keep the connection "
                        "(1..%(default)g: relays drop a link silent for 32 s; default %(default)g)")


def _tcp_keepalive(text: str) -> TcpKeepAlive | None:
    """``--tcp-keepalive`` for argparse: a bad value is a usage error (status 2) with the reason."""
    try:
        return parse_tcp_keepalive(text, option="")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _client(args: argparse.Namespace) -> OffsetClient:
    if not 1 <= args.keepalive <= C.HEARTBEAT_INTERVAL:
        raise ValueError(f"--keepalive must be 1..{C.HEARTBEAT_INTERVAL:g} seconds, got {args.keepalive:g}")
    # listen only: connect has no long-lived connection to the relay (one per tunnel)
    tcp = getattr(args, "tcp_keepalive", DEFAULT_TCP_KEEPALIVE)
    return OffsetClient(Identity(read_identity_seed(args.idfile)), read_ticket(args.relay),
                        heartbeat_interval=args.keepalive, tcp_keepalive=tcp)


def _key(text: str, what: str) -> bytes:
    return b64url_decode(text.strip(), length=32, what=what)


_fail = stdio_mode.fail


# --------------------------------------------------------------------- listen
def listen_command(args: argparse.Namespace) -> int:
    try:
        client = _client(args)
        allowed = {_key(k, "--allow key") for k in args.allow}
        expose = parse_host_port(args.expose, what="--expose") if args.expose else None
    except (OSError, ValueError, AddressError) as exc:
        return _fail(str(exc))
    if expose is not None and not allowed and not args.allow_any:
        return _fail("--expose needs --allow PUBKEY (or --allow-any) to say who may reach the service")
    allow = None if args.allow_any or not allowed else allowed.__contains__
    if expose is None and (code := stdio_mode.stdout_problem()) is not None:
        return code
    print(f"listening as {b64url_encode(client.identity.public_key)}", file=sys.stderr, flush=True)
    if expose is not None:
        return run(lambda stop: _listen_expose(client, allow, expose, stop), use_uvloop=not args.no_uvloop,
                   grace=stdio_mode.STOP_GRACE)
    return run(lambda stop: _listen_stdio(client, allow, stop, args), use_uvloop=not args.no_uvloop,
               grace=stdio_mode.STOP_GRACE)


async def _listen_expose(client: OffsetClient, allow: Any, target: tuple[str, int],
                         stop: asyncio.Event) -> int:
    host, port = target

    async def on_tunnel(key: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            local = await asyncio.open_connection(host, port)
        except OSError as exc:
            log.warning("cannot reach %s:%d for %s: %s", host, port, b64url_encode(key), exc)
            abort_stream(writer, f"the listener cannot reach its service {host}:{port}: "
                                 f"{exc.strerror or exc}")
            return
        try:
            await bridge((reader, writer), local)
        except (OSError, ConnectionError) as exc:
            log.info("connection from %s ended: %s", b64url_encode(key), exc)

    listener = client.listener(on_tunnel, allow=allow)
    task = asyncio.create_task(listener.run())
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await listener.aclose()
    client.close()
    return 0


async def _listen_stdio(client: OffsetClient, allow: Any, stop: Stop, args: argparse.Namespace) -> int:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    served = False

    def allow_one(key: bytes) -> bool:
        return not served and (allow is None or allow(key))

    async def on_tunnel(key: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        if served:
            return
        served = True
        print(f"connection from {b64url_encode(key)}", file=sys.stderr, flush=True)
        code = await stdio_mode.transfer((reader, writer), stop, args)
        if not done.done():
            done.set_result(code)

    listener = client.listener(on_tunnel, allow=allow_one)
    try:
        first = await listener.listen_once()
    except TunnelError as exc:
        return _fail(f"cannot listen on the relay: {exc}")
    task = asyncio.create_task(listener.run(first=first))  # reconnects if needed, until one connection
    stopper = asyncio.create_task(stop.wait())
    # A stop while a connection is served is the transfer's to handle (it flushes and reports).
    waiters: set[asyncio.Future[Any]] = {done, stopper}
    while not done.done():
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if stopper.done() and not served:
            break
        waiters.discard(stopper)
    for t in (task, stopper):
        t.cancel()
    await listener.aclose()
    client.close()
    return done.result() if done.done() else stop.exit_code


# -------------------------------------------------------------------- connect
def connect_command(args: argparse.Namespace) -> int:
    try:
        client = _client(args)
        remote = _key(args.to, "--to key")
        local = parse_host_port(args.listen, what="--listen") if args.listen else None
    except (OSError, ValueError, AddressError) as exc:
        return _fail(str(exc))
    if local is not None:
        return run(lambda stop: _connect_forward(client, remote, local, stop), use_uvloop=not args.no_uvloop,
                   grace=stdio_mode.STOP_GRACE)
    if (code := stdio_mode.stdout_problem()) is not None:
        return code
    return run(lambda stop: _connect_stdio(client, remote, stop, args), use_uvloop=not args.no_uvloop,
               grace=stdio_mode.STOP_GRACE)


async def _connect_stdio(client: OffsetClient, remote: bytes, stop: Stop, args: argparse.Namespace) -> int:
    connecting = asyncio.ensure_future(client.connect(remote))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({connecting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            return stop.exit_code
        try:
            streams = connecting.result()
        except TunnelError as exc:
            return _fail(str(exc))
        return await stdio_mode.transfer(streams, stop, args)
    finally:
        stopper.cancel()
        client.close()


async def _connect_forward(client: OffsetClient, remote: bytes, local: tuple[str, int],
                           stop: asyncio.Event) -> int:
    who = b64url_encode(remote)
    handlers: set[asyncio.Task[Any]] = set()

    async def on_local(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        task.add_done_callback(handlers.discard)
        try:
            tunnel = await client.connect(remote)
            await bridge((reader, writer), tunnel)
        except TunnelError as exc:
            log.warning("%s", exc)
        except (OSError, ConnectionError) as exc:
            log.info("connection to %s ended: %s", who, exc)
        except asyncio.CancelledError:
            # Only our own shutdown cancels these handlers: end quietly, the connection closes below.
            # (Re-raising would make asyncio's stream callback log a spurious error on Python 3.11.)
            pass
        finally:
            writer.close()

    host, port = local
    try:
        server = await asyncio.start_server(on_local, host, port)
    except OSError as exc:
        return _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    log.info("forwarding %s:%d to %s", host, port, who)
    await stop.wait()
    server.close()
    for task in list(handlers):  # open connections end with the program
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    await server.wait_closed()
    client.close()
    return 0
