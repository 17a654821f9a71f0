"""A paired peer's descriptor goes from the listener's watch to the engine's without epoll churn.

The listener watches a peer from accept until it pairs on the engine's own epoll, and the
engine on the same loop then takes over that registration in place (the pumps only swap the
callback) instead of an unregister and a fresh register. The loop never sees a peer socket:
on uvloop a loop reader cost a poll handle made and torn down, 5 ``epoll_ctl`` and an
``ioctl`` per socket on every pairing. Counted here on asyncio's selector loop, whose selector
calls can be watched from Python, and on a counting stand-in for the engine's epoll.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
from collections import Counter
from typing import Any

from natrelay.aspia.relay.server import PeerListener
from natrelay.engine.poller import EpollPoller
from tests.unit.aspia.relay.test_relay_floodguard import _until, drained, legit_pair, listener


class CountingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The loop's selector, counting register/unregister per descriptor."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[tuple[str, int]] = Counter()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        self.calls["register", int(fileobj)] += 1
        return super().register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        self.calls["unregister", int(fileobj)] += 1
        return super().unregister(fileobj)


class CountingEpoll:
    """Wraps the engine's ``select.epoll``, counting register/modify/unregister per descriptor."""

    def __init__(self, ep: Any) -> None:
        self.ep = ep
        self.calls: Counter[tuple[str, int]] = Counter()

    def register(self, fd: int, mask: int) -> None:
        self.calls["register", fd] += 1
        self.ep.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self.calls["modify", fd] += 1
        self.ep.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        self.calls["unregister", fd] += 1
        self.ep.unregister(fd)

    def poll(self, timeout: float, maxevents: int) -> Any:
        return self.ep.poll(timeout, maxevents)

    def close(self) -> None:
        self.ep.close()


def test_a_pairing_registers_each_peer_socket_once() -> None:
    selector = CountingSelector()

    async def main() -> None:
        async with listener() as lst:
            assert isinstance(lst, PeerListener) and lst._listener is not None
            listen_fd = lst._listener.fileno()
            # The test's own peers are asyncio streams on this loop too: count only the relay's
            # accepted sockets, known from the listener's pending connections as they arrive.
            relay_fds: set[int] = set()
            add = lst.pairing.add

            def remember(pending: Any, now: float) -> bool:
                relay_fds.add(pending.fd)
                return add(pending, now)

            lst.pairing.add = remember  # type: ignore[method-assign]
            assert lst.engine is not None and isinstance(lst.engine.poller, EpollPoller)
            assert lst.forwarding.watch is lst.engine.poller
            epoll = CountingEpoll(lst.engine.poller._ep)
            lst.engine.poller._ep = epoll  # type: ignore[assignment]
            await legit_pair(lst)
            await _until(lambda: drained(lst))
            assert len(relay_fds) == 2
            for fd in relay_fds:
                assert fd != listen_fd
                # Never the loop's: from accept to close each is on the engine's epoll, once.
                assert selector.calls["register", fd] == 0, selector.calls
                assert epoll.calls["register", fd] == 1, epoll.calls
                assert epoll.calls["modify", fd] == 0, epoll.calls
                assert epoll.calls["unregister", fd] == 1, epoll.calls
            assert lst.engine.totals.closed == 1

    loop = asyncio.SelectorEventLoop(selector)
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.close()


def test_pairs_still_form_on_uvloop() -> None:
    """The relay runs on uvloop, where the engine's add_reader swaps the poll handle's callback."""
    import uvloop

    async def main() -> None:
        async with listener() as lst:
            for _ in range(3):
                await legit_pair(lst)
            await _until(lambda: drained(lst))
            assert lst.engine is not None and lst.engine.totals.closed == 3

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 60))


def test_a_whole_peer_to_relay_is_read_in_one_wake_up() -> None:
    """Length and body arrive in one write from a real peer: both are read in the same callback
    (one wake-up per peer instead of two), and bytes behind the message stay in the kernel."""
    from natrelay.aspia.messages import build_peer_to_relay
    from natrelay.aspia.proto import router_common_pb2
    from tests.unit.aspia.relay.standin import secret
    from tests.unit.aspia.relay.test_relay_floodguard import port

    async def main() -> None:
        async with listener() as lst:
            calls: list[bool] = []
            on_readable = lst._on_readable

            def counted(pending: Any) -> None:
                calls.append(pending.watching)  # True: only peeking for early data or a hang-up
                on_readable(pending)

            lst._on_readable = counted  # type: ignore[method-assign]
            key = lst.keys.pop()  # type: ignore[attr-defined]
            creds = router_common_pb2.RelayCredentials(host="127.0.0.1", port=port(lst), key=key.to_proto(),
                                                       secret=secret())
            # Connected and written before the loop runs again: all of it is there at accept.
            sock = socket.create_connection(("127.0.0.1", port(lst)))
            try:
                sock.sendall(build_peer_to_relay(creds) + b"early")
                await _until(lambda: lst.guard.pending == 0 and len(lst.pairing) == 1)
                await asyncio.sleep(0.05)
                assert calls.count(False) == 1, calls
                (pending,) = lst.pairing._pending
                assert lst.pairing._pending[pending].key_id == key.key_id
                assert pending.sock.recv(16, socket.MSG_PEEK) == b"early"
            finally:
                sock.close()

    asyncio.run(asyncio.wait_for(main(), 60))
