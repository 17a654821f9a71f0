"""Joining relay pools (``-pools``): POST the relay's URL, rejoin before the pool evicts it.

As strelaysrv: ``{"url": "relay://..."}`` is POSTed as JSON; a 200 answer carries ``evictionIn`` (a Go
duration in nanoseconds) and the relay rejoins after 80% of it; 401 means the pool sees another address
than the one advertised, so trying again is pointless; anything else is retried after a minute. Off by
default here (strelaysrv joins the public pool unless told otherwise), and never with a token.

Which answer means what is decided by :func:`next_attempt` (pure); :func:`join_pool` only does HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request

log = logging.getLogger("natrelay.syncthing.pool")

RETRY = 60.0
#: A 200 whose body cannot be read: strelaysrv waits an hour.
FALLBACK_REJOIN = 3600.0
HTTP_TIMEOUT = 30.0


def next_attempt(status: int, body: bytes, retry: float = RETRY) -> float | None:
    """Seconds until the next POST, or None to give up on this pool."""
    if status == 200:
        try:
            eviction_ns = json.loads(body)["evictionIn"]
            eviction = float(eviction_ns) / 1e9
        except (ValueError, KeyError, TypeError):
            return FALLBACK_REJOIN
        return max(1.0, eviction - eviction / 5)
    if status == 401:
        return None
    return retry


def _post(pool: str, url: str) -> tuple[int, bytes]:
    req = urllib.request.Request(pool, data=json.dumps({"url": url}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return int(resp.status), bytes(resp.read(64 * 1024))
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read(64 * 1024))


async def join_pool(pool: str, url: str, *, retry: float = RETRY) -> None:
    """Keep ``url`` registered with ``pool`` until cancelled (or the pool answers 401)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            status, body = await loop.run_in_executor(None, _post, pool, url)
        except (OSError, ValueError) as exc:
            log.warning("Error joining pool %s: %s", pool, exc)
            await asyncio.sleep(retry)
            continue
        wait = next_attempt(status, body, retry)
        if wait is None:
            log.error("Pool %s refused us (401: the address it sees is not the one advertised); giving up",
                      pool)
            return
        if status == 200:
            log.info("Joined pool %s, rejoining in %.0f s", pool, wait)
        else:
            log.warning("Failed to join pool %s: HTTP %d %s", pool, status,
                        body[:200].decode("utf-8", "replace"))
        await asyncio.sleep(wait)
