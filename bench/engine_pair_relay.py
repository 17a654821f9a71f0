#!/usr/bin/env python3
"""A minimal pairing relay in front of natrelay's forwarding engine: a benchmark subject only.

Each client connects to 127.0.0.1:PORT and sends one line ``pair TOKEN\\n``; the two
clients that sent the same token are handed to the engine and forwarded both ways.
There is no acknowledgement and no crypto, so what the benchmark measures is the
engine (pairing, forwarding, memory), not a protocol.  Bytes a client sends right
behind its line are kept and delivered first.

    python3 bench/engine_pair_relay.py --port 40000 [--method auto|splice|portable]
                                       [--loop uvloop|asyncio] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from natrelay.engine.clock import WheelDriver
from natrelay.engine.forward import ForwardEngine, Method
from natrelay.engine.resources import raise_nofile_limit

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
    """Accept, read one line, pair by token, hand the pair to the engine."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: socket.socket, engine: ForwardEngine,
                 idle_timeout: float | None) -> None:
        self.loop = loop
        self.listener = listener
        self.engine = engine
        self.idle_timeout = idle_timeout
        self.waiting: dict[bytes, Pending] = {}
        self.reading: set[Pending] = set()
        self.handshakes: WheelDriver[Pending] = WheelDriver(loop, self._handshake_expired, slack=0.5)
        self.paired = 0

    def start(self) -> None:
        self.listener.setblocking(False)
        self.loop.add_reader(self.listener.fileno(), self._on_accept)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.listener.fileno())
        self.listener.close()
        for p in [*self.reading, *self.waiting.values()]:
            self._drop(p)
        self.handshakes.close()
        self.engine.close()

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
        line = bytes(p.buf[:nl]).rstrip(b"\r")
        rest = bytes(p.buf[nl + 1 :])
        parts = line.split()
        if len(parts) != 2 or parts[0] != b"pair":
            self._drop(p)
            return
        self.loop.remove_reader(p.sock.fileno())
        self.reading.discard(p)
        p.token = parts[1]
        p.buf = bytearray(rest)
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


def make_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve(args: argparse.Namespace) -> None:
    loop = make_loop(args.loop)
    asyncio.set_event_loop(loop)
    listener = socket.create_server((args.host, args.port), backlog=4096, reuse_port=False)
    method: Method = args.method
    engine = ForwardEngine(loop, method=method)
    relay = PairRelay(loop, listener, engine, args.idle_timeout)
    relay.start()
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    _log.info("listening on %s:%d, method=%s, loop=%s, pid=%d", args.host, args.port, engine.method,
              args.loop, os.getpid())
    try:
        loop.run_until_complete(stop)
    finally:
        t = engine.totals
        _log.info("stopping: paired=%d active=%d bytes a->b=%d b->a=%d closes=%s", relay.paired, len(engine),
                  t.a_to_b, t.b_to_a, t.reasons)
        relay.close()
        loop.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1"],
                    help="loopback only: this is a benchmark subject")
    ap.add_argument("--method", default="auto", choices=["auto", "splice", "portable"])
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--idle-timeout", type=float, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise_nofile_limit()
    serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
