"""The Aspia Client: one relayed, authenticated byte stream to a host per ``connect()`` (§8.2).

For every connection it asks the router for an offer (``connection_request``), meets the host on
the relay of that offer, and runs the SRP client handshake against the host's users, asking for
the port-forwarding session type. The router connection is kept between connections (one login
for many forwarded connections) and is re-established on the next ``connect()`` once lost.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from natrelay.aspia.connection import ChannelClosedError, make_wheel, open_channel
from natrelay.aspia.crypto import RandomBytes, default_random
from natrelay.aspia.errors import ErrorCode
from natrelay.aspia.handshake import HANDSHAKE_TIMEOUT
from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
from natrelay.aspia.peer.relay_link import (
    DEFAULT_KEEPALIVE,
    KeepAliveTiming,
    PeerError,
    RelayTunnel,
    Streams,
    describe_client_failure,
    open_relay_tunnel,
    relay_address,
)
from natrelay.aspia.peer.router_link import (
    SESSION_CLIENT,
    ClientRouterLink,
    describe_router_failure,
    format_address,
    local_info,
)
from natrelay.aspia.peer.router_session import OfferError
from natrelay.aspia.peer.users import PORT_FORWARD_SESSION, Credentials
from natrelay.engine.clock import WheelDriver
from natrelay.engine.sockopts import DEFAULT_TCP_KEEPALIVE, TcpKeepAlive

log = logging.getLogger("natrelay.aspia.client")

CONNECT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Everything ``natrelay aspia client`` is told on its command line."""

    router: tuple[str, int]
    router_key: bytes
    account: Credentials
    """The router account (SRP, session CLIENT)."""
    host_id: int
    host_account: Credentials
    """The host user the client logs in as on the host (defaults to the router account)."""
    connect_timeout: float = CONNECT_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    random_bytes: RandomBytes = default_random
    """Randomness for the handshakes (tests inject short SRP secrets to stay fast)."""
    keepalive: KeepAliveTiming = DEFAULT_KEEPALIVE
    """Pings on the router link and on every relayed connection (they keep NAT mappings alive)."""
    tcp_keepalive: TcpKeepAlive | None = DEFAULT_TCP_KEEPALIVE
    """Kernel keep-alive on the router link (None: off): a login a NAT dropped is noticed in
    seconds, so the next connection logs in again instead of waiting on a dead link."""
    fallback_routers: tuple[tuple[str, int], ...] = ()
    """Other routers of the same cluster, tried in order when the current one cannot be reached."""


def explain_offer_error(error: OfferError, host_id: int) -> str:
    """The router's refusal of a connection request, as the user should read it."""
    if error is OfferError.PEER_NOT_FOUND:
        return (f"host ID {host_id} is not connected to the router (PEER_NOT_FOUND): check the ID the "
                f"host printed and that the host is running")
    if error is OfferError.KEY_POOL_EMPTY:
        return ("the router has no relay to offer (KEY_POOL_EMPTY): no relay is connected to it, or "
                "every relay is at its MaxPeerCount")
    if error is OfferError.ACCESS_DENIED:
        return f"the router denied the connection to host ID {host_id} (ACCESS_DENIED)"
    return f"the router could not broker a connection to host ID {host_id} ({error.name})"


class AspiaClient:
    """Opens relayed streams to one host; safe to use from many tasks at once."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._timers: WheelDriver[Any] | None = None
        self._link: ClientRouterLink | None = None
        self._lock = asyncio.Lock()
        self._router = settings.router
        info = local_info()
        self._router_config = ClientConfig(
            session_type=SESSION_CLIENT, username=settings.account.name, password=settings.account.password,
            server_public_key=settings.router_key, info=info, timeout=settings.handshake_timeout)
        self._host_config = ClientConfig(
            session_type=PORT_FORWARD_SESSION, username=settings.host_account.name,
            password=settings.host_account.password, info=local_info(display_name=settings.account.name),
            timeout=settings.handshake_timeout)

    @property
    def timers(self) -> WheelDriver[Any]:
        if self._timers is None:
            self._timers = make_wheel(asyncio.get_running_loop())
        return self._timers

    @property
    def router_address(self) -> str:
        return format_address(*self._router)

    async def router(self) -> ClientRouterLink:
        """The authenticated router link, dialled if there is none (raises :class:`PeerError`)."""
        async with self._lock:
            link = self._link
            if link is not None and not link.closing:
                return link
            s = self.settings
            # The router that served last first, then the others of the cluster in order.
            order = [self._router, *(r for r in (s.router, *s.fallback_routers) if r != self._router)]
            errors: list[str] = []
            for address in order:
                try:
                    proto = await self._dial(address)
                except PeerError as exc:
                    cause = exc.__cause__
                    if isinstance(cause, ChannelClosedError) and cause.error is not None \
                            and cause.error.code is ErrorCode.ACCESS_DENIED:
                        raise  # a wrong password or key is wrong at every router of the cluster
                    errors.append(str(exc))
                    continue
                self._router = address
                break
            else:
                raise PeerError("; ".join(errors))
            where = self.router_address
            self._link = proto
            log.info("logged in to the router at %s as %r", where, s.account.name)
            if link is not None and link.timed_out:
                log.info("logged in again: the TCP keep-alive had found the previous router connection dead "
                         "(no answer to its probes: a NAT or the network dropped it)")
            return proto

    async def _dial(self, address: tuple[str, int]) -> ClientRouterLink:
        s = self.settings
        made: list[ClientRouterLink] = []

        def factory() -> ClientRouterLink:
            made.append(ClientRouterLink(self._router_config, self.timers, s.random_bytes, s.keepalive,
                                         s.tcp_keepalive))
            return made[-1]

        where = format_address(*address)
        try:
            proto = await open_channel(*address, factory, timeout=s.connect_timeout)
        except (ChannelClosedError, TimeoutError) as exc:  # before OSError: these are OSErrors too
            who = s.account.name
            raise PeerError(describe_router_failure(made[-1], exc, where, who) if made
                            else f"cannot reach the router at {where}: timed out") from exc
        except OSError as exc:
            raise PeerError(f"cannot reach the router at {where}: {exc.strerror or exc}") from exc
        assert isinstance(proto, ClientRouterLink)
        return proto

    async def connect(self) -> Streams:
        """A new stream to the host's exposed service (raises :class:`PeerError`)."""
        return (await self.open()).streams()

    async def open(self) -> RelayTunnel:
        """Like :meth:`connect`, but the relay connection itself (for its ``closed`` future)."""
        s = self.settings
        link = await self.router()
        try:
            offer = await asyncio.wait_for(asyncio.shield(link.request(s.host_id)), s.connect_timeout)
        except TimeoutError:
            # Offers are matched in order; a lost answer would shift every later one, so start over.
            link.abort("the router did not answer a connection request")
            raise PeerError(f"the router at {self.router_address} did not answer the connection request "
                            f"in time") from None
        if offer.error is not OfferError.SUCCESS or offer.credentials is None:
            raise PeerError(explain_offer_error(offer.error, s.host_id))
        credentials = offer.credentials
        where = relay_address(credentials)
        proto = await open_relay_tunnel(credentials, self._handshake, self.timers, server=False,
                                        timeout=s.connect_timeout, keepalive=s.keepalive)
        try:
            await proto.wait_established()  # bounded by the relay's pairing and the handshake timer
        except ChannelClosedError as exc:
            raise PeerError(describe_client_failure(proto, exc, where, s.host_account.name)) from exc
        log.info("connected to host %d through relay %s", s.host_id, where)
        return proto

    def _handshake(self, now: float) -> ClientHandshake:
        return ClientHandshake(self._host_config, now, self.settings.random_bytes)

    def close(self) -> None:
        if self._link is not None:
            self._link.close("client stopping")
            self._link = None
        if self._timers is not None:
            self._timers.close()
            self._timers = None
