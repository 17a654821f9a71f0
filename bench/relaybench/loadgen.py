"""Build and drive the traffic generator (C if a compiler is present, else the Python fallback).

The generator always runs as separate processes that inherit the already-paired sockets, so the
orchestrator's own Python overhead never sits in the data path.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pyloadgen import PING_MODES

HERE = Path(__file__).resolve().parent
C_SOURCE = HERE / "loadgen.c"
PY_SOURCE = HERE / "pyloadgen.py"


class LoadgenError(Exception):
    """The generator failed or printed something that is not its JSON result."""


def build_c(outdir: Path) -> Path | None:
    """Compile loadgen.c; None when no compiler is available or compiling fails (then Python is used)."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    out = outdir / "loadgen"
    proc = subprocess.run(
        [cc, "-O2", "-Wall", "-Wextra", "-o", str(out), str(C_SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        sys.stderr.write(f"loadgen.c did not compile, using the Python generator:\n{proc.stderr}\n")
        return None
    return out


@dataclass(frozen=True)
class BulkResult:
    bytes: int
    seconds: float
    complete: bool
    cpu_s: float
    raw: dict[str, Any]

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.seconds / (1 << 20) if self.seconds > 0 else 0.0


def parse_output(stdout: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise LoadgenError("generator printed nothing")
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise LoadgenError(f"generator output is not JSON: {lines[-1]!r}") from exc
    if not isinstance(value, dict):
        raise LoadgenError("generator output is not a JSON object")
    return value


class Generator:
    """One generator implementation: ``kind`` is "c" or "python"."""

    def __init__(self, kind: str, c_binary: Path | None = None) -> None:
        if kind == "c" and c_binary is None:
            raise ValueError("the C generator needs its compiled binary")
        self.kind = kind
        self._argv0 = [str(c_binary)] if kind == "c" else [sys.executable, str(PY_SOURCE)]

    def _run(self, args: list[str], fds: list[int], seconds: float) -> dict[str, Any]:
        proc = subprocess.run(
            [*self._argv0, *args],
            pass_fds=fds,
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        if proc.returncode != 0:
            raise LoadgenError(f"generator exited {proc.returncode}: {proc.stderr.strip()}")
        return parse_output(proc.stdout)

    def bulk(
        self,
        pairs: list[tuple[socket.socket, socket.socket]],
        nbytes: int,
        chunk: int,
        seconds: float,
        mode: str = "copy",
    ) -> BulkResult:
        """Send ``nbytes`` from the first to the second socket of every pair, all pairs at once."""
        specs = [f"{a.fileno()}:{b.fileno()}" for a, b in pairs]
        fds = [fd for a, b in pairs for fd in (a.fileno(), b.fileno())]
        raw = self._run(["bulk", str(nbytes), str(chunk), f"{seconds:.3f}", mode, *specs], fds, seconds)
        return BulkResult(
            bytes=int(raw["bytes"]),
            seconds=float(raw["seconds"]),
            complete=bool(raw["complete"]),
            cpu_s=float(raw.get("cpu_s", 0.0)),
            raw=raw,
        )

    def pingpong(
        self,
        pair: tuple[socket.socket, socket.socket],
        size: int,
        count: int,
        seconds: float,
        mode: str = "block",
    ) -> dict[str, Any]:
        """Round trips A->B->A; ``mode`` "block" reads with blocking reads, "poll" spins on non-blocking
        reads (busy-poll), so the generator's own wake-ups are left out of the figure."""
        if mode not in PING_MODES:
            raise ValueError(f"pingpong mode must be one of {PING_MODES}, not {mode!r}")
        a, b = pair
        return self._run(
            ["pingpong", str(size), str(count), f"{seconds:.3f}", f"{a.fileno()}:{b.fileno()}", mode],
            [a.fileno(), b.fileno()],
            seconds,
        )
