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
from natrelay.ops.aspia_config import (
    EXIT_CONFIG_ERROR,
    RELAY_CONFIG_NAME,
    ConfigError,
    ConfigExistsError,
    ConfigProblem,
    RelayConfig,
    default_config_path,
    warning_lines,
)
from natrelay.ops.aspia_logging import report_always, setup_aspia_logging
from natrelay.ops.runtime import run

log = logging.getLogger("natrelay.aspia.relay")

PROG = "aspia_relay"
WINDOWS_ONLY = ("--install", "--remove", "--start", "--stop")

EPILOG = f"""\
relay.json fields (see the manual): RouterAddress (required), RouterPort (8060), RouterPublicKey
(required: the content of the Router's router.pub), ListenInterface (empty = all interfaces),
PeerAddress (required: where peers reach this relay), PeerPort (8070), PeerIdleTimeout (minutes,
1-60, 5), MaxPeerCount (100), StatisticsEnabled (false), StatisticsInterval (seconds, 1-3600, 5).

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
        p.add_argument(switch, action="store_true", help=f"{what} (only available on Windows)")
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
    for switch in WINDOWS_ONLY:
        if getattr(args, switch[2:]):
            print(f"{PROG}: {switch} is only available on Windows; on Linux use systemd: "
                  f"sudo systemctl enable --now aspia-relay", file=sys.stderr)
            return 1
    path = args.config if args.config is not None else default_config_path(RELAY_CONFIG_NAME)
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

    async def serve(stop: asyncio.Event) -> int:
        return await serve_relay(config, stop, source=str(path), timers=timers)

    return run(serve, use_uvloop=not args.no_uvloop)


if __name__ == "__main__":
    sys.exit(main())
