"""One relay process: key pool, peer listener and router link wired together (spec §7).

The CLI reads relay.json and calls :func:`serve_relay`; tests and the default run call it too.
Protocol timers that relay.json does not expose (the 15 s reconnect, the 30 s key expiry and
pending limit, keep-alive) and a sub-minute idle timeout can be shortened through
:class:`RelayTimers`, which the CLI fills from ``NATRELAY_ASPIA_RELAY_TIMERS`` so end-to-end
tests can exercise them in seconds rather than minutes.

Paired sessions can be forwarded on ``workers`` threads (``NATRELAY_ASPIA_RELAY_WORKERS``), so
that a relay whose one loop is saturated uses more cores while pairing and the router link stay
on the main loop. The default is 0, forwarding on the main loop: on the 2-core machine this was
measured on, neither two forwarding threads nor the engine's worker processes raised throughput
or lowered CPU per GB (see :func:`default_workers`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace

from natrelay.aspia.channel import KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT
from natrelay.aspia.connection import make_wheel
from natrelay.aspia.handshake import HANDSHAKE_TIMEOUT
from natrelay.aspia.relay.controller import RECONNECT_DELAY, RouterController, RouterLinkConfig
from natrelay.aspia.relay.keypool import KEY_EXPIRY, KeyPool, PoolKey
from natrelay.aspia.relay.listener_config import REPORT_INTERVAL, PeerListenerConfig, connection_limits
from natrelay.aspia.relay.pairing import PENDING_TIMEOUT
from natrelay.aspia.relay.server import PeerListener
from natrelay.aspia.relay.stats import relay_stat
from natrelay.engine.floodguard import FloodLimits
from natrelay.engine.threads import MAX_THREADS
from natrelay.ops.aspia_config import RelayConfig

log = logging.getLogger("natrelay.aspia.relay")

TIMERS_ENV = "NATRELAY_ASPIA_RELAY_TIMERS"
WORKERS_ENV = "NATRELAY_ASPIA_RELAY_WORKERS"
MAX_POOL_KEYS = 100_000
"""Keys actually generated however large MaxPeerCount is: each costs an X25519 key pair in
memory and on the router, and a few thousand concurrent sessions already fill a machine."""


class TimersError(ValueError):
    """``NATRELAY_ASPIA_RELAY_TIMERS`` could not be used."""


@dataclass(frozen=True)
class RelayTimers:
    """Protocol timers in seconds; the defaults are the spec's (§9)."""

    reconnect: float = RECONNECT_DELAY
    key_expiry: float = KEY_EXPIRY
    pending: float = PENDING_TIMEOUT
    handshake: float = HANDSHAKE_TIMEOUT
    keepalive_interval: float = KEEPALIVE_INTERVAL
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    idle: float | None = None
    """Overrides PeerIdleTimeout (which is in whole minutes) when set."""
    session_lifetime: float | None = None
    """Overrides MaxSessionDuration (which is in whole minutes) when set."""
    guard_report: float = REPORT_INTERVAL
    """Seconds between the info-level summaries of the flood guard's counts."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RelayTimers:
        """Parse ``name=seconds,...`` (names as the fields above); empty means defaults."""
        text = env.get(TIMERS_ENV, "").strip()
        timers = cls()
        if not text:
            return timers
        names = {f.name for f in fields(cls)}
        for item in text.split(","):
            name, sep, value = item.strip().partition("=")
            if not sep or name not in names:
                raise TimersError(f"{TIMERS_ENV}: {item!r} is not NAME=SECONDS, NAME one of {sorted(names)}")
            try:
                seconds = float(value)
            except ValueError:
                raise TimersError(f"{TIMERS_ENV}: {value!r} is not a number of seconds") from None
            if not 0 < seconds < 86400:
                raise TimersError(f"{TIMERS_ENV}: {name} must be between 0 and 86400 seconds")
            timers = replace(timers, **{name: seconds})
        # The keep-alive ranges the C++ side (and our KeepAlive) accepts.
        if not 15 <= timers.keepalive_interval <= 300 or not 5 <= timers.keepalive_timeout <= 60:
            raise TimersError(f"{TIMERS_ENV}: keepalive_interval is 15..300 s, keepalive_timeout 5..60 s")
        return timers


def default_workers() -> int:
    """Forward on the main loop (0 threads) unless told otherwise.

    Measured with ``bench/run.py --quick --subjects direct,engine,aspia --measures bulk1,bulk16``
    on 2 shared cores (issue 10, docs/architecture.md has the table): 16 sessions reached 0.26-0.51x
    direct TCP on the main loop and 0.33-0.48x with two threads, at the same relay CPU per GB
    (0.46-0.53 s/GB), and the engine's two worker processes did no better (0.33-0.46x). The traffic
    generator and the kernel's loopback TCP need the cores as well, so a second loop only competes
    with them. Threads pay off only where one loop is the bottleneck while cores are idle, so they
    are opt-in (``NATRELAY_ASPIA_RELAY_WORKERS``) until a machine shows that.
    """
    return 0


def workers_from_env(env: Mapping[str, str]) -> int:
    """``NATRELAY_ASPIA_RELAY_WORKERS`` as a thread count, or :func:`default_workers` when unset.

    Raises ValueError naming the variable when it is not a whole number 0..MAX_THREADS.
    """
    text = env.get(WORKERS_ENV, "").strip()
    if not text:
        return default_workers()
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"{WORKERS_ENV}={text!r} is not a whole number") from None
    if not 0 <= count <= MAX_THREADS:
        raise ValueError(f"{WORKERS_ENV}={count} is outside 0..{MAX_THREADS}")
    return count


def listener_config(config: RelayConfig, timers: RelayTimers, workers: int) -> PeerListenerConfig:
    """relay.json's peer side, flood guard included, with times in seconds."""
    idle = timers.idle if timers.idle is not None else 60.0 * config.peer_idle_timeout
    lifetime = (timers.session_lifetime if timers.session_lifetime is not None
                else 60.0 * config.max_session_duration)
    guard = FloodLimits(first_message_timeout=float(config.peer_first_message_timeout),
                        max_pending=config.max_pending_peers,
                        max_pending_per_source=config.max_pending_peers_per_ip,
                        connections_per_minute=config.max_connections_per_minute_per_ip)
    return PeerListenerConfig(
        config.listen_interface, config.peer_port, idle, pending_timeout=timers.pending, workers=workers,
        guard=guard, limits=connection_limits(config.max_connections, config.max_connections_per_ip),
        max_bytes_before_auth=config.max_bytes_before_auth, max_session=lifetime,
        report_interval=timers.guard_report, session_rate=config.rate_session, global_rate=config.rate_global)


async def serve_relay(config: RelayConfig, stop: asyncio.Event, *, source: str = "relay.json",
                      timers: RelayTimers | None = None, workers: int | None = None,
                      on_ready: Callable[[PeerListener, RouterController], None] | None = None) -> int:
    """Run the relay until ``stop`` is set; returns the exit status (1 if the listener cannot bind).

    ``workers`` is the number of forwarding threads (0: forward on this loop); ``None`` reads
    ``NATRELAY_ASPIA_RELAY_WORKERS`` and defaults to :func:`default_workers`. ``on_ready`` is
    called once the listener and the router link exist (the HTTP surface attaches there).
    """
    timers = RelayTimers() if timers is None else timers
    if workers is None:
        try:
            workers = workers_from_env(os.environ)
        except ValueError as exc:
            log.critical("%s", exc)
            return 1
    loop = asyncio.get_running_loop()
    wheel = make_wheel(loop)
    capacity = config.max_peer_count
    if capacity > MAX_POOL_KEYS:
        log.error("MaxPeerCount %d in %s is more than this relay can back with keys; using %d",
                  capacity, source, MAX_POOL_KEYS)
        capacity = MAX_POOL_KEYS
    if capacity == 0:
        log.error("MaxPeerCount is 0 in %s: the router gets no keys and no peer can connect", source)
    pool = KeyPool(capacity, expiry=timers.key_expiry, links=len(config.routers))
    controllers: list[RouterController] = []

    def announce(keys: list[PoolKey]) -> None:
        """Each key to the router link the pool gave it to (one link per router of a cluster)."""
        for controller in controllers:
            controller.announce(keys)  # takes only the keys of its own link

    listener = PeerListener(pool, listener_config(config, timers, workers), on_keys=announce)
    try:
        host, port = listener.start()
    except OSError as exc:
        where = f"{config.listen_interface or '[::]'}:{config.peer_port}"
        log.critical("Cannot listen for peers on %s (ListenInterface/PeerPort in %s): %s", where, source,
                     exc.strerror or exc)
        wheel.close()
        return 1
    except RuntimeError as exc:
        log.critical("Cannot start the forwarding threads (%s=%d): %s", WORKERS_ENV, workers, exc)
        wheel.close()
        return 1
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log.info("Listening for peers on %s; peers are told to connect to %s:%d; forwarding on %s", shown,
             config.peer_address, config.peer_port,
             f"{workers} thread{'s' if workers != 1 else ''}" if workers else "the main loop")
    for number, (router_host, router_port) in enumerate(config.routers):
        link = RouterLinkConfig(
            router_host=router_host, router_port=router_port,
            router_public_key=config.router_public_key, peer_host=config.peer_address,
            peer_port=config.peer_port, config_source=source,
            statistics_interval=float(config.statistics_interval) if config.statistics_enabled else None,
            reconnect_delay=timers.reconnect, handshake_timeout=timers.handshake,
            keepalive_interval=timers.keepalive_interval, keepalive_timeout=timers.keepalive_timeout,
        )
        controllers.append(RouterController(
            link, pool, wheel, stats=lambda now: relay_stat(listener.snapshots(), listener.uptime, now),
            disconnect=listener.disconnect, started_at=listener.started_at, link=number, route=announce,
        ))
    if len(controllers) > 1:
        log.info("Registering with %d routers of a cluster; the %d keys are split between them",
                 len(controllers), capacity)
    if on_ready is not None:
        on_ready(listener, controllers[0])  # the primary router's link (RouterAddress)
    try:
        await asyncio.gather(*(controller.run(stop) for controller in controllers))
    finally:
        listener.close()
        wheel.close()
    log.info("Relay stopped")
    return 0
