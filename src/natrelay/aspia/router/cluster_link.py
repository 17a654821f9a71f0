"""The asyncio side of a router cluster: lease renewal and the NOTIFY listener.

The decisions (who holds a host, what to send where) are in the core and in
``storage/presence.py``; this module only keeps this router's lease alive and hands messages
that other routers addressed to it to a callback. The listener has its own asynchronous
connection (LISTEN needs one that stays open); a lost connection is reopened after a pause,
and messages sent meanwhile are lost (see ``presence`` for why that is acceptable). Lease
renewals run the synchronous storage call in a worker thread so the loop never waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

import psycopg

from natrelay.aspia.router.storage.base import DatabaseError
from natrelay.aspia.router.storage.presence import (
    PostgresPresence,
    RemoteMessage,
    channel_name,
    decode_message,
)

log = logging.getLogger("natrelay.aspia.router")

RECONNECT_PAUSE: Final = 1.0


class ClusterLink:
    """Keeps one router's membership alive and its inbox open."""

    def __init__(self, presence: PostgresPresence, url: str, deliver: Callable[[RemoteMessage], None],
                 status: Callable[[], dict[str, Any]], reannounce: Callable[[], None]) -> None:
        self.presence = presence
        self._url = url
        self._deliver = deliver
        self._status = status
        self._reannounce = reannounce
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()

    async def start(self, address: str) -> None:
        self.presence.address = address
        await asyncio.to_thread(self.presence.register)
        log.info("Joined the router cluster as router %d (lease %g s)", self.presence.router_id,
                 self.presence.lease)
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._renew())]
        await asyncio.wait_for(self.listening.wait(), 10)

    def send(self, message: RemoteMessage) -> None:
        try:
            self.presence.send(message)
        except DatabaseError as exc:
            log.error("Message for session %d at router %d not sent: %s", message.session_id,
                      message.router_id, exc)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await asyncio.to_thread(self.presence.retire)
        except DatabaseError as exc:
            log.error("%s (its hosts read as offline when the lease ends)", exc)

    async def _listen(self) -> None:
        channel = channel_name(self.presence.router_id)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {channel}".encode())
                    self.listening.set()
                    async for notify in conn.notifies():
                        message = decode_message(self.presence.router_id, notify.payload)
                        if message is None:
                            log.error("Malformed cluster message on %s ignored", channel)
                            continue
                        self._deliver(message)
            except psycopg.Error as exc:
                log.error("Cluster listener lost its database connection (%s); reconnecting",
                          str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            await asyncio.sleep(RECONNECT_PAUSE)

    async def _renew(self) -> None:
        interval = self.presence.lease / 3
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                kept = await asyncio.to_thread(self.presence.renew, self._status())
            except DatabaseError as exc:
                log.error("%s; other routers stop seeing this router's hosts %g s after the last renewal",
                          exc, self.presence.lease)
                failing = True
                continue
            if not kept:
                log.error("This router had been removed from the cluster as dead; rejoined as router %d",
                          self.presence.router_id)
            if not kept or failing:
                # Announcements and withdrawals made while the database was away were lost.
                self._reannounce()
                failing = False
