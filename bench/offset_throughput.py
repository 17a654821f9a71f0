#!/usr/bin/env python3
"""Bulk throughput of one Offset tunnel (node -> strelay -> node) against direct TCP, in one run.

    python3 bench/offset_throughput.py [--bytes 1000000000] [--chunk 65536] [--rounds 3]

Both paths carry the same transfer from the same generator (64 KiB writes by default), alternating
direct and tunnel each round; the medians and their ratio are printed. The full suite with every
subject and measurement is bench/run.py.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from relaybench.direct import DirectSubject  # noqa: E402
from relaybench.loadgen import Generator, build_c  # noqa: E402
from relaybench.offset import OffsetSubject  # noqa: E402
from relaybench.subject import Subject, open_verified_pair  # noqa: E402


def measure(subject: Subject, gen: Generator, nbytes: int, chunk: int, mode: str, seconds: float) -> float:
    """MiB/s of one session carrying ``nbytes``; raises if the transfer did not complete."""
    opener = subject.opener(0)
    pair = open_verified_pair(opener)
    try:
        r = gen.bulk([pair], nbytes, chunk, seconds, mode)
    finally:
        pair[0].close()
        pair[1].close()
        opener.close()
    if not r.complete:
        raise RuntimeError(f"{subject.name}: only {r.bytes} of {nbytes} bytes in {r.seconds:.1f}s")
    return r.mib_per_s


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bytes", type=int, default=1_000_000_000, help="bytes per transfer (default 1 GB)")
    p.add_argument("--chunk", type=int, default=64 * 1024, help="write size (default 64 KiB)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mode", choices=("splice", "copy"), default="splice", help="generator I/O")
    p.add_argument("--seconds", type=float, default=300.0, help="time limit per transfer")
    args = p.parse_args(argv)

    offset = OffsetSubject()
    why = offset.missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="natrelay-offset-bench-"))
    binary = build_c(workdir)
    gen = Generator("c", binary) if binary else Generator("python")
    direct = DirectSubject()
    results: dict[str, list[float]] = {"direct": [], "offset": []}
    ok = False
    try:
        direct.start(workdir)
        offset.start(workdir)
        for rnd in range(args.rounds):
            order = [direct, offset] if rnd % 2 == 0 else [offset, direct]
            for subject in order:
                results[subject.name].append(measure(subject, gen, args.bytes, args.chunk, args.mode,
                                                     args.seconds))
        ok = True
    finally:
        offset.stop()
        direct.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)

    d = statistics.median(results["direct"])
    o = statistics.median(results["offset"])
    print(f"transfer: {args.bytes} bytes in {args.chunk}-byte writes, {args.rounds} round(s), "
          f"generator {gen.kind}/{args.mode}")
    for label, name, value in (("direct TCP:", "direct", d), ("Offset tunnel (strelay):", "offset", o)):
        rounds = ", ".join(f"{v:.0f}" for v in results[name])
        print(f"{label:<24} {value:10.1f} MiB/s  (rounds: {rounds})")
    print(f"ratio tunnel/direct:     {o / d:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
