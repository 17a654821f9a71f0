"""The Aspia Host: registers with the router, keeps its host ID, and serves every offer (§8.1).

Each offer is a client waiting on a relay: the host dials that relay, acts as the SRP server
against its own users (no X25519 layer, no anonymous access), and once the client has
authenticated, joins the stream inside the channel to the exposed TCP service. A router
connection that was up and is lost is dialled again after about a second (a NAT that dropped the
mapping, a router restart: the host should be reachable again within seconds); a dial that fails
is retried every ``retry_interval`` seconds (10 s, as the C++ host). Running sessions do not
depend on the router connection and continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natrelay.aspia.connection import ChannelClosedError, make_wheel, open_channel
from natrelay.aspia.crypto import RandomBytes, default_random
from natrelay.aspia.errors import ErrorCode
from natrelay.aspia.handshake import HANDSHAKE_TIMEOUT
from natrelay.aspia.handshake_server import ServerConfig, ServerHandshake
from natrelay.aspia.peer.relay_link import (
    DEFAULT_KEEPALIVE,
    KeepAliveTiming,
    PeerError,
    open_relay_tunnel,
    relay_address,
)
from natrelay.aspia.peer.router_link import (
    HostRouterLink,
    describe_router_failure,
    format_address,
    local_info,
)
from natrelay.aspia.peer.router_session import (
    HostEvent,
    HostIdAssigned,
    HostIdRefused,
    HostOffer,
    HostRouterSession,
)
from natrelay.aspia.peer.state import HostState, load_state, save_state
from natrelay.aspia.peer.users import HostUsers
from natrelay.aspia.proto import router_common_pb2
from natrelay.engine.clock import WheelDriver
from natrelay.engine.sockopts import DEFAULT_TCP_KEEPALIVE, TcpKeepAlive
from natrelay.engine.streams import abort_stream, bridge, describe

log = logging.getLogger("natrelay.aspia.host")

HOST_RETRY_INTERVAL = 10.0
RECONNECT_AFTER_LOSS = 1.0
"""Seconds (jittered by +-50 %, at most ``retry_interval``) before dialling a router connection
that was up and was lost; the jitter spreads the hosts of a restarted router."""
CONNECT_TIMEOUT = 30.0
MAX_PENDING_OFFERS = 64
"""Offers being connected or authenticated at once; more are dropped with a log line, so a flood
of offers (or of clients that never finish SRP) cannot make the host open unbounded sockets."""


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Everything ``natrelay aspia host`` is told on its command line."""

    router: tuple[str, int]
    router_key: bytes
    expose: tuple[str, int]
    state_path: Path
    retry_interval: float = HOST_RETRY_INTERVAL
    connect_timeout: float = CONNECT_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    random_bytes: RandomBytes = default_random
    """Randomness for the handshakes (tests inject short SRP secrets to stay fast)."""
    keepalive: KeepAliveTiming = DEFAULT_KEEPALIVE
    """Pings on the router link and on every relayed session (they keep NAT mappings alive)."""
    tcp_keepalive: TcpKeepAlive | None = DEFAULT_TCP_KEEPALIVE
    """Kernel keep-alive on the router link (None: off): notices a dropped NAT mapping in seconds."""
    fallback_routers: tuple[tuple[str, int], ...] = ()
    """Other routers of the same cluster (same key, same database), tried in turn when the
    current one is lost or unreachable; the wait of ``retry_interval`` comes after a whole round."""

    @property
    def routers(self) -> tuple[tuple[str, int], ...]:
        return (self.router, *self.fallback_routers)


class AspiaHost:
    """One host process: its router session, and one task per relayed client."""

    def __init__(self, settings: HostSettings, users: HostUsers,
                 on_host_id: Callable[[int], None] = lambda _id: None) -> None:
        self.settings = settings
        self.users = users
        self.on_host_id = on_host_id
        self.state: HostState = load_state(settings.state_path)
        self.host_id = 0
        self.sessions_served = 0
        self._timers: WheelDriver[Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._link: HostRouterLink | None = None
        self._pending = 0
        self._router = settings.router
        self.router_connections = 0
        """Router connections established so far (one per successful dial)."""
        self._silent_since: float | None = None
        """When the kernel gave up on the last router connection (keep-alive or data unanswered)."""
        # One seed per process: a probed unknown name gets the same fake salt every time (§4.8).
        self._server_config = ServerConfig(users=users.lookup, seed_key=os.urandom(64), info=local_info(),
                                           timeout=settings.handshake_timeout)

    @property
    def timers(self) -> WheelDriver[Any]:
        if self._timers is None:
            self._timers = make_wheel(asyncio.get_running_loop())
        return self._timers

    @property
    def router_address(self) -> str:
        return format_address(*self._router)

    # ------------------------------------------------------------- router loop
    async def run(self, stop: asyncio.Event) -> int:
        """Stay registered until ``stop``; returns 1 on a misconfiguration that retrying cannot fix."""
        s = self.settings
        routers = s.routers
        index = failed = 0
        try:
            while not stop.is_set():
                self._router = routers[index]
                before = self.router_connections
                outcome = await self._router_session(stop)
                if outcome is not None:
                    log.error("%s", outcome)
                    return 1
                if stop.is_set():
                    break
                lost = self.router_connections > before  # it was up: most likely it is still there
                failed = 0 if lost else failed + 1
                index = (index + 1) % len(routers)
                if len(routers) > 1 and failed < len(routers):
                    continue  # another router of the cluster may be up: try it at once
                failed = 0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._delay(lost))
            return 0
        finally:
            await self.aclose()

    def _delay(self, lost: bool) -> float:
        """How long to wait before the next dial: short after losing a connection that was up."""
        interval = self.settings.retry_interval
        return min(interval, RECONNECT_AFTER_LOSS * random.uniform(0.5, 1.5)) if lost else interval

    async def _router_session(self, stop: asyncio.Event) -> str | None:
        """One router connection, from dialling to loss; a returned string is a fatal error."""
        s = self.settings
        where = self.router_address
        session = HostRouterSession(self.state.key)
        made: list[HostRouterLink] = []

        def factory() -> HostRouterLink:
            made.append(HostRouterLink(s.router_key, session, self.timers, self._on_event, s.random_bytes,
                                       s.keepalive, s.tcp_keepalive))
            return made[-1]

        try:
            link = await open_channel(*self._router, factory, timeout=s.connect_timeout)
        except (ChannelClosedError, TimeoutError) as exc:  # before OSError: these are OSErrors too
            if not made:  # the TCP connection itself timed out
                log.warning("cannot reach the router at %s: timed out; retrying in %.0f s", where,
                            s.retry_interval)
                return None
            message = describe_router_failure(made[-1], exc, where, None)
            if isinstance(exc, ChannelClosedError) and exc.error is not None \
                    and exc.error.code is ErrorCode.ACCESS_DENIED:
                return message  # a wrong --router-key stays wrong: stop instead of retrying forever
            log.warning("%s; retrying in %.0f s", message, s.retry_interval)
            return None
        except OSError as exc:
            log.warning("cannot reach the router at %s: %s; retrying in %.0f s", where,
                        exc.strerror or exc, s.retry_interval)
            return None
        assert isinstance(link, HostRouterLink)
        self._link = link
        self.router_connections += 1
        log.info("connected to the router at %s", where)
        if self._silent_since is not None:
            log.info("back on the router %.1f s after the TCP keep-alive found the router connection dead "
                     "(no answer to its probes: a NAT or the network dropped it)",
                     time.monotonic() - self._silent_since)
            self._silent_since = None
        stopper = asyncio.ensure_future(stop.wait())
        waiters: set[asyncio.Future[Any]] = {stopper, link.closed}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            self._link = None
        if stop.is_set():
            link.close("host stopping")
            return None
        if link.timed_out:
            self._silent_since = time.monotonic()
        log.warning("lost the router connection (%s); reconnecting", link.closed.result())
        return None

    def _on_event(self, event: HostEvent) -> None:
        if isinstance(event, HostIdAssigned):
            self._on_host_id(event)
        elif isinstance(event, HostIdRefused):
            log.error("%s; reconnecting", event.reason)
            if self._link is not None:
                self._link.close(event.reason)
        elif isinstance(event, HostOffer):
            if self._pending >= MAX_PENDING_OFFERS:
                log.warning("dropped a connection offer: %d clients are already authenticating",
                            self._pending)
                return
            self._pending += 1  # counted from now, not from when the task first runs
            self._spawn(self._serve(event.credentials))

    def _on_host_id(self, event: HostIdAssigned) -> None:
        new = HostState(event.host_id, event.key)
        if new != self.state:
            try:
                save_state(self.settings.state_path, new)
            except OSError as exc:
                log.error("cannot save the host ID to %s: %s (it will change on restart)",
                          self.settings.state_path, exc.strerror or exc)
            self.state = new
        if event.host_id != self.host_id:
            self.host_id = event.host_id
            log.info("registered with the router as host %d", event.host_id)
            self.on_host_id(event.host_id)

    # ------------------------------------------------------------ relayed side
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _handshake(self, now: float) -> ServerHandshake:
        return ServerHandshake(self._server_config, now, self.settings.random_bytes)

    async def _serve(self, credentials: router_common_pb2.RelayCredentials) -> None:
        s = self.settings
        where = relay_address(credentials)
        try:
            proto = await open_relay_tunnel(credentials, self._handshake, self.timers, server=True,
                                            timeout=s.connect_timeout, keepalive=s.keepalive)
            await proto.wait_established()  # the channel's own handshake timer bounds this
        except PeerError as exc:
            log.warning("%s", exc)
            return
        except ChannelClosedError as exc:
            log.info("a client on relay %s did not authenticate: %s", where, exc.error or exc.reason)
            return
        finally:
            self._pending -= 1
        result = proto.channel.result
        assert result is not None
        self.sessions_served += 1
        log.info("client authenticated as host user %r through relay %s", result.user_name, where)
        reader, writer = proto.streams()
        try:
            local = await asyncio.wait_for(asyncio.open_connection(*s.expose), s.connect_timeout)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot reach the exposed service %s: %s", format_address(*s.expose),
                        exc or "timed out")
            # Not an end of stream: the client must learn that the session failed, and why.
            abort_stream(writer, f"the host cannot reach its service {format_address(*s.expose)}: "
                                 f"{describe(exc) if str(exc) else 'timed out'}")
            return
        try:
            sent, received = await bridge((reader, writer), local)
            log.info("session through relay %s ended: %d bytes to the service, %d back",
                     where, sent, received)
        except (OSError, ConnectionError) as exc:
            log.info("session through relay %s ended: %s", where, exc)

    async def aclose(self) -> None:
        """Stop serving: close the router link and every relayed session."""
        if self._link is not None:
            self._link.close("host stopping")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._timers is not None:
            self._timers.close()
            self._timers = None
