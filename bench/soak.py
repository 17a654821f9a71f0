#!/usr/bin/env python3
"""Soak a relay: N paired sessions moving bytes at a modest rate for a given time, while the relay's
memory, descriptors and CPU are sampled; reports drift and lost sessions.

    python3 bench/soak.py --subject aspia --sessions 200 --minutes 5
    python3 bench/soak.py --subject engine --sessions 1000 --minutes 30 --rate 1K --json soak.json

Subjects are those of ``bench/run.py`` (``engine``, ``aspia``: aspia_relay with the real router,
``offset``: strelay between two natrelay nodes). Every session carries a verified byte stream each
way (a per-session pattern, checked on arrival), so a corrupted, stalled or closed session counts as
lost. Every ``--interval`` seconds one sample is taken of the relay's process tree: RSS (VmRSS,
summed), open descriptors, CPU used since the previous sample, bytes delivered and sessions alive.

Drift is the last sample's RSS against the first one taken after all sessions were open and moving
(the baseline), so start-up and session set-up are not counted as drift. Exit status 1 when a
session was lost, or when drift passes ``--max-drift`` percent (default 5) or the descriptor count
grew.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import selectors
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from relaybench import procstat  # noqa: E402
from relaybench.aspia import AspiaSubject  # noqa: E402
from relaybench.engine import EngineSubject  # noqa: E402
from relaybench.offset import OffsetSubject  # noqa: E402
from relaybench.subject import Subject, open_verified_pair  # noqa: E402

SUBJECTS: dict[str, type[Subject]] = {"engine": EngineSubject, "aspia": AspiaSubject, "offset": OffsetSubject}
PATTERN_LEN = 4096
TICK = 0.25


def parse_rate(text: str) -> int:
    t = text.strip().upper().removesuffix("/S").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20}.get(t[-1:], 1)
    return int(float(t[:-1] if t[-1:] in "KM" else t) * mult)


class Direction:
    """One way of one session: what was sent and what arrived, checked against the pattern."""

    __slots__ = ("dst", "pattern", "received", "sent", "src")

    def __init__(self, src: socket.socket, dst: socket.socket, seed: int) -> None:
        rng = random.Random(seed)
        block = rng.randbytes(PATTERN_LEN)
        self.pattern = block + block  # any window of up to PATTERN_LEN bytes is one slice
        self.src, self.dst = src, dst
        self.sent = 0
        self.received = 0

    def chunk(self, size: int) -> bytes:
        start = self.sent % PATTERN_LEN
        return self.pattern[start : start + min(size, PATTERN_LEN)]

    def check(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            start = self.received % PATTERN_LEN
            piece = view[:PATTERN_LEN]
            if piece != self.pattern[start : start + len(piece)]:
                return False
            self.received += len(piece)
            view = view[len(piece) :]
        return True


@dataclass
class Session:
    index: int
    ab: Direction
    ba: Direction
    lost: str = ""

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        return self.ab.src, self.ab.dst


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    cpu_percent: float
    delivered_bytes: int
    sessions_alive: int


@dataclass
class SoakResult:
    subject: str
    sessions: int
    rate_bytes_per_s: int
    seconds: float
    setup_seconds: float
    samples: list[Sample] = field(default_factory=list)
    lost: dict[int, str] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        first, last = self.samples[0], self.samples[-1]
        drift = 100.0 * (last.rss_kib - first.rss_kib) / first.rss_kib if first.rss_kib else 0.0
        cpu = [s.cpu_percent for s in self.samples]
        return {
            "rss_kib_first": first.rss_kib, "rss_kib_last": last.rss_kib, "rss_kib_max": max(
                s.rss_kib for s in self.samples), "rss_drift_percent": round(drift, 2),
            "fds_first": first.fds, "fds_last": last.fds, "fds_max": max(s.fds for s in self.samples),
            "cpu_percent_mean": round(sum(cpu) / len(cpu), 1), "cpu_percent_max": round(max(cpu), 1),
            "delivered_mib": round(sum(s.delivered_bytes for s in self.samples) / (1 << 20), 1),
            "sessions_lost": len(self.lost),
        }


def fd_count(roots: list[int]) -> int:
    total = 0
    for pid in procstat.tree(roots):
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


def soak(subject: Subject, name: str, sessions: int, rate: int, seconds: float, interval: float,
         log: bool = True) -> SoakResult:
    subject.prepare_openers(1)
    opener = subject.opener(0)
    started = time.monotonic()
    pairs: list[Session] = []
    try:
        for i in range(sessions):
            a, b = open_verified_pair(opener)
            for s in (a, b):
                s.setblocking(False)
            pairs.append(Session(i, Direction(a, b, 2 * i), Direction(b, a, 2 * i + 1)))
        setup = time.monotonic() - started
        if log:
            print(f"{sessions} sessions open in {setup:.1f} s; moving {rate} B/s each way per session",
                  flush=True)
        result = SoakResult(name, sessions, rate, seconds, setup)
        _traffic(pairs, subject, result, rate, seconds, interval, log)
        return result
    finally:
        for p in pairs:
            for s in p.sockets():
                s.close()
        opener.close()


def _traffic(pairs: list[Session], subject: Subject, result: SoakResult, rate: int, seconds: float,
             interval: float, log: bool) -> None:
    sel = selectors.DefaultSelector()
    readers: dict[socket.socket, tuple[Session, Direction]] = {}
    for p in pairs:
        readers[p.ab.dst] = (p, p.ab)
        readers[p.ba.dst] = (p, p.ba)
        sel.register(p.ab.dst, selectors.EVENT_READ)
        sel.register(p.ba.dst, selectors.EVENT_READ)
    roots = subject.relay_pids()
    cpu_before = procstat.cpu_seconds(roots)
    start = time.monotonic()
    next_tick = start
    next_sample = start + interval
    delivered = 0
    budget = rate * TICK

    def lose(p: Session, why: str) -> None:
        if p.lost:
            return
        p.lost = why
        result.lost[p.index] = why
        for s in p.sockets():
            if s in readers:
                sel.unregister(s)
                del readers[s]

    while True:
        now = time.monotonic()
        if now >= start + seconds:
            break
        if now >= next_tick:
            next_tick += TICK
            for p in pairs:
                if p.lost:
                    continue
                for d in (p.ab, p.ba):
                    # Send what this tick allows; a full socket buffer (backpressure) just waits.
                    want = int(budget)
                    while want > 0:
                        try:
                            n = d.src.send(d.chunk(want))
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            lose(p, f"send failed: {exc}")
                            break
                        d.sent += n
                        want -= n
        if now >= next_sample:
            cpu_now = procstat.cpu_seconds(roots)
            sample = Sample(round(now - start, 1), procstat.rss_kib(roots), fd_count(roots),
                            round(100.0 * (cpu_now - cpu_before) / interval, 1), delivered,
                            sum(1 for p in pairs if not p.lost))
            cpu_before, delivered = cpu_now, 0
            next_sample += interval
            result.samples.append(sample)
            if log:
                print(f"t={sample.t:7.1f}s rss={sample.rss_kib / 1024:8.1f} MiB fds={sample.fds:6d} "
                      f"cpu={sample.cpu_percent:5.1f}% delivered={sample.delivered_bytes / 1024:9.0f} KiB "
                      f"alive={sample.sessions_alive}", flush=True)
        timeout = max(0.0, min(next_tick, next_sample, start + seconds) - time.monotonic())
        for key, _ in sel.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            p, d = readers[sock]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                lose(p, f"receive failed: {exc}")
                continue
            if not data:
                lose(p, "closed by the relay")
            elif not d.check(data):
                lose(p, f"corrupted data after {d.received} bytes")
            else:
                delivered += len(data)
    sel.close()
    # A session that delivered nothing in its last ten seconds' worth of traffic has stalled.
    for p in pairs:
        for d in (p.ab, p.ba):
            if not p.lost and d.sent - d.received > max(rate * 10, 1 << 20):
                lose(p, f"stalled: {d.sent - d.received} bytes sent but not delivered")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subject", choices=sorted(SUBJECTS), default="engine")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--rate", type=parse_rate, default=parse_rate("1K"),
                    help="bytes per second each way per session (default 1K)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--max-drift", type=float, default=5.0, help="RSS drift limit in percent (default 5)")
    ap.add_argument("--json", type=Path, help="write samples and summary here")
    args = ap.parse_args(argv)
    seconds = args.minutes * 60
    if seconds < 2 * args.interval:
        ap.error("run for at least two sampling intervals")
    raise_fd_limit(4 * args.sessions + 256)
    subject = SUBJECTS[args.subject]()
    why = subject.missing()
    if why:
        print(f"{args.subject}: cannot run: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="natrelay-soak-") as workdir:
        subject.start(Path(workdir))
        try:
            result = soak(subject, args.subject, args.sessions, args.rate, seconds, args.interval)
        finally:
            subject.stop()
    summary = result.summary()
    print(json.dumps(summary, indent=2))
    for index, why in sorted(result.lost.items())[:10]:
        print(f"session {index} lost: {why}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"result": asdict(result), "summary": summary,
                                         "command": sys.argv}, indent=2))
    failed = (result.lost or abs(float(summary["rss_drift_percent"])) > args.max_drift  # type: ignore[arg-type]
              or int(summary["fds_last"]) > int(summary["fds_first"]))  # type: ignore[call-overload]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
