"""``stmgr``: make and inspect Offset relay identity and ticket files.

Command-line compatible with Offset v0.1.11's ``stmgr gen-ident`` and
``stmgr relay-ticket`` (same flags, same files, silent on success), with the fixes
of spec §12.2: failures exit non-zero with a one-line reason, identity files are
created exclusively with mode 0600, and ticket addresses must be dialable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from natrelay import __version__
from natrelay.offset.constants import MAX_ADDRESS_LENGTH
from natrelay.offset.files import (
    FileFormatError,
    RelayTicket,
    b64url_encode,
    check_ticket_address,
    public_key_from_seed,
    read_identity_or_ticket,
    read_identity_seed,
    write_identity,
    write_ticket,
)
from natrelay.ops.addresses import AddressError, validate_ticket_address
from natrelay.ops.logging import LoggingConfigError, parse_log_spec, setup_logging

__all__ = ["build_parser", "main"]

PROG = "stmgr"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's own status for usage errors

_log = logging.getLogger(__name__)

_EPILOG = """\
exit status:
  0  success (gen-ident and relay-ticket print nothing unless --verbose)
  1  error: one line 'stmgr: error: ...' on stderr naming the file and the problem
     (the original stmgr exited 0 even on errors; this one does not)
  2  usage error: a missing or unknown option or argument

No command ever overwrites an existing file.
Logging: --log-level or $NATRELAY_LOG, e.g. 'debug' or 'info,natrelay.offset=debug'.
"""


class _CommandError(Exception):
    """A failure to report as one ``stmgr: error:`` line with exit status 1."""


def _log_spec(text: str) -> str:
    """argparse ``type=`` hook: reject a bad --log-level as a usage error (exit 2)."""
    try:
        parse_log_spec(text, source="")  # argparse already prefixes the option name
    except LoggingConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS defaults let the options appear both before and after the command
    # without the subcommand's default overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="say what was written (log level info)",
    )
    common.add_argument(
        "--log-level", metavar="SPEC", type=_log_spec, default=argparse.SUPPRESS,
        help="log level, e.g. 'debug' or 'info,natrelay.offset=debug' (overrides $NATRELAY_LOG)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed so tests and docs can inspect it)."""
    common = _common_options()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, description="Create and inspect Offset relay identity and ticket files.",
        epilog=_EPILOG, formatter_class=formatter, parents=[common],
    )
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    gen = commands.add_parser(
        "gen-ident", parents=[common], epilog=_EPILOG, formatter_class=formatter,
        help="generate a new Ed25519 identity file",
        description="Generate a new relay identity (Ed25519 key) and write it, mode 0600, to a new file.",
    )
    gen.add_argument("-o", "--output", required=True, metavar="PATH", help="identity file to create")

    ticket = commands.add_parser(
        "relay-ticket", parents=[common], epilog=_EPILOG, formatter_class=formatter,
        help="write a relay ticket (public key and address) for an identity",
        description="Write a relay ticket: the relay's public key and the address peers dial.",
    )
    ticket.add_argument("-i", "--idfile", required=True, metavar="PATH", help="the relay's identity file")
    ticket.add_argument(
        "-a", "--address", required=True, metavar="HOST:PORT",
        help="public address of the relay, e.g. 203.0.113.5:1337, relay.example:1337 or [2001:db8::1]:1337",
    )
    ticket.add_argument("-o", "--output", required=True, metavar="PATH", help="ticket file to create")

    show = commands.add_parser(
        "show", parents=[common], epilog=_EPILOG, formatter_class=formatter,
        help="print the public key (and address) of an identity or ticket file",
        description="Print 'publicKey: ...' for an identity or ticket file, and 'address: ...' for a ticket.",
    )
    show.add_argument("path", metavar="PATH", help="identity or ticket file")
    show.add_argument("-k", "--key", action="store_true",
                      help="print only the public key, for scripts: --to \"$(stmgr show --key b.ident)\"")
    return parser


def _refuse_existing(path: str) -> None:
    # lexists: a dangling symlink counts as existing, so it is never followed.
    if os.path.lexists(path):
        raise _CommandError(f"{path}: already exists; refusing to overwrite it")


def _os_error(path: str, action: str, exc: OSError) -> _CommandError:
    if isinstance(exc, FileExistsError):
        return _CommandError(f"{path}: already exists; refusing to overwrite it")
    reason = exc.strerror or str(exc)
    where = exc.filename if exc.filename not in (None, path) else None
    return _CommandError(f"{path}: cannot {action}: {reason}" + (f" ({where})" if where else ""))


def _gen_ident(output: str) -> None:
    _refuse_existing(output)
    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    try:
        write_identity(output, seed)
    except OSError as exc:
        raise _os_error(output, "write identity", exc) from None
    _log.info("wrote identity %s (public key %s)", output, b64url_encode(public_key_from_seed(seed)))


def _relay_ticket(idfile: str, address: str, output: str) -> None:
    _refuse_existing(output)  # before the ident is read, as in the original
    try:
        validate_ticket_address(address, max_bytes=MAX_ADDRESS_LENGTH, what="--address")
    except AddressError as exc:
        raise _CommandError(str(exc)) from None
    try:
        seed = read_identity_seed(idfile)
    except OSError as exc:
        raise _os_error(idfile, "read identity", exc) from None
    ticket = RelayTicket(public_key=public_key_from_seed(seed), address=address)
    try:
        write_ticket(output, ticket)
    except OSError as exc:
        raise _os_error(output, "write ticket", exc) from None
    key = b64url_encode(ticket.public_key)
    _log.info("wrote relay ticket %s (public key %s, address %s)", output, key, address)


def _show(path: str, *, key_only: bool = False) -> None:
    try:
        content = read_identity_or_ticket(path)
    except OSError as exc:
        raise _os_error(path, "read", exc) from None
    if isinstance(content, RelayTicket):
        check_ticket_address(path, content)  # a ticket nobody can dial is an error, not a show
    if key_only:
        public_key = content.public_key if isinstance(content, RelayTicket) else public_key_from_seed(content)
        print(b64url_encode(public_key))
    elif isinstance(content, RelayTicket):
        print(f"publicKey: {b64url_encode(content.public_key)}")
        print(f"address: {content.address}")
    else:
        print(f"publicKey: {b64url_encode(public_key_from_seed(content))}")


def _run(args: argparse.Namespace) -> None:
    if args.command == "gen-ident":
        _gen_ident(args.output)
    elif args.command == "relay-ticket":
        _relay_ticket(args.idfile, args.address, args.output)
    else:
        _show(args.path, key_only=args.key)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stmgr`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)  # exits 2 on usage errors, 0 for --help/--version
    level: str | None = getattr(args, "log_level", None)
    if level is None and getattr(args, "verbose", False):
        level = "info"
    try:
        setup_logging(level, program=PROG, default_level="warning")
        _run(args)
    except (_CommandError, FileFormatError, LoggingConfigError) as exc:
        message = " ".join(str(exc).splitlines())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
