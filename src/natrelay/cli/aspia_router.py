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
from natrelay.aspia.router.storage.base import RouterStorage
from natrelay.aspia.router.storage.factory import open_storage, sqlite_path
from natrelay.aspia.router.storage.postgres import PostgresStorage, is_postgres_url, redact
from natrelay.aspia.router.storage.presence import DEFAULT_LEASE, PostgresPresence
from natrelay.ops import sdnotify
from natrelay.ops.aspia_config import RouterConfig
from natrelay.ops.aspia_logging import report_always, setup_aspia_logging
from natrelay.ops.aspia_settings import (
    EXIT_CONFIG_ERROR,
    ROUTER_CONFIG_NAME,
    ConfigError,
    ConfigProblem,
    warning_lines,
)
from natrelay.ops.aspia_settings import default_config_path as _default_config_path
from natrelay.ops.http.aspia_sources import AspiaRouterSource
from natrelay.ops.http.auth import RouterAccounts
from natrelay.ops.http.options import HttpConfigError, HttpOptions, add_http_arguments, http_options
from natrelay.ops.http.server import HttpServer
from natrelay.ops.jsonsettings import make_directories, update_settings, write_file_atomically
from natrelay.ops.runtime import run
from natrelay.ops.systemctl import service_switch

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
    cmd.add_argument("--disconnect", metavar="ID", help="end a relayed session (ID as --status shows it; "
                     "ROUTER/ID for one at another router of a cluster)")
    cmd.add_argument("--migrate-db", nargs=2, metavar=("FROM", "TO"),
                     help="copy an SQLite router database (ours or the original's router.db3) into an "
                     "empty PostgreSQL database given as a postgresql:// URL")
    p.add_argument("--database", metavar="URL|PATH",
                   help="the database instead of router.db3 in the data directory and router.json's "
                   "Database: a postgresql://user:password@host:port/dbname URL (routers sharing it form "
                   "a cluster) or the path of an SQLite file")
    p.add_argument("--password-file", type=Path, metavar="F", help="file holding the new user's password")
    p.add_argument("--admin", action="store_true", help="with --add-user: may also administer the router")
    p.add_argument("--json", action="store_true", help="with --status: print JSON")
    for switch, what in zip(WINDOWS_ONLY, ("installs the Router service", "removes the Router service",
                                           "starts the Router service", "stops the Router service"),
                            strict=True):
        cmd.add_argument(switch, action="store_true",
                         help=f"{what} (Linux: the systemd unit aspia-router, via systemctl)")
    p.add_argument("--max-logins", type=int, default=DEFAULT_MAX_LOGINS, metavar="N",
                   help="password logins in progress at once; more are refused (default %(default)s)")
    p.add_argument("--max-logins-per-ip", type=int, default=DEFAULT_MAX_LOGINS_PER_IP, metavar="N",
                   help="the same, per source address (default %(default)s)")
    add_http_arguments(p, users=False)
    p.add_argument("--lease", type=float, default=DEFAULT_LEASE, metavar="SECONDS",
                   help="on PostgreSQL: how long other routers still see this router's hosts after it "
                   "stops renewing (it renews every third of that; default %(default)s)")
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
def create_config(paths: _Paths, database: str = "") -> int:
    sqlite_file = sqlite_path(database, paths.database)
    for path in (paths.config, paths.public_key, *([sqlite_file] if sqlite_file else [])):
        if os.path.lexists(path):
            return fail(f"{path} already exists; refusing to overwrite it (move it away to start afresh)")
    keys = X25519KeyPair.generate()
    seed = secrets.token_bytes(64)
    password = secrets.token_urlsafe(15)
    group, salt, verifier = srp.new_account("admin", password.encode(), secrets.token_bytes(64))
    admin = StoredUser("admin", group, salt, verifier, int(SessionKind.ADMIN | SessionKind.CLIENT))
    public_hex = keys.public_bytes.hex().upper()
    created: list[Path] = []
    pg: PostgresStorage | None = None
    try:
        if sqlite_file is not None:
            # Made here, 0700 whatever the umask: the database holds password verifiers and the
            # admin socket lives beside it; nobody but the router's user has business in this folder.
            make_directories(sqlite_file.parent, DATA_DIR_MODE)
            RouterDatabase.create(sqlite_file, [admin])
            created.append(sqlite_file)
        else:
            pg = PostgresStorage.open(database)  # connects and migrates; accounts go in last
        write_file_atomically(paths.public_key, public_hex.encode(), exclusive=True, mode=0o644)
        created.append(paths.public_key)
        RouterConfig(private_key=keys.private_bytes, seed_key=seed, database=database).write_new(paths.config)
        created.append(paths.config)
        if pg is not None:
            pg.create_accounts([admin])
    except (OSError, ConfigError, DatabaseError) as exc:
        for path in created:  # all or nothing: a half-made setup would block the next attempt
            with contextlib.suppress(OSError):
                path.unlink()
        text = "\n".join(exc.lines()) if isinstance(exc, ConfigError) else str(exc)
        if isinstance(exc, FileExistsError):
            text = f"{exc.filename or exc} already exists; refusing to overwrite it"
        return fail(f"configuration not created: {text}")
    finally:
        if pg is not None:
            pg.close()
    where = str(sqlite_file) if sqlite_file is not None else redact(database)
    print(f"Configuration created:\n  {paths.config}\n  {paths.public_key}\n  {where}")
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


def database_setting(args: argparse.Namespace, paths: _Paths) -> str:
    """``--database``, else router.json's ``Database`` (if router.json exists), else "" (router.db3)."""
    if args.database is not None:
        return str(args.database)
    if not paths.config.exists():
        return ""
    return RouterConfig.load(paths.config).database


def manage_users(args: argparse.Namespace, paths: _Paths) -> int:
    try:
        db = open_storage(database_setting(args, paths), paths.database)
    except ConfigError as exc:
        return fail("\n".join(exc.lines()), EXIT_CONFIG_ERROR)
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


# ----------------------------------------------------------------- migrate
def migrate_db(source: str, target: str) -> int:
    """Copy users and host IDs, with their IDs, from an SQLite database into empty PostgreSQL."""
    if is_postgres_url(source):
        return fail("--migrate-db FROM must be an SQLite database file (router.db3)", 2)
    if not is_postgres_url(target):
        return fail("--migrate-db TO must be a postgresql:// URL", 2)
    try:
        with RouterDatabase.open(Path(source), read_only=True) as old, PostgresStorage.open(target) as new:
            assert isinstance(new, PostgresStorage)
            users, hosts = new.import_all(old.list_users(), old.iter_hosts(), old.host_activity())
    except DatabaseError as exc:
        return fail(str(exc))
    print(f"Copied {users} users and {hosts} host IDs from {source} to {redact(target)}.")
    print("Set Database in router.json (or start with --database) to that URL to use it.")
    return 0


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
    guard = status.get("guard")
    if guard:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(guard["refused"].items()) if v) or "none"
        lines.append(f"Connections {guard['connections']} ({guard['pending']} not authenticated, "
                     f"{guard['logins']} logging in), accepted {guard['accepted']}; refused: {refused}")
    if "cluster" in status:
        routers = status["cluster"]
        lines.append(f"Routers sharing the database ({sum(1 for r in routers if r['alive'])} alive)")
        lines.append(f"  {'ID':>4}  {'LISTENING ON':<28} {'HOSTS':>6} {'CLIENTS':>7} {'RELAYS':>6} "
                     f"{'POOL':>6} STATE")
        for r in routers:
            state = ("this router" if r.get("this") else "alive") if r["alive"] else "lease expired"
            lines.append(f"  {r['id']:>4}  {r['address']:<28} {r.get('hosts', '-'):>6} "
                         f"{r.get('clients', '-'):>7} {r.get('relays', '-'):>6} {r.get('pool_size', '-'):>6} "
                         f"{state}")
        others = [(r, s) for r in routers if r["alive"] and not r.get("this") for s in r.get("sessions", [])]
        if others:
            lines.append(f"Relayed sessions at the other routers ({len(others)}; end one with --disconnect "
                         "ROUTER/ID)")
            for r, s in others:
                ident = f"{r['id']}/{s['id']}"
                lines.append(f"  {ident:<10} {s['host_id']:>8}  {s['client_address']:<22} "
                             f"{s['host_address']:<22} {s['user']:<16} {s['bytes']:>12}")
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
    if args.disconnect is not None and "forwarded" in answer:
        print(f"Disconnect of session {args.disconnect} sent to router {answer['forwarded']}.")
    elif args.disconnect is not None:
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
    try:
        http = http_options(args, config.http_listen or None)
    except HttpConfigError as exc:
        return fail(str(exc), 2)
    if not config.seed_key:
        seed = secrets.token_bytes(64)
        try:
            update_settings(paths.config, {"SeedKey": seed.hex().upper()})
        except OSError as exc:
            return fail(f"cannot store the generated SeedKey in {paths.config}: {exc}")
        config = dataclasses.replace(config, seed_key=seed)
    database = args.database if args.database is not None else config.database
    try:
        db: RouterStorage = open_storage(database, paths.database)
    except DatabaseError as exc:
        log.critical("%s", exc)
        return fail(str(exc), EXIT_CONFIG_ERROR)
    try:
        remove_stale_socket(paths.socket)
    except OSError as exc:
        db.close()
        return fail(str(exc))
    log.info("Database: %s", db.description)
    # On PostgreSQL every router is a cluster member: alone, it simply finds no other routers.
    presence = PostgresPresence(db, "", args.lease) if isinstance(db, PostgresStorage) else None
    public_hex = X25519KeyPair.from_private_bytes(config.private_key).public_bytes.hex().upper()
    options = RouterOptions(config=config, database=paths.database, admin_socket=paths.socket,
                            public_key_hex=public_hex, max_logins=args.max_logins,
                            max_logins_per_ip=args.max_logins_per_ip,
                            cluster_url=database if presence is not None else "")

    async def main(stop: asyncio.Event) -> int:
        server = RouterServer(options, db, presence)
        try:
            await server.start()
        except OSError as exc:
            # A router that cannot listen must not linger as if it served (spec §12 bug 5).
            await server.close()
            log.critical("Unable to start the router: %s", exc)
            return fail(f"cannot start: {exc}")
        log.info("Router started; public key %s", public_hex)
        try:
            web = await _start_http(http, server, db)
        except (OSError, HttpConfigError) as exc:
            await server.close()
            log.critical("Unable to start HTTP: %s", exc)
            return fail(f"cannot start HTTP: {exc}")
        sdnotify.ready(f"router listening on port {config.port}")
        await stop.wait()
        sdnotify.stopping()
        log.info("Stopping")
        if web is not None:
            await web.close()
        await server.close()
        return 0

    try:
        return run(main)
    finally:
        db.close()


async def _start_http(options: HttpOptions | None, server: RouterServer,
                      db: RouterStorage) -> HttpServer | None:
    """The HTTP surface, its logins checked against this router's administrators."""
    if options is None:
        return None
    web = HttpServer(options, version=__version__, title="Aspia router", sources=[AspiaRouterSource(server)],
                     authenticator=RouterAccounts(db))
    url = await web.start()
    print(f"HTTP (dashboard, /metrics, /status): {url}", flush=True)
    return web


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if not 1 <= args.lease <= 3600:
        return fail("--lease must be between 1 and 3600 seconds", 2)
    if args.max_logins < 1 or args.max_logins_per_ip < 1:
        return fail("--max-logins and --max-logins-per-ip must be at least 1", 2)
    for switch in WINDOWS_ONLY:
        if getattr(args, switch[2:]):
            extra = [] if args.config is None else ["--config", str(args.config.resolve())]
            if args.data_dir is not None:
                extra += ["--data-dir", str(args.data_dir.resolve())]
            return service_switch("router", switch, PROG, extra)
    if args.keygen:
        keys = X25519KeyPair.generate()
        print(f"Private key: {keys.private_bytes.hex().upper()}")
        print(f"Public key: {keys.public_bytes.hex().upper()}")
        return 0
    paths = _Paths(args)
    if args.create_config:
        return create_config(paths, args.database or "")
    if args.migrate_db is not None:
        return migrate_db(*args.migrate_db)
    if args.add_user is not None or args.remove_user is not None or args.list_users:
        return manage_users(args, paths)
    if args.status or args.disconnect is not None:
        return query(args, paths)
    setup_aspia_logging(PROG, os.environ)
    return serve(args, paths)


if __name__ == "__main__":
    sys.exit(main())
