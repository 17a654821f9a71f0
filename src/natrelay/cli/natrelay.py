"""``natrelay``: the peers' command line, and the embedded-default relay (``natrelay serve``)."""

from __future__ import annotations

import argparse
import sys

from natrelay import __version__
from natrelay.cli import aspia_peer, offset_peer, serve, service, syncthing_relay
from natrelay.ops.logging import LoggingConfigError, setup_logging
from natrelay.ops.runtime import glue_key_values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="natrelay",
        description="Reach services behind NAT through a relay. `natrelay serve` runs the relays on "
                    "an embedded default; `natrelay offset ...` and `natrelay aspia ...` are the peers.")
    p.add_argument("-V", "--version", action="version", version=f"natrelay {__version__}")
    p.add_argument("--log-level", help="log level spec, e.g. info or debug (env NATRELAY_LOG)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parser(sub)
    offset_peer.add_parser(sub)
    aspia_peer.add_parser(sub)
    service.add_parser(sub)
    syncthing_relay.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(glue_key_values(raw, ("--to", "--allow")))
    try:
        setup_logging(args.log_level, program="natrelay", default_level="info")
    except LoggingConfigError as exc:
        print(f"natrelay: error: {exc}", file=sys.stderr)
        return 2
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
