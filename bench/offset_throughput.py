#!/usr/bin/env python3
"""Bulk throughput (and round trip) of one Offset tunnel (node -> strelay -> node) against direct TCP.

    python3 bench/offset_throughput.py [--bytes 1000000000] [--chunk 65536] [--rounds 3] [--rtt 2000]

Both paths carry the same transfer from the same generator (64 KiB writes by default), alternating
direct and tunnel each round; the medians and their ratio are printed, with the CPU seconds per GB
each process group spent (strelay, the two nodes, the generator): on a shared machine CPU per GB
moves far less with other users' load than MiB/s does, so quote it for before/after. ``--rtt N``
adds N 64-byte round trips per round (p50, and the added p50 of the tunnel over direct TCP).
``--profile-pids PATH`` writes the pids of strelay and the nodes to PATH before the first round
and waits ``--hold`` seconds, so ``py-spy record --pid`` can be attached. The full suite with
every subject and measurement is bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from relaybench import procstat  # noqa: E402
from relaybench.direct import DirectSubject  # noqa: E402
from relaybench.loadgen import Generator, build_c  # noqa: E402
from relaybench.offset import OffsetSubject  # noqa: E402
from relaybench.subject import Subject, open_verified_pair  # noqa: E402

PING_WARMUP = 200


def _cpu(pids: list[int]) -> float:
    return procstat.cpu_seconds(pids) if pids else 0.0


def measure(subject: Subject, gen: Generator, nbytes: int, chunk: int, mode: str,
            seconds: float) -> dict[str, float]:
    """MiB/s and CPU s/GB per process group of one session carrying ``nbytes``."""
    opener = subject.opener(0)
    pair = open_verified_pair(opener)
    relay, nodes = subject.relay_pids(), subject.endpoint_pids()
    try:
        r0, n0 = _cpu(relay), _cpu(nodes)
        r = gen.bulk([pair], nbytes, chunk, seconds, mode)
        r1, n1 = _cpu(relay), _cpu(nodes)
    finally:
        pair[0].close()
        pair[1].close()
        opener.close()
    if not r.complete:
        raise RuntimeError(f"{subject.name}: only {r.bytes} of {nbytes} bytes in {r.seconds:.1f}s")
    gb = r.bytes / 1e9
    return {"mib_s": r.mib_per_s, "relay_s_gb": (r1 - r0) / gb, "nodes_s_gb": (n1 - n0) / gb,
            "gen_s_gb": r.cpu_s / gb}


def measure_rtt(subject: Subject, gen: Generator, count: int) -> dict[str, float]:
    """p50/p99 of 64-byte round trips and the CPU microseconds per round trip of relay and nodes."""
    opener = subject.opener(0)
    pair = open_verified_pair(opener)
    relay, nodes = subject.relay_pids(), subject.endpoint_pids()
    try:
        r0, n0 = _cpu(relay), _cpu(nodes)
        r = gen.pingpong(pair, 64, count, 120.0)
        r1, n1 = _cpu(relay), _cpu(nodes)
    finally:
        pair[0].close()
        pair[1].close()
        opener.close()
    trips = int(r.get("count", 0)) + PING_WARMUP
    return {"p50_us": float(r["p50_us"]), "p99_us": float(r["p99_us"]),
            "relay_us_rtt": (r1 - r0) * 1e6 / trips, "nodes_us_rtt": (n1 - n0) * 1e6 / trips}


def _fmt(values: list[float], spec: str) -> str:
    return ", ".join(format(v, spec) for v in values)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bytes", type=int, default=1_000_000_000, help="bytes per transfer (default 1 GB)")
    p.add_argument("--chunk", type=int, default=64 * 1024, help="write size (default 64 KiB)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mode", choices=("splice", "copy"), default="splice", help="generator I/O")
    p.add_argument("--seconds", type=float, default=300.0, help="time limit per transfer")
    p.add_argument("--rtt", type=int, default=0, metavar="N", help="also N 64-byte round trips per round")
    p.add_argument("--no-bulk", action="store_true", help="round trips only")
    p.add_argument("--profile-pids", type=Path, help="write strelay's and the nodes' pids here, then --hold")
    p.add_argument("--hold", type=float, default=3.0, help="seconds to wait after --profile-pids")
    p.add_argument("--json", type=Path, help="write every round's figures here")
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
    bulk: dict[str, list[dict[str, float]]] = {"direct": [], "offset": []}
    rtt: dict[str, list[dict[str, float]]] = {"direct": [], "offset": []}
    loads: list[float] = []
    ok = False
    try:
        direct.start(workdir)
        offset.start(workdir)
        if args.profile_pids:
            pids = {"relay": offset.relay_pids(), "nodes": offset.endpoint_pids()}
            args.profile_pids.write_text(json.dumps(pids))
            time.sleep(args.hold)
        for rnd in range(args.rounds):
            loads.append(os.getloadavg()[0])
            order: list[Subject] = [direct, offset] if rnd % 2 == 0 else [offset, direct]
            for subject in order:
                if not args.no_bulk:
                    bulk[subject.name].append(measure(subject, gen, args.bytes, args.chunk, args.mode,
                                                      args.seconds))
                if args.rtt:
                    rtt[subject.name].append(measure_rtt(subject, gen, args.rtt))
        ok = True
    finally:
        offset.stop()
        direct.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)

    print(f"transfer: {args.bytes} bytes in {args.chunk}-byte writes, {args.rounds} round(s), "
          f"generator {gen.kind}/{args.mode}, 1-min load at each round: {_fmt(loads, '.2f')}")
    if not args.no_bulk:
        med = {name: statistics.median(r["mib_s"] for r in rows) for name, rows in bulk.items()}
        for label, name in (("direct TCP:", "direct"), ("Offset tunnel (strelay):", "offset")):
            rounds = _fmt([r["mib_s"] for r in bulk[name]], ".0f")
            print(f"{label:<24} {med[name]:10.1f} MiB/s  (rounds: {rounds})")
        print(f"ratio tunnel/direct:     {med['offset'] / med['direct']:10.3f}")
        rows = bulk["offset"]
        for key, label in (("relay_s_gb", "strelay"), ("nodes_s_gb", "both nodes"),
                           ("gen_s_gb", "generator")):
            vals = [r[key] for r in rows]
            print(f"CPU s/GB {label:<15} {statistics.median(vals):10.2f}       (rounds: {_fmt(vals, '.2f')})")
    if args.rtt:
        d50 = statistics.median(r["p50_us"] for r in rtt["direct"])
        o50 = statistics.median(r["p50_us"] for r in rtt["offset"])
        o99 = statistics.median(r["p99_us"] for r in rtt["offset"])
        rounds = _fmt([r["p50_us"] for r in rtt["offset"]], ".0f")
        print(f"round trip p50: direct {d50:.1f} us, tunnel {o50:.1f} us (p99 {o99:.1f}), "
              f"added {o50 - d50:.1f} us  (tunnel rounds: {rounds})")
        for key, label in (("relay_us_rtt", "strelay"), ("nodes_us_rtt", "both nodes")):
            vals = [r[key] for r in rtt["offset"]]
            med_us = statistics.median(vals)
            print(f"CPU us/round trip {label:<10} {med_us:8.1f}  (rounds: {_fmt(vals, '.1f')})")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json),
                                                                 "profile_pids": str(args.profile_pids)},
                                         "loads": loads, "bulk": bulk, "rtt": rtt}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
