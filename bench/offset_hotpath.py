#!/usr/bin/env python3
"""CPU of the Offset sans-IO layers for one small stream message, node A -> strelay -> node B, in-process.

    PYTHONPATH=src python3 bench/offset_hotpath.py [--count 10000] [--repeat 5]

Three stages, as in a tunnel: node A (end-to-end link, then its relay link), strelay (receive on
one link, forward on the other), node B (relay link, then end-to-end link). No sockets, no event
loop: only the link, channel, keepalive, message and crypto code, warm. Prints the minimum over
``--repeat`` runs of microseconds per stage, then (deterministic, load-independent) the Python
bytecodes and Python calls each stage executes. Compare two trees by alternating runs of each,
e.g. ``PYTHONPATH=/work/main/src`` against this tree. The processes of a real tunnel run these
same paths with cold caches, several times slower (bench/offset_throughput.py --rtt measures that).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from natrelay.offset.crypto import CipherCache, Identity
from natrelay.offset.link import Link


def _pools() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``padding=`` keywords for node A, node B and the relay, if this tree's Link takes one."""
    if "padding" not in inspect.signature(Link).parameters:
        return {}, {}, {}
    from natrelay.offset.channel import RandomPool
    return {"padding": RandomPool()}, {"padding": RandomPool()}, {"padding": RandomPool()}


def _establish(a: Link, b: Link) -> None:
    for _ in range(6):
        for src, dst in ((a, b), (b, a)):
            for chunk in src.take_output():
                if dst.framed:
                    dst.receive_data(chunk, 0.0)
                else:
                    dst.receive_frame(chunk, 0.0)
    assert a.established and b.established


class Tunnel:
    """Two nodes' relay links, the relay's two links, and the nodes' end-to-end links."""

    def __init__(self, message: bytes) -> None:
        relay_id, ida, idb = Identity.generate(), Identity.generate(), Identity.generate()
        relay_ciphers = CipherCache()
        ca, cb = CipherCache(), CipherCache()
        # As in the processes: one padding pool per node and one for the relay (trees before
        # the pool was passed in get none).
        pa, pb, pr = _pools()
        self.na = Link(ida, now=0.0, expected_remote=relay_id.public_key, forwardable=False, ciphers=ca, **pa)
        self.ra = Link(relay_id, now=0.0, ciphers=relay_ciphers, **pr)
        self.nb = Link(idb, now=0.0, expected_remote=relay_id.public_key, forwardable=False, ciphers=cb, **pb)
        self.rb = Link(relay_id, now=0.0, ciphers=relay_ciphers, **pr)
        _establish(self.na, self.ra)
        _establish(self.nb, self.rb)
        self.ea = Link(ida, now=0.0, expected_remote=idb.public_key, framed=False, version_prefix=False,
                       forwardable=False, ciphers=ca, **pa)
        self.eb = Link(idb, now=0.0, expected_remote=ida.public_key, framed=False, version_prefix=False,
                       forwardable=False, ciphers=cb, **pb)
        _establish(self.ea, self.eb)
        self.message = message

    def node_send(self) -> bytes:
        self.ea.send(self.message)
        for frame in self.ea.take_output():
            self.na.send(frame)
        return b"".join(self.na.take_output())

    def relay_forward(self, data: bytes) -> bytes:
        for payload in self.ra.receive_data(data, 1.0):
            self.rb.send(payload)
        return b"".join(self.rb.take_output())

    def node_receive(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for frame in self.nb.receive_data(data, 1.0):
            out += self.eb.receive_frame(frame, 1.0)
        return out


def timed(tunnel: Tunnel, count: int) -> list[float]:
    clock = time.perf_counter_ns
    totals = [0, 0, 0]
    for _ in range(count):
        t0 = clock()
        data = tunnel.node_send()
        t1 = clock()
        data = tunnel.relay_forward(data)
        t2 = clock()
        got = tunnel.node_receive(data)
        t3 = clock()
        totals[0] += t1 - t0
        totals[1] += t2 - t1
        totals[2] += t3 - t2
    assert got == [tunnel.message]
    return [t / count / 1000 for t in totals]


def counted(fn: Callable[..., Any], *args: Any) -> tuple[Any, int, int]:
    """``fn(*args)`` with the Python bytecodes and calls it executed."""
    counts = [0, 0]

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            counts[1] += 1
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        elif event == "opcode":
            counts[0] += 1
        return tracer

    sys.settrace(tracer)
    try:
        result = fn(*args)
    finally:
        sys.settrace(None)
    return result, counts[0], counts[1]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=10000, help="messages per run")
    p.add_argument("--repeat", type=int, default=5, help="runs; the minimum is printed")
    p.add_argument("--size", type=int, default=64, help="stream bytes per message")
    args = p.parse_args(argv)
    tunnel = Tunnel(b"\x00" + os.urandom(args.size))  # a stream-layer data message
    timed(tunnel, 200)
    gc.disable()
    runs = [timed(tunnel, args.count) for _ in range(args.repeat)]
    gc.enable()
    best = [min(run[i] for run in runs) for i in range(3)]
    print(f"us per message: node send {best[0]:.2f}  relay forward {best[1]:.2f}  node receive {best[2]:.2f}"
          f"  (min of {args.repeat} x {args.count})")
    data, ops1, calls1 = counted(tunnel.node_send)
    data, ops2, calls2 = counted(tunnel.relay_forward, data)
    _, ops3, calls3 = counted(tunnel.node_receive, data)
    print(f"bytecodes/calls: node send {ops1}/{calls1}  relay forward {ops2}/{calls2}  "
          f"node receive {ops3}/{calls3}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
