"""A paired peer's descriptor goes from the listener's watch to the engine's without epoll churn.

The listener watches a peer from accept until it pairs; the forwarding engine on the same loop
then takes over the registration in place (one selector ``modify`` that only swaps the
callback, no system call) instead of an unregister and a fresh register, which cost 2-3
``epoll_ctl`` calls and, on uvloop, an ``ioctl`` per socket on every pairing. Counted here on
asyncio's selector loop, whose selector calls can be watched from Python.
"""

from __future__ import annotations

import asyncio
import selectors
from collections import Counter
from typing import Any

from natrelay.aspia.relay.server import PeerListener
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
            await legit_pair(lst)
            await _until(lambda: drained(lst))
            assert len(relay_fds) == 2
            for fd in relay_fds:
                assert fd != listen_fd
                assert selector.calls["register", fd] == 1, selector.calls
                assert selector.calls["unregister", fd] == 1, selector.calls
            assert lst.engine is not None and lst.engine.totals.closed == 1

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
