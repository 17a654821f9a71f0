#!/usr/bin/env python3
"""Flood harness: pairing latency of a real ``aspia_relay`` with and without a flood of idle connections.

Issue 8 asks what a cheap flood does to legitimate users: 5,000 connections that stay silent and
500 that send one byte every few seconds (never a complete ``PeerToRelay``), from many 127.0.0.x
source addresses, reconnecting whenever the relay closes them. Meanwhile 100 pairings are made the
way Aspia peers make them (``relaybench/aspia.py``: ConnectionRequest to the real ``aspia_router``,
both offers, two relay connections with their ``PeerToRelay``, then one byte through), each timed
from the request to that byte. The same 100 pairings run first without the flood.

Reported: pairing latency p50/p99 (and failures) with and without the flood, the relay's RSS and
open descriptors before, during and after the flood, and the flood's own counts. Bounded in count
(``--silent``, ``--slow``) and in time; everything stays on loopback. Mind the hard
RLIMIT_NOFILE: the flood process holds up to silent + slow sockets and the relay up to its
``MaxConnections`` (10,000 by default).

    python3 bench/flood.py                       # 5,000 silent + 500 slow from 250 addresses
    python3 bench/flood.py --silent 500 --slow 50 --pairings 20   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SLOW_BYTES = b"\x00\x00\x01\x00" + b"x" * 256
"""What a slow connection trickles: a PeerToRelay length of 256, then a body it never finishes."""


def source_address(index: int) -> str:
    """127.0.0.2, 127.0.0.3, ... 127.0.0.251, 127.0.1.2, ... (127.0.0.1 is the legitimate peers')."""
    return f"127.0.{index // 250}.{index % 250 + 2}"


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
              ramp: float) -> FloodCounts:
    """Keep ``silent`` + ``slow`` connections to 127.0.0.1:``port`` until SIGTERM; reconnect closed ones."""
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _flood_loop(port, silent, slow, addresses, reconnect, trickle, ramp, lambda: stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _flood_loop(port: int, silent: int, slow: int, addresses: int, reconnect: float, trickle: float,
                ramp: float, stopped: Callable[[], bool]) -> FloodCounts:
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
                    byte = SLOW_BYTES[slot.sent % len(SLOW_BYTES):][:1]
                    try:
                        slot.sent += slot.sock.send(byte)
                        counts.bytes_trickled += 1
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        close(i, True)
        timeout = min(0.2, max(0.0, (due[0][0] if due else now + 0.2) - time.monotonic()))
        for key, _ in sel.select(timeout):
            i = key.data
            try:
                data = slots[i].sock.recv(4096)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                close(i, True)
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


def relay_sample(pid: int) -> dict[str, float]:
    """The relay's resident memory, open descriptors and CPU seconds used so far."""
    from relaybench.procstat import cpu_seconds, rss_kib

    return {"rss_kib": rss_kib([pid]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "cpu_s": round(cpu_seconds([pid]), 2), "at": round(time.monotonic(), 2)}


def pairings(opener: Any, count: int) -> dict[str, Any]:
    """``count`` pairings, each timed from the ConnectionRequest to one byte through the relay."""
    from relaybench.subject import recv_exact

    times: list[float] = []
    failures: list[str] = []
    for _ in range(count):
        started = time.perf_counter()
        try:
            a, b = opener.open_pair()
        except Exception as exc:  # a failed pairing is a figure, not a crash
            failures.append(f"offers or relay connect: {type(exc).__name__}: {exc}")
            continue
        try:
            a.sendall(b"!")
            recv_exact(b, 1)
            times.append(time.perf_counter() - started)
        except Exception as exc:
            failures.append(f"first byte through the relay: {type(exc).__name__}: {exc}")
        finally:
            a.close()
            b.close()
    return {
        "ok": len(times), "failed": len(failures), "failures": failures[:5],
        "p50_ms": round(1000 * statistics.median(times), 2) if times else None,
        "p99_ms": round(1000 * percentile(times, 99), 2) if times else None,
        "max_ms": round(1000 * max(times), 2) if times else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--pairings", type=int, default=100)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--worker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        counts = run_flood(args.worker, args.silent, args.slow, args.addresses, args.reconnect,
                           args.trickle, args.ramp)
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

    from relaybench.aspia import AspiaSubject

    subject = AspiaSubject()
    missing = subject.missing()
    if missing:
        print(f"flood: {missing}", file=sys.stderr)
        return 1
    report: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k not in ("json", "worker")}}
    with tempfile.TemporaryDirectory(prefix="natrelay-flood-") as tmp:
        subject.start(Path(tmp))
        flood: subprocess.Popen[str] | None = None
        try:
            [relay] = subject.relay_pids()
            port = _peer_port(Path(tmp))
            opener = subject.opener(0)
            report["before"] = relay_sample(relay)
            report["pairing_without_flood"] = pairings(opener, args.pairings)
            report["after_quiet_pairings"] = relay_sample(relay)
            worker = [sys.executable, __file__, "--worker", str(port), "--silent", str(args.silent),
                      "--slow", str(args.slow), "--addresses", str(args.addresses), "--trickle",
                      str(args.trickle), "--reconnect", str(args.reconnect), "--ramp", str(args.ramp)]
            flood = subprocess.Popen(worker, stdout=subprocess.PIPE, text=True, preexec_fn=lambda:
                                     resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)))
            time.sleep(args.ramp + args.settle)
            report["during"] = relay_sample(relay)
            report["pairing_with_flood"] = pairings(opener, args.pairings)
            report["during_end"] = relay_sample(relay)
            flood.send_signal(signal.SIGTERM)
            out, _ = flood.communicate(timeout=60)
            report["flood"] = json.loads(out) if out.strip() else {"error": f"exit {flood.returncode}"}
            flood = None
            time.sleep(args.settle)
            report["after"] = relay_sample(relay)
            opener.close()
        finally:
            if flood is not None:
                flood.kill()
                flood.wait()
            subject.stop()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _peer_port(workdir: Path) -> int:
    values = json.loads((workdir / "aspia" / "relay.json").read_text())
    return int(values["PeerPort"])


if __name__ == "__main__":
    sys.exit(main())
