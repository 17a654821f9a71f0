"""Forwarding loops in threads: paired sessions use every core, pairing stays on one loop.

One event loop runs on one core.  A relay whose pairing state (keys, pending peers, the
router link) must stay single-threaded can still forward on every core: once a pair is
made, its two sockets move to one of N worker threads, each running its own event loop
and :class:`~natrelay.engine.forward.ForwardEngine`.  ``splice(2)`` and socket calls
release the GIL, so the workers move bytes in parallel; no descriptor travels between
processes and the owner's code stays single-threaded.

The threading contract: the public methods here are called on the *home* loop's thread
(the loop that created :class:`ForwardingThreads`), and ``on_close`` runs there too.  The
threads meet only through ``call_soon_threadsafe`` and through reads of plain ints and
floats the worker writes (byte counters, last activity), which are atomic under the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable

from natrelay.engine.forward import ForwardEngine
from natrelay.engine.session import CLOSED, ERROR, Counters, ForwardSession

__all__ = ["ForwardingThreads", "ThreadedSession", "same_loop_kind"]

_log = logging.getLogger(__name__)

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
EngineFactory = Callable[[asyncio.AbstractEventLoop], ForwardEngine]
OnThreadedClose = Callable[["ThreadedSession", str], None]

#: Upper bound of forwarding threads: more than cores only adds GIL contention.
MAX_THREADS = 256
_START_TIMEOUT = 10.0


def same_loop_kind(home: asyncio.AbstractEventLoop) -> LoopFactory:
    """A factory for loops of the home loop's kind, so that workers share its clock and I/O path."""
    if type(home).__module__.split(".")[0] == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


class ThreadedSession:
    """The home loop's handle on a session forwarded by a worker thread.

    It mirrors what owners read on a :class:`ForwardSession` (``counters``,
    ``started_at``, ``last_activity``, ``context``, ``close``) from the home thread.
    ``started_at`` is the home loop's time at hand-off; ``last_activity`` is the worker's
    clock, the same monotonic clock because workers run the home loop's kind of loop.
    """

    __slots__ = ("_forward", "_on_close", "_worker", "_worker_reason", "close_reason", "context",
                 "started_at")

    def __init__(self, worker: _Worker, context: object, on_close: OnThreadedClose | None,
                 started_at: float) -> None:
        self._worker = worker
        self.context = context
        self._on_close = on_close
        self.started_at = started_at
        self._forward: ForwardSession | None = None  # written once, by the worker
        self._worker_reason: str | None = None  # written once, by the worker
        self.close_reason: str | None = None  # home side: set when on_close is delivered

    def __repr__(self) -> str:
        return f"<ThreadedSession worker={self._worker.index} {self.close_reason or 'open'}>"

    @property
    def worker(self) -> int:
        """Which forwarding thread carries the session."""
        return self._worker.index

    @property
    def counters(self) -> Counters:
        """Exact bytes delivered so far (read from the worker's counters without locking)."""
        forward = self._forward
        return forward.counters if forward is not None else Counters()

    @property
    def last_activity(self) -> float:
        forward = self._forward
        return forward.last_activity if forward is not None else self.started_at

    @property
    def is_closed(self) -> bool:
        return self.close_reason is not None

    def close(self, reason: str = CLOSED) -> None:
        """Ask the worker to close the session; ``on_close`` follows on the home loop."""
        if self.close_reason is None:
            self._worker.call(self._close_on_worker, reason)

    def _close_on_worker(self, reason: str) -> None:
        # Runs after _start_on_worker (call_soon_threadsafe keeps order), so _forward is
        # set unless the start failed, in which case the failure is already reported.
        forward = self._forward
        if forward is not None:
            forward.close(reason)


class _Worker:
    """One thread, its loop and its engine."""

    def __init__(self, index: int, owner: ForwardingThreads) -> None:
        self.index = index
        self.owner = owner
        self.active = 0  # home side: sessions handed here and not yet reported closed
        self.loop: asyncio.AbstractEventLoop | None = None
        self.engine: ForwardEngine | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"natrelay-forward-{index}", daemon=True)

    def call(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn(*args)`` on the worker's loop; False once the worker has stopped."""
        loop = self.loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the worker is gone
            return False
        return True

    def _run(self) -> None:
        try:
            loop = self.owner._loop_factory()
            asyncio.set_event_loop(loop)
            self.engine = self.owner._engine_factory(loop)
            self.loop = loop
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            loop.run_forever()
        finally:
            # _stop_on_worker closed every session; a loop stopped any other way
            # still must not leave sockets open behind the owner's back.
            if self.engine is not None and not self.engine.is_closed:
                self.engine.close("relay stopping")
            loop.close()

    # ---------------------------------------------------------- worker thread
    def _start_on_worker(self, handle: ThreadedSession, a: socket.socket, b: socket.socket,
                         idle_timeout: float | None, a_to_b: bytes, b_to_a: bytes) -> None:
        engine = self.engine
        assert engine is not None
        try:
            handle._forward = engine.start(a, b, idle_timeout=idle_timeout, on_close=self._closed_on_worker,
                                           context=handle, a_to_b=a_to_b, b_to_a=b_to_a)
        except (OSError, ValueError, RuntimeError) as exc:
            _log.error("forwarding thread %d cannot forward a session: %s", self.index, exc)
            for sock in (a, b):
                sock.close()
            self._report(handle, ERROR)

    def _closed_on_worker(self, forward: ForwardSession, reason: str) -> None:
        handle = forward.context
        assert isinstance(handle, ThreadedSession)
        self._report(handle, reason)

    def _report(self, handle: ThreadedSession, reason: str) -> None:
        if handle._worker_reason is not None:
            return
        handle._worker_reason = reason
        with contextlib.suppress(RuntimeError):  # the home loop is gone: nobody to tell
            self.owner._home.call_soon_threadsafe(self.owner._deliver, handle, reason)

    def _stop_on_worker(self, reason: str) -> None:
        if self.engine is not None:
            self.engine.close(reason)
        assert self.loop is not None
        self.loop.stop()


class ForwardingThreads:
    """N forwarding threads; :meth:`start_session` hands a pair to the least loaded one.

    Create it on the home loop, call :meth:`start`, then :meth:`start_session` for every
    pair and :meth:`close` once at the end (it waits for the threads).
    """

    def __init__(self, count: int, *, home: asyncio.AbstractEventLoop | None = None,
                 loop_factory: LoopFactory | None = None, engine_factory: EngineFactory | None = None,
                 stop_timeout: float = 5.0) -> None:
        if not 1 <= count <= MAX_THREADS:
            raise ValueError(f"the number of forwarding threads must be 1..{MAX_THREADS}")
        self._home = home if home is not None else asyncio.get_running_loop()
        self._loop_factory = loop_factory if loop_factory is not None else same_loop_kind(self._home)
        self._engine_factory: EngineFactory = engine_factory if engine_factory is not None else ForwardEngine
        self._stop_timeout = stop_timeout
        self._workers = [_Worker(i, self) for i in range(count)]
        self._live: set[ThreadedSession] = set()
        self._next = 0
        self._started = False
        self._closed = False

    def __len__(self) -> int:
        """Sessions handed out and not yet reported closed."""
        return len(self._live)

    @property
    def count(self) -> int:
        return len(self._workers)

    def load(self) -> list[int]:
        """Open sessions per thread, as the home loop counts them."""
        return [w.active for w in self._workers]

    def engines(self) -> list[ForwardEngine]:
        """The workers' engines, for tests and status pages: read them, call nothing on them."""
        return [w.engine for w in self._workers if w.engine is not None]

    def start(self) -> None:
        """Start the threads and wait until each loop runs; raises if one cannot start."""
        if self._started:
            return
        self._started = True
        for worker in self._workers:
            worker.thread.start()
        for worker in self._workers:
            if not worker.ready.wait(_START_TIMEOUT) or worker.error is not None:
                self.close()
                raise RuntimeError(f"forwarding thread {worker.index} did not start: {worker.error}")

    def start_session(self, a: socket.socket, b: socket.socket, *, idle_timeout: float | None = None,
                      on_close: OnThreadedClose | None = None, a_to_b: bytes = b"", b_to_a: bytes = b"",
                      context: object = None) -> ThreadedSession:
        """Forward ``a`` <-> ``b`` on a worker; both sockets belong to the worker from now on.

        The caller must already have dropped every registration of the two descriptors on
        its own loop.  ``on_close(handle, reason)`` runs on the home loop, exactly once.
        """
        if not self._started or self._closed:
            raise RuntimeError("the forwarding threads are not running")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive or None")
        worker = self._pick()
        handle = ThreadedSession(worker, context, on_close, self._home.time())
        if not worker.call(worker._start_on_worker, handle, a, b, idle_timeout, a_to_b, b_to_a):
            raise RuntimeError(f"forwarding thread {worker.index} has stopped")
        worker.active += 1
        self._live.add(handle)
        return handle

    def close(self, reason: str = "shutdown") -> None:
        """Close every session, stop and join the threads, then deliver the last ``on_close`` calls.

        Like :meth:`ForwardEngine.close`, every session's ``on_close`` has run when this returns.
        """
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            worker.call(worker._stop_on_worker, reason)
        for worker in self._workers:
            if worker.thread.is_alive():
                worker.thread.join(self._stop_timeout)
                if worker.thread.is_alive():
                    _log.error("forwarding thread %d did not stop within %g s", worker.index,
                               self._stop_timeout)
        for handle in list(self._live):
            if handle._worker_reason is not None:
                self._deliver(handle, handle._worker_reason)

    # ---------------------------------------------------------------- home side
    def _pick(self) -> _Worker:
        # Fewest open sessions; ties rotate so that equal loads still alternate.
        workers = self._workers
        n = len(workers)
        start = self._next
        self._next = (start + 1) % n
        best = workers[start]
        for i in range(1, n):
            w = workers[(start + i) % n]
            if w.active < best.active:
                best = w
        return best

    def _deliver(self, handle: ThreadedSession, reason: str) -> None:
        if handle.close_reason is not None:
            return
        handle.close_reason = reason
        self._live.discard(handle)
        handle._worker.active -= 1
        cb = handle._on_close
        if cb is not None:
            handle._on_close = None
            try:
                cb(handle, reason)
            except Exception:
                _log.exception("on_close callback failed for %r", handle)
