"""The asyncio carrier of an Aspia :class:`~natrelay.aspia.channel.Channel`.

All the protocol lives in the sans-IO channel; this module only adds what every Aspia program
needs around it on a real socket: a future for "authenticated" (or why not), a future for
"closed", dialling with a time limit, and adopting a socket that already carried bytes of its
own (a peer's relay connection after ``PeerToRelay``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from natrelay.aspia.channel import Channel
from natrelay.aspia.errors import AspiaProtocolError
from natrelay.engine.clock import WheelDriver
from natrelay.engine.endpoint import EndpointProtocol, make_wheel

__all__ = ["ChannelClosedError", "ChannelProtocol", "channel_on_socket", "make_wheel", "open_channel"]


class ChannelClosedError(ConnectionError):
    """The channel closed before it was authenticated.

    ``error`` is the protocol violation when there was one: its ``code`` tells a wrong password
    or router key (ACCESS_DENIED) from a refused session type or a timeout, which is what a
    user-facing message has to distinguish.
    """

    def __init__(self, reason: str, error: AspiaProtocolError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class ChannelProtocol(EndpointProtocol[Channel]):
    """Carries one Aspia channel over one TCP connection; ``AspiaProtocolError`` closes it.

    Subclass it and override the ``on_*`` hooks of :class:`EndpointProtocol`; the futures here
    are maintained without relying on those hooks, so overriding them needs no ``super()``.
    """

    def __init__(self, make_channel: Callable[[float], Channel], timers: WheelDriver[Any]) -> None:
        super().__init__(make_channel, timers, (AspiaProtocolError,))
        self.ready: asyncio.Future[Channel] = self.loop.create_future()
        """Resolves with the channel once authenticated; fails with :class:`ChannelClosedError`."""
        self.closed: asyncio.Future[str] = self.loop.create_future()
        """Resolves with the close reason once the connection is gone."""
        self._initial = b""

    @property
    def channel(self) -> Channel:
        """The channel; exists from ``connection_made`` on."""
        if self.link is None:
            raise RuntimeError("the channel exists only once connected")
        return self.link

    def set_initial(self, data: bytes) -> None:
        """Bytes already read from the socket before it was handed over; fed first."""
        self._initial = data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        initial, self._initial = self._initial, b""
        if initial and self.link is not None:
            # Fed before the loop can deliver anything newer, so the order is kept.
            self.data_received(initial)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        link = self.link
        if link is not None and link.established and not self.ready.done():
            self.ready.set_result(link)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        reason = self.close_reason or "closed"
        if not self.ready.done():
            error = self.link.error if self.link is not None else None
            self.ready.set_exception(ChannelClosedError(reason, error))
            self.ready.exception()  # retrieved: nobody may be waiting, and that is fine
        if not self.closed.done():
            self.closed.set_result(reason)

    async def wait_established(self, timeout: float | None = None) -> Channel:
        """Wait for authentication; on timeout the connection is aborted and TimeoutError raised."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.ready), timeout)
        except TimeoutError:
            self.abort("authentication did not finish in time")
            raise


P = TypeVar("P", bound=ChannelProtocol)


async def open_channel(
    host: str,
    port: int,
    factory: Callable[[], P],
    *,
    timeout: float,
    wait_established: bool = True,
) -> P:
    """Connect and (by default) authenticate within ``timeout`` seconds in total.

    Raises ``OSError`` when the TCP connection fails, ``TimeoutError`` when the time runs out
    (the connection is dropped), and :class:`ChannelClosedError` when the peer closes or the
    handshake fails (a wrong router key surfaces here as an ACCESS_DENIED error).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    _, proto = await asyncio.wait_for(loop.create_connection(factory, host, port), timeout)
    if wait_established:
        await proto.wait_established(max(0.0, deadline - loop.time()))
    return proto


async def channel_on_socket(sock: socket.socket, factory: Callable[[], P], initial: bytes = b"") -> P:
    """Run a channel on an already-connected socket; ``initial`` = bytes already read from it.

    Returns once the transport exists (a client's ClientHello is then already written); await
    :meth:`ChannelProtocol.wait_established` for the handshake.
    """
    loop = asyncio.get_running_loop()

    def make() -> P:
        proto = factory()
        proto.set_initial(initial)
        return proto

    sock.setblocking(False)
    _, proto = await loop.create_connection(make, sock=sock)
    return proto
