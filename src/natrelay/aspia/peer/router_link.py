"""The peers' connections to the router (spec §8.1, §8.2): the asyncio side of :mod:`router_session`.

The host authenticates anonymously pinned to the router's public key (flow A, session HOST).
The client logs in with SRP (session CLIENT); it too is given the router's key, so it runs
flow C, SRP layered on the X25519 pin. No 2.7.0 component initiates flow C but the C++ router
serves it (§4.3, verified against the real binary), and it is the only way a client can notice a
wrong router key: the router then cannot read our SrpIdentify and hangs up, where with flow B we
would have logged in to whichever server answered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
from collections.abc import Callable
from typing import Any

from natrelay.aspia.channel import Channel
from natrelay.aspia.connection import ChannelClosedError, ChannelProtocol
from natrelay.aspia.crypto import RandomBytes, default_random
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.handshake import Identify, SessionInfo
from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
from natrelay.aspia.peer.relay_link import DEFAULT_KEEPALIVE, KeepAliveTiming, PeerError
from natrelay.aspia.peer.router_session import (
    ClientOffer,
    ClientRouterSession,
    HostEvent,
    HostRouterSession,
)
from natrelay.engine.clock import WheelDriver
from natrelay.engine.sockopts import (
    DEFAULT_TCP_KEEPALIVE,
    TcpKeepAlive,
    apply_tcp_keepalive,
    is_keepalive_timeout,
)

log = logging.getLogger(__name__)

SESSION_CLIENT = 2
SESSION_HOST = 4

_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "i386": "x86", "i686": "x86", "x86": "x86",
         "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "arm": "arm"}


def local_info(display_name: str = "") -> SessionInfo:
    """What the router's session list shows about us (§4.2 SessionResponse)."""
    return SessionInfo(os_name=platform.system(), computer_name=socket.gethostname(),
                       arch=_ARCH.get(platform.machine().lower(), ""), cpu_cores=os.cpu_count() or 0,
                       display_name=display_name)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RouterLink(ChannelProtocol):
    """A peer's router connection: hands decrypted router messages to ``on_router_message``.

    It has kernel TCP keep-alive (``tcp_keepalive``, None: off): the router link is the host's
    registration and the client's login, which a NAT can drop silently while they sit idle;
    the probes find that out in seconds instead of after a missed ping and pong (35 s).
    """

    def __init__(self, config: ClientConfig, timers: WheelDriver[Any],
                 random_bytes: RandomBytes = default_random,
                 keepalive: KeepAliveTiming = DEFAULT_KEEPALIVE,
                 tcp_keepalive: TcpKeepAlive | None = DEFAULT_TCP_KEEPALIVE) -> None:
        def make_channel(now: float) -> Channel:
            return keepalive.channel(ClientHandshake(config, now, random_bytes), now)

        super().__init__(make_channel, timers)
        self.bytes_from_router = 0
        self.tcp_keepalive = tcp_keepalive
        self.timed_out = False
        """The kernel gave up on the connection (ETIMEDOUT): keep-alive probes or data unanswered."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Router messages are small, so TCP_USER_TIMEOUT cannot mistake backpressure for a dead path.
        apply_tcp_keepalive(transport.get_extra_info("socket"), self.tcp_keepalive, user_timeout=True)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.timed_out = is_keepalive_timeout(exc)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.bytes_from_router += len(data)
        super().data_received(data)

    def send_payloads(self, payloads: list[bytes]) -> None:
        if payloads:
            self.send_many(payloads)


class HostRouterLink(RouterLink):
    """The host's router session; events go to the callback in arrival order."""

    def __init__(self, router_key: bytes, session: HostRouterSession, timers: WheelDriver[Any],
                 on_event: Callable[[HostEvent], None], random_bytes: RandomBytes = default_random,
                 keepalive: KeepAliveTiming = DEFAULT_KEEPALIVE,
                 tcp_keepalive: TcpKeepAlive | None = DEFAULT_TCP_KEEPALIVE) -> None:
        config = ClientConfig(session_type=SESSION_HOST, identify=Identify.ANONYMOUS,
                              server_public_key=router_key, info=local_info())
        super().__init__(config, timers, random_bytes, keepalive, tcp_keepalive)
        self.session = session
        self._on_event = on_event

    def on_established(self) -> None:
        self.send_payloads(self.session.start())

    def on_messages(self, messages: list[bytes]) -> None:
        for payload in messages:
            replies, events = self.session.receive(payload)
            self.send_payloads(replies)
            for event in events:
                self._on_event(event)
                if self.closing:
                    return


class ClientRouterLink(RouterLink):
    """The client's router session: ``request`` returns a future for the matching offer."""

    def __init__(self, config: ClientConfig, timers: WheelDriver[Any],
                 random_bytes: RandomBytes = default_random,
                 keepalive: KeepAliveTiming = DEFAULT_KEEPALIVE,
                 tcp_keepalive: TcpKeepAlive | None = DEFAULT_TCP_KEEPALIVE) -> None:
        super().__init__(config, timers, random_bytes, keepalive, tcp_keepalive)
        self.session = ClientRouterSession()
        self._waiters: list[asyncio.Future[ClientOffer]] = []

    def request(self, host_id: int) -> asyncio.Future[ClientOffer]:
        future: asyncio.Future[ClientOffer] = self.loop.create_future()
        if self.closing:
            future.set_exception(PeerError("the router connection is closed"))
            return future
        self._waiters.append(future)
        self.send(self.session.request(host_id))
        return future

    def on_messages(self, messages: list[bytes]) -> None:
        for payload in messages:
            try:
                offers = self.session.receive(payload)
            except AspiaProtocolError as exc:
                self.abort(f"router protocol error: {exc}")
                return
            for offer in offers:
                future = self._waiters.pop(0)
                if not future.done():
                    future.set_result(offer)

    def on_closed(self, reason: str) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_exception(PeerError(f"lost the router connection before it answered ({reason})"))


def describe_router_failure(link: RouterLink, exc: ChannelClosedError | TimeoutError, where: str,
                            user: str | None) -> str:
    """Why the router login failed, in one line; ``user`` is None for the anonymous host."""
    if isinstance(exc, TimeoutError):
        return f"the router at {where} did not complete authentication in time"
    error = exc.error
    if error is not None and error.code is ErrorCode.ACCESS_DENIED:
        if user is None:
            # Flow A: the challenge is sealed with the X25519 key; only a key mismatch fails it.
            return (f"the router at {where} does not hold the private key for --router-key: "
                    f"check it against the router's router.pub")
        return f"the router at {where} refused the login: wrong user name or password (user {user!r})"
    if error is not None and error.code is ErrorCode.SESSION_DENIED:
        what = "hosts" if user is None else f"user {user!r} as a client"
        return f"the router at {where} does not accept {what}"
    if error is not None:
        return f"the router at {where} broke the protocol: {error}"
    if link.bytes_from_router and user is not None:
        # It answered our hello, then hung up on our user name, the first message sealed with
        # its key. On the wire that is the same whether the key is wrong or the router refused
        # the login for load (its login limits, issue 8), so say both rather than guess.
        return (f"the router at {where} closed the connection when we sent the user name: either it "
                f"is refusing password logins for now (too many in progress; try again shortly) or "
                f"--router-key does not match the router's router.pub; its log says which "
                f"[{exc.reason}]")
    return f"the router at {where} closed the connection during authentication [{exc.reason}]"
