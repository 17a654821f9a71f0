"""``aspia_relay``: the Aspia-compatible relay (``aspia_relay --create-config``, then ``aspia_relay``).

Command line as in the Aspia 2.7.0 manual, plus ``--config PATH`` (so nothing has to live in
/etc) and ``--version``. Exit status: 0 after SIGINT/SIGTERM or a successful ``--create-config``;
1 when ``--create-config`` finds an existing file, the peer port cannot be bound, or a
Windows-only switch is used; 78 (EX_CONFIG) when relay.json is missing or invalid, with every
problem listed by field and allowed range.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from pathlib import Path

from natrelay import __version__
from natrelay.aspia.relay.app import (
    TIMERS_ENV,
    WORKERS_ENV,
    RelayTimers,
    TimersError,
    serve_relay,
)
from natrelay.aspia.relay.controller import RouterController
from natrelay.aspia.relay.server import PeerListener
from natrelay.ops import sdnotify
from natrelay.ops.aspia_config import RelayConfig
from natrelay.ops.aspia_logging import report_always, setup_aspia_logging
from natrelay.ops.aspia_settings import (
    EXIT_CONFIG_ERROR,
    RELAY_CONFIG_NAME,
    ConfigError,
    ConfigExistsError,
    ConfigProblem,
    default_config_path,
    warning_lines,
)
from natrelay.ops.bandwidth import parse_rate
from natrelay.ops.http.aspia_sources import AspiaRelaySource
from natrelay.ops.http.options import HttpConfigError, add_http_arguments, http_options
from natrelay.ops.http.server import HttpServer
from natrelay.ops.http.standalone import HttpStartError, start_standalone_http
from natrelay.ops.runtime import run
from natrelay.ops.systemctl import service_switch

log = logging.getLogger("natrelay.aspia.relay")

PROG = "aspia_relay"
WINDOWS_ONLY = ("--install", "--remove", "--start", "--stop")

EPILOG = f"""\
relay.json fields (see the manual): RouterAddress (required), RouterPort (8060), RouterPublicKey
(required: the content of the Router's router.pub), ListenInterface (empty = all interfaces),
PeerAddress (required: where peers reach this relay), PeerPort (8070), PeerIdleTimeout (minutes,
1-60, 5), MaxPeerCount (100), StatisticsEnabled (false), StatisticsInterval (seconds, 1-3600, 5).
Flood guard (natrelay only; the original ignores these keys): PeerFirstMessageTimeout (seconds,
5), MaxPendingPeers (60), MaxPendingPeersPerIp (16), MaxConnectionsPerMinutePerIp (60, connections
without a valid key), MaxBytesBeforeAuth (16384), MaxSessionDuration (minutes, 1440),
MaxConnections (10000), MaxConnectionsPerIp (256); 0 = no cap except for the first and bytes.
natrelay only (Aspia ignores them): HttpListen (HOST:PORT for /metrics, /status and the dashboard),
RateSession and RateGlobal (bytes/s with K, M or G, e.g. 10M).

Logging: ASPIA_LOG_LEVEL (0 info, 1 errors, 2 fatal only; default 2), ASPIA_LOG_TO_STDOUT (on;
output goes to stderr), ASPIA_LOG_TO_FILE (off), ASPIA_MAX_LOG_FILE_SIZE (bytes, 1024-10485760),
ASPIA_MAX_LOG_FILE_AGE (days, 0-366). ASPIA_CONFIG_DIR moves the default configuration folder.
{TIMERS_ENV} (tests only) shortens protocol timers: e.g. "idle=2,reconnect=1".

Forwarding: {WORKERS_ENV}=N forwards paired sessions on N threads, each with its
own event loop, while pairing, keys and the Router link stay on the main thread; 0 (the default)
forwards on the main thread. Try N = cores ({os.cpu_count()} here) when one core is busy forwarding.

Exit status: 0 on SIGINT/SIGTERM, 1 on a start-up failure, {EXIT_CONFIG_ERROR} on a bad relay.json.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Aspia Relay: passes traffic between peers (Hosts and Clients) paired by "
        "the Aspia Router.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--create-config", action="store_true", help="creates an initial configuration "
                   "(never overwrites an existing one)")
    p.add_argument("--config", type=Path, metavar="PATH",
                   help=f"the configuration file (default: {default_config_path(RELAY_CONFIG_NAME)})")
    for switch, what in zip(WINDOWS_ONLY, ("performs a Relay service installation", "performs removal of the "
                            "Relay service", "starts the Relay service", "stops the Relay service"),
                            strict=True):
        p.add_argument(switch, action="store_true",
                       help=f"{what} (Linux: the systemd unit aspia-relay, via systemctl)")
    add_http_arguments(p)
    g = p.add_argument_group("bandwidth (override RateSession/RateGlobal in relay.json)")
    g.add_argument("--rate-session", metavar="RATE", help="bytes/s per session, both directions together, "
                   "with K, M or G (binary), e.g. 10M; 0 = no limit")
    g.add_argument("--rate-global", metavar="RATE", help="bytes/s for all sessions together; 0 = no limit")
    p.add_argument("--no-uvloop", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-V", "--version", action="version",
                   version=f"{PROG} {__version__} (Aspia 2.7.0 protocol)")
    return p


def _create_config(path: Path) -> int:
    try:
        written = RelayConfig.create_default(path)
    except ConfigExistsError as exc:
        for line in exc.lines():
            print(f"{PROG}: {line}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        for line in exc.lines():
            print(f"{PROG}: {line}", file=sys.stderr)
        return 1
    print(f"Configuration successfully created: {written}")
    print("Fill in RouterAddress, RouterPublicKey (the content of the Router's router.pub) and PeerAddress "
          "(the address peers use to reach this relay), then start aspia_relay.")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    path = args.config if args.config is not None else default_config_path(RELAY_CONFIG_NAME)
    for switch in WINDOWS_ONLY:
        if getattr(args, switch[2:]):
            extra = ["--config", str(path.resolve())] if args.config is not None else []
            return service_switch("relay", switch, PROG, extra)
    if args.create_config:
        return _create_config(path)
    setup_aspia_logging(PROG, os.environ)
    warnings: list[ConfigProblem] = []
    try:
        config = RelayConfig.load(path, warnings)
    except ConfigError as exc:
        # Whatever ASPIA_LOG_LEVEL says (fatal only by default): a config problem must be heard.
        report_always(PROG, exc.warning_lines())
        report_always(PROG, exc.lines(), level=logging.CRITICAL)
        return EXIT_CONFIG_ERROR
    report_always(PROG, warning_lines(path, warnings))
    try:
        timers = RelayTimers.from_env(os.environ)
    except TimersError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2

    try:
        http = http_options(args, config.http_listen or None)
        if args.rate_session is not None:
            config = dataclasses.replace(config, rate_session=parse_rate(args.rate_session, "--rate-session"))
        if args.rate_global is not None:
            config = dataclasses.replace(config, rate_global=parse_rate(args.rate_global, "--rate-global"))
    except (HttpConfigError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2

    async def serve(stop: asyncio.Event) -> int:
        if http is None:
            return await serve_relay(config, stop, source=str(path), timers=timers,
                                     on_ready=lambda listener, link: _ready(config, None, listener, link))
        try:
            web = await start_standalone_http(http, version=__version__, title="Aspia relay")
        except HttpStartError as exc:
            log.critical("Unable to start HTTP: %s", exc)
            print(f"{PROG}: cannot start HTTP on {http.host}:{http.port}: {exc}", file=sys.stderr)
            return 1
        print(f"HTTP (dashboard, /metrics, /status): {web.url}", flush=True)
        try:
            return await serve_relay(config, stop, source=str(path), timers=timers,
                                     on_ready=lambda lst, link: _ready(config, web.server, lst, link))
        finally:
            await web.close()

    return run(serve, use_uvloop=not args.no_uvloop)


def _ready(config: RelayConfig, web: HttpServer | None, listener: PeerListener,
           link: RouterController) -> None:
    """Listening for peers: show the relay over HTTP, tell systemd ``systemctl start`` may return."""
    if web is not None:
        web.add_source(AspiaRelaySource(listener, link))
    sdnotify.ready(f"listening for peers on port {config.peer_port}")


if __name__ == "__main__":
    sys.exit(main())
