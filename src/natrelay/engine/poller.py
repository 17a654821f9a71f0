"""Readiness of the forwarded sockets: one epoll of the engine's own, watched by the loop as one descriptor.

Why not ``loop.add_reader`` per socket: every forwarded socket needs a reader for as long as its
session lives, and uvloop builds a poll handle, a callback handle and a bound method for each
(~630 bytes per socket measured with tracemalloc, 1.25 KiB of an idle session's ~2.2 KiB; 5.7 us to
add, where ``epoll.register`` takes 1.7 us). Here a socket costs one small entry in a dict and the
kernel's own epoll item, and a wake-up dispatches straight to the pump's method.

It also makes the engine's readiness rules its own instead of the loop's: epoll here is
level-triggered on every loop, so a pump that read less than it asked for may stop without the
extra read that only confirms EAGAIN (uvloop needed that read, see ``Pump``), and asyncio's and
uvloop's loops behave the same for the engine.

Rules that keep it safe:

* A descriptor is registered only while it has a reader or a writer; with neither it is taken out
  of the epoll at once, because epoll reports errors and hang-ups even for an empty mask and a
  level-triggered report nobody consumes would spin the loop. The one exception is a hand-over
  (``detach`` ... ``settle``), within one call of the new owner, where no dispatch can run.
* An entry whose callbacks were removed during a dispatch is not called for the rest of that
  dispatch; a stale event for a descriptor number reused in the same dispatch can only make a pump
  read or write once too often, which it answers with EAGAIN.
* Callers unregister before they close a socket (``Pump.stop`` runs before ``sock.close``), so a
  duplicated descriptor can never leave an entry for a closed socket behind.

``LoopPoller`` is the fallback with the same interface on systems without epoll: the loop's own
readers and writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import Callable

__all__ = ["EpollPoller", "LoopPoller", "Poller", "make_poller"]

Callback = Callable[[], None]

#: Events at most per dispatch; more stay reported (level-triggered) and are taken on the next
#: turn of the loop, after other callbacks had theirs.
MAX_EVENTS = 128


class _Entry:
    __slots__ = ("mask", "reader", "writer")

    def __init__(self, reader: Callback | None, writer: Callback | None) -> None:
        self.reader = reader
        self.writer = writer
        self.mask = 0
        """The events registered with the kernel for this descriptor now (0: not registered)."""


class EpollPoller:
    """Readers and writers of the engine's sockets on one epoll, itself a reader on ``loop``."""

    level_triggered = True
    """A socket with bytes left is reported again: a short read may end a wake-up, and a pump that
    used its budget may keep its registration instead of yielding through ``call_soon``."""

    __slots__ = ("_entries", "_ep", "_epfd", "_loop", "closed")

    if hasattr(select, "epoll"):
        _IN = select.EPOLLIN
        _OUT = select.EPOLLOUT
        _READ_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
        _WRITE_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ep = select.epoll()
        self._epfd = self._ep.fileno()
        self._entries: dict[int, _Entry] = {}
        self.closed = False
        try:
            loop.add_reader(self._epfd, self.dispatch)
        except BaseException:
            self._ep.close()
            raise

    def __len__(self) -> int:
        """Descriptors registered now."""
        return len(self._entries)

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._set(fd, callback, reading=True)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._set(fd, callback, reading=False)

    def remove_reader(self, fd: int) -> bool:
        return self._set(fd, None, reading=True)

    def remove_writer(self, fd: int) -> bool:
        return self._set(fd, None, reading=False)

    def detach(self, fd: int) -> bool:
        """Drop ``fd``'s callbacks but keep its kernel registration until :meth:`settle`; True if
        it had any.

        For a hand-over between two owners on this poller (a listener watching a peer until it
        pairs, then the engine forwarding it): the new owner's ``add_reader`` finds the
        descriptor registered already and only swaps the callback, where a remove and an add
        cost an ``epoll_ctl`` each, per socket, per pairing. Nothing is called for ``fd`` until
        a new callback is set.
        """
        entry = self._entries.get(fd)
        if entry is None:
            return False
        entry.reader = entry.writer = None
        return True

    def settle(self, fd: int) -> None:
        """End a hand-over (:meth:`detach`): make the kernel's mask match the callbacks set since,
        and take ``fd`` out if nobody set one (a report nobody consumes would spin the loop)."""
        entry = self._entries.get(fd)
        if entry is None:
            return
        new = self._mask(entry)
        if new != entry.mask:
            if not new:
                self._forget(fd)
            else:
                self._ep.modify(fd, new)
                entry.mask = new

    def close(self) -> None:
        """Stop watching everything; the sockets themselves are their owners' to close."""
        if self.closed:
            return
        self.closed = True
        for entry in self._entries.values():
            entry.reader = entry.writer = None
        self._entries.clear()
        with contextlib.suppress(Exception):  # a closed loop has no reader to remove
            self._loop.remove_reader(self._epfd)
        self._ep.close()

    # ------------------------------------------------------------ internals

    def _set(self, fd: int, callback: Callback | None, *, reading: bool) -> bool:
        """Make ``callback`` (``None``: nobody) the reader or writer of ``fd``; True if one was set.

        The epoll mask follows from the entry's two callbacks, so all four public methods share
        one rule: registered while either is set, modified when the set changes, forgotten when
        neither is left. A failed ``register`` (a closed descriptor) leaves no entry behind.
        """
        entry = self._entries.get(fd)
        if entry is None:
            if callback is None:
                return False
            entry = _Entry(None, None)
        old = entry.mask
        if reading:
            had = entry.reader is not None
            entry.reader = callback
        else:
            had = entry.writer is not None
            entry.writer = callback
        new = self._mask(entry)
        if new != old:
            if not new:
                self._forget(fd)
            elif not old:
                self._ep.register(fd, new)
                self._entries[fd] = entry
            else:
                self._ep.modify(fd, new)
            entry.mask = new
        return had

    def _mask(self, entry: _Entry) -> int:
        return (self._IN if entry.reader is not None else 0) | (
            self._OUT if entry.writer is not None else 0)

    def _forget(self, fd: int) -> None:
        del self._entries[fd]
        # EBADF/ENOENT: the socket was closed first (the kernel dropped it with its last reference).
        with contextlib.suppress(OSError):
            self._ep.unregister(fd)

    def dispatch(self) -> None:
        """Run the callbacks of the sockets that are ready now (never waits)."""
        if self.closed:
            return
        try:
            events = self._ep.poll(0, MAX_EVENTS)
        except InterruptedError:
            return
        entries = self._entries
        read_events = self._READ_EVENTS
        write_events = self._WRITE_EVENTS
        for fd, ev in events:
            entry = entries.get(fd)
            if entry is None:
                continue
            try:
                if ev & read_events:
                    cb = entry.reader
                    if cb is not None:
                        cb()
                if ev & write_events:
                    cb = entry.writer  # read again: the reader may have removed it
                    if cb is not None:
                        cb()
            except Exception as exc:  # one session's bug must not starve the others of their events
                self._loop.call_exception_handler({
                    "message": "forwarding callback failed", "exception": exc, "fd": fd})


class LoopPoller:
    """The same interface on the loop's own readers and writers (systems without epoll)."""

    level_triggered: bool
    __slots__ = ("_loop", "closed", "level_triggered")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.closed = False
        # asyncio's selector loops re-report a still-readable descriptor; uvloop must see EAGAIN
        # before a callback returns with its registration in place (see Pump).
        self.level_triggered = isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._loop.add_reader(fd, callback)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._loop.add_writer(fd, callback)

    def remove_reader(self, fd: int) -> bool:
        return self._loop.remove_reader(fd)

    def remove_writer(self, fd: int) -> bool:
        return self._loop.remove_writer(fd)

    def detach(self, fd: int) -> bool:
        """Nothing to do: the loop swaps a reader's callback in place when the next owner adds
        its own (see ``EpollPoller.detach``)."""
        return False

    def settle(self, fd: int) -> None:
        """Nothing to do (see :meth:`detach`)."""

    def close(self) -> None:
        self.closed = True


Poller = EpollPoller | LoopPoller


def make_poller(loop: asyncio.AbstractEventLoop, kind: str = "auto") -> Poller:
    """``"epoll"`` (Linux), ``"loop"``, or ``"auto"``: epoll where the system has it."""
    if kind not in ("auto", "epoll", "loop"):
        raise ValueError(f"poller must be auto, epoll or loop, not {kind!r}")
    if kind == "epoll" or (kind == "auto" and hasattr(select, "epoll")):
        return EpollPoller(loop)
    return LoopPoller(loop)
