"""The thin asyncio shell around a sans-IO protocol endpoint: bytes in, bytes out, time in.

Every protocol family's connections are carried by this class (Offset links, Aspia channels);
servers and clients differ only in what they do with an established endpoint and its received
messages (the ``on_*`` hooks). Timeouts of every endpoint in the process go through one
``WheelDriver`` (a single event-loop timer for all of them), so an idle connection costs a
dictionary entry, not a timer object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from natrelay.engine.clock import WheelDriver

log = logging.getLogger(__name__)

#: A closing connection gets this long to flush what it still has to send, then it is aborted,
#: so that a peer that stops reading cannot keep a closed tunnel's buffers alive.
CLOSE_DRAIN_TIMEOUT = 30.0

#: Transport write-buffer marks. Frames are up to ~64 KiB, so asyncio's 64 KiB default high
#: mark would pause the sender after every frame.
WRITE_HIGH_WATER = 1024 * 1024
WRITE_LOW_WATER = 256 * 1024


class SansIOEndpoint(Protocol):
    """What the shell needs from a protocol endpoint (e.g. ``offset.link.Link``)."""

    @property
    def established(self) -> bool:
        """Whether the handshake is done."""

    def receive_data(self, data: bytes, now: float) -> list[bytes]:
        """Feed received bytes; return complete application messages."""

    def send(self, payload: bytes) -> None:
        """Queue one application message."""

    def take_output(self) -> list[bytes]:
        """Drain bytes to write, as chunks for ``writelines``."""

    def handle_timer(self, now: float) -> None:
        """Run due timers (may raise the family's protocol error on a timeout)."""

    def next_deadline(self) -> float:
        """When ``handle_timer`` must next be called."""

    def defer_receive_timeout(self, now: float) -> None:
        """The shell is not reading (backpressure): don't take the peer's unread traffic for silence."""


E = TypeVar("E", bound=SansIOEndpoint)


class EndpointProtocol(asyncio.Protocol, Generic[E]):
    """Carries one sans-IO endpoint over one TCP connection.

    ``errors`` are the exception types that mean "the peer broke the protocol": they close the
    connection with the error as the reason; anything else is a bug and propagates.
    """

    def __init__(self, make_link: Callable[[float], E], timers: WheelDriver[Any],
                 errors: tuple[type[Exception], ...]) -> None:
        self._make_link = make_link
        self.timers = timers
        self.errors = errors
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.link: E | None = None
        self.closing = False
        self.close_reason: str | None = None
        self._established = False
        self._close_deadline: float | None = None
        self._writing_paused = False

    # ------------------------------------------------------------- to override
    def on_connected(self) -> bool:
        """The TCP connection exists. Return False to refuse it (already closed by then)."""
        return True

    def on_established(self) -> None:
        """The secure channel is up (``self.link.remote_public_key`` is authenticated)."""

    def on_messages(self, messages: list[bytes]) -> None:
        """User payloads, in order."""

    def on_closed(self, reason: str) -> None:
        """The connection is gone; ``reason`` says why (for logs and counters)."""

    def extra_deadline(self) -> float | None:
        """A subclass's own deadline (e.g. waiting for ``InitConnection``), or None."""
        return None

    def on_extra_timer(self, now: float) -> None:
        """Called when ``extra_deadline`` has passed."""

    def on_pause_writing(self) -> None:
        """Our transport's send buffer is full: stop feeding it."""

    def on_resume_writing(self) -> None:
        """Our transport's send buffer has drained."""

    # --------------------------------------------------------------- protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        if not self.on_connected():
            return
        self.link = self._make_link(self.loop.time())
        self.flush()
        self.rearm()

    def data_received(self, data: bytes) -> None:
        link = self.link
        if link is None or self.closing:
            return
        try:
            messages = link.receive_data(data, self.loop.time())
        except self.errors as exc:
            self.abort(f"protocol error: {exc}")
            return
        if not self._established and link.established:
            self._established = True
            self.on_established()
        if messages and not self.closing:
            self.on_messages(messages)
        self.flush()
        self.rearm()

    def eof_received(self) -> bool:
        self.close("peer closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.timers.cancel(self)
        if self.close_reason is None:
            self.close_reason = f"connection lost: {exc}" if exc else "peer closed the connection"
        self.closing = True
        self.on_closed(self.close_reason)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self.on_pause_writing()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.on_resume_writing()

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    # ---------------------------------------------------------------- actions
    def send(self, payload: bytes) -> None:
        """Queue one user payload and write it out."""
        if self.link is None or self.closing:
            return
        self.link.send(payload)
        self.flush()

    def send_many(self, payloads: list[bytes]) -> None:
        """Queue several payloads with one write call."""
        if self.link is None or self.closing:
            return
        for payload in payloads:
            self.link.send(payload)
        self.flush()

    def flush(self) -> None:
        if self.link is None or self.transport is None:
            return
        out = self.link.take_output()
        if out and not self.transport.is_closing():
            self.transport.writelines(out)

    def close(self, reason: str) -> None:
        """Close after what is queued has been written (bounded by CLOSE_DRAIN_TIMEOUT)."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        self.flush()
        self._close_deadline = self.loop.time() + CLOSE_DRAIN_TIMEOUT
        if self.transport is not None:
            self.transport.close()
        self.rearm()

    def abort(self, reason: str) -> None:
        """Drop the connection now, discarding anything unsent (protocol errors, refusals)."""
        if self.close_reason is None:
            self.close_reason = reason
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # ----------------------------------------------------------------- timers
    def rearm(self) -> None:
        if self._close_deadline is not None:
            self.timers.schedule(self, self._close_deadline)
            return
        if self.link is None or self.closing:
            return
        when = self.link.next_deadline()
        extra = self.extra_deadline()
        if extra is not None and extra < when:
            when = extra
        self.timers.schedule(self, when)

    def on_timer(self) -> None:
        """Called by the process's wheel driver when our deadline has passed."""
        now = self.loop.time()
        if self._close_deadline is not None:
            if now >= self._close_deadline and self.transport is not None:
                self.transport.abort()
            else:
                self.rearm()
            return
        link = self.link
        if link is None or self.closing:
            return
        if self.transport is not None and not self.transport.is_reading():
            link.defer_receive_timeout(now)
        try:
            link.handle_timer(now)
        except self.errors as exc:
            self.abort(f"timeout: {exc}")
            return
        extra = self.extra_deadline()
        if extra is not None and extra <= now:
            self.on_extra_timer(now)
            if self.closing:
                return
        self.flush()
        self.rearm()


def make_wheel(loop: asyncio.AbstractEventLoop) -> WheelDriver[EndpointProtocol[Any]]:
    """One timer driver for all the endpoints of a process."""
    return WheelDriver(loop, lambda proto: proto.on_timer())
