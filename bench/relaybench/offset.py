"""natrelay's ``strelay`` carrying Offset tunnels between two natrelay nodes, driven through the real CLI.

Path of a byte: generator -> TCP -> ``natrelay offset connect`` (node A) -> strelay -> ``natrelay offset
listen`` (node B) -> TCP -> a sink listener owned by the benchmark. Only strelay counts as "the relay"
for memory and CPU; the nodes' CPU is reported separately, because the nodes do the encryption.

Each opener index gets its own node pair and its own sink, so that concurrent openers in different worker
processes never accept each other's connections. A random tag written by A and checked at the sink makes a
late or stray tunnel (from an earlier, abandoned attempt) harmless instead of silently mis-pairing.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .subject import (
    LOOPBACK,
    PAIR_TIMEOUT,
    ManagedProcess,
    Opener,
    Subject,
    SubjectError,
    connect,
    free_port,
    recv_exact,
    wait_port,
)

REPO = Path(__file__).resolve().parent.parent.parent
TAG_LEN = 16
KEY_RE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}=?(?![A-Za-z0-9_-])")


def cli(name: str) -> list[str] | None:
    """The command for a natrelay entry point: installed script, or the module in this checkout."""
    exe = shutil.which(name)
    if exe:
        return [exe]
    if (REPO / "src" / "natrelay" / "cli" / f"{name}.py").exists():
        return [sys.executable, "-c", f"import sys; from natrelay.cli.{name} import main; sys.exit(main())"]
    return None


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def parse_public_key(text: str) -> str:
    """The base64url public key in ``stmgr show`` output, preferring a line that mentions it is public."""
    lines = text.splitlines()
    for candidates in ([ln for ln in lines if "pub" in ln.lower()], lines):
        for line in candidates:
            m = KEY_RE.search(line)
            if m:
                return m.group(0)
    raise SubjectError(f"no base64url public key in stmgr show output: {text[:200]!r}")


@dataclass
class NodePair:
    sink: socket.socket
    local_port: int
    listen: ManagedProcess
    connect: ManagedProcess


class OffsetOpener(Opener):
    def __init__(self, pair: NodePair) -> None:
        self._pair = pair

    def open_pair(self) -> tuple[socket.socket, socket.socket]:
        tag = secrets.token_bytes(TAG_LEN)
        a = connect(self._pair.local_port)
        try:
            a.sendall(tag)
            deadline = time.monotonic() + PAIR_TIMEOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SubjectError("no tunnel reached the sink in time")
                self._pair.sink.settimeout(left)
                b, _ = self._pair.sink.accept()
                b.settimeout(PAIR_TIMEOUT)
                b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    if recv_exact(b, TAG_LEN) == tag:
                        return a, b
                except (OSError, SubjectError):
                    pass
                b.close()  # a stray tunnel from an earlier attempt
        except BaseException:
            a.close()
            raise


class OffsetSubject(Subject):
    name = "offset"
    title = "natrelay strelay + Offset tunnel"

    def __init__(self) -> None:
        self._relay: ManagedProcess | None = None
        self._pairs: list[NodePair] = []
        self._dir = Path()
        self._ticket = Path()

    def missing(self) -> str | None:
        absent = [n for n in ("strelay", "stmgr", "natrelay") if cli(n) is None]
        if absent:
            return f"natrelay CLI not available yet: {', '.join(absent)}"
        return None

    def _run_all(self, calls: list[tuple[str, ...]]) -> list[str]:
        """Run CLI calls in parallel (each is a short Python process; start-up dominates) and return
        their outputs in order, failing with the first error."""
        procs = []
        for name, *args in calls:
            cmd = cli(name)
            assert cmd is not None
            procs.append(subprocess.Popen(
                [*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=cli_env(), cwd=self._dir,
            ))
        outs = []
        for (name, *args), proc in zip(calls, procs, strict=True):
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            if proc.returncode != 0:
                raise SubjectError(f"{name} {' '.join(args)} failed: {err.strip()[-300:]}")
            outs.append(out)
        return outs

    def _run(self, name: str, *args: str) -> str:
        return self._run_all([(name, *args)])[0]

    def _spawn(self, label: str, name: str, *args: str) -> ManagedProcess:
        cmd = cli(name)
        assert cmd is not None
        return ManagedProcess(label, [*cmd, *args], self._dir / f"{label}.log", cwd=self._dir, env=cli_env())

    def start(self, workdir: Path) -> None:
        self._dir = workdir / "offset"
        self._dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        ident = self._dir / "relay.ident"
        self._ticket = self._dir / "relay.ticket"
        self._run("stmgr", "gen-ident", "--output", str(ident))
        self._run("stmgr", "relay-ticket", "--address", f"{LOOPBACK}:{port}", "--idfile", str(ident),
                  "--output", str(self._ticket))
        self._relay = self._spawn(
            "strelay", "strelay", "--idfile", str(ident), "--laddr", f"{LOOPBACK}:{port}",
            *self._limit_flags(),
        )
        wait_port(port, 30, self._relay)
        self.prepare_openers(1)

    def _limit_flags(self) -> list[str]:
        """Lift strelay's abuse limits (connections per IP, in total) where it has them: every connection
        here comes from 127.0.0.1, and the idle-session test must measure memory, not a policy cap."""
        try:
            help_text = self._run("strelay", "--help")
        except SubjectError:
            return []
        return [f for flag in ("--max-per-ip", "--max-connections") if flag in help_text for f in (flag, "0")]

    def _key(self, ident: Path, gen_output: str) -> str:
        """gen-ident prints the new public key; fall back to ``stmgr show`` if it ever stops doing so."""
        try:
            return parse_public_key(gen_output)
        except SubjectError:
            return parse_public_key(self._run("stmgr", "show", str(ident)))

    def _add_node_pairs(self, count: int) -> None:
        first = len(self._pairs)
        idents = [(self._dir / f"node{i}-a.ident", self._dir / f"node{i}-b.ident")
                  for i in range(first, first + count)]
        outs = self._run_all([("stmgr", "gen-ident", "--output", str(p)) for pair in idents for p in pair])
        started: list[NodePair] = []
        for k, (a_ident, b_ident) in enumerate(idents):
            i = first + k
            a_pub = self._key(a_ident, outs[2 * k])
            b_pub = self._key(b_ident, outs[2 * k + 1])
            sink = socket.create_server((LOOPBACK, 0), backlog=1024)
            local = free_port()
            listen = self._spawn(
                f"node{i}-listen", "natrelay", "offset", "listen", "--idfile", str(b_ident),
                "--relay", str(self._ticket), "--allow", a_pub,
                "--expose", f"{LOOPBACK}:{sink.getsockname()[1]}",
            )
            conn = self._spawn(
                f"node{i}-connect", "natrelay", "offset", "connect", "--idfile", str(a_ident),
                "--relay", str(self._ticket), "--to", b_pub, "--listen", f"{LOOPBACK}:{local}",
            )
            pair = NodePair(sink, local, listen, conn)
            self._pairs.append(pair)  # registered first so stop() cleans up even if warm-up fails
            started.append(pair)
        for pair in started:
            wait_port(pair.local_port, 60, pair.connect)
            self._warm_up(pair)

    def _warm_up(self, pair: NodePair) -> None:
        """The listen node registers with the relay asynchronously: retry the first pairing for a while."""
        deadline = time.monotonic() + 30
        while True:
            try:
                a, b = OffsetOpener(pair).open_pair()
                a.close()
                b.close()
                return
            except (OSError, SubjectError):
                if time.monotonic() > deadline:
                    raise
                for p in (pair.listen, pair.connect):
                    if p.popen.poll() is not None:
                        raise SubjectError(f"{p.name} exited; see {p.log_path}") from None
                time.sleep(0.5)

    def prepare_openers(self, count: int) -> None:
        if count > len(self._pairs):
            self._add_node_pairs(count - len(self._pairs))

    def opener(self, index: int) -> Opener:
        if index >= len(self._pairs):
            raise SubjectError(f"opener {index} needs prepare_openers({index + 1}) first")
        return OffsetOpener(self._pairs[index])

    def relay_pids(self) -> list[int]:
        return [self._relay.pid] if self._relay else []

    def endpoint_pids(self) -> list[int]:
        return [p.pid for pair in self._pairs for p in (pair.listen, pair.connect)]

    def stop(self) -> None:
        for pair in self._pairs:
            pair.connect.stop()
            pair.listen.stop()
            pair.sink.close()
        self._pairs.clear()
        if self._relay:
            self._relay.stop()
            self._relay = None
