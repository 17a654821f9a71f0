"""Linux forwarding with ``splice(2)``: socket -> pipe -> socket, no copy through Python.

Each wake-up moves up to a pipe's capacity per system call, and the bytes never
enter the interpreter, so the relay spends its CPU on the loop rather than on
memcpy.  The pipe is borrowed from a small per-engine pool only while bytes sit in
it and given back as soon as it is empty: an idle session holds no pipe, which is
what keeps 10,000 idle sessions at two descriptors each.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys

from natrelay.engine.session import AGAIN, BLOCKED, BUDGET, EOF, FAILED, ForwardSession, Pump

__all__ = ["DEFAULT_PIPE_SIZE", "LARGE_PIPE_BUDGET", "LARGE_PIPE_SIZE", "PipePool", "SplicePump",
           "splice_available"]

#: Large enough that one splice moves a useful chunk at multi-Gbit/s rates, small
#: enough that a stalled reader pins little kernel memory on top of its socket buffers.
DEFAULT_PIPE_SIZE = 256 * 1024

#: The first pipes of a pool are this large (the kernel's default ``pipe-max-size``): a busy
#: session then moves up to 1 MiB per splice and wakes its relay a quarter as often. 16 sessions
#: through the Aspia relay went from 2,366 to 3,275 MiB/s and one from 2,136 to 2,355, at 0.30 ->
#: 0.26 CPU s/GB (``bench/run.py --quick --subjects direct,stnatrelay,aspia --measures
#: bulk1,bulk16``, three alternating runs).
LARGE_PIPE_SIZE = 1024 * 1024
#: ... but only while the pool holds at most this much pipe capacity. The kernel counts a pipe's
#: capacity, not its contents, against the user's ``pipe-user-pages-soft`` (64 MiB by default),
#: and an unprivileged user past it gets 8 KiB pipes only. Beyond the budget pipes are
#: ``DEFAULT_PIPE_SIZE`` again, so the large tier adds at most 16 MiB to what the pool held before.
LARGE_PIPE_BUDGET = 16 * 1024 * 1024

_SPLICE = getattr(os, "splice", None)
_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 0) | getattr(os, "SPLICE_F_MOVE", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", None)

Pipe = tuple[int, int, int]  # (read fd, write fd, capacity)


def splice_available() -> bool:
    """Whether this kernel splices a stream socket into a pipe and back.

    Probed for real rather than inferred from the platform: containers and
    exotic kernels have refused splice on sockets before.
    """
    if _SPLICE is None or not sys.platform.startswith("linux"):
        return False
    s1, s2 = socket.socketpair()
    r, w = os.pipe()
    try:
        s1.setblocking(False)
        s2.setblocking(False)
        s1.send(b"x")
        if _SPLICE(s2.fileno(), w, 1, None, None, _FLAGS) != 1:
            return False
        return bool(_SPLICE(r, s1.fileno(), 1, None, None, _FLAGS) == 1)
    except OSError:
        return False
    finally:
        s1.close()
        s2.close()
        os.close(r)
        os.close(w)


class PipePool:
    """Pipes lent to sessions while bytes are in flight, and kept for reuse.

    Creating a pipe and resizing it costs three system calls; a busy relay lends
    and returns pipes on every wake-up, so a few spares are kept.  Beyond
    ``max_spare`` returned pipes are closed, so the pool never holds more than a
    burst needed.
    """

    __slots__ = ("_spare", "capacity", "in_use", "large_budget", "large_size", "max_spare", "size")

    def __init__(self, size: int = DEFAULT_PIPE_SIZE, max_spare: int = 16, *,
                 large_size: int | None = None, large_budget: int = 0) -> None:
        """Pipes are ``size`` bytes, or ``large_size`` while the pool holds at most
        ``large_budget`` bytes of pipe capacity in all (0: never)."""
        if size <= 0 or max_spare < 0 or large_budget < 0:
            raise ValueError("pipe size must be positive, max_spare and large_budget non-negative")
        self.size = size
        self.large_size = large_size if large_size is not None else size
        self.large_budget = large_budget
        self.max_spare = max_spare
        self.in_use = 0
        self.capacity = 0
        """Bytes of pipe capacity the pool holds now (lent and spare), as the kernel counts them."""
        self._spare: list[Pipe] = []

    @property
    def spare(self) -> int:
        return len(self._spare)

    def acquire(self) -> Pipe:
        self.in_use += 1
        if self._spare:
            return self._spare.pop()
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            self.in_use -= 1
            raise
        large = self.large_size
        want = large if large > self.size and self.capacity + large <= self.large_budget else self.size
        cap = self._resize(w, want)
        self.capacity += cap
        return (r, w, cap)

    def release(self, pipe: Pipe) -> None:
        """Return an *empty* pipe."""
        self.in_use -= 1
        if len(self._spare) < self.max_spare:
            self._spare.append(pipe)
        else:
            self._close(pipe)

    def discard(self, pipe: Pipe) -> None:
        """Close a pipe that may still hold bytes nobody will read."""
        self.in_use -= 1
        self._close(pipe)

    def close(self) -> None:
        spare, self._spare = self._spare, []
        for pipe in spare:
            self._close(pipe)

    def _close(self, pipe: Pipe) -> None:
        self.capacity -= pipe[2]
        os.close(pipe[0])
        os.close(pipe[1])

    def _resize(self, fd: int, size: int) -> int:
        if _F_SETPIPE_SZ is not None:
            with contextlib.suppress(OSError):
                # Refused (EPERM) once the user's pipe pages are exhausted; the
                # default size still works, only with more system calls.
                return int(fcntl.fcntl(fd, _F_SETPIPE_SZ, size))
        if _F_GETPIPE_SZ is not None:
            return int(fcntl.fcntl(fd, _F_GETPIPE_SZ))
        return 65536


class SplicePump(Pump):
    """One direction moved by ``splice``; the pipe is held only while non-empty."""

    __slots__ = ("budget", "in_pipe", "pipe", "pool")

    def __init__(self, session: ForwardSession, src: socket.socket, dst: socket.socket, ab: bool,
                 pending: bytes, pool: PipePool, budget: int) -> None:
        super().__init__(session, src, dst, ab, pending)
        self.pool = pool
        self.budget = budget
        self.pipe: Pipe | None = None
        self.in_pipe = 0

    def _held(self) -> int:
        return self.in_pipe

    def release(self) -> None:
        pipe = self.pipe
        if pipe is not None:
            self.pipe = None
            if self.in_pipe:
                self.in_pipe = 0
                self.pool.discard(pipe)
            else:
                self.pool.release(pipe)

    def _pump_in(self) -> int:
        assert _SPLICE is not None
        splice = _SPLICE
        pipe = self.pipe
        if pipe is None:
            try:
                pipe = self.pipe = self.pool.acquire()
            except OSError as exc:
                # Out of descriptors: not the peers' fault, but nothing can move.
                self.session._fail(exc, self._src_side())
                return FAILED
        r, w, cap = pipe
        src = self.src_fd
        dst = self.dst_fd
        budget = self.budget
        short_is_again = self.session.engine.short_read_is_again
        moved = 0
        outcome = AGAIN
        while True:
            try:
                n = splice(src, w, cap, None, None, _FLAGS)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if moved:
                    self._delivered(moved)
                self.session._fail(exc, self._src_side())
                return FAILED
            if n == 0:
                outcome = EOF
                break
            left = n
            try:
                while left:
                    left -= splice(r, dst, left, None, None, _FLAGS)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                moved += n - left
                if moved:
                    self._delivered(moved)
                self.in_pipe = left
                self.session._fail(exc, self._dst_side())
                return FAILED
            moved += n - left
            if left:
                self.in_pipe = left
                outcome = BLOCKED
                break
            if short_is_again and n < cap:
                break
            budget -= 1
            if not budget:
                outcome = BUDGET
                break
        if moved:
            self._delivered(moved)
        if outcome != BLOCKED:
            self.pipe = None
            self.pool.release(pipe)
        return outcome

    def _flush_held(self) -> bool | None:
        pipe = self.pipe
        if pipe is None:
            return True
        assert _SPLICE is not None
        left = self.in_pipe
        moved = 0
        try:
            while left:
                m = _SPLICE(pipe[0], self.dst_fd, left, None, None, _FLAGS)
                left -= m
                moved += m
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self.in_pipe = left
            if moved:
                self._delivered(moved)
            self.session._fail(exc, self._dst_side())
            return None
        self.in_pipe = left
        if moved:
            self._delivered(moved)
        if left:
            return False
        self.pipe = None
        self.pool.release(pipe)
        return True

