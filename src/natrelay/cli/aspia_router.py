"""``aspia_router``: the Aspia router (serve, --create-config, users, --status, --disconnect).

Files: ``router.json`` and ``router.pub`` in the config directory (``/etc/aspia`` unless
``--config`` says otherwise), ``router.db3`` and the admin socket ``router.sock`` in the data
directory (``/var/lib/aspia`` unless ``--data-dir``). Unlike the original, ``--create-config``
never overwrites or half-creates anything and the first administrator gets a random password.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import getpass
import json
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from natrelay import __version__
from natrelay.aspia import srp
from natrelay.aspia.crypto import X25519KeyPair
from natrelay.aspia.router.admin_socket import SOCKET_NAME, AdminSocketError, request
from natrelay.aspia.router.db import DB_FILE_NAME, DatabaseError, RouterDatabase, StoredUser, valid_user_name
from natrelay.aspia.router.server import (
    DEFAULT_MAX_LOGINS,
    DEFAULT_MAX_LOGINS_PER_IP,
    RouterOptions,
    RouterServer,
    remove_stale_socket,
)
from natrelay.aspia.router.sessions import SessionKind
from natrelay.ops.aspia_config import (
    EXIT_CONFIG_ERROR,
    ROUTER_CONFIG_NAME,
    ConfigError,
    ConfigProblem,
    RouterConfig,
    warning_lines,
)
from natrelay.ops.aspia_config import default_config_path as _default_config_path
from natrelay.ops.aspia_logging import report_always, setup_aspia_logging
from natrelay.ops.jsonsettings import make_directories, update_settings, write_file_atomically
from natrelay.ops.runtime import run

PROG = "aspia_router"
DATA_DIR_ENV = "ASPIA_DATA_DIR"
PUBLIC_KEY_NAME = "router.pub"
MAX_PASSWORD_FILE = 4096
DATA_DIR_MODE = 0o700
WINDOWS_ONLY = ("--install", "--remove", "--start", "--stop")
log = logging.getLogger("natrelay.aspia.router")

EPILOG = f"""\
With no command switch the router runs until SIGINT/SIGTERM. Logging follows ASPIA_LOG_LEVEL
(0 info, 1 errors, 2 fatal only; default 2), ASPIA_LOG_TO_STDOUT, ASPIA_LOG_TO_FILE.
Exit status: 0 success, 1 failure (file exists, unknown user, router unreachable, bind error),
2 usage error, {EXIT_CONFIG_ERROR} invalid router.json or database.
Environment: ASPIA_CONFIG_DIR moves router.json/router.pub, {DATA_DIR_ENV} the data directory.
"""


def default_data_dir(env: dict[str, str] | None = None) -> Path:
    environ = os.environ if env is None else env
    override = environ.get(DATA_DIR_ENV, "").strip()
    if override:
        return Path(override)
    if sys.platform == "win32":
        return Path(environ.get("ProgramData") or "C:\\ProgramData") / "aspia"
    return Path("/var/lib/aspia")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Aspia router: authenticates hosts, clients and "
                                "relays, assigns host IDs and brokers relayed connections.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, metavar="PATH",
                   help="router.json (default /etc/aspia/router.json); router.pub lives beside it")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="directory of router.db3 and the admin socket (default /var/lib/aspia)")
    cmd = p.add_mutually_exclusive_group()
    cmd.add_argument("--create-config", action="store_true",
                     help="create router.json, router.pub and the database with an 'admin' account")
    cmd.add_argument("--keygen", action="store_true", help="print a new X25519 key pair; writes nothing")
    cmd.add_argument("--add-user", metavar="NAME", help="add a router account (password from "
                     "--password-file, or a prompt on a terminal)")
    cmd.add_argument("--remove-user", metavar="NAME", help="remove a router account")
    cmd.add_argument("--list-users", action="store_true", help="list router accounts")
    cmd.add_argument("--status", action="store_true",
                     help="show relays and relayed sessions of the running router")
    cmd.add_argument("--disconnect", metavar="ID", help="end a relayed session (ID as --status shows it)")
    p.add_argument("--password-file", type=Path, metavar="F", help="file holding the new user's password")
    p.add_argument("--admin", action="store_true", help="with --add-user: may also administer the router")
    p.add_argument("--json", action="store_true", help="with --status: print JSON")
    for switch, what in zip(WINDOWS_ONLY, ("installs the Router service", "removes the Router service",
                                           "starts the Router service", "stops the Router service"),
                            strict=True):
        cmd.add_argument(switch, action="store_true", help=f"{what} (only available on Windows)")
    p.add_argument("--max-logins", type=int, default=DEFAULT_MAX_LOGINS, metavar="N",
                   help="password logins in progress at once; more are refused (default %(default)s)")
    p.add_argument("--max-logins-per-ip", type=int, default=DEFAULT_MAX_LOGINS_PER_IP, metavar="N",
                   help="the same, per source address (default %(default)s)")
    p.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    return p


def fail(message: str, code: int = 1) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


class _Paths:
    def __init__(self, args: argparse.Namespace) -> None:
        self.config: Path = args.config or _default_config_path(ROUTER_CONFIG_NAME)
        self.data_dir: Path = args.data_dir or default_data_dir()
        self.public_key = self.config.parent / PUBLIC_KEY_NAME
        self.database = self.data_dir / DB_FILE_NAME
        self.socket = self.data_dir / SOCKET_NAME


# ------------------------------------------------------------------ create
def create_config(paths: _Paths) -> int:
    for path in (paths.config, paths.public_key, paths.database):
        if os.path.lexists(path):
            return fail(f"{path} already exists; refusing to overwrite it (move it away to start afresh)")
    keys = X25519KeyPair.generate()
    seed = secrets.token_bytes(64)
    password = secrets.token_urlsafe(15)
    group, salt, verifier = srp.new_account("admin", password.encode(), secrets.token_bytes(64))
    admin = StoredUser("admin", group, salt, verifier, int(SessionKind.ADMIN | SessionKind.CLIENT))
    public_hex = keys.public_bytes.hex().upper()
    created: list[Path] = []
    try:
        # Made here, 0700 whatever the umask: the database holds password verifiers and the admin
        # socket lives beside it; nobody but the router's user has business in this folder.
        make_directories(paths.data_dir, DATA_DIR_MODE)
        RouterDatabase.create(paths.database, [admin])
        created.append(paths.database)
        write_file_atomically(paths.public_key, public_hex.encode(), exclusive=True, mode=0o644)
        created.append(paths.public_key)
        RouterConfig(private_key=keys.private_bytes, seed_key=seed).write_new(paths.config)
        created.append(paths.config)
    except (OSError, ConfigError, DatabaseError) as exc:
        for path in created:  # all or nothing: a half-made setup would block the next attempt
            with contextlib.suppress(OSError):
                path.unlink()
        text = "\n".join(exc.lines()) if isinstance(exc, ConfigError) else str(exc)
        if isinstance(exc, FileExistsError):
            text = f"{exc.filename or exc} already exists; refusing to overwrite it"
        return fail(f"configuration not created: {text}")
    print(f"Configuration created:\n  {paths.config}\n  {paths.public_key}\n  {paths.database}")
    print("Administrator account (shown only once, change it after the first login):")
    print("  user name: admin")
    print(f"  password: {password}")
    print(f"Router public key (put it into each relay's RouterPublicKey): {public_hex}")
    return 0


# ------------------------------------------------------------------- users
def read_password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        with open(args.password_file, "rb") as fh:
            data = fh.read(MAX_PASSWORD_FILE + 1)
        if len(data) > MAX_PASSWORD_FILE:
            raise ValueError(f"{args.password_file}: longer than {MAX_PASSWORD_FILE} bytes")
        text = data.decode("utf-8").removesuffix("\n").removesuffix("\r")
    elif sys.stdin.isatty():
        text = getpass.getpass(f"Password for {args.add_user}: ")
        if getpass.getpass("Repeat it: ") != text:
            raise ValueError("the passwords differ")
    else:
        raise ValueError("give the password with --password-file (it is never taken from the command line)")
    if not text:
        raise ValueError("the password is empty")
    return text


def manage_users(args: argparse.Namespace, paths: _Paths) -> int:
    try:
        db = RouterDatabase.open(paths.database)
    except DatabaseError as exc:
        return fail(str(exc), EXIT_CONFIG_ERROR)
    try:
        if args.add_user is not None:
            name = args.add_user
            if not valid_user_name(name):
                return fail(f"invalid user name {name!r}: 1-64 letters, digits or . _ - @")
            try:
                password = read_password(args)
            except (OSError, ValueError) as exc:
                return fail(str(exc))
            group, salt, verifier = srp.new_account(name, password.encode(), secrets.token_bytes(64))
            sessions = SessionKind.CLIENT | (SessionKind.ADMIN if args.admin else 0)
            db.add_user(StoredUser(name, group, salt, verifier, int(sessions)))
            print(f"User {name!r} added.")
        elif args.remove_user is not None:
            if not db.remove_user_by_name(args.remove_user):
                return fail(f"no user named {args.remove_user!r}")
            print(f"User {args.remove_user!r} removed.")
        else:
            users = db.list_users()
            print(f"{'ID':>4}  {'NAME':<24} {'ROLES':<14} ENABLED")
            for u in users:
                roles = ",".join(k.name.lower() for k in SessionKind if u.sessions & k) or "-"
                print(f"{u.entry_id:>4}  {u.name:<24} {roles:<14} {'yes' if u.enabled else 'no'}")
        return 0
    except DatabaseError as exc:
        return fail(str(exc))
    finally:
        db.close()


# ------------------------------------------------------------------ status
def _duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02}:{s % 60:02}"


def format_status(status: dict[str, Any]) -> str:
    lines = [f"Relays ({len(status['relays'])}), keys in pool: {status['pool_size']}"]
    lines.append(f"  {'ID':>4}  {'PEER ADDRESS':<28} {'POOL':>5} {'SESSIONS':>8} {'UPTIME':>10}")
    for r in status["relays"]:
        sessions = "-" if r["sessions"] is None else str(r["sessions"])
        lines.append(f"  {r['id']:>4}  {r['address'] or '(not announced)':<28} {r['pool_size']:>5} "
                     f"{sessions:>8} {_duration(r['uptime']):>10}")
    if any(r["sessions"] is None for r in status["relays"]):
        lines.append("  ('-': the relay sends no statistics; set StatisticsEnabled in its relay.json)")
    lines.append(f"Relayed sessions ({len(status['sessions'])})")
    lines.append(f"  {'ID':<8} {'HOST ID':>8}  {'CLIENT':<22} {'HOST':<22} {'USER':<16} {'BYTES':>12} "
                 f"{'DURATION':>9} {'IDLE':>9}")
    for s in status["sessions"]:
        times = f"{_duration(s['duration']):>9} {_duration(s['idle']):>9}"
        lines.append(f"  {s['id']:<8} {s['host_id']:>8}  {s['client_address']:<22} {s['host_address']:<22} "
                     f"{s['user']:<16} {s['bytes']:>12} {times}")
    return "\n".join(lines)


def query(args: argparse.Namespace, paths: _Paths) -> int:
    message: dict[str, Any] = ({"command": "status"} if args.status
                               else {"command": "disconnect", "id": args.disconnect})
    try:
        answer = request(paths.socket, message)
    except AdminSocketError as exc:
        return fail(str(exc))
    if not answer.get("ok"):
        return fail(str(answer.get("error", "the router refused the request")))
    if args.disconnect is not None:
        print(f"Disconnect of session {args.disconnect} sent to its relay.")
    elif args.json:
        print(json.dumps(answer["status"], indent=2))
    else:
        print(format_status(answer["status"]))
    return 0


# ------------------------------------------------------------------- serve
def serve(args: argparse.Namespace, paths: _Paths) -> int:
    warnings: list[ConfigProblem] = []
    try:
        config = RouterConfig.load(paths.config, warnings)
    except ConfigError as exc:
        # Whatever ASPIA_LOG_LEVEL says (fatal only by default): a config problem must be heard.
        report_always(PROG, exc.warning_lines())
        report_always(PROG, exc.lines(), level=logging.CRITICAL)
        return EXIT_CONFIG_ERROR
    report_always(PROG, warning_lines(paths.config, warnings))
    if not config.seed_key:
        seed = secrets.token_bytes(64)
        try:
            update_settings(paths.config, {"SeedKey": seed.hex().upper()})
        except OSError as exc:
            return fail(f"cannot store the generated SeedKey in {paths.config}: {exc}")
        config = dataclasses.replace(config, seed_key=seed)
    try:
        db = RouterDatabase.open(paths.database)
        remove_stale_socket(paths.socket)
    except DatabaseError as exc:
        log.critical("%s", exc)
        return fail(str(exc), EXIT_CONFIG_ERROR)
    except OSError as exc:
        return fail(str(exc))
    public_hex = X25519KeyPair.from_private_bytes(config.private_key).public_bytes.hex().upper()
    options = RouterOptions(config=config, database=paths.database, admin_socket=paths.socket,
                            public_key_hex=public_hex, max_logins=args.max_logins,
                            max_logins_per_ip=args.max_logins_per_ip)

    async def main(stop: asyncio.Event) -> int:
        server = RouterServer(options, db)
        try:
            await server.start()
        except OSError as exc:
            # A router that cannot listen must not linger as if it served (spec §12 bug 5).
            await server.close()
            log.critical("Unable to start the router: %s", exc)
            return fail(f"cannot start: {exc}")
        log.info("Router started; public key %s", public_hex)
        await stop.wait()
        log.info("Stopping")
        await server.close()
        return 0

    try:
        return run(main)
    finally:
        db.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.max_logins < 1 or args.max_logins_per_ip < 1:
        return fail("--max-logins and --max-logins-per-ip must be at least 1", 2)
    for switch in WINDOWS_ONLY:
        if getattr(args, switch[2:]):
            return fail(f"{switch} is only available on Windows; on Linux the service is the systemd unit "
                        "aspia-router (systemctl enable --now aspia-router)")
    if args.keygen:
        keys = X25519KeyPair.generate()
        print(f"Private key: {keys.private_bytes.hex().upper()}")
        print(f"Public key: {keys.public_bytes.hex().upper()}")
        return 0
    paths = _Paths(args)
    if args.create_config:
        return create_config(paths)
    if args.add_user is not None or args.remove_user is not None or args.list_users:
        return manage_users(args, paths)
    if args.status or args.disconnect is not None:
        return query(args, paths)
    setup_aspia_logging(PROG, os.environ)
    return serve(args, paths)


if __name__ == "__main__":
    sys.exit(main())
