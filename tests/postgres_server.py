"""A real PostgreSQL server for tests, started in a temporary folder and stopped afterwards.

Tests never mock the database: this module runs Debian's PostgreSQL binaries (``initdb``,
``pg_ctl``) on a fresh data directory, a Unix socket in that folder and a free TCP port on
127.0.0.1. PostgreSQL refuses to run as root, so as root the server runs as the ``postgres``
account (``nobody`` where that account does not exist) via ``runuser``. Each test gets its own
database (:meth:`PostgresServer.new_database`), dropped when the test ends.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

SUPERUSER = "natrelay"
START_TIMEOUT = 60


def find_bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: $PG_BINDIR, PATH, then Debian's versioned dirs."""
    override = os.environ.get("PG_BINDIR")
    candidates = [override] if override else []
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    run_as: str | None
    host: str = "127.0.0.1"
    """The address it listens on (and routers connect to)."""
    prefix: tuple[str, ...] = ()
    """A command prefix, e.g. ``ip netns exec NS``, to run the server inside a network namespace."""
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _cmd(self, *args: str) -> list[str]:
        return [*self.prefix, *(["runuser", "-u", self.run_as, "--"] if self.run_as else []), *args]

    @classmethod
    def start(cls, bindir: Path, *, host: str = "127.0.0.1", prefix: tuple[str, ...] = (),
              trust_network: str = "") -> PostgresServer:
        """Start a server on ``host`` (inside a namespace with ``prefix``); ``trust_network`` is a
        CIDR whose clients may log in without a password besides loopback."""
        run_as = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
                run_as = "postgres"
            except KeyError:
                run_as = "nobody"
        root = Path(tempfile.mkdtemp(prefix="natrelay-pg-"))
        os.chmod(root, 0o755)
        if run_as:
            entry = pwd.getpwnam(run_as)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        server = cls(bindir, root, _free_port(), run_as, host, prefix)
        try:
            server._init_and_start(trust_network)
        except BaseException:
            server.stop()
            raise
        return server

    def _init_and_start(self, trust_network: str) -> None:
        subprocess.run(self._cmd(str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                                 "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"),
                       check=True, capture_output=True, timeout=START_TIMEOUT, cwd=self.root)
        if trust_network:
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {trust_network} trust\n")
        options = (f"-k {self.root} -h {self.host} -p {self.port} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200")
        subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                                 str(self.root / "server.log"), "-o", options, "-w", "-t", str(START_TIMEOUT),
                                 "start"),
                       check=True, capture_output=True, timeout=START_TIMEOUT + 10, cwd=self.root)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def socket_url(self, dbname: str = "postgres") -> str:
        """Through the Unix socket: reachable from every network namespace of this machine."""
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.root}&port={self.port}"

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.socket_url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.socket_url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> bool:
        """Stop the server and remove its folder; False if it had to be killed."""
        clean = True
        if (self.data / "postmaster.pid").exists():
            result = subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                              "-w", "-t", "30", "stop"), capture_output=True, timeout=60)
            if result.returncode != 0:
                clean = False
                subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                                         "immediate", "stop"), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
        return clean
