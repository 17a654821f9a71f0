"""Offset relay clients: connect to a public key through a relay, or listen under one's own.

Each relayed connection carries an end-to-end secure channel between the two nodes (spec §2.2,
§8), and appears to the caller as an ordinary asyncio ``StreamReader``/``StreamWriter`` pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from natrelay.engine.clock import WheelDriver
from natrelay.engine.sockopts import (
    DEFAULT_TCP_KEEPALIVE,
    TcpKeepAlive,
    apply_tcp_keepalive,
    is_keepalive_timeout,
)
from natrelay.engine.streams import abort_stream, describe
from natrelay.engine.tunnel import StreamEnd, TunnelStreamProtocol, TunnelTransport
from natrelay.offset import constants as C
from natrelay.offset.channel import RandomPool
from natrelay.offset.crypto import CipherCache, Identity
from natrelay.offset.errors import ProtocolError
from natrelay.offset.files import RelayTicket, b64url_encode
from natrelay.offset.link import Link
from natrelay.offset.messages import (
    Accept,
    Connect,
    InitConnection,
    Listen,
    decode_incoming_connection,
    encode_init_connection,
    encode_reject_connection,
)
from natrelay.offset.protocol import LinkProtocol, make_wheel
from natrelay.ops.addresses import parse_host_port

log = logging.getLogger(__name__)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
TunnelHandler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

#: Reader buffer per tunnel before the relay connection stops being read.
STREAM_LIMIT = 1024 * 1024


class TunnelError(ConnectionError):
    """A tunnel could not be opened; the message says why, in the user's terms.

    ``established`` tells whether the secure channel to the relay was up when the relay ended
    the connection (``None``: unknown), ``reset`` whether it ended with a TCP reset, which is
    how strelay refuses a connection at one of its limits (an orderly close means "no such
    listener" or "rejected"); the Offset protocol itself has no error message.
    """

    def __init__(self, message: str, *, established: bool | None = None, reset: bool = False,
                 explained: bool = False) -> None:
        super().__init__(message)
        self.established = established
        self.reset = reset
        self.explained = explained  # the message already says what the relay's behaviour means


class RelayLinkClient(LinkProtocol):
    """A node's connection to a relay: version, secure channel pinned to the ticket's key."""

    def __init__(self, client: OffsetClient, init: InitConnection) -> None:
        super().__init__(client.make_relay_link, client.timers)
        self.client = client
        self.init = init
        self.closed: asyncio.Future[str] = self.loop.create_future()
        self.reset = False
        self.timed_out = False
        """The kernel gave up on the connection (ETIMEDOUT): keep-alive probes or data unanswered."""

    @property
    def established(self) -> bool:
        """Whether the secure channel to the relay is (or was, once closed) up."""
        return self.link is not None and self.link.established

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_reason is None and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            self.reset = True  # the relay reset the connection before anything else ended it
        self.timed_out = is_keepalive_timeout(exc)
        super().connection_lost(exc)

    def refusal(self, reason: str) -> TunnelError:
        """The error for a relay connection that closed before it was of any use."""
        address = self.client.ticket.address
        explained = explain_relay_refusal(address, reason, established=self.established, reset=self.reset)
        return TunnelError(explained or reason, established=self.established, reset=self.reset,
                           explained=explained is not None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.send(encode_init_connection(self.init))  # held by the link until it is established

    def on_closed(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)


class TunnelConnection(RelayLinkClient):
    """A relay connection (Connect or Accept) that carries one end-to-end tunnel."""

    def __init__(self, client: OffsetClient, init: InitConnection, remote_key: bytes,
                 app_protocol: asyncio.BaseProtocol) -> None:
        super().__init__(client, init)
        self.remote_key = remote_key
        self.stream = StreamEnd(cast(asyncio.Protocol, app_protocol))
        self.e2e = client.make_e2e_link(remote_key, self.loop.time())
        self.ready: asyncio.Future[TunnelTransport] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._pump()  # our end-to-end ExchangeRandNonce goes right behind InitConnection

    def send_app(self, messages: list[bytes]) -> None:
        """Send stream-layer messages through the end-to-end channel."""
        if self.closing:
            return
        for message in messages:
            self.e2e.send(message)
        self._pump()

    def _pump(self) -> None:
        frames = self.e2e.take_output()
        if frames:
            self.send_many(frames)

    def on_messages(self, messages: list[bytes]) -> None:
        now = self.loop.time()
        e2e = self.e2e
        for frame in messages:
            try:
                app_messages = e2e.receive_frame(frame, now)
            except ProtocolError as exc:
                self.abort(f"end-to-end protocol error: {exc}")
                return
            if self.stream.transport is None and e2e.established:
                self._open_tunnel()
            for message in app_messages:
                problem = self.stream.deliver(message)
                if problem is not None:
                    self.abort(f"tunnel {problem}")
                    return
            self.maybe_finish()
        self._pump()

    def _open_tunnel(self) -> None:
        assert self.transport is not None
        extra = {"peername": self.transport.get_extra_info("peername"),
                 "sockname": self.transport.get_extra_info("sockname"),
                 "remote_public_key": self.remote_key}
        tunnel = self.stream.open(self, extra)
        if not self.ready.done():
            self.ready.set_result(tunnel)

    def maybe_finish(self) -> None:
        """Both sides have ended their streams: the tunnel is done."""
        if self.stream.finished:
            self.close("tunnel finished")

    def on_pause_writing(self) -> None:
        self.stream.pause_writing()

    def on_resume_writing(self) -> None:
        self.stream.resume_writing()

    def extra_deadline(self) -> float | None:
        return self.e2e.next_deadline()

    def on_extra_timer(self, now: float) -> None:
        if self.transport is not None and not self.transport.is_reading():
            self.e2e.defer_receive_timeout(now)  # its frames wait unread behind the relay link's
        try:
            self.e2e.handle_timer(now)
        except ProtocolError as exc:
            self.abort(f"end-to-end {exc}")
            return
        self._pump()

    def on_closed(self, reason: str) -> None:
        super().on_closed(reason)
        if self.stream.transport is None and not self.ready.done():
            self.ready.set_exception(self.refusal(reason))
        if reason == "peer closed the connection" or reason.startswith("connection lost") \
                or "keepalive" in reason:
            # Only the relay's socket is visible here: a relay that died and one that closed our
            # side because the other node died look alike, so the message names both.
            reason = (f"the relay at {self.client.ticket.address} went away, or "
                      f"{b64url_encode(self.remote_key)} did ({reason})")
        self.stream.connection_lost(reason)


class ListenConnection(RelayLinkClient):
    """The listen connection: receives ``IncomingConnection``, answers with Accept or Reject."""

    def __init__(self, listener: OffsetListener) -> None:
        super().__init__(listener.client, Listen())
        self.listener = listener
        self.up: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The listen connection is the one a NAT can silently drop while we wait for callers:
        # kernel probes find that out in seconds (engine/sockopts.py). It carries only small
        # messages, so TCP_USER_TIMEOUT cannot mistake backpressure for a dead path.
        apply_tcp_keepalive(transport.get_extra_info("socket"), self.client.tcp_keepalive, user_timeout=True)
        super().connection_made(transport)

    def on_established(self) -> None:
        if not self.up.done():
            self.up.set_result(None)

    def on_messages(self, messages: list[bytes]) -> None:
        for payload in messages:
            try:
                key = decode_incoming_connection(payload)
            except ProtocolError as exc:
                # spec §8.3 item 4: anything else ends the listener, as if the relay had closed.
                self.close(f"unexpected payload on the listen connection: {exc}")
                return
            self.listener.incoming(key, self)

    def on_closed(self, reason: str) -> None:
        super().on_closed(reason)
        if not self.up.done():
            self.up.set_exception(self.refusal(reason))


class OffsetClient:
    """A node's identity and its relay: opens tunnels to keys and listens for them."""

    def __init__(self, identity: Identity, ticket: RelayTicket, *,
                 max_frame: int = C.DEFAULT_MAX_FRAME, handshake_timeout: float = C.HANDSHAKE_TIMEOUT,
                 keepalive_timeout: float = C.KEEPALIVE_TIMEOUT,
                 heartbeat_interval: float = C.HEARTBEAT_INTERVAL,
                 tcp_keepalive: TcpKeepAlive | None = DEFAULT_TCP_KEEPALIVE) -> None:
        self.identity = identity
        self.ticket = ticket
        self.host, self.port = parse_host_port(ticket.address, what="relay ticket address")
        self.max_frame = max_frame
        self.handshake_timeout = handshake_timeout
        self.keepalive_timeout = keepalive_timeout
        self.heartbeat_interval = heartbeat_interval
        self.tcp_keepalive = tcp_keepalive
        """Kernel keep-alive on the listen connection (None: off)."""
        self._timers: WheelDriver[Any] | None = None
        self.ciphers = CipherCache()  # AEAD contexts of the busiest links (see CipherCache)
        self.padding = RandomPool()  # padding bytes a block at a time (see RandomPool)

    @property
    def timers(self) -> WheelDriver[Any]:
        if self._timers is None:
            self._timers = make_wheel(asyncio.get_running_loop())
        return self._timers

    def make_relay_link(self, now: float) -> Link:
        return Link(self.identity, now=now, expected_remote=self.ticket.public_key, framed=True,
                    version_prefix=True, max_frame=self.max_frame,
                    handshake_timeout=self.handshake_timeout, keepalive_timeout=self.keepalive_timeout,
                    heartbeat_interval=self.heartbeat_interval, forwardable=False,
                    ciphers=self.ciphers, padding=self.padding)

    def make_e2e_link(self, remote_key: bytes, now: float) -> Link:
        return Link(self.identity, now=now, expected_remote=remote_key, framed=False,
                    version_prefix=False, max_frame=self.max_frame,
                    handshake_timeout=self.handshake_timeout, keepalive_timeout=self.keepalive_timeout,
                    heartbeat_interval=self.heartbeat_interval, forwardable=False,
                    ciphers=self.ciphers, padding=self.padding)

    async def _dial(self, factory: Callable[[], LinkProtocol]) -> LinkProtocol:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(factory, self.host, self.port), self.handshake_timeout)
        except ConnectionResetError as exc:
            # The relay accepted the TCP connection and reset it at once (the reset overtook the
            # connection's set-up here): strelay's refusal at a connection limit.
            reason = f"connection reset: {exc}"
            explained = explain_relay_refusal(self.ticket.address, reason, established=False, reset=True)
            raise TunnelError(explained or reason, established=False, reset=True, explained=True) from exc
        except (TimeoutError, OSError) as exc:
            raise TunnelError(f"cannot reach the relay at {self.ticket.address}: "
                              f"{exc or 'timed out'}") from exc
        return proto

    async def open_tunnel(self, init: InitConnection, remote_key: bytes) -> Streams:
        """A relay connection sending ``init``, carrying a tunnel to ``remote_key``."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        app = TunnelStreamProtocol(reader, loop=loop)
        proto = await self._dial(lambda: TunnelConnection(self, init, remote_key, app))
        assert isinstance(proto, TunnelConnection)
        tunnel = await proto.ready
        return reader, asyncio.StreamWriter(tunnel, app, reader, loop)

    async def connect(self, remote_key: bytes) -> Streams:
        """A tunnel to the node that listens on the relay as ``remote_key``."""
        try:
            return await self.open_tunnel(Connect(remote_key), remote_key)
        except TunnelError as exc:
            if exc.explained:
                raise
            raise TunnelError(explain_connect_failure(remote_key, str(exc)), established=exc.established,
                              reset=exc.reset, explained=True) from exc

    def listener(self, on_tunnel: TunnelHandler, *, allow: Callable[[bytes], bool] | None = None,
                 max_pending: int = 64) -> OffsetListener:
        return OffsetListener(self, on_tunnel, allow=allow, max_pending=max_pending)

    def close(self) -> None:
        if self._timers is not None:
            self._timers.close()
            self._timers = None


def explain_relay_refusal(relay: str, reason: str, *, established: bool | None, reset: bool) -> str | None:
    """What a relay connection that ended early says about the relay, or ``None`` if nothing.

    What a client can observe: whether the secure handshake had finished, and whether the relay
    ended the connection with a reset (strelay's way to refuse at a limit) or an orderly close.
    """
    if established is False:
        if reset:
            return (f"the relay at {relay} refused the connection before the secure handshake, as "
                    f"strelay does at its connection limits (connections in total or from this "
                    f"address, handshakes in progress); try again later ({reason})")
        if "protocol error" in reason or "timeout" in reason:
            return f"no secure connection to the relay at {relay}: {reason}"
        return (f"the relay at {relay} closed the connection during the secure handshake: it may be "
                f"overloaded or at a connection limit ({reason})")
    if reset:
        return (f"the relay at {relay} refused the connection at one of its limits after the "
                f"handshake (listeners from this address or in total, or connections waiting for "
                f"one listener); try again later ({reason})")
    return None


def explain_connect_failure(remote_key: bytes, reason: str) -> str:
    """Turn a relay connection closed after the handshake into what it means for the user.

    (Closes that ``explain_relay_refusal`` explains never get here.)
    """
    who = b64url_encode(remote_key)
    if "cannot reach the relay" in reason:
        return reason
    if "timeout" in reason or "timed out" in reason:
        return f"{who} did not accept the connection in time ({reason})"
    return (f"the relay closed the connection before {who} answered: that key is not listening "
            f"on this relay, or it refused the connection ({reason})")


class OffsetListener:
    """Listens on the relay under the client's key; reconnects with backoff when it loses it."""

    def __init__(self, client: OffsetClient, on_tunnel: TunnelHandler, *,
                 allow: Callable[[bytes], bool] | None, max_pending: int) -> None:
        self.client = client
        self.on_tunnel = on_tunnel
        self.allow = allow
        self._slots = asyncio.Semaphore(max_pending)
        self._tasks: set[asyncio.Task[None]] = set()
        self._conn: ListenConnection | None = None
        self.connected = asyncio.Event()

    async def listen_once(self) -> ListenConnection:
        """Open the listen connection and wait until the relay has it."""
        proto = await self.client._dial(lambda: ListenConnection(self))
        assert isinstance(proto, ListenConnection)
        await proto.up
        self._conn = proto
        self.connected.set()
        return proto

    async def run(self, *, first: ListenConnection | None = None, max_backoff: float = C.BACKOFF) -> None:
        """Listen forever, reconnecting after 1, 2, 4, ... ``max_backoff`` seconds.

        ``first`` is a listen connection already opened with ``listen_once`` (so a caller can
        report a failure to reach the relay before going on in the background).
        """
        delay = 1.0
        silent_since: float | None = None  # when the kernel gave up on the last listen connection
        while True:
            try:
                conn = first if first is not None else await self.listen_once()
                first = None
                log.info("listening on relay %s as %s", self.client.ticket.address,
                         b64url_encode(self.client.identity.public_key))
                if silent_since is not None:
                    log.info("back on the relay %.1f s after the TCP keep-alive found the listen "
                             "connection dead (no answer to its probes: a NAT or the network dropped it)",
                             time.monotonic() - silent_since)
                    silent_since = None
                delay = 1.0
                reason = await conn.closed
                if conn.reset:
                    log.warning("the relay reset the listen connection (%s): strelay does this when a "
                                "limit refuses a listener (listeners from this address or in total); "
                                "reconnecting", reason)
                else:
                    log.warning("lost the relay (%s); reconnecting", reason)
                if conn.timed_out:
                    silent_since = time.monotonic()
            except TunnelError as exc:
                log.warning("cannot listen on the relay: %s; retrying in %.0f s", exc, delay)
            finally:
                self.connected.clear()
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, max_backoff)

    def incoming(self, key: bytes, conn: ListenConnection) -> None:
        who = b64url_encode(key)
        if self.allow is not None and not self.allow(key):
            log.info("rejected connection from %s (not allowed)", who)
            conn.send(encode_reject_connection(key))
            return
        if self._slots.locked():
            log.warning("rejected connection from %s: too many pending connections", who)
            conn.send(encode_reject_connection(key))
            return
        task = asyncio.create_task(self._accept(key, conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, key: bytes, conn: ListenConnection) -> None:
        who = b64url_encode(key)
        async with self._slots:
            try:
                reader, writer = await self.client.open_tunnel(Accept(key), key)
            except TunnelError as exc:
                log.info("could not accept connection from %s: %s", who, exc)
                conn.send(encode_reject_connection(key))
                return
        log.info("accepted connection from %s", who)
        try:
            await self.on_tunnel(key, reader, writer)
        except BaseException as exc:
            # A handler that failed (or was stopped) must not end the stream as if it were complete.
            abort_stream(writer, "interrupted" if isinstance(exc, asyncio.CancelledError) else describe(exc))
            raise
        finally:
            writer.close()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._conn is not None:
            self._conn.close("listener stopped")
