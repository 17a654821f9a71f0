"""Running a Syncthing relay: identity, listener, strelaysrv's status page, pool registration, the relay URL.

Shared by ``natrelay syncthing-relay`` (strelaysrv's flags) and ``natrelay serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from natrelay import __version__
from natrelay.ops.http.public import PublicJson
from natrelay.syncthing.deviceid import format_device_id
from natrelay.syncthing.pool import join_pool
from natrelay.syncthing.relay import RelayConfig
from natrelay.syncthing.server import RelayOptions, SyncthingRelay
from natrelay.syncthing.status import INTERVAL, RateCalculator, StatusOptions, status_document
from natrelay.syncthing.tls import ensure_identity, server_context

log = logging.getLogger("natrelay.syncthing")

MAX_PROVIDED_BY = 30


class AppConfigError(ValueError):
    """A setting that cannot work; the message names the flag and what is allowed."""


@dataclass(frozen=True)
class AppConfig:
    listen: str = ":22067"
    keys_dir: Path = Path(".")
    ext_address: str = ""
    provided_by: str = ""
    pools: list[str] = field(default_factory=list)
    global_rate: int = 0
    per_session_rate: int = 0
    token: str = ""
    status_srv: str = ":22070"
    network_timeout: float = 120.0
    ping_interval: float = 60.0
    message_timeout: float = 60.0
    max_sessions: int = 0
    pool_retry: float = 60.0


def split_host_port(value: str, flag: str) -> tuple[str, int]:
    """``host:port``, ``:port`` or ``[v6]:port``; the error names the flag."""
    host, sep, port_s = value.rpartition(":")
    if not sep:
        raise AppConfigError(f"{flag}: {value!r} is not HOST:PORT (e.g. :22067 or 127.0.0.1:22067)")
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise AppConfigError(f"{flag}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise AppConfigError(f"{flag}: port {port} is outside 0..65535")
    return host, port


def go_duration(seconds: float) -> str:
    """A duration as Go prints it (``1m0s``, ``2m0s``, ``1h0m0s``), for the relay URL."""
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


def _session_address(host: str) -> bytes:
    if not host:
        return b""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return b""  # a name: clients use the address they reached the relay on
    return b"" if ip.is_unspecified else ip.packed


@dataclass
class RunningRelay:
    relay: SyncthingRelay
    url: str
    device_id: str
    address: tuple[str, int]
    status_address: tuple[str, int] | None
    tasks: list[asyncio.Task[None]]
    status_server: PublicJson | None

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.status_server is not None:
            await self.status_server.close()
        self.relay.close()


async def start_relay(cfg: AppConfig) -> RunningRelay:
    """Start everything; raises AppConfigError, TLSSetupError or OSError (port in use) on failure."""
    if len(cfg.provided_by) > MAX_PROVIDED_BY:
        raise AppConfigError(f"-provided-by: at most {MAX_PROVIDED_BY} characters, "
                             f"got {len(cfg.provided_by)}")
    for name in ("global_rate", "per_session_rate", "max_sessions"):
        if getattr(cfg, name) < 0:
            raise AppConfigError(f"-{name.replace('_', '-')}: must be >= 0 (0 = unlimited)")
    for name in ("network_timeout", "ping_interval", "message_timeout"):
        if getattr(cfg, name) <= 0:
            raise AppConfigError(f"-{name.replace('_', '-')}: must be positive")
    host, port = split_host_port(cfg.listen, "-listen")
    ext_host, ext_port = split_host_port(cfg.ext_address or cfg.listen, "-ext-address")
    identity = ensure_identity(cfg.keys_dir)
    tls = server_context(identity)
    loop = asyncio.get_running_loop()
    relay_cfg = RelayConfig(session_address=_session_address(ext_host), session_port=ext_port,
                            token=cfg.token, ping_interval=cfg.ping_interval,
                            network_timeout=cfg.network_timeout, message_timeout=cfg.message_timeout)
    relay = SyncthingRelay(RelayOptions(host=host, port=port, config=relay_cfg,
                                        per_session_rate=cfg.per_session_rate, global_rate=cfg.global_rate,
                                        max_sessions=cfg.max_sessions), tls)
    bound = relay.start()
    ext_port = relay.relay.config.session_port
    device_id = format_device_id(identity.device_id)
    url_host = ext_host or host or "127.0.0.1"
    if ":" in url_host:
        url_host = f"[{url_host}]"
    query: dict[str, str] = {"id": device_id, "pingInterval": go_duration(cfg.ping_interval),
                             "networkTimeout": go_duration(cfg.network_timeout)}
    if cfg.per_session_rate:
        query["sessionLimitBps"] = str(cfg.per_session_rate)
    if cfg.global_rate:
        query["globalLimitBps"] = str(cfg.global_rate)
    if cfg.status_srv:
        query["statusAddr"] = cfg.status_srv
    if cfg.provided_by:
        query["providedBy"] = cfg.provided_by
    url = f"relay://{url_host}:{ext_port}/?" + urllib.parse.urlencode(sorted(query.items()))

    started = datetime.datetime.now(datetime.UTC)
    started_mono = loop.time()
    rates = RateCalculator()
    pools = [] if cfg.token else [p.strip() for p in cfg.pools if p.strip()]
    options = StatusOptions(cfg.network_timeout, cfg.ping_interval, cfg.message_timeout,
                            cfg.per_session_rate, cfg.global_rate, pools, cfg.provided_by)

    def status() -> dict[str, object]:
        return status_document(
            version=f"natrelay {__version__}", start_time=started, uptime=loop.time() - started_mono,
            pending_keys=relay.table.pending_keys, active_sessions=relay.table.active,
            connections=relay.protocol_connections, proxies=2 * relay.table.active,
            bytes_proxied=relay.bytes_proxied, rates=rates, options=options,
            tasks=len(asyncio.all_tasks(loop)))

    async def sample_rates() -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            rates.sample(relay.bytes_proxied)

    tasks: list[asyncio.Task[None]] = [loop.create_task(sample_rates())]
    status_server: PublicJson | None = None
    status_address: tuple[str, int] | None = None
    try:
        if cfg.status_srv:
            s_host, s_port = split_host_port(cfg.status_srv, "-status-srv")
            status_server = PublicJson({"/status": status})
            status_address = await status_server.start(s_host, s_port)
    except BaseException:
        for t in tasks:
            t.cancel()
        relay.close()
        raise
    for pool in pools:
        tasks.append(loop.create_task(join_pool(pool, url, retry=cfg.pool_retry)))
    return RunningRelay(relay, url, device_id, bound, status_address, tasks, status_server)
