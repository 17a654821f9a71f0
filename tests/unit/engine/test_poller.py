"""The engine's own epoll (engine/poller.py): registration rules, dispatch, and what the loop sees."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from natrelay.engine.forward import ForwardEngine
from natrelay.engine.poller import EpollPoller, LoopPoller, make_poller

from ._forwarding import LOOP_KINDS, run, tcp_pair

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll is Linux-only"),
]


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@contextlib.contextmanager
def _poller_and_pair() -> Iterator[tuple[EpollPoller, socket.socket, socket.socket]]:
    """A poller on the running loop and a connected socket pair, all closed at the end."""
    poller = EpollPoller(asyncio.get_running_loop())
    a, b = socket.socketpair()
    try:
        yield poller, a, b
    finally:
        poller.close()
        a.close()
        b.close()


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_reader_and_writer_share_one_registration_and_leave_none(loop_kind: str) -> None:
    async def main() -> None:
        calls: list[str] = []
        with _poller_and_pair() as (poller, a, b):
            poller.add_writer(a.fileno(), lambda: calls.append("w"))
            poller.add_reader(a.fileno(), lambda: calls.append("r"))
            assert len(poller) == 1
            b.send(b"x")
            await _turns()
            assert "r" in calls and "w" in calls
            assert poller.remove_writer(a.fileno())
            assert not poller.remove_writer(a.fileno())
            assert poller.remove_reader(a.fileno())
            assert len(poller) == 0
            calls.clear()
            b.close()  # a hang-up is reported even for an empty mask: nothing may be left registered
            await _turns()
            assert calls == []
            # Taken out of the kernel's epoll too: registering again is not "already registered".
            poller.add_reader(a.fileno(), lambda: calls.append("again"))
            await _turns()
            assert calls and set(calls) == {"again"}

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_a_callback_removed_during_dispatch_is_not_called(loop_kind: str) -> None:
    async def main() -> None:
        calls: list[str] = []
        with _poller_and_pair() as (poller, a, b):
            fd = a.fileno()

            def reader() -> None:
                calls.append("r")
                poller.remove_writer(fd)
                poller.remove_reader(fd)

            poller.add_reader(fd, reader)
            poller.add_writer(fd, lambda: calls.append("w"))
            b.send(b"x")  # readable and writable in the same event
            await _turns()
            assert calls == ["r"]

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_a_failing_callback_goes_to_the_loop_and_the_others_still_run(loop_kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        poller = EpollPoller(loop)
        pairs = [socket.socketpair() for _ in range(3)]
        calls: list[int] = []

        def bad() -> None:
            raise RuntimeError("boom")

        def good(i: int) -> Callable[[], None]:
            return lambda: calls.append(i)

        try:
            for i, (a, b) in enumerate(pairs):
                poller.add_reader(a.fileno(), bad if i == 1 else good(i))
                b.send(b"x")
            await _turns()
            assert 0 in calls and 2 in calls
            assert errors and isinstance(errors[0]["exception"], RuntimeError)
        finally:
            poller.close()
            for a, b in pairs:
                a.close()
                b.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_close_takes_the_epoll_off_the_loop(loop_kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        poller = EpollPoller(loop)
        epfd = poller._epfd
        a, b = socket.socketpair()
        poller.add_reader(a.fileno(), lambda: None)
        poller.close()
        poller.close()
        assert len(poller) == 0
        assert not loop.remove_reader(epfd)
        a.close()
        b.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_forwarded_sockets_are_the_engines_not_the_loops(loop_kind: str) -> None:
    """With the default poller a forwarded socket is on the engine's epoll, not a loop reader
    (that per-socket loop handle was most of an idle session's memory), and a short read ends a
    wake-up on both loops."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine = ForwardEngine(loop)
        assert isinstance(engine.poller, EpollPoller)
        assert engine.short_read_is_again
        assert engine.busy_poll.poll == engine.poller.dispatch  # the polling window polls it directly
        x, a = tcp_pair()
        y, b = tcp_pair()
        try:
            session = engine.start(a, b)
            assert len(engine.poller) == 2
            assert not loop.remove_reader(a.fileno()) and not loop.remove_reader(b.fileno())
            x.sendall(b"ping")
            y.settimeout(5)
            assert await loop.run_in_executor(None, y.recv, 4) == b"ping"
            session.close()
            assert len(engine.poller) == 0
        finally:
            engine.close()
            x.close()
            y.close()

    run(loop_kind, main)


def test_make_poller_choices() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        p = make_poller(loop, "loop")
        assert isinstance(p, LoopPoller)
        assert p.level_triggered  # asyncio's selector loop re-reports readiness
        e = make_poller(loop, "auto")
        assert isinstance(e, EpollPoller)
        e.close()
        with pytest.raises(ValueError, match="auto, epoll or loop"):
            make_poller(loop, "kqueue")

    asyncio.run(main())


def test_loop_readers_on_uvloop_are_not_level_triggered() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        assert not make_poller(asyncio.get_running_loop(), "loop").level_triggered

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_a_hand_over_keeps_the_registration_and_settle_tidies_up(loop_kind: str) -> None:
    """detach() drops the callbacks but not the kernel registration, so the next owner's add is
    a dict update; settle() makes the kernel agree with whatever the new owner set (a writer
    instead of the reader: modified; nothing: taken out, so a hang-up cannot spin the loop)."""

    async def main() -> None:
        with _poller_and_pair() as (poller, a, b):
            calls: list[str] = []
            fd = a.fileno()
            poller.add_reader(fd, lambda: calls.append("old"))
            assert poller.detach(fd) and not poller.detach(b.fileno())
            b.send(b"x")
            await _turns()
            assert calls == []  # nothing is called between detach and the new owner's add
            poller.add_reader(fd, lambda: calls.append("new"))
            poller.settle(fd)
            with pytest.raises(FileExistsError):  # still registered: the add made no new one
                poller._ep.register(fd, select.EPOLLIN)
            await _turns()
            assert calls and set(calls) == {"new"}
            # Handed over to an owner that only writes: the mask follows.
            assert poller.detach(fd)
            poller.add_writer(fd, lambda: calls.append("w"))
            poller.settle(fd)
            calls.clear()
            await _turns()
            assert calls and set(calls) == {"w"}
            # Handed over to nobody: out of the epoll and the table.
            assert poller.detach(fd)
            poller.settle(fd)
            assert len(poller) == 0
            poller._ep.register(fd, select.EPOLLIN)  # not "already registered"
            poller._ep.unregister(fd)

    run(loop_kind, main)
