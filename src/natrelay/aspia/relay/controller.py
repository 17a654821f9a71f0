"""The relay's link to the router (spec §7.1): register, upload keys, report, obey, reconnect.

One :class:`RouterController` lives as long as the relay process. It dials the router, runs the
anonymous RELAY handshake pinned to ``RouterPublicKey``, announces ``MaxPeerCount - active`` keys,
and then reacts to ``key_used`` (the key must pair within 30 s or is replaced) and to
``peer_connection_request`` (drop a session). When the link fails it voids the pool and tries
again every ``reconnect_delay`` seconds (15 s) while relayed sessions carry on untouched.
Replacement keys travel in batches while the router holds plenty (see :class:`AnnounceBatch`),
so a busy relay does not cost the router one message per pairing.

A relay registered with several routers of a cluster runs one controller per router. When one
(re)connects, the pool asks the others for free keys back (``key_withdraw``, a natrelay
extension of RelayToRouter; see :meth:`KeyPool.rebalance`), and the confirmed ones
(``keys_withdrawn``) are replaced by fresh keys for the router that came back. With one
router none of this is ever sent, so the original router sees exactly the original protocol.

Every failure mode an operator can fix gets a log line that names the fix: a router that does not
answer, a router key that does not match ``RouterPublicKey`` (and which file holds it), a router
that refuses relay sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from natrelay.aspia.channel import KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, Channel
from natrelay.aspia.connection import ChannelClosedError, ChannelProtocol, open_channel
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.handshake import HANDSHAKE_TIMEOUT, Identify, SessionInfo
from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
from natrelay.aspia.messages import RELAY_FROM_ROUTER, first_present, make_envelope, parse, serialize
from natrelay.aspia.proto import router_common_pb2, router_relay_pb2
from natrelay.aspia.relay.keypool import ANNOUNCE_DELAY, ANNOUNCE_LOW_STOCK, AnnounceBatch, KeyPool, PoolKey
from natrelay.engine.clock import WheelDriver

log = logging.getLogger("natrelay.aspia.relay")

SESSION_RELAY = 8
RECONNECT_DELAY = 15.0
KEYS_PER_MESSAGE = 4096
"""Keys per ``key_pool`` message: a RelayKey is about 55 bytes, so this stays far below the 7 MiB
frame limit however large MaxPeerCount is."""

StatsSource = Callable[[float], router_relay_pb2.RelayToRouter]
"""Builds ``RelayToRouter{relay_stat}`` for the given loop time."""
DisconnectHandler = Callable[[int], bool]
"""Drops the relay-local session with this ID; False if there is none."""


@dataclass(frozen=True)
class RouterLinkConfig:
    """What the router link needs from relay.json, plus the timers tests shorten."""

    router_host: str
    router_port: int
    router_public_key: bytes
    peer_host: str
    peer_port: int
    config_source: str = "relay.json"
    """Where RouterPublicKey came from, named in the key-mismatch log line."""
    statistics_interval: float | None = None
    """Seconds between ``relay_stat`` messages; None when StatisticsEnabled is false."""
    reconnect_delay: float = RECONNECT_DELAY
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    keepalive_interval: float = KEEPALIVE_INTERVAL
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    announce_delay: float = ANNOUNCE_DELAY
    """Longest wait of a replacement key for others to travel with (only while the router has plenty)."""
    announce_low_stock: int = ANNOUNCE_LOW_STOCK
    """Router stock below which replacement keys go at once."""

    @property
    def router_address(self) -> str:
        host = self.router_host
        return f"[{host}]:{self.router_port}" if ":" in host else f"{host}:{self.router_port}"


def _local_info() -> SessionInfo:
    """What the router's admin list shows about this relay (§7.1: the real relay fills these in)."""
    return SessionInfo(os_name=platform.system(), computer_name=socket.gethostname(),
                       arch=platform.machine(), cpu_cores=os.cpu_count() or 0)


def key_pool_messages(keys: list[PoolKey], peer_host: str, peer_port: int) -> list[bytes]:
    """``RelayToRouter{key_pool}`` payloads announcing ``keys``; one message even for no keys.

    Every message repeats the peer address (§7.2); with no keys it only (re)states it, which the
    router accepts (§6.5) and which is what a relay with ``MaxPeerCount`` 0 sends.
    """
    out: list[bytes] = []
    for start in range(0, max(1, len(keys)), KEYS_PER_MESSAGE):
        pool = router_relay_pb2.RelayKeyPool(
            peer_host=peer_host, peer_port=peer_port,
            key=[k.to_proto() for k in keys[start : start + KEYS_PER_MESSAGE]],
        )
        out.append(serialize(make_envelope(router_relay_pb2.RelayToRouter, "key_pool", pool)))
    return out


class _RouterChannel(ChannelProtocol):
    """The authenticated router connection; timers for key expiry and statistics ride on it."""

    def __init__(self, owner: RouterController, make_channel: Callable[[float], Channel],
                 timers: WheelDriver[Any]) -> None:
        super().__init__(make_channel, timers)
        self.owner = owner
        self.next_stats: float | None = None

    def on_connected(self) -> bool:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # asyncio and uvloop usually did this already
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return True

    def on_messages(self, messages: list[bytes]) -> None:
        for message in messages:
            self.owner.on_router_message(message, self.loop.time())

    def extra_deadline(self) -> float | None:
        if not self.ready.done():
            return None
        when = self.owner.pool.next_deadline()
        for other in (self.next_stats, self.owner.batch.next_deadline()):
            if other is not None and (when is None or other < when):
                when = other
        return when

    def on_extra_timer(self, now: float) -> None:
        self.owner.on_timer(self, now)


class RouterController:
    """Keeps the relay registered with the router for as long as :meth:`run` runs."""

    def __init__(self, config: RouterLinkConfig, pool: KeyPool, timers: WheelDriver[Any], *,
                 stats: StatsSource | None = None, disconnect: DisconnectHandler | None = None,
                 started_at: float | None = None, link: int = 0,
                 route: Callable[[list[PoolKey]], None] | None = None) -> None:
        self.config = config
        self.link = link
        """This router link's number in a relay registered with several routers (``RouterAddresses``)."""
        self.route = route if route is not None else self.announce
        """Announces new keys through whichever link the pool gave them to."""
        self.pool = pool
        self.timers = timers
        self.stats = stats
        self.disconnect = disconnect
        self.loop = asyncio.get_running_loop()
        self.started_at = self.loop.time() if started_at is None else started_at
        """Listener start: statistics ticks are counted from it (§7.5)."""
        self.batch = AnnounceBatch(pool, delay=config.announce_delay, low_stock=config.announce_low_stock)
        self.channel: _RouterChannel | None = None
        self.connects = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self.channel is not None

    # ----------------------------------------------------------------- the loop
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, and reconnect every ``reconnect_delay`` seconds until ``stop`` is set."""
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                link = asyncio.ensure_future(self._serve_once())
                await asyncio.wait({link, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not link.done():
                    link.cancel()
                    await asyncio.gather(link, return_exceptions=True)
                    break
                link.result()
                if stop.is_set():
                    break
                await asyncio.wait({stopper}, timeout=self.config.reconnect_delay)
        finally:
            stopper.cancel()
            self._drop("relay stopping")

    async def _serve_once(self) -> None:
        config = self.config
        where = config.router_address
        try:
            proto = await open_channel(config.router_host, config.router_port, self._factory,
                                       timeout=config.handshake_timeout)
        except ChannelClosedError as exc:
            self._failed(self._explain_refusal(exc))
            return
        except TimeoutError:
            self._failed(f"the router at {where} did not complete authentication in time")
            return
        except OSError as exc:
            self._failed(f"cannot reach the router at {where}: {exc.strerror or exc}")
            return
        try:
            self._registered(proto)
            reason = await asyncio.shield(proto.closed)
        except asyncio.CancelledError:
            proto.close("relay stopping")
            raise
        finally:
            self._drop(None)
        self._failed(f"the connection to the router at {where} was lost: {reason}")

    def _factory(self) -> _RouterChannel:
        config = self.config
        client = ClientConfig(session_type=SESSION_RELAY, identify=Identify.ANONYMOUS,
                              server_public_key=config.router_public_key, info=_local_info(),
                              timeout=config.handshake_timeout)

        def make_channel(now: float) -> Channel:
            return Channel(ClientHandshake(client, now), now=now,
                           keepalive_interval=config.keepalive_interval,
                           keepalive_timeout=config.keepalive_timeout)

        return _RouterChannel(self, make_channel, self.timers)

    def _explain_refusal(self, exc: ChannelClosedError) -> str:
        config = self.config
        where = config.router_address
        code = exc.error.code if exc.error is not None else None
        if code is ErrorCode.ACCESS_DENIED:
            return (f"authentication with the router at {where} failed: the router's key does not match "
                    f"RouterPublicKey in {config.config_source} (copy the content of the router's "
                    f"router.pub into it)")
        if code is ErrorCode.SESSION_DENIED:
            return (f"the router at {where} does not accept relays from this address "
                    f"(check the router's RelayWhiteList)")
        if exc.error is not None:
            return f"authentication with the router at {where} failed: {exc.error}"
        return (f"the router at {where} closed the connection during authentication ({exc.reason}); "
                f"check RouterPublicKey in {config.config_source} and the router's RelayWhiteList")

    def _failed(self, message: str) -> None:
        self.last_error = message
        moved = self.pool.on_disconnected(self.link)  # a router that cannot be reached holds nothing
        if moved:
            self.route(moved)
        log.error("%s; retrying in %g s", message, self.config.reconnect_delay)

    def _registered(self, proto: _RouterChannel) -> None:
        config = self.config
        self.channel = proto
        self.connects += 1
        self.batch.clear()
        keys = self.pool.on_connected(self.link)
        if config.statistics_interval is not None:
            proto.next_stats = self._next_stats_tick(self.loop.time())
        proto.send_many(key_pool_messages(keys, config.peer_host, config.peer_port))
        proto.rearm()
        asked = self.pool.rebalance()
        if asked:
            log.info("Asking the other routers for %d free keys back for the router at %s", asked,
                     config.router_address)
            self.route([])  # every controller sends the requests for its own router
        result = proto.channel.result
        version = result.peer_version if result is not None else "?"
        log.info("Connected to the router at %s (version %s); announced %d keys for peers at %s:%d "
                 "(%d sessions active)", config.router_address, version, len(keys), config.peer_host,
                 config.peer_port, self.pool.active)

    def _drop(self, reason: str | None) -> None:
        proto, self.channel = self.channel, None
        self.batch.clear()
        moved = self.pool.on_disconnected(self.link)
        if proto is not None and reason is not None:
            proto.close(reason)
        if moved:  # this router's capacity goes to the routers left
            log.info("%d keys of the router at %s moved to the other routers", len(moved),
                     self.config.router_address)
            self.route(moved)

    def _next_stats_tick(self, now: float) -> float:
        interval = self.config.statistics_interval
        assert interval is not None
        ticks = int((now - self.started_at) // interval) + 1
        return self.started_at + ticks * interval

    # ---------------------------------------------------------------- messages
    def announce(self, keys: list[PoolKey]) -> None:
        """Give new keys to the router, if connected (they were only made while connected).

        They go at once or with the current batch (:class:`AnnounceBatch`).
        """
        proto = self.channel
        if proto is not None:
            self._send_withdrawals(proto)
        keys = [k for k in keys if self.pool.owner(k.key_id) == self.link]
        if proto is None or not keys:
            return
        waiting = self.batch.next_deadline() is not None
        ready = self.batch.add(keys, self.loop.time())
        if ready:
            self._send_keys(proto, ready)
        elif not waiting:
            proto.rearm()  # a new batch deadline: the timer wheel must learn of it

    def _send_withdrawals(self, proto: _RouterChannel) -> None:
        """Ask this router for the keys the pool wants back (after any it has not seen yet)."""
        ids = self.pool.take_withdrawals(self.link)
        if not ids:
            return
        self._send_keys(proto, self.batch.take())  # so that it holds every key it is asked for
        for start in range(0, len(ids), KEYS_PER_MESSAGE):
            body = router_relay_pb2.RelayKeyWithdraw(key_id=ids[start : start + KEYS_PER_MESSAGE])
            proto.send(serialize(make_envelope(router_relay_pb2.RelayToRouter, "key_withdraw", body)))

    def _send_keys(self, proto: _RouterChannel, keys: list[PoolKey]) -> None:
        if keys:
            proto.send_many(key_pool_messages(keys, self.config.peer_host, self.config.peer_port))

    def on_router_message(self, payload: bytes, now: float) -> None:
        try:
            envelope = parse(router_relay_pb2.RouterToRelay, payload)
        except AspiaProtocolError as exc:
            # The original logs and keeps the connection for an unparsable message (§5.6).
            log.error("Could not read a message from the router: %s", exc)
            return
        found = first_present(envelope, RELAY_FROM_ROUTER)
        if found is None:
            log.error("Unhandled message from the router")
            return
        name, body = found
        if name == "key_used":
            assert isinstance(body, router_relay_pb2.RelayKeyUsed)
            self.pool.key_used(body.key_id, now)
            log.info("Key %d handed to peers; it expires in %g s unless they pair", body.key_id,
                     self.pool.expiry)
            return
        if name == "keys_withdrawn":
            assert isinstance(body, router_relay_pb2.RelayKeysWithdrawn)
            fresh = self.pool.withdrawn(self.link, list(body.key_id))
            log.info("The router at %s gave back %d keys; %d fresh keys go to the routers holding "
                     "the fewest", self.config.router_address, len(fresh), len(fresh))
            self.route(fresh)
            return
        assert isinstance(body, router_common_pb2.PeerConnectionRequest)
        if body.type != router_common_pb2.PEER_CONNECTION_REQUEST_DISCONNECT:
            log.error("Unknown peer connection request type %d ignored", body.type)
            return
        dropped = self.disconnect(body.peer_session_id) if self.disconnect is not None else False
        log.info("Router asked to disconnect session %d: %s", body.peer_session_id,
                 "done" if dropped else "no such session")

    def on_timer(self, proto: _RouterChannel, now: float) -> None:
        if proto is not self.channel:
            return
        self._send_keys(proto, self.batch.due(now))
        expired, keys = self.pool.expire(now)
        for key_id in expired:
            log.info("Key %d expired unused; announcing a replacement", key_id)
        self.route(keys)
        if proto.next_stats is not None and now >= proto.next_stats:
            if self.stats is not None:
                proto.send(serialize(self.stats(now)))
            proto.next_stats = self._next_stats_tick(now)
