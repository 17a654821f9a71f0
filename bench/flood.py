#!/usr/bin/env python3
"""Flood harness: legitimate pairings (and logins) against a real server with and without a flood.

Issue 8 asks what a cheap flood does to legitimate users: 5,000 connections that stay silent and
500 that send one byte every few seconds (never a complete first message), from 250 127.0.0.x
source addresses, reconnecting whenever the server closes them. ``--subject`` picks the server:

- ``aspia_relay`` (default): the flood hits the relay's peer port; the trickle is a PeerToRelay
  length of 256 and a body never finished. A pairing is made the way Aspia peers make it
  (``relaybench/aspia.py``: ConnectionRequest to the real ``aspia_router``, both offers, two relay
  connections with their ``PeerToRelay``, then one byte through), timed from the request to that byte.
- ``aspia_router``: the same pairings while the flood hits the router's port (the trickle: a first
  frame of 256 bytes never finished); also password (SRP) logins, each from an address of its own
  (127.1.x.y without the flood, 127.2.x.y with it), timed from the connect to the established channel.
- ``strelay``: the flood hits strelay's port (the trickle: the version frame, then a handshake frame
  never finished); a pairing is a natrelay ``offset connect`` node reaching an ``offset listen``
  node through strelay (``relaybench/offset.py``), timed from the connect to the connector node's
  local port until a byte written there has come out of the listener's side.

Each server runs at its default limits: the legitimate peers come from 127.0.0.1 (logins from
addresses of their own) and the flood from its own 250 addresses, as on the internet. Settings
that differ from the defaults are printed with the reason: the router's per-account request rates
are off, because the bench makes 2 x N pairings from one account to one host within seconds (a
bench artefact, not a flood); the Aspia key pool is the bench subject's; and each server serves
/metrics on 127.0.0.1 so its refusal counters can be read.

Reported, as JSON and a Markdown table: pairing (and login) latency p50/p99 and failures with and
without the flood, the flooded server's RSS and descriptors before, during and after (with the
difference to the baseline), its CPU while flooded, its refusal and close counters during the
flood, the flood's own counts and the load average. Bounded in count (``--silent``, ``--slow``) and
in time (a phase stops after 10 failures in a row); everything stays on loopback. Mind the hard
RLIMIT_NOFILE: the flood process holds up to silent + slow sockets.

    python3 bench/flood.py                       # aspia_relay: 5,000 silent + 500 slow, 100 pairings
    python3 bench/flood.py --subject strelay
    python3 bench/flood.py --subject aspia_router --logins 100
    python3 bench/flood.py --silent 500 --slow 50 --pairings 20   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import re
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
_SRC = str(Path(__file__).resolve().parent.parent / "src")
if _SRC not in sys.path:  # natrelay from this checkout even when it is not installed
    sys.path.insert(0, _SRC)

from relaybench.flood_targets import SLOW_BYTES, TARGETS, Target, source_address  # noqa: E402

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

# ----------------------------------------------------------------------------- the flood process
@dataclass
class _Slot:
    source: str
    slow: bool
    sock: socket.socket | None = None
    sent: int = 0


@dataclass
class FloodCounts:
    connects: int = 0
    connect_errors: int = 0
    closed_by_relay: int = 0
    bytes_trickled: int = 0
    open_max: int = 0
    open_samples: list[int] = field(default_factory=list)


def run_flood(port: int, silent: int, slow: int, addresses: int, reconnect: float, trickle: float,
              ramp: float, slow_bytes: bytes = SLOW_BYTES) -> FloodCounts:
    """Keep ``silent`` + ``slow`` connections to 127.0.0.1:``port`` until SIGTERM; reconnect closed ones."""
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _flood_loop(port, silent, slow, addresses, reconnect, trickle, ramp, slow_bytes, lambda: stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _flood_loop(port: int, silent: int, slow: int, addresses: int, reconnect: float, trickle: float,
                ramp: float, slow_bytes: bytes, stopped: Callable[[], bool]) -> FloodCounts:
    sel = selectors.DefaultSelector()
    slots = [_Slot(source_address(i % addresses), i >= silent) for i in range(silent + slow)]
    due: list[tuple[float, int]] = []
    start = time.monotonic()
    for i in range(len(slots)):  # spread the first connects over the ramp so SYN queues cope
        heapq.heappush(due, (start + ramp * i / max(1, len(slots)), i))
    counts = FloodCounts()
    open_now = 0
    next_trickle = start + trickle

    def close(i: int, relay_closed: bool) -> None:
        nonlocal open_now
        slot = slots[i]
        if slot.sock is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(slot.sock)
        slot.sock.close()
        slot.sock = None
        open_now -= 1
        if relay_closed:
            counts.closed_by_relay += 1
            heapq.heappush(due, (time.monotonic() + reconnect, i))

    while not stopped():
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, i = heapq.heappop(due)
            slot = slots[i]
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            try:
                sock.bind((slot.source, 0))
                err = sock.connect_ex(("127.0.0.1", port))
            except OSError:
                err = -1
            if err not in (0, 115):  # 115: EINPROGRESS
                sock.close()
                counts.connect_errors += 1
                heapq.heappush(due, (now + reconnect, i))
                continue
            counts.connects += 1
            slot.sock, slot.sent = sock, 0
            open_now += 1
            counts.open_max = max(counts.open_max, open_now)
            sel.register(sock, selectors.EVENT_READ, i)
        if now >= next_trickle:
            next_trickle = now + trickle
            counts.open_samples.append(open_now)
            for i, slot in enumerate(slots):
                if slot.slow and slot.sock is not None:
                    byte = slow_bytes[slot.sent % len(slow_bytes):][:1]
                    try:
                        slot.sent += slot.sock.send(byte)
                        counts.bytes_trickled += 1
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        close(i, True)
        timeout = min(0.2, max(0.0, (due[0][0] if due else now + 0.2) - time.monotonic()))
        for key, _ in sel.select(timeout):
            index: int = key.data
            held = slots[index].sock
            if held is None:
                continue
            try:
                data = held.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                close(index, True)
    for i in range(len(slots)):
        close(i, False)
    return counts


# ------------------------------------------------------------------------------- the measurement
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def server_sample(pid: int) -> dict[str, float]:
    """The flooded server's resident memory, open descriptors and CPU seconds used so far."""
    from relaybench.procstat import cpu_seconds, rss_kib

    return {"rss_kib": rss_kib([pid]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "cpu_s": round(cpu_seconds([pid]), 2), "at": round(time.monotonic(), 2)}


def _latencies(times: list[float], failures: list[str], abandoned: bool) -> dict[str, Any]:
    return {
        "ok": len(times), "failed": len(failures), "failures": failures[:5],
        "abandoned_after_consecutive_failures": abandoned,
        "p50_ms": round(1000 * statistics.median(times), 2) if times else None,
        "p99_ms": round(1000 * percentile(times, 99), 2) if times else None,
        "max_ms": round(1000 * max(times), 2) if times else None,
    }


def pairings(opener: Any, count: int) -> dict[str, Any]:
    """``count`` pairings, each timed from its start (a ConnectionRequest for Aspia, the connect to
    the connector node for Offset) to one byte through the relay.

    After GIVE_UP failures in a row the rest are not tried: a failed pairing can take its whole
    15 s timeout, and a flood that blocks every pairing is already the figure."""
    from relaybench.subject import recv_exact

    times: list[float] = []
    failures: list[str] = []
    in_a_row = 0
    for _ in range(count):
        if in_a_row >= GIVE_UP:
            break
        started = time.perf_counter()
        try:
            a, b = opener.open_pair()
        except Exception as exc:  # a failed pairing is a figure, not a crash
            failures.append(f"pairing: {type(exc).__name__}: {exc}")
            in_a_row += 1
            continue
        try:
            a.sendall(b"!")
            recv_exact(b, 1)
            times.append(time.perf_counter() - started)
            in_a_row = 0
        except Exception as exc:
            failures.append(f"first byte through the relay: {type(exc).__name__}: {exc}")
            in_a_row += 1
        finally:
            a.close()
            b.close()
    return _latencies(times, failures, in_a_row >= GIVE_UP)


def logins(login: Callable[[str], None], count: int, block: int) -> dict[str, Any]:
    """``count`` password logins, each from its own address 127.<block>.x.y, timed from the TCP
    connect to the established SRP channel (as many users from as many homes would log in)."""
    times: list[float] = []
    failures: list[str] = []
    in_a_row = 0
    for i in range(count):
        if in_a_row >= GIVE_UP:
            break
        started = time.perf_counter()
        try:
            login(f"127.{block}.{i // 250}.{i % 250 + 1}")
        except Exception as exc:
            failures.append(f"login: {type(exc).__name__}: {exc}")
            in_a_row += 1
            continue
        times.append(time.perf_counter() - started)
        in_a_row = 0
    return _latencies(times, failures, in_a_row >= GIVE_UP)


def scrape(port: int) -> dict[str, float]:
    """The refusal and close counters of a natrelay server's /metrics, as ``name{labels}`` -> value."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            text = reply.read().decode()
    except OSError as exc:
        return {f"scrape failed: {exc}": float("nan")}
    return parse_counters(text)


def parse_counters(text: str) -> dict[str, float]:
    """The COUNTERS lines of a Prometheus exposition, keyed by name and labels (family label dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in COUNTERS:
            key, _, value = line.rpartition(" ")
            key = re.sub(r'family="[^"]*",?', "", key.removeprefix("natrelay_")).replace("{}", "")
            out[key] = float(value)
    return out


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in sorted(after.items()) if v - before.get(k, 0)}


COUNTERS = frozenset(f"natrelay_{n}_total" for n in (
    "connections_accepted", "connections_refused", "connection_closes", "handshake_failures",
    "logins", "login_failures", "pairings"))
GIVE_UP = 10
"""Consecutive failed pairings (or logins) after which a phase stops trying."""


# ------------------------------------------------------------------------------------------ main
def measure(target: Target, args: argparse.Namespace, hard: int) -> dict[str, Any]:
    """Pairings (and logins) without the flood, with it, then the server's state once it has left."""
    report: dict[str, Any] = {"server": target.server, "settings_changed": target.changed}
    report["before"] = server_sample(target.pid)
    report["pairing_without_flood"] = pairings(target.opener, args.pairings)
    if target.login is not None:
        report["login_without_flood"] = logins(target.login, args.logins, 1)
    report["after_quiet_pairings"] = server_sample(target.pid)
    counters_before = scrape(target.metrics_port)
    worker = worker_argv(target, args)
    flood: subprocess.Popen[str] | None = subprocess.Popen(
        worker, stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)))
    try:
        time.sleep(args.ramp + args.settle)
        report["during"] = server_sample(target.pid)
        report["pairing_with_flood"] = pairings(target.opener, args.pairings)
        if target.login is not None:
            report["login_with_flood"] = logins(target.login, args.logins, 2)
        report["during_end"] = server_sample(target.pid)
        assert flood is not None
        flood.send_signal(signal.SIGTERM)
        out, _ = flood.communicate(timeout=60)
        report["flood"] = json.loads(out) if out.strip() else {"error": f"exit {flood.returncode}"}
        flood = None
    finally:
        if flood is not None:
            flood.kill()
            flood.wait()
    time.sleep(args.settle)
    report["after"] = server_sample(target.pid)
    report["counters_during_flood"] = counter_delta(counters_before, scrape(target.metrics_port))
    time.sleep(args.late)
    report["after_late"] = server_sample(target.pid)
    # The baseline is the server just before the flood (after the quiet pairings, which leave a
    # splice pipe pair or a warm allocator behind of their own).
    before, after = report["after_quiet_pairings"], report["after_late"]
    report["back_to_baseline"] = {
        "fds_delta": after["fds"] - before["fds"],
        "rss_delta_kib": after["rss_kib"] - before["rss_kib"],
        "rss_delta_pct": round(100 * (after["rss_kib"] - before["rss_kib"]) / max(1, before["rss_kib"]), 1),
    }
    # Further rounds (--rounds): the same flood again, no pairings, a sample after each. Memory
    # that stays up after one round but not after more is the allocator's high-water mark, not growth.
    report["later_rounds_after"] = []
    for _ in range(args.rounds - 1):
        flood_round(target, args, hard, args.ramp + args.settle)
        time.sleep(args.settle)
        report["later_rounds_after"].append(server_sample(target.pid))
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    report["args_late"] = args.late
    return report


def worker_argv(target: Target, args: argparse.Namespace) -> list[str]:
    """This script as the flood process, aimed at ``target``."""
    return [sys.executable, __file__, "--worker", str(target.port), "--slow-bytes", target.slow_bytes.hex(),
            "--silent", str(args.silent), "--slow", str(args.slow), "--addresses", str(args.addresses),
            "--trickle", str(args.trickle), "--reconnect", str(args.reconnect), "--ramp", str(args.ramp)]


def flood_round(target: Target, args: argparse.Namespace, hard: int, seconds: float) -> dict[str, Any]:
    """The flood alone for ``seconds``; its own counts."""
    worker = worker_argv(target, args)
    with subprocess.Popen(worker, stdout=subprocess.PIPE, text=True, preexec_fn=lambda:
                          resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))) as proc:
        try:
            time.sleep(seconds)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    counts: dict[str, Any] = json.loads(out) if out.strip() else {"error": f"exit {proc.returncode}"}
    return counts


def table(r: dict[str, Any]) -> str:
    """The report as a Markdown table (the JSON has every figure)."""
    def lat(x: dict[str, Any]) -> str:
        gave_up = ", gave up" if x["abandoned_after_consecutive_failures"] else ""
        return f"{x['ok']} ok / {x['failed']} failed{gave_up}; p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms"

    b, d, a, al, f = r["before"], r["during"], r["after"], r["after_late"], r["flood"]
    back = r["back_to_baseline"]
    cpu = round(r["during_end"]["cpu_s"] - r["after_quiet_pairings"]["cpu_s"], 1)
    secs = round(r["during_end"]["at"] - r["after_quiet_pairings"]["at"])
    rows = [("pairings without flood", lat(r["pairing_without_flood"])),
            ("pairings with flood", lat(r["pairing_with_flood"]))]
    if "login_without_flood" in r:
        rows += [("password logins without flood", lat(r["login_without_flood"])),
                 ("password logins with flood", lat(r["login_with_flood"]))]
    rows += [
        (f"{r['server']} RSS before / during / after / {r['args_late']:.0f} s later",
         f"{b['rss_kib'] / 1024:.1f} / {d['rss_kib'] / 1024:.1f} / {a['rss_kib'] / 1024:.1f} / "
         f"{al['rss_kib'] / 1024:.1f} MiB"),
        (f"{r['server']} descriptors before / during / after / later",
         f"{b['fds']} / {d['fds']} / {a['fds']} / {al['fds']}"),
        ("back to the pre-flood baseline (later sample)",
         f"descriptors {back['fds_delta']:+d}, RSS {back['rss_delta_kib'] / 1024:+.1f} MiB "
         f"({back['rss_delta_pct']:+.1f} %)"),
        (f"{r['server']} CPU while flooded", f"{cpu} s in {secs} s"),
        ("flood connections made / closed by server / connect errors",
         f"{f.get('connects')} / {f.get('closed_by_relay')} / {f.get('connect_errors')}"),
        ("flood sockets open at once: max / median", f"{f.get('open_max')} / {f.get('open_median')}"),
        ("server counters during the flood",
         ", ".join(f"{k} {v}" for k, v in r["counters_during_flood"].items()) or "none"),
        *([("RSS / descriptors after each further flood round",
            ", ".join(f"{x['rss_kib'] / 1024:.1f} MiB / {x['fds']}" for x in r["later_rounds_after"]))]
          if r["later_rounds_after"] else []),
        ("load average at the end", " ".join(str(x) for x in r["load_average"])),
    ]
    lines = [f"| {r['server']} | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]
    lines += ["", "Settings changed from the defaults:", *(f"- {c}" for c in r["settings_changed"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subject", choices=sorted(TARGETS), default="aspia_relay",
                   help="the server to flood (default %(default)s)")
    p.add_argument("--silent", type=int, default=5000, help="silent connections (default %(default)s)")
    p.add_argument("--slow", type=int, default=500, help="connections sending a byte every --trickle s")
    p.add_argument("--addresses", type=int, default=250,
                   help="127.0.x.y source addresses (default %(default)s)")
    p.add_argument("--trickle", type=float, default=3.0, help="seconds between a slow connection's bytes")
    p.add_argument("--reconnect", type=float, default=1.0,
                   help="seconds before a closed flood slot reconnects")
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which the flood first connects")
    p.add_argument("--settle", type=float, default=10.0, help="seconds after the ramp before measuring, "
                   "and after the flood before the last sample")
    p.add_argument("--late", type=float, default=30.0,
                   help="seconds after the 'after' sample for a last one (memory given back late)")
    p.add_argument("--rounds", type=int, default=1,
                   help="flood rounds; rounds after the first only sample the server after them")
    p.add_argument("--pairings", type=int, default=100)
    p.add_argument("--logins", type=int, default=100, help="password logins timed (aspia_router only)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--worker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--slow-bytes", default=SLOW_BYTES.hex(), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        counts = run_flood(args.worker, args.silent, args.slow, args.addresses, args.reconnect,
                           args.trickle, args.ramp, bytes.fromhex(args.slow_bytes))
        samples = counts.open_samples
        out = {k: v for k, v in vars(counts).items() if k != "open_samples"}
        out["open_median"] = int(statistics.median(samples)) if samples else 0
        print(json.dumps(out))
        return 0

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.silent + args.slow + 100
    if needed > hard:
        p.error(f"{args.silent + args.slow} flood sockets need RLIMIT_NOFILE >= {needed}; "
                f"the hard limit is {hard}")
    with tempfile.TemporaryDirectory(prefix="natrelay-flood-") as tmp:
        try:
            with TARGETS[args.subject](Path(tmp)) as target:
                report = measure(target, args, hard)
        except RuntimeError as exc:
            print(f"flood: {exc}", file=sys.stderr)
            return 1
    report["args"] = {k: v for k, v in vars(args).items() if k not in ("json", "worker", "slow_bytes")}
    print(json.dumps(report, indent=2))
    print()
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
