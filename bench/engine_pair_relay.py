#!/usr/bin/env python3
"""A minimal pairing relay in front of natrelay's forwarding engine: a benchmark subject only.

Each client connects to 127.0.0.1:PORT and sends one line ``pair TOKEN\\n``; the two
clients that sent the same token are handed to the engine and forwarded both ways.
There is no acknowledgement and no crypto, so what the benchmark measures is the
engine (pairing, forwarding, memory), not a protocol.  Bytes a client sends right
behind its line are kept and delivered first.

    python3 bench/engine_pair_relay.py --port 40000 [--method auto|splice|portable]
                                       [--loop uvloop|asyncio] [--workers N]

With several workers (default: one per core) each accepts on its own SO_REUSEPORT
listener and a token is paired by the worker that owns it (natrelay.engine.workers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from natrelay.engine.clock import WheelDriver
from natrelay.engine.forward import Method
from natrelay.engine.resources import raise_nofile_limit
from natrelay.engine.splice import DEFAULT_PIPE_SIZE
from natrelay.engine.workers import WorkerContext, default_worker_count, run_workers

_log = logging.getLogger("engine_pair_relay")

LINE_LIMIT = 256
HANDSHAKE_TIMEOUT = 30.0
ACCEPTS_PER_WAKEUP = 64


@dataclass(eq=False)
class Pending:
    """A connection that has not finished its ``pair`` line yet, or waits for its partner."""

    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    token: bytes | None = None


class PairRelay:
    """Accept, read one line, pair by token, hand the pair to the engine.

    With several workers a token belongs to one of them (``ctx.owner_of``); a
    worker that reads a token it does not own passes the connection on.
    """

    def __init__(self, ctx: WorkerContext, host: str, port: int, idle_timeout: float | None) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.engine = ctx.engine
        self.listener = ctx.listen(host, port)
        self.idle_timeout = idle_timeout
        self.waiting: dict[bytes, Pending] = {}
        self.reading: set[Pending] = set()
        self.handshakes: WheelDriver[Pending] = WheelDriver(self.loop, self._handshake_expired, slack=0.5)
        self.paired = 0
        ctx.on_handoff = self._on_handoff
        self.loop.add_reader(self.listener.fileno(), self._on_accept)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.listener.fileno())
        self.listener.close()
        for p in [*self.reading, *self.waiting.values()]:
            self._drop(p)
        self.handshakes.close()

    def _on_accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep serving what we have
                _log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            p = Pending(sock)
            self.reading.add(p)
            self.handshakes.schedule(p, self.handshakes.time() + HANDSHAKE_TIMEOUT)
            self.loop.add_reader(sock.fileno(), self._on_line, p)

    def _on_line(self, p: Pending) -> None:
        try:
            chunk = p.sock.recv(LINE_LIMIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(p)
            return
        if not chunk:
            self._drop(p)
            return
        p.buf += chunk
        nl = p.buf.find(b"\n")
        if nl < 0:
            if len(p.buf) >= LINE_LIMIT:
                self._drop(p)
            return
        parts = bytes(p.buf[:nl]).rstrip(b"\r").split()
        if len(parts) != 2 or parts[0] != b"pair":
            self._drop(p)
            return
        self.loop.remove_reader(p.sock.fileno())
        self.reading.discard(p)
        p.token = parts[1]
        p.buf = p.buf[nl + 1 :]
        owner = self.ctx.owner_of(p.token)
        if owner != self.ctx.index:
            self.handshakes.cancel(p)
            self.ctx.handoff(owner, p.sock, p.token + b"\n" + bytes(p.buf))
            return
        self._pair(p)

    def _on_handoff(self, sock: socket.socket, payload: bytes) -> None:
        token, _, rest = payload.partition(b"\n")
        p = Pending(sock, bytearray(rest), token)
        self.handshakes.schedule(p, self.handshakes.time() + HANDSHAKE_TIMEOUT)
        self._pair(p)

    def _pair(self, p: Pending) -> None:
        assert p.token is not None
        other = self.waiting.pop(p.token, None)
        if other is None:
            self.waiting[p.token] = p
            return
        self.handshakes.cancel(p)
        self.handshakes.cancel(other)
        self.paired += 1
        self.engine.start(other.sock, p.sock, idle_timeout=self.idle_timeout,
                          a_to_b=bytes(other.buf), b_to_a=bytes(p.buf))

    def _drop(self, p: Pending) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(p.sock.fileno())
        self.handshakes.cancel(p)
        self.reading.discard(p)
        if p.token is not None and self.waiting.get(p.token) is p:
            del self.waiting[p.token]
        p.sock.close()

    def _handshake_expired(self, p: Pending) -> None:
        if p.sock.fileno() >= 0:
            self._drop(p)


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def serve(args: argparse.Namespace) -> int:
    method: Method = args.method

    def setup(ctx: WorkerContext) -> None:
        relay = PairRelay(ctx, args.host, args.port, args.idle_timeout)
        _log.info("worker %d/%d listening on %s:%d, method=%s, loop=%s, pid=%d", ctx.index, ctx.count,
                  args.host, args.port, ctx.engine.method, args.loop, os.getpid())

        def report() -> None:
            t = ctx.engine.totals
            _log.info("worker %d stopping: paired=%d active=%d bytes a->b=%d b->a=%d closes=%s "
                      "handoffs out=%d in=%d", ctx.index, relay.paired, len(ctx.engine), t.a_to_b, t.b_to_a,
                      t.reasons, ctx.handoffs_sent, ctx.handoffs_received)
            relay.close()

        ctx.add_stop_callback(report)

    return run_workers(args.workers, setup, loop_factory=loop_factory(args.loop),
                       engine_options={"method": method, "pipe_size": args.pipe_size})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1"],
                    help="loopback only: this is a benchmark subject")
    ap.add_argument("--method", default="auto", choices=["auto", "splice", "portable"])
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--idle-timeout", type=float, default=None)
    ap.add_argument("--pipe-size", type=int, default=None,
                    help=f"splice pipe capacity in bytes (default: the engine's, {DEFAULT_PIPE_SIZE} "
                         "after its first large pipes)")
    ap.add_argument("--workers", type=int, default=default_worker_count(),
                    help="worker processes sharing the port (default: one per core)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise_nofile_limit()
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
