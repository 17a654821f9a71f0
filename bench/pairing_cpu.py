#!/usr/bin/env python3
"""CPU microseconds per pairing, per process (relay, endpoint helpers, opener), a few rounds on one subject.

    python3 bench/pairing_cpu.py [--subject aspia] [--pairings 1000] [--rounds 5] [--quiet-wait 2.0]

Starts the subject once, then each round opens and closes ``--pairings`` verified pairs sequentially
from this process and reads the relay's and the router's (or nodes') CPU time from /proc around them.
CPU per pairing is far less sensitive to other users of a shared machine than pairings per second, so
it is what before/after comparisons of the pairing path should quote (with the load seen, printed
per round). ``--profile-pid-file PATH`` writes the relay's pid there once it is up, for a profiler.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from relaybench.cpuper import CpuMeter, per_op_us  # noqa: E402
from relaybench.quiet import wait_quiet  # noqa: E402
from relaybench.subject import open_verified_pair  # noqa: E402
from run import SUBJECTS  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subject", default="aspia", choices=sorted(set(SUBJECTS) - {"direct"}))
    p.add_argument("--pairings", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=50, help="pairings before the first round (not counted)")
    p.add_argument("--quiet-wait", type=float, default=None, metavar="LOAD")
    p.add_argument("--quiet-max-wait", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("--pause", type=float, default=0.0, help="seconds to sleep between rounds")
    p.add_argument("--profile-pid-file", type=Path, default=None)
    p.add_argument("--hold", type=float, default=0.0,
                   help="seconds to wait after writing --profile-pid-file, for a profiler to attach")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not 1 <= args.pairings <= 100_000 or not 1 <= args.rounds <= 100:
        p.error("--pairings within 1..100000, --rounds within 1..100")
    subject = SUBJECTS[args.subject]()
    why = subject.missing()
    if why:
        print(f"cannot run {args.subject}: {why}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="natrelay-paircpu-") as tmp:
        subject.start(Path(tmp))
        try:
            subject.prepare_openers(1)
            opener = subject.opener(0)
            try:
                if args.profile_pid_file:
                    args.profile_pid_file.write_text(" ".join(map(str, subject.relay_pids())) + "\n")
                    time.sleep(args.hold)
                for _ in range(args.warmup):
                    a, b = open_verified_pair(opener)
                    a.close()
                    b.close()
                meter = CpuMeter({"relay": subject.relay_pids(), "endpoint": subject.endpoint_pids()})
                for rnd in range(args.rounds):
                    seen = wait_quiet(args.quiet_wait, args.quiet_max_wait)
                    meter.start()
                    t0, c0 = time.monotonic(), time.process_time()
                    for _ in range(args.pairings):
                        a, b = open_verified_pair(opener)
                        a.close()
                        b.close()
                    wall, own = time.monotonic() - t0, time.process_time() - c0
                    spent = meter.stop()
                    spent["opener"] = own
                    row = {"round": rnd + 1, "load": seen.as_dict(), "pairings_per_s": args.pairings / wall,
                           **{f"{k}_us": per_op_us(v, args.pairings) for k, v in spent.items()}}
                    rows.append(row)
                    print(f"round {rnd + 1}: load {seen.load_at_start:.2f}  "
                          + "  ".join(f"{k} {row[f'{k}_us']:.0f} us" for k in spent)
                          + f"  ({row['pairings_per_s']:.0f}/s wall)", flush=True)
                    if args.pause:
                        time.sleep(args.pause)
            finally:
                opener.close()
        finally:
            subject.stop()
    keys = [k for k in rows[0] if k.endswith("_us")]
    med = {k: statistics.median(r[k] for r in rows) for k in keys}
    print("median CPU us per pairing: " + ", ".join(f"{k[:-3]} {v:.0f}" for k, v in med.items())
          + f"; load {min(r['load']['load_at_start'] for r in rows):.2f}-"
          f"{max(r['load']['load_at_start'] for r in rows):.2f}")
    if args.json:
        args.json.write_text(json.dumps({"subject": args.subject, "pairings": args.pairings, "rounds": rows,
                                         "median_us": med}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
