#!/usr/bin/env python3
"""Run fuzz targets for a given time and print how many inputs each executed.

    python3 fuzz/run.py all --seconds 60            # every target, one after the other
    python3 fuzz/run.py offset_link --seconds 600   # one target
    python3 fuzz/run.py all --runs 1000000 --seconds 300   # a million inputs each, 5 min at most
    python3 fuzz/run.py --list

Each target runs in its own process under atheris (libFuzzer, guided by the coverage of
``natrelay``), one at a time so a shared machine keeps its other cores. Without atheris, or with
``--engine random``, a portable mutation loop over the same seeds runs instead (no coverage
guidance: it finds less, and the summary says which engine ran).

The corpus of each target lives in ``fuzz/corpus/<target>`` (``--corpus`` moves it; not in git)
and grows between runs, so a later run starts where the last one stopped. A crash (any exception
other than the family's protocol error, a failed invariant, an input slower than ``--timeout``
seconds or a process above ``--rss-mb``) is saved under ``fuzz/artifacts/<target>/`` and makes
the exit status 1; re-run one input with ``python3 fuzz/run.py TARGET --reproduce FILE``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `fuzz` and `tests` importable
    sys.path.insert(0, str(ROOT))

EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
MAX_LEN = 4096


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------- worker
def _write_seeds(corpus: Path, seeds: list[bytes]) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        path = corpus / f"seed-{i:03d}"
        if not path.exists():
            path.write_bytes(seed)


def _load_targets(instrument: bool) -> dict[str, object]:
    logging.disable(logging.CRITICAL)  # the code under test logs refusals; not what we measure
    if instrument:
        import atheris

        with atheris.instrument_imports(include=["natrelay"]):
            from fuzz.targets import TARGETS
    else:
        from fuzz.targets import TARGETS
    return dict(TARGETS)


def worker_atheris(
    name: str, seconds: float, corpus: Path, artifacts: Path, timeout: int, rss_mb: int, runs: int = -1
) -> None:
    import atheris

    target = _load_targets(instrument=True)[name]
    run: Callable[[bytes], None] = target.run  # type: ignore[attr-defined]
    _write_seeds(corpus, list(target.seeds()))  # type: ignore[attr-defined]
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], str(corpus), f"-max_total_time={max(1, int(seconds))}", "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/", f"-timeout={timeout}", f"-rss_limit_mb={rss_mb}",
            f"-max_len={MAX_LEN}", "-print_pcs=0", f"-runs={runs}"]
    atheris.Setup(argv, run)
    atheris.Fuzz()  # exits the process when the time is up or on a crash


def _mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[min(pos, len(out) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            out[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and out:
            del out[pos : pos + rng.randint(1, 8)]
        elif op == 4 and corpus:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            out[pos:] = other[cut:]
        else:
            out[pos:pos] = bytes([rng.randrange(256)]) * rng.randint(1, 4)
    return bytes(out[:MAX_LEN])


def worker_random(
    name: str, seconds: float, corpus: Path, artifacts: Path, timeout: int, runs: int = -1
) -> None:
    """No coverage guidance: seeds, their mutations and noise, as many as the time allows."""
    target = _load_targets(instrument=False)[name]
    run: Callable[[bytes], None] = target.run  # type: ignore[attr-defined]
    _write_seeds(corpus, list(target.seeds()))  # type: ignore[attr-defined]
    pool = [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()] or [b""]
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    executed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and executed != runs:
        if rng.random() < 0.05:
            data = rng.randbytes(rng.randrange(64))
        else:
            data = _mutate(rng, rng.choice(pool), pool)
        started = time.monotonic()
        try:
            run(data)
        except BaseException:
            artifacts.mkdir(parents=True, exist_ok=True)
            path = artifacts / f"crash-{executed}"
            path.write_bytes(data)
            traceback.print_exc()
            print(f"crash input written to {path}", file=sys.stderr)
            print(f"stat::number_of_executed_units: {executed + 1}", file=sys.stderr)
            sys.exit(1)
        executed += 1
        if time.monotonic() - started > timeout:
            path = artifacts / f"timeout-{executed}"
            artifacts.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            print(f"input took over {timeout} s: {path}", file=sys.stderr)
            print(f"stat::number_of_executed_units: {executed}", file=sys.stderr)
            sys.exit(1)
        if executed % 50 == 0 and len(pool) < 2000:
            pool.append(data)  # a little memory of what ran, for splicing
    print(f"stat::number_of_executed_units: {executed}", file=sys.stderr)


# ---------------------------------------------------------------------------------- parent
@dataclass
class Result:
    target: str
    engine: str
    seconds: float
    executed: int
    ok: bool
    detail: str


def run_target(name: str, seconds: float, *, engine: str, corpus_root: Path, artifact_root: Path,
               timeout: int = 20, rss_mb: int = 2048, runs: int = -1, log: Path | None = None) -> Result:
    """Fuzz ``name`` for ``seconds`` in a child process; returns what it executed and found."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--seconds", str(seconds),
            "--engine", engine, "--corpus", str(corpus_root), "--artifacts", str(artifact_root),
            "--timeout", str(timeout), "--rss-mb", str(rss_mb), "--runs", str(runs)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(ROOT)) if p)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL)
    try:
        output, _ = proc.communicate(timeout=seconds * 2 + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        return Result(name, engine, time.monotonic() - started, 0, False, "the fuzzer did not stop in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = output.decode("utf-8", "replace")
    if log is not None:
        log.write_text(text)
    found = EXECUTED.findall(text)
    executed = int(found[-1]) if found else 0
    ok = proc.returncode == 0 and executed > 0
    detail = "" if ok else _failure(text, proc.returncode)
    return Result(name, engine, time.monotonic() - started, executed, ok, detail)


def _failure(text: str, code: int) -> str:
    lines = text.splitlines()
    for marker in ("Uncaught Python exception", "Traceback", "ERROR: libFuzzer", "crash input", "input took"):
        for i, line in enumerate(lines):
            if marker in line:
                return "\n".join(lines[i : i + 40])
    return f"exit status {code}:\n" + "\n".join(lines[-30:])


def reproduce(name: str, path: Path) -> int:
    target = _load_targets(instrument=False)[name]
    target.run(path.read_bytes())  # type: ignore[attr-defined]
    print(f"{name}: {path} ran without a finding")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", help="a target name, or 'all'")
    p.add_argument("--seconds", type=float, default=60.0, help="per target (default %(default)s)")
    p.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    p.add_argument("--corpus", type=Path, default=ROOT / "fuzz" / "corpus")
    p.add_argument("--artifacts", type=Path, default=ROOT / "fuzz" / "artifacts")
    p.add_argument("--timeout", type=int, default=20, help="seconds one input may take (default %(default)s)")
    p.add_argument("--rss-mb", type=int, default=2048, help="memory limit of the fuzzing process")
    p.add_argument("--runs", type=int, default=-1,
                   help="stop a target after this many inputs (or --seconds, whichever comes first)")
    p.add_argument("--list", action="store_true", help="list the targets")
    p.add_argument("--reproduce", type=Path, metavar="FILE", help="run one input of TARGET")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    engine = args.engine
    if engine == "auto":
        engine = "atheris" if atheris_available() else "random"
    if args.worker:
        corpus, artifacts = args.corpus / args.worker, args.artifacts / args.worker
        if engine == "atheris":
            worker_atheris(args.worker, args.seconds, corpus, artifacts, args.timeout, args.rss_mb, args.runs)
        else:
            worker_random(args.worker, args.seconds, corpus, artifacts, args.timeout, args.runs)
        return 0

    from fuzz.targets import TARGETS

    if args.list:
        for t in TARGETS.values():
            print(f"{t.name:28} {t.doc}")
        return 0
    if args.target is None:
        p.error("name a target, or 'all'")
    if args.reproduce is not None:
        return reproduce(args.target, args.reproduce)
    names = list(TARGETS) if args.target == "all" else [args.target]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown target {unknown[0]!r}; --list shows them")
    if engine == "random" and args.engine == "auto":
        print("atheris is not installed: running the random engine (no coverage guidance)", file=sys.stderr)
    failed = 0
    print(f"{'target':28} {'engine':8} {'seconds':>8} {'inputs':>12} {'inputs/s':>9}  result", flush=True)
    for name in names:
        r = run_target(name, args.seconds, engine=engine, corpus_root=args.corpus,
                       artifact_root=args.artifacts, timeout=args.timeout, rss_mb=args.rss_mb,
                       runs=args.runs)
        rate = r.executed / r.seconds if r.seconds else 0.0
        print(f"{r.target:28} {r.engine:8} {r.seconds:8.1f} {r.executed:12d} {rate:9.0f}  "
              f"{'ok' if r.ok else 'FINDING'}", flush=True)
        if not r.ok:
            failed += 1
            print(r.detail, file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
