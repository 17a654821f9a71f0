"""The router core's request limits (issue 8), sans-IO: token buckets fed with each call's ``now``.

What an authenticated session may ask of the router, and how often: connection requests per
client account and per target host (one account could drain the key pool and make the host
open dozens of relay connections), new host IDs per source address (anonymous requests grew
``router.db3`` without limit), and the keys held per relay. The limits are a policy apart from
the session logic that applies them (:class:`natrelay.aspia.router.sessions.RouterCore`
answers a refused connection request ``ACCESS_DENIED``, a refused host-ID request ``UNKNOWN``);
here they are counted in :attr:`RequestRates.refused` under fixed reason names, which become
metric labels, and logged at most once per interval per reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from natrelay.engine.rates import KeyedRate
from natrelay.engine.refusals import LogLimiter
from natrelay.engine.sources import source_key

log = logging.getLogger("natrelay.aspia.router")

# Reason names of RouterCore.refused (stable: they become metric labels).
CLIENT_RATE = "client_request_rate"
HOST_RATE = "host_request_rate"
HOST_ID_RATE = "host_id_rate"
RELAY_KEYS_OVER_CAP = "relay_keys_over_cap"


@dataclass(frozen=True)
class RequestLimits:
    """Per-minute rates (0 = no limit); each bucket holds half a minute's worth as its burst.

    The burst must cover honest use: ``natrelay aspia client --listen`` asks once per local
    connection, and a browser or a test opens twenty at once. The per-host rate is above the
    per-account one, so one account cannot use up a host's allowance and lock other accounts
    out of that host.
    """

    client_per_minute: int = 60
    host_per_minute: int = 120
    new_host_ids_per_minute: int = 10
    max_keys_per_relay: int = 1000


def _buckets(per_minute: int) -> KeyedRate[object]:
    return KeyedRate(per_minute, max(1, per_minute // 2))


class RequestRates:
    """The buckets behind :class:`RequestLimits`, the refusal counts and their log lines."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self._client_rate = _buckets(limits.client_per_minute)
        self._host_rate = _buckets(limits.host_per_minute)
        self._host_id_rate = KeyedRate[object](limits.new_host_ids_per_minute,
                                               limits.new_host_ids_per_minute)
        self.refused: Counter[str] = Counter({CLIENT_RATE: 0, HOST_RATE: 0, HOST_ID_RATE: 0,
                                              RELAY_KEYS_OVER_CAP: 0})
        self._log_limit = LogLimiter()

    def limited(self, reason: str, now: float, message: str, *args: object) -> None:
        """Count a refusal and log it at most once per interval per reason."""
        self.refused[reason] += 1
        skipped = self._log_limit.allow(reason, now)
        if skipped is not None:
            more = f" ({skipped} more like it not logged)" if skipped else ""
            log.warning(message + more, *args)

    def connection_refused(self, user_name: str, client_id: int, client_address: str, host_id: int,
                           now: float) -> bool:
        """Whether a client's connection request to ``host_id`` is over its account's or the host's rate."""
        if not self._client_rate.allow(user_name, now):
            self.limited(CLIENT_RATE, now, "Connection request of user %r (client %d, %s) to host %d "
                         "refused: more than %d per minute for this account", user_name,
                         client_id, client_address, host_id, self.limits.client_per_minute)
            return True
        if not self._host_rate.allow(host_id, now):
            self.limited(HOST_RATE, now, "Connection request of user %r (client %d) to host %d refused: "
                         "more than %d per minute to this host", user_name, client_id,
                         host_id, self.limits.host_per_minute)
            return True
        return False

    def new_host_id_refused(self, session_id: int, address: str, now: float) -> bool:
        """Whether a host session's request for a new host ID is over its address's rate."""
        if self._host_id_rate.allow(source_key(address), now):
            return False
        self.limited(HOST_ID_RATE, now, "Host session %d (%s): new host ID refused: more than %d per "
                     "minute from this address", session_id, address, self.limits.new_host_ids_per_minute)
        return True

    def prune(self, now: float) -> None:
        """Forget buckets that are full again (no state); call now and then."""
        for buckets in (self._client_rate, self._host_rate, self._host_id_rate):
            buckets.prune(now)
