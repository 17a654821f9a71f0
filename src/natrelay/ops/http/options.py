"""The ``--http`` switches every server shares, and what they mean together.

HTTP is off unless asked for. Bound to a loopback address it is open to local users unless
``--http-auth`` is given; bound anywhere else it always requires a router administrator's
login, and a server with no account database refuses to start rather than publish its sessions.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from natrelay.ops.addresses import AddressError, parse_listen_address


class HttpConfigError(ValueError):
    """The HTTP switches do not fit together; the message names the switch to change."""


@dataclass(frozen=True)
class HttpOptions:
    host: str
    port: int
    auth: bool = False
    cert: Path | None = None
    key: Path | None = None
    users: Path | None = None
    """A router.db3 whose administrators may log in (the router uses its own)."""

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # "" is every interface

    @property
    def needs_auth(self) -> bool:
        return self.auth or not self.loopback

    @property
    def tls(self) -> bool:
        return self.cert is not None


def add_http_arguments(parser: argparse.ArgumentParser, *, users: bool = True) -> None:
    g = parser.add_argument_group("HTTP (metrics, status, dashboard)")
    g.add_argument("--http", metavar="HOST:PORT",
                   help="serve /metrics, /status, /healthz and the dashboard here (default: off)")
    g.add_argument("--http-auth", action="store_true",
                   help="require a router administrator's login also on loopback (always on elsewhere)")
    g.add_argument("--http-cert", type=Path, metavar="PEM", help="TLS certificate chain for --http")
    g.add_argument("--http-key", type=Path, metavar="PEM", help="TLS private key for --http")
    if users:
        g.add_argument("--http-users", type=Path, metavar="ROUTER_DB",
                       help="a router.db3 whose administrators may log in (aspia_router --create-config)")


def http_options(args: argparse.Namespace, default: str | None = None) -> HttpOptions | None:
    """The options from parsed switches (``default`` when ``--http`` is absent); None = off."""
    text = args.http if args.http is not None else default
    if not text:
        if args.http_auth or args.http_cert or args.http_key:
            raise HttpConfigError("--http-auth, --http-cert and --http-key need --http HOST:PORT")
        return None
    try:
        host, port = parse_listen_address(text)
    except AddressError as exc:
        raise HttpConfigError(f"--http: {exc}") from None
    if (args.http_cert is None) != (args.http_key is None):
        raise HttpConfigError("--http-cert and --http-key go together")
    return HttpOptions(host, port, bool(args.http_auth), args.http_cert, args.http_key,
                       getattr(args, "http_users", None))
