"""Forward on every core: one worker process per core, each with its own loop and engine.

One Python event loop uses one core, and one process may hold only RLIMIT_NOFILE
descriptors (a paired session needs two), so a relay that must use every core and
hold 10,000 sessions runs several worker processes.  Each worker accepts on its own
``SO_REUSEPORT`` listener, so the kernel spreads connections over them.

The two peers of a pair can then arrive at different workers.  Every pairing key
therefore has an *owner* worker (a stable hash of the key), and a worker that reads
a key it does not own hands the connection over: the descriptor travels over a
Unix ``SOCK_SEQPACKET`` socket with ``SCM_RIGHTS`` together with a short payload
(the key and any bytes already read).  The owner pairs it as if it had accepted it.
No shared memory and no broker: the family's pairing code stays single-threaded.

Pairing keys are the family's business; this module only offers :meth:`owner_of`,
:meth:`handoff` and an ``on_handoff`` callback.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from natrelay.engine.forward import ForwardEngine

__all__ = ["MAX_HANDOFF_PAYLOAD", "WorkerContext", "default_worker_count", "make_inboxes", "run_workers"]

_log = logging.getLogger(__name__)

#: Upper bound of a hand-off payload: a pairing key and what a handshake read ahead.
MAX_HANDOFF_PAYLOAD = 64 * 1024
_FD_SIZE = array.array("i").itemsize
# Every record starts with this byte, so that a record is never empty (an empty read is EOF)
# and descriptors always travel with at least one byte of data.
_MARK = b"\x01"

OnHandoff = Callable[[socket.socket, bytes], None]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def default_worker_count() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def make_inboxes(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """One (read end, write end) pair per worker; made before forking so all share them.

    SEQPACKET keeps each hand-off one atomic record even when several workers
    write to the same inbox.
    """
    pairs = []
    for _ in range(count):
        r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        r.setblocking(False)
        w.setblocking(False)
        pairs.append((r, w))
    return pairs


class WorkerContext:
    """What a worker's setup code gets: its index, loop, engine and the hand-off channel."""

    def __init__(
        self,
        index: int,
        count: int,
        loop: asyncio.AbstractEventLoop,
        engine: ForwardEngine,
        inbox: socket.socket | None,
        outboxes: list[socket.socket | None],
    ) -> None:
        self.index = index
        self.count = count
        self.loop = loop
        self.engine = engine
        self.on_handoff: OnHandoff | None = None
        self.handoffs_sent = 0
        self.handoffs_received = 0
        self._inbox = inbox
        self._outboxes = outboxes
        # Hand-offs waiting for room in a full inbox: (descriptor, payload) per destination.
        self._queued: dict[int, collections.deque[tuple[int, bytes]]] = {}
        self._on_stop: list[Callable[[], None]] = []
        self._closed = False
        if inbox is not None:
            loop.add_reader(inbox.fileno(), self._on_inbox)

    def owner_of(self, key: bytes) -> int:
        """The worker that pairs ``key``: the same answer in every process."""
        if self.count == 1:
            return 0
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count

    def listen(self, host: str, port: int, *, backlog: int = 4096) -> socket.socket:
        """A non-blocking listener on a port shared by all workers.

        ``SO_REUSEPORT`` also admits any other process of the same user to the
        port; run the relay under its own user.
        """
        if port == 0 and self.count > 1:
            raise ValueError("workers must share an explicit port")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=backlog,
                                    reuse_port=self.count > 1)
        sock.setblocking(False)
        return sock

    def handoff(self, worker: int, sock: socket.socket, payload: bytes) -> None:
        """Give ``sock`` (and ``payload``) to ``worker``; ``sock`` is closed here either way."""
        if worker == self.index or not 0 <= worker < self.count:
            raise ValueError(f"cannot hand off to worker {worker}")
        if len(payload) > MAX_HANDOFF_PAYLOAD:
            raise ValueError("hand-off payload too large")
        out = self._outboxes[worker]
        if out is None or self._closed:
            sock.close()
            return
        fd = sock.detach()
        queue = self._queued.get(worker)
        if queue:
            queue.append((fd, payload))
            return
        if not self._send(out, fd, payload):
            self._queued[worker] = collections.deque([(fd, payload)])
            self.loop.add_writer(out.fileno(), self._flush, worker)

    def add_stop_callback(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the worker stops, before the engine closes its sessions."""
        self._on_stop.append(fn)

    def close(self) -> None:
        """Run stop callbacks, stop receiving, drop queued hand-offs and close the engine."""
        if self._closed:
            return
        self._closed = True
        for fn in reversed(self._on_stop):
            try:
                fn()
            except Exception:
                _log.exception("worker %d: stop callback failed", self.index)
        if self._inbox is not None:
            self.loop.remove_reader(self._inbox.fileno())
        for worker, queue in self._queued.items():
            out = self._outboxes[worker]
            if out is not None:
                self.loop.remove_writer(out.fileno())
            for fd, _ in queue:
                os.close(fd)
        self._queued.clear()
        self.engine.close()

    # ------------------------------------------------------------ internals

    def _send(self, out: socket.socket, fd: int, payload: bytes) -> bool:
        """Send one hand-off; False if the inbox is full (the descriptor stays ours)."""
        try:
            out.sendmsg([_MARK, payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            # The receiving worker is gone: the peer is lost with it.
            _log.warning("worker %d: hand-off failed: %s", self.index, exc)
        os.close(fd)
        self.handoffs_sent += 1
        return True

    def _flush(self, worker: int) -> None:
        out = self._outboxes[worker]
        queue = self._queued[worker]
        assert out is not None
        while queue:
            fd, payload = queue[0]
            if not self._send(out, fd, payload):
                return
            queue.popleft()
        del self._queued[worker]
        self.loop.remove_writer(out.fileno())

    def _on_inbox(self) -> None:
        inbox = self._inbox
        assert inbox is not None
        # Read until EAGAIN: see Pump's note on uvloop #552.
        while True:
            try:
                data, ancdata, flags, _ = inbox.recvmsg(MAX_HANDOFF_PAYLOAD + 1, socket.CMSG_SPACE(_FD_SIZE))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _log.error("worker %d: inbox failed: %s", self.index, exc)
                self.loop.remove_reader(inbox.fileno())
                return
            fds = _fds(ancdata)
            if not data and not fds:
                # Every writer is gone; nothing more will come.
                self.loop.remove_reader(inbox.fileno())
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 1 or data[:1] != _MARK:
                for fd in fds:
                    os.close(fd)
                _log.warning("worker %d: malformed hand-off dropped", self.index)
                continue
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            self.handoffs_received += 1
            cb = self.on_handoff
            if cb is None:
                sock.close()
                continue
            try:
                cb(sock, data[1:])
            except Exception:
                _log.exception("worker %d: on_handoff failed", self.index)
                sock.close()


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, blob in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(blob[: len(blob) - len(blob) % _FD_SIZE])
            fds.extend(arr)
    return fds


def run_workers(
    count: int,
    setup: Callable[[WorkerContext], None],
    *,
    loop_factory: LoopFactory | None = None,
    engine_options: dict[str, Any] | None = None,
) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; returns an exit status.

    ``setup(ctx)`` runs in each worker on its fresh loop, before the loop runs; it
    opens listeners (``ctx.listen``) and sets ``ctx.on_handoff``.  With one worker
    nothing is forked.  If a worker dies, the others are stopped too: a relay
    silently missing a share of its port is worse than one that restarts.
    """
    if count < 1:
        raise ValueError("need at least one worker")
    factory = loop_factory or asyncio.new_event_loop
    opts = engine_options or {}
    if count == 1:
        return _worker_main(0, 1, None, [None], setup, factory, opts)
    inboxes = make_inboxes(count)
    pids: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                own = inboxes[index][0]
                for i, (r, _) in enumerate(inboxes):
                    if i != index:
                        r.close()
                outs: list[socket.socket | None] = [w for _, w in inboxes]
                status = _worker_main(index, count, own, outs, setup, factory, opts)
            except BaseException:
                _log.exception("worker %d crashed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        pids[pid] = index
    for r, w in inboxes:
        r.close()
        w.close()
    return _supervise(pids)


def _supervise(pids: dict[int, int]) -> int:
    stopping = False

    def stop_all(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    old = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        while pids:
            try:
                pid, wstatus = os.wait()
            except ChildProcessError:
                break
            index = pids.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(wstatus)
            if code != 0 or not stopping:
                _log.error("worker %d exited with status %d", index, code)
                status = status or (code if code > 0 else 1)
                if not stopping:
                    stop_all(signal.SIGTERM, None)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return status


def _worker_main(
    index: int,
    count: int,
    inbox: socket.socket | None,
    outboxes: list[socket.socket | None],
    setup: Callable[[WorkerContext], None],
    factory: LoopFactory,
    opts: dict[str, Any],
) -> int:
    loop = factory()
    asyncio.set_event_loop(loop)
    engine = ForwardEngine(loop, **opts)
    ctx = WorkerContext(index, count, loop, engine, inbox, outboxes)
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        setup(ctx)
        loop.run_until_complete(stop)
    finally:
        ctx.close()
        loop.close()
    return 0
