#!/usr/bin/env python3
"""Benchmark natrelay's relays against direct TCP, Syncthing's strelaysrv and magic-wormhole's transit relay.

    python3 bench/run.py [--quick] [--subjects a,b] [--rounds N] [--json out.json]

Subjects run interleaved: every round starts each subject afresh (rotating which goes first), takes all
measurements, and stops it, so slow drifts of this shared machine spread over all subjects alike.
See bench/README.md for what is measured and how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from relaybench import report  # noqa: E402
from relaybench.aspia import AspiaSubject  # noqa: E402
from relaybench.direct import DirectOpener, DirectSubject  # noqa: E402
from relaybench.engine import EngineSubject  # noqa: E402
from relaybench.loadgen import Generator, build_c  # noqa: E402
from relaybench.measures import FULL, MEASURES, QUICK, RoundResult, Sizes, SubjectRound  # noqa: E402
from relaybench.natrelay_syncthing import NatrelaySyncthingSubject  # noqa: E402
from relaybench.offset import OffsetSubject  # noqa: E402
from relaybench.stats import rotate, summarize  # noqa: E402
from relaybench.strelaysrv import StrelaysrvSubject  # noqa: E402
from relaybench.subject import Subject, open_verified_pair  # noqa: E402
from relaybench.wormhole import WormholeSubject  # noqa: E402

SUBJECTS: dict[str, type[Subject]] = {
    "direct": DirectSubject,
    "strelaysrv": StrelaysrvSubject,
    "wormhole": WormholeSubject,
    "engine": EngineSubject,
    "offset": OffsetSubject,
    "aspia": AspiaSubject,
    "stnatrelay": NatrelaySyncthingSubject,
}


def parse_size(text: str) -> int:
    """'64M', '2G', '1000000000' -> bytes (K/M/G are binary multiples)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in "KMG" else t
    value = int(float(number) * mult)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes; about a minute (smoke test)")
    p.add_argument("--subjects", default=",".join(SUBJECTS), help=f"comma list from: {', '.join(SUBJECTS)}")
    p.add_argument("--measures", default=",".join(MEASURES), help=f"comma list from: {', '.join(MEASURES)}")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    p.add_argument("--json", type=Path, default=None, help="result file (default bench/results/run-*.json)")
    p.add_argument("--generator", choices=("auto", "c", "python"), default="auto")
    p.add_argument("--bulk-mode", choices=("splice", "copy"), default="splice",
                   help="generator I/O for bulk transfers (splice: no user-space copies)")
    p.add_argument("--bulk-bytes", type=parse_size, default=None, help="single-session transfer size")
    p.add_argument("--chunk", type=parse_size, default=None, help="write size for bulk transfers")
    p.add_argument("--idle", default=None, help="idle-session counts, e.g. 2000,10000 (capped by fd limit)")
    p.add_argument("--no-generator-check", action="store_true", help="skip the generator self-check")
    p.add_argument("--keep-workdir", action="store_true", help="keep relay logs and identities")
    p.add_argument("--quiet-wait", type=float, default=None, metavar="LOAD",
                   help="before each measure, wait until the 1-minute load average is below LOAD")
    p.add_argument("--quiet-max-wait", type=float, default=120.0, metavar="SECONDS",
                   help="longest wait per measure for --quiet-wait; then measure anyway and note it")
    args = p.parse_args(argv)
    for name in args.subjects.split(","):
        if name not in SUBJECTS:
            p.error(f"unknown subject {name!r}")
    for name in args.measures.split(","):
        if name not in MEASURES:
            p.error(f"unknown measure {name!r}")
    if args.idle is not None:
        try:
            args.idle = tuple(sorted({int(x) for x in args.idle.split(",")}))
        except ValueError:
            p.error("--idle takes comma-separated integers")
        if not all(0 < n <= 100_000 for n in args.idle):
            p.error("--idle counts must be within 1..100000")
    if args.rounds is not None and not 1 <= args.rounds <= 50:
        p.error("--rounds must be within 1..50")
    if args.quiet_wait is not None and args.quiet_wait <= 0:
        p.error("--quiet-wait takes a positive load average, e.g. 2.0 on a 2-core machine")
    if not 0 <= args.quiet_max_wait <= 3600:
        p.error("--quiet-max-wait must be within 0..3600 seconds")
    return args


def raise_fd_limit() -> None:
    """Idle-session tests hold thousands of sockets; children (relays, workers) inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def log_step(subject: str, msg: str) -> None:
    log(f"  {subject}: {msg}")


def generator_check(gens: dict[str, Generator], sizes: Sizes) -> dict[str, float]:
    """Direct TCP through every generator variant: if they agree, the generator is not the limit."""
    out: dict[str, float] = {}
    opener = DirectOpener()
    try:
        for kind, gen in gens.items():
            for mode in ("splice", "copy"):
                pair = open_verified_pair(opener)
                try:
                    r = gen.bulk([pair], sizes.bulk_bytes, sizes.bulk_chunk, sizes.bulk_seconds, mode)
                finally:
                    pair[0].close()
                    pair[1].close()
                out[f"{kind}-{mode}"] = r.mib_per_s
    finally:
        opener.close()
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kernel": platform.release()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["strelaysrv"] = subprocess.run(
            ["strelaysrv", "-version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    try:
        from importlib.metadata import version

        out["magic-wormhole-transit-relay"] = version("magic-wormhole-transit-relay")
    except Exception:
        pass
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["natrelay_commit"] = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    return out


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.bulk_bytes or args.chunk:
        sizes = dataclasses.replace(
            sizes, bulk_bytes=args.bulk_bytes or sizes.bulk_bytes, bulk_chunk=args.chunk or sizes.bulk_chunk
        )
    if args.idle:
        sizes = dataclasses.replace(sizes, idle_counts=args.idle)
    rounds = args.rounds or (1 if args.quick else 3)
    measures = tuple(args.measures.split(","))
    raise_fd_limit()

    workdir = Path(tempfile.mkdtemp(prefix="natrelay-bench-"))
    c_binary = build_c(workdir) if args.generator in ("auto", "c") else None
    if args.generator == "c" and c_binary is None:
        log("the C generator was requested but could not be built")
        return 2
    gens: dict[str, Generator] = {}
    if c_binary is not None:
        gens["c"] = Generator("c", c_binary)
    gens["python"] = Generator("python")
    gen_kind = "c" if c_binary is not None else "python"
    gen = gens[gen_kind]
    log(f"generator: {gen_kind} ({args.bulk_mode}); workdir {workdir}")

    chosen = args.subjects.split(",")
    info: dict[str, dict[str, Any]] = {}
    runnable: list[str] = []
    for name in chosen:
        subject = SUBJECTS[name]()
        why = subject.missing()
        info[name] = {"title": subject.title, "skipped": why}
        if why:
            log(f"skipping {name}: {why}")
        else:
            runnable.append(name)

    results: dict[str, list[RoundResult]] = {n: [] for n in runnable}
    gen_checks: list[dict[str, float]] = []
    order: list[list[str]] = []
    started = time.monotonic()
    for rnd in range(rounds):
        if not args.no_generator_check:
            gen_checks.append(generator_check(gens, sizes))
            log(f"round {rnd + 1}: generator check {gen_checks[-1]}")
        order.append(rotate(runnable, rnd))
        for name in order[-1]:
            subject = SUBJECTS[name]()
            sub_dir = workdir / f"round{rnd + 1}"
            sub_dir.mkdir(exist_ok=True)
            log(f"round {rnd + 1}/{rounds}: {name}")
            try:
                subject.start(sub_dir)
                subject.prepare_openers(max(sizes.pair_workers, sizes.idle_workers))
            except Exception as exc:
                subject.stop()
                results[name].append(RoundResult(notes=[f"start failed: {exc}"]))
                log(f"  {name} did not start: {exc}")
                continue
            try:
                rr = SubjectRound(subject, gen, sizes, args.bulk_mode, functools.partial(log_step, name),
                                  quiet_load=args.quiet_wait, quiet_max_wait=args.quiet_max_wait)
                results[name].append(rr.run(measures))
            finally:
                subject.stop()

    metrics = report.metrics_for(sizes.idle_counts)
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpus": len(os.sched_getaffinity(0)),
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "order": order,
        "measures": list(measures),
        "sizes": dataclasses.asdict(sizes),
        "generator": {"kind": gen_kind, "bulk_mode": args.bulk_mode},
        "versions": versions(),
        "seconds": round(time.monotonic() - started, 1),
        "quiet_wait": {"load_below": args.quiet_wait, "max_wait_s": args.quiet_max_wait},
    }
    if gen_checks:
        meta["generator_check"] = {
            k: s.median for k in gen_checks[0] if (s := summarize([g.get(k) for g in gen_checks])) is not None
        }
        meta["generator_check_rounds"] = gen_checks
    doc = report.build(info, results, metrics, meta)
    print(report.format_table(doc, metrics))
    out = args.json or HERE / "results" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"wrote {out} ({meta['seconds']}s)")
    troubled = any("failed" in n for rs in results.values() for r in rs for n in r.notes)
    if args.keep_workdir or troubled:
        log(f"kept {workdir} (relay logs{', for the failures noted above' if troubled else ''})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
