"""Worker processes that open pairings, so pairing rates are not capped by one Python interpreter.

Workers are forked from the orchestrator after the subject started, each building its own opener (its own
relay identity or node pair), and report back over a pipe. Every loop is bounded by a count and a
deadline; a worker that hits its deadline reports how far it got instead of hanging the run.
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

from . import procstat
from .subject import Opener, Subject, open_verified_pair

_CTX = multiprocessing.get_context("fork")


@dataclass
class PairingReport:
    pairings: int = 0
    start: float = 0.0
    end: float = 0.0
    latencies: list[float] = field(default_factory=list)
    retries: int = 0
    error: str | None = None
    cpu_s: float = 0.0  # this worker's CPU inside the timed loop (the opener's own cost of its pairings)
    # CPU seconds of each watched role (relay, endpoint) read just before and just after the timed loop,
    # so the window holds the pairings only, not the opener's start-up (router logins).
    roles_start: dict[str, float] = field(default_factory=dict)
    roles_end: dict[str, float] = field(default_factory=dict)


def roles_spent(reports: list[PairingReport]) -> dict[str, float]:
    """CPU per role from the first worker's start to the last worker's end (counters only grow)."""
    out: dict[str, float] = {}
    started = [r for r in reports if r.roles_start and r.roles_end]
    for role in started[0].roles_start if started else ():
        first = min(r.roles_start[role] for r in started)
        last = max(r.roles_end[role] for r in started)
        out[role] = max(0.0, last - first)
    return out


def _read_roles(roles: dict[str, list[int]]) -> dict[str, float]:
    return {role: procstat.cpu_seconds(pids) for role, pids in roles.items() if pids}


def _pairing_main(
    subject: Subject,
    index: int,
    count: int,
    seconds: float,
    barrier: Barrier,
    conn: Connection,
    roles: dict[str, list[int]],
) -> None:
    report = PairingReport()
    cpu0 = 0.0
    try:
        opener = subject.opener(index)
    except Exception as exc:  # reported, not raised: the orchestrator decides what to do
        barrier.abort()
        conn.send(PairingReport(error=f"opener: {exc!r}"))
        return
    try:
        barrier.wait(60)
        report.roles_start = _read_roles(roles)
        report.start = time.monotonic()
        cpu0 = time.process_time()
        deadline = report.start + seconds
        while report.pairings < count and time.monotonic() < deadline:
            t = time.monotonic()
            a, b = open_verified_pair(opener)
            a.close()
            b.close()
            report.latencies.append(time.monotonic() - t)
            report.pairings += 1
    except Exception as exc:
        report.error = repr(exc)
    finally:
        report.end = time.monotonic()
        if report.start:
            report.cpu_s = time.process_time() - cpu0
            report.roles_end = _read_roles(roles)
        report.retries = opener.retries
        opener.close()
    conn.send(report)


def run_pairing(
    subject: Subject,
    workers: int,
    count_each: int,
    seconds: float,
    roles: dict[str, list[int]] | None = None,
) -> list[PairingReport]:
    """``workers`` processes each open and close ``count_each`` verified pairings as fast as they can.

    ``roles`` names process trees (relay, endpoint) whose CPU the workers read around their timed loop.
    """
    barrier = _CTX.Barrier(workers)
    procs = []
    pipes = []
    for i in range(workers):
        parent, child = _CTX.Pipe(duplex=False)
        args = (subject, i, count_each, seconds, barrier, child, roles or {})
        p = _CTX.Process(target=_pairing_main, args=args, daemon=True)
        p.start()
        child.close()
        procs.append(p)
        pipes.append(parent)
    reports = []
    for p, pipe in zip(procs, pipes, strict=True):
        if pipe.poll(seconds + 90):
            reports.append(pipe.recv())
        else:
            reports.append(PairingReport(error="worker did not report in time"))
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
    return reports


def _hold_main(subject: Subject, index: int, count: int, seconds: float, conn: Connection) -> None:
    held: list[tuple[socket.socket, socket.socket]] = []
    error = None
    opener: Opener | None = None
    try:
        opener = subject.opener(index)
        deadline = time.monotonic() + seconds
        while len(held) < count and time.monotonic() < deadline:
            held.append(open_verified_pair(opener))
    except Exception as exc:
        error = repr(exc)
    conn.send({"held": len(held), "error": error, "retries": opener.retries if opener else 0})
    conn.recv()  # hold until released
    for a, b in held:
        a.close()
        b.close()
    if opener is not None:
        opener.close()  # only now: some relays end a device's sessions when its control connection goes
    conn.send({"released": len(held)})


class Holders:
    """Processes that open idle paired sessions and keep them open until released."""

    def __init__(self) -> None:
        self._procs: list[Any] = []
        self._pipes: list[Connection] = []

    def open(self, subject: Subject, total: int, workers: int, seconds: float) -> tuple[int, int, list[str]]:
        """Open about ``total`` more sessions over ``workers`` processes: (opened, retries, errors)."""
        per = [total // workers + (1 if i < total % workers else 0) for i in range(workers)]
        new_pipes = []
        for i, n in enumerate(per):
            if n == 0:
                continue
            parent, child = _CTX.Pipe()
            p = _CTX.Process(target=_hold_main, args=(subject, i, n, seconds, child), daemon=True)
            p.start()
            self._procs.append(p)
            self._pipes.append(parent)
            new_pipes.append(parent)
        opened = retries = 0
        errors = []
        for pipe in new_pipes:
            if pipe.poll(seconds + 90):
                msg = pipe.recv()
                opened += int(msg["held"])
                retries += int(msg["retries"])
                if msg["error"]:
                    errors.append(str(msg["error"]))
            else:
                errors.append("holder did not report in time")
        return opened, retries, errors

    def release(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send("release")
            except OSError:
                continue
        for pipe in self._pipes:
            try:
                if pipe.poll(60):
                    pipe.recv()
            except (OSError, EOFError):
                continue
        for p in self._procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        self._procs.clear()
        self._pipes.clear()
