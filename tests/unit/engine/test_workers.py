"""Worker processes: hand-off of connections between workers, and pairs split across workers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natrelay.engine.forward import ForwardEngine
from natrelay.engine.workers import WorkerContext, make_inboxes

from ._forwarding import LOOP_KINDS, eventually, open_fds, run

SRC = str(Path(__file__).resolve().parents[3] / "src")

pytestmark = pytest.mark.timeout(60)


def test_owner_is_stable_in_range_and_spread() -> None:
    loop = asyncio.new_event_loop()
    try:
        engine = ForwardEngine(loop, method="portable")
        ctxs = [WorkerContext(i, 3, loop, engine, None, [None] * 3) for i in range(3)]
        keys = [os.urandom(16) for _ in range(3000)]
        owners = [ctxs[0].owner_of(k) for k in keys]
        assert owners == [ctxs[2].owner_of(k) for k in keys]
        counts = [owners.count(i) for i in range(3)]
        assert all(800 < c < 1200 for c in counts), counts
        assert WorkerContext(0, 1, loop, engine, None, [None]).owner_of(b"x") == 0
        engine.close()
    finally:
        loop.close()


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_handoff_delivers_socket_and_payload_even_when_inbox_is_full(loop_kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = open_fds()
        inboxes = make_inboxes(2)
        outs: list[socket.socket | None] = [w for _, w in inboxes]
        c0 = WorkerContext(0, 2, loop, ForwardEngine(loop), inboxes[0][0], outs)
        c1 = WorkerContext(1, 2, loop, ForwardEngine(loop), inboxes[1][0], outs)
        got: list[tuple[socket.socket, bytes]] = []
        c1.on_handoff = lambda s, p: got.append((s, p))
        peers = []
        n = 300  # far more than a SEQPACKET inbox holds before EAGAIN
        for i in range(n):
            mine, peer = socket.socketpair()
            peers.append(peer)
            c0.handoff(1, mine, b"payload-%d" % i)
            assert mine.fileno() == -1  # handed over: no longer ours
        assert c0._queued, "expected the inbox to fill up and queue"
        await eventually(lambda: len(got) == n)
        assert c0.handoffs_sent == n and c1.handoffs_received == n and not c0._queued
        assert [p for _, p in got] == [b"payload-%d" % i for i in range(n)]
        # The received socket is the same connection.
        for (sock, _), peer in zip(got[:5], peers[:5], strict=True):
            peer.sendall(b"hi")
            assert await loop.sock_recv(sock, 2) == b"hi"
        with pytest.raises(ValueError):
            c0.handoff(0, socket.socket(), b"")
        # A record without a descriptor is dropped, not fatal.
        inboxes[1][1].send(b"\x01junk")
        mine, peer = socket.socketpair()
        peers.append(peer)
        c0.handoff(1, mine, b"after-junk")
        await eventually(lambda: len(got) == n + 1)
        assert got[-1][1] == b"after-junk"
        for sock, _ in got:
            sock.close()
        for p in peers:
            p.close()
        c0.close()
        c1.close()
        for r, w in inboxes:
            r.close()
            w.close()
        assert open_fds() == before

    run(loop_kind, main)


CHILD = r"""
import asyncio, os, sys, logging
from natrelay.engine.workers import run_workers

def say(*words):
    # One write() per line: both workers share this pipe and must not interleave.
    os.write(1, (" ".join(map(str, words)) + "\n").encode())

PORT = int(sys.argv[1])
logging.basicConfig(level=logging.WARNING)

def setup(ctx):
    lst = ctx.listen("127.0.0.1", PORT)
    waiting = {}

    def pair(sock, token):
        other = waiting.pop(token, None)
        if other is None:
            waiting[token] = sock
        else:
            ctx.engine.start(other, sock)

    async def conn(sock):
        token = b""
        while len(token) < 8:
            chunk = await ctx.loop.sock_recv(sock, 8 - len(token))
            if not chunk:
                sock.close()
                return
            token += chunk
        owner = ctx.owner_of(token)
        if owner != ctx.index:
            ctx.handoff(owner, sock, token)
        else:
            pair(sock, token)

    async def accept():
        while True:
            sock, _ = await ctx.loop.sock_accept(lst)
            sock.setblocking(False)
            ctx.loop.create_task(conn(sock))

    ctx.on_handoff = pair
    task = ctx.loop.create_task(accept())
    ctx.add_stop_callback(lambda: say("stats", ctx.index, ctx.handoffs_sent, ctx.engine.totals.started))
    ctx.add_stop_callback(task.cancel)
    ctx.add_stop_callback(lst.close)
    say("ready", ctx.index)

sys.exit(run_workers(2, setup))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_worker_processes_pair_across_workers_and_stop_cleanly() -> None:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        if not all(lines):
            proc.kill()
            pytest.fail(f"workers did not start: {lines} {proc.communicate()[1]}")
        assert sorted(line.split()[1:2] for line in lines) == [["0"], ["1"]], lines
        pairs = []
        for i in range(100):
            token = b"%08d" % i
            a = socket.create_connection(("127.0.0.1", port), timeout=10)
            b = socket.create_connection(("127.0.0.1", port), timeout=10)
            a.sendall(token)
            b.sendall(token)
            pairs.append((a, b))
        for i, (a, b) in enumerate(pairs):
            a.sendall(b"a%03d" % i)
            b.sendall(b"b%03d" % i)
            assert b.recv(4) == b"a%03d" % i
            assert a.recv(4) == b"b%03d" % i
            a.close()
            b.close()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    stats = {int(f[1]): (int(f[2]), int(f[3])) for f in (line.split() for line in out.splitlines())
             if f and f[0] == "stats"}
    assert set(stats) == {0, 1}, (out, err)
    assert sum(started for _, started in stats.values()) == 100
    # Tokens are spread over both owners, so some peers had to change workers.
    assert sum(sent for sent, _ in stats.values()) > 0
