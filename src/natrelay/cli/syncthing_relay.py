"""``natrelay syncthing-relay``: a Syncthing relay (protocol v1) with strelaysrv's flags.

Flags are spelled as strelaysrv spells them (``-listen :22067``, ``-listen=:22067``) and also as long
options (``--listen``). Unlike strelaysrv, no pool is joined unless ``-pools`` names one.
``-status-srv`` serves strelaysrv's public ``/status`` document; ``--http`` adds what natrelay's
other servers serve (Prometheus ``/metrics``, ``/status``, ``/healthz`` and a dashboard).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path
from typing import Any

from natrelay import __version__
from natrelay.engine.resources import raise_nofile_limit
from natrelay.ops.http.options import HttpConfigError, add_http_arguments, http_options
from natrelay.ops.http.standalone import HttpStartError, StandaloneHttp, start_standalone_http
from natrelay.ops.http.syncthing_source import SyncthingSource
from natrelay.ops.runtime import run
from natrelay.syncthing.app import AppConfig, AppConfigError, start_relay
from natrelay.syncthing.tls import TLSSetupError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """A Go duration (``90s``, ``2m``, ``1h30m``) or plain seconds, as seconds."""
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(t) or not t:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 2m, 1h30m)")
    return total


def _flag(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    p.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kw)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("syncthing-relay", help="a Syncthing relay (strelaysrv-compatible)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _flag(p, "listen", default=":22067", help="protocol listen address (default %(default)s)")
    _flag(p, "keys", default=".", help="directory of cert.pem and key.pem, created if absent (default .)")
    _flag(p, "ext-address", default="", help="address to advertise, if not the listen address")
    _flag(p, "provided-by", default="", help="who provides the relay (at most 30 characters)")
    _flag(p, "pools", default="", help="comma-separated relay pool URLs to join (default: none)")
    _flag(p, "global-rate", type=int, default=0, help="global rate limit in bytes/s (0: none)")
    _flag(p, "per-session-rate", type=int, default=0, help="per-session rate limit in bytes/s (0: none)")
    _flag(p, "token", default="", help="token devices must present to join (private relay; no pools)")
    _flag(p, "status-srv", default=":22070", help="status service listen address, empty to disable "
                                                  "(default %(default)s)")
    _flag(p, "network-timeout", type=parse_duration, default=120.0, help="silence that ends a connection "
                                                                          "or session (default 2m)")
    _flag(p, "ping-interval", type=parse_duration, default=60.0, help="how often pings are sent (default 1m)")
    _flag(p, "message-timeout", type=parse_duration, default=60.0,
          help="how long to wait for a join or a session partner (default 1m)")
    _flag(p, "max-sessions", type=int, default=0, help="active sessions beyond which joins get RelayFull "
                                                       "(0: only the descriptor limit)")
    p.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")
    add_http_arguments(p)
    p.set_defaults(handler=relay_command)


def config_from_args(args: argparse.Namespace) -> AppConfig:
    return AppConfig(
        listen=args.listen, keys_dir=Path(args.keys), ext_address=args.ext_address,
        provided_by=args.provided_by, pools=[x for x in args.pools.split(",") if x.strip()],
        global_rate=args.global_rate, per_session_rate=args.per_session_rate, token=args.token,
        status_srv=args.status_srv, network_timeout=args.network_timeout,
        ping_interval=args.ping_interval, message_timeout=args.message_timeout,
        max_sessions=args.max_sessions)


def relay_command(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        http = http_options(args)
    except HttpConfigError as exc:
        print(f"natrelay syncthing-relay: error: {exc}", file=sys.stderr)
        return 2

    async def main(stop: asyncio.Event) -> int:
        raise_nofile_limit()
        try:
            running = await start_relay(cfg)
        except (AppConfigError, TLSSetupError) as exc:
            print(f"natrelay syncthing-relay: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"natrelay syncthing-relay: error: cannot listen on {cfg.listen} or {cfg.status_srv}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        web: StandaloneHttp | None = None
        if http is not None:
            try:
                web = await start_standalone_http(http, version=__version__, title="Syncthing relay",
                                                  sources=[SyncthingSource(running.relay)])
            except HttpStartError as exc:
                print(f"natrelay syncthing-relay: error: cannot start HTTP on {args.http}: {exc}",
                      file=sys.stderr)
                await running.close()
                return 1
        host, port = running.address
        print(f"Syncthing relay listening on {host}:{port}\n  URI: {running.url}", flush=True)
        if running.status_address is not None:
            print(f"  status: http://{running.status_address[0]}:{running.status_address[1]}/status",
                  flush=True)
        if web is not None:
            print(f"  dashboard, metrics and status: {web.url} (/metrics, /status, /healthz)", flush=True)
        await stop.wait()
        if web is not None:
            await web.close()
        await running.close()
        return 0

    return run(main, use_uvloop=not args.no_uvloop)
