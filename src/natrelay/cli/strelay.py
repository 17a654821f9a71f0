"""``strelay``: the Offset relay server (``strelay --idfile relay.ident --laddr 127.0.0.1:1337``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys

from natrelay import __version__
from natrelay.engine.limits import Limits
from natrelay.engine.resources import fd_budget, raise_nofile_limit
from natrelay.offset import constants as C
from natrelay.offset.crypto import Identity
from natrelay.offset.files import b64url_encode, read_identity_seed
from natrelay.offset.server import RELAY_HANDSHAKE_TIMEOUT, OffsetRelayServer, RelayConfig
from natrelay.ops import sdnotify
from natrelay.ops.addresses import AddressError, parse_listen_address
from natrelay.ops.bandwidth import parse_rate
from natrelay.ops.http.offset_source import OffsetSource
from natrelay.ops.http.options import HttpConfigError, add_http_arguments, http_options
from natrelay.ops.http.standalone import HttpStartError, StandaloneHttp, start_standalone_http
from natrelay.ops.logging import LoggingConfigError, setup_logging
from natrelay.ops.runtime import extract_attached, run

log = logging.getLogger("natrelay.strelay")

EPILOG = """\
--laddr takes HOST:PORT, [IPv6]:PORT, or a bare PORT (every interface). A value glued to the
option, as in `--laddr1337`, is accepted too. Limits of 0 mean "no limit". Per-IP limits count
an IPv6 source by its /64. Connections refused by a limit are counted by reason (SIGUSR1 and the
periodic stats line show them) and logged once, then summed up in one line every 10 s.
Logging: --log-level or $NATRELAY_LOG, e.g. `debug` or `info,natrelay.offset.server=debug`
(debug shows why each connection was closed). Exit status: 0 after SIGINT/SIGTERM, 1 on a start-up
error (bad identity file, address in use), 2 on a usage error (unknown option, invalid value).
"""


def _count(text: str) -> int:
    """argparse ``type=``: a limit, an integer >= 0 (0 = no limit); anything else is a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = no limit), got {value}")
    return value


def _frame_size(text: str) -> int:
    """argparse ``type=`` for --max-frame: at least 64 KiB, or tunnels could not carry their frames."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bytes, got {text!r}") from None
    if value < 64 * 1024:
        raise argparse.ArgumentTypeError(f"must be at least 65536 bytes, got {value}")
    return value


def _seconds(text: str) -> float:
    """argparse ``type=``: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, got {text}")
    return value


def _interval(text: str) -> float:
    """argparse ``type=`` for --stats-interval: seconds >= 0 (0 = never)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _laddr(text: str) -> tuple[str, int]:
    """argparse ``type=`` for --laddr: a malformed address is a usage error (exit 2)."""
    try:
        return parse_listen_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="strelay",
        description="Offset relay server: pairs nodes that listen and connect by public key.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--idfile", required=True, help="the relay's identity file (stmgr gen-ident)")
    p.add_argument("-l", "--laddr", required=True, type=_laddr,
                   help="listen address: HOST:PORT, [IPv6]:PORT or PORT")
    p.add_argument("--log-level", help="log level spec (default: info; env NATRELAY_LOG)")
    p.add_argument("-V", "--version", action="version", version=f"strelay {__version__}")
    lim = Limits()
    g = p.add_argument_group("limits")
    g.add_argument("--max-frame", type=_frame_size, default=C.DEFAULT_MAX_FRAME,
                   help="largest frame accepted, in bytes (default %(default)s)")
    g.add_argument("--max-connections", type=_count, default=lim.max_connections,
                   help="open connections in total (default %(default)s)")
    g.add_argument("--max-per-ip", type=_count, default=lim.max_per_ip,
                   help="open connections per source IP (default %(default)s)")
    g.add_argument("--max-handshakes", type=_count, default=lim.max_handshakes,
                   help="handshakes in progress (default %(default)s)")
    g.add_argument("--max-handshakes-per-ip", type=_count, default=lim.max_handshakes_per_ip,
                   help="handshakes in progress per source IP (default %(default)s)")
    g.add_argument("--handshake-timeout", type=_seconds, default=RELAY_HANDSHAKE_TIMEOUT, metavar="SECONDS",
                   help="time a new connection has for its secure handshake (default %(default)s)")
    g.add_argument("--max-listeners", type=_count, default=lim.max_listeners,
                   help="listening nodes (default %(default)s)")
    g.add_argument("--max-listeners-per-ip", type=_count, default=lim.max_listeners_per_ip,
                   help="listening nodes per source IP (default %(default)s)")
    g.add_argument("--max-pending", type=_count, default=lim.max_pending_per_listener,
                   help="connections waiting for one listener to accept (default %(default)s)")
    g.add_argument("--rate-session", default="0", metavar="RATE",
                   help="bytes/s per tunnel, both directions together, with K, M or G (binary), e.g. 10M; "
                        "0 = no limit (default)")
    g.add_argument("--rate-global", default="0", metavar="RATE",
                   help="bytes/s for all tunnels together; 0 = no limit (default)")
    p.add_argument("--stats-interval", type=_interval, default=600.0, metavar="SECONDS",
                   help="log the relay's counters (connections, tunnels, closes by reason) this often; "
                        "0 = never; SIGUSR1 logs them at once (default %(default)s)")
    p.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")
    add_http_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(extract_attached(sys.argv[1:] if argv is None else argv,
                                                      ("--laddr", "--idfile")))
    try:
        setup_logging(args.log_level, program="strelay", default_level="info")
    except LoggingConfigError as exc:
        print(f"strelay: error: {exc}", file=sys.stderr)
        return 2
    host, port = args.laddr
    laddr = f"[{host}]:{port}" if host and ":" in host else f"{host or ''}:{port}"
    limits = Limits(max_connections=args.max_connections, max_per_ip=args.max_per_ip,
                    max_handshakes=args.max_handshakes, max_handshakes_per_ip=args.max_handshakes_per_ip,
                    max_listeners=args.max_listeners, max_listeners_per_ip=args.max_listeners_per_ip,
                    max_pending_per_listener=args.max_pending)
    try:
        identity = Identity(read_identity_seed(args.idfile))
    except (OSError, ValueError) as exc:
        print(f"strelay: error: {exc}", file=sys.stderr)
        return 1
    try:
        rates = parse_rate(args.rate_session, "--rate-session"), parse_rate(args.rate_global, "--rate-global")
    except ValueError as exc:
        print(f"strelay: error: {exc}", file=sys.stderr)
        return 2
    config = RelayConfig(limits=limits, max_frame=args.max_frame, handshake_timeout=args.handshake_timeout,
                         session_rate=rates[0], global_rate=rates[1])
    try:
        http = http_options(args)
    except HttpConfigError as exc:
        print(f"strelay: error: {exc}", file=sys.stderr)
        return 2

    async def serve(stop: asyncio.Event) -> int:
        old, new = raise_nofile_limit()
        log.debug("open file limit raised from %d to %d", old, new)
        fitted = fit_to_descriptors(config, fd_budget())
        for weak in fitted.limits.weak_spots():
            log.warning("limits: %s", weak)
        server = OffsetRelayServer(identity, fitted)
        try:
            addrs = await server.start(host, port)
        except OSError as exc:
            print(f"strelay: error: cannot listen on {laddr}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        for h, p in addrs:
            shown = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
            log.info("listening on %s", shown)
        log.info("public key %s", b64url_encode(identity.public_key))
        web: StandaloneHttp | None = None
        if http is not None:
            try:
                web = await start_standalone_http(http, version=__version__, title="strelay",
                                                  sources=[OffsetSource(server)])
            except HttpStartError as exc:
                print(f"strelay: error: cannot start HTTP on {args.http}: {exc}", file=sys.stderr)
                await server.close()
                return 1
        sdnotify.ready(f"listening on {args.laddr}")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("stats %s", server.status()))
        reporter = asyncio.create_task(_report_stats(server, args.stats_interval))
        await stop.wait()
        reporter.cancel()
        sdnotify.stopping()
        log.info("stopping; %s", server.status())
        if web is not None:
            await web.close()
        await server.close()
        return 0

    return run(serve, use_uvloop=not args.no_uvloop)


#: Descriptors kept free of connections: the listening sockets, the log, the event loop's own.
FD_RESERVE = 64


def fit_to_descriptors(config: RelayConfig, budget: int) -> RelayConfig:
    """Lower the connection cap to what the descriptor limit can hold, with a warning.

    Why: past the limit, accept() fails with EMFILE and the event loop stops accepting anyone
    for a while, so a flood would lock out every legitimate client instead of being refused.
    """
    if budget <= 0:
        return config
    room = max(budget - FD_RESERVE, 1)
    wanted = config.limits.max_connections
    if wanted and wanted <= room:
        return config
    shown = "unlimited" if not wanted else str(wanted)
    limits = dataclasses.replace(config.limits, max_connections=room)
    listeners = limits.max_listeners
    if not listeners or listeners > room // 2:  # keep half the connections for tunnels
        limits = dataclasses.replace(limits, max_listeners=max(room // 2, 1))
    log.warning("limits: --max-connections %s does not fit the open file limit %d; using %d "
                "(and at most %d listeners)", shown, budget, room, limits.max_listeners)
    return dataclasses.replace(config, limits=limits)


async def _report_stats(server: OffsetRelayServer, interval: float) -> None:
    """Counters in the log now and then, so silent closes leave a trace an operator can read."""
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        log.info("stats %s", server.status())


if __name__ == "__main__":
    sys.exit(main())
