"""The router's flood guard and relay policy, with fake time (issues 8 and 9)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from natrelay.aspia.router import guard as flood
from natrelay.aspia.router.connection import relay_allowed
from natrelay.aspia.router.db import RouterDatabase
from natrelay.aspia.router.guard import FloodGuard, GuardLimits
from natrelay.aspia.router.server import RouterOptions, RouterServer
from natrelay.ops.aspia_config import RouterConfig
from natrelay.ops.aspia_settings import _plain_ip


class Conns:
    """Connection handles for the guard, and a shorthand for "admitted, nothing evicted"."""

    def __init__(self, guard: FloodGuard) -> None:
        self.guard = guard
        self.n = 0

    def admit(self, ip: str, now: float) -> str | None:
        self.n += 1
        return self.guard.admit((ip, self.n), ip, now).refused

    def last(self, ip: str) -> tuple[str, int]:
        return (ip, self.n)


def test_connection_rate_per_ip_is_counted_and_recovers() -> None:
    guard = FloodGuard(GuardLimits(connections_per_minute_per_ip=3, max_pending_per_ip=0))
    c = Conns(guard)
    for _ in range(3):
        assert c.admit("10.0.0.1", 0.0) is None
        guard.release(c.last("10.0.0.1"), "10.0.0.1")
    assert c.admit("10.0.0.1", 0.0) == flood.RATE
    assert c.admit("10.0.0.2", 0.0) is None  # others unaffected
    assert c.admit("10.0.0.1", 20.0) is None  # one token back after 20 s at 3/min
    assert guard.refused[flood.RATE] == 1


def test_pending_caps_leave_room_for_other_addresses() -> None:
    guard = FloodGuard(GuardLimits(max_pending=10, max_pending_per_ip=3, connections_per_minute_per_ip=0))
    for ip in ("10.0.0.1", "10.0.0.2"):
        for n in range(3):
            assert guard.admit((ip, n), ip, 0).refused is None
        assert guard.admit((ip, 9), ip, 0).refused == flood.PENDING_PER_IP
    assert guard.admit(("10.0.0.3", 0), "10.0.0.3", 0).refused is None  # two addresses cannot fill it
    assert guard.authenticated(("10.0.0.1", 0))  # an authenticated connection frees its pending slot
    assert not guard.authenticated(("10.0.0.1", 0))  # once
    assert guard.admit(("10.0.0.1", 3), "10.0.0.1", 0).refused is None
    assert (guard.connections, guard.pending) == (8, 7)
    assert guard.per_ip("10.0.0.1") == (4, 3, 0)


def test_total_and_per_ip_connection_caps_and_exact_counts() -> None:
    guard = FloodGuard(GuardLimits(max_connections=3, max_connections_per_ip=2, max_pending=0,
                                   max_pending_per_ip=0, connections_per_minute_per_ip=0))
    assert guard.admit(1, "a", 0).refused is None and guard.admit(2, "a", 0).refused is None
    assert guard.admit(3, "a", 0).refused == flood.CONNECTIONS_PER_IP
    assert guard.admit(4, "b", 0).refused is None
    assert guard.admit(5, "c", 0).refused == flood.CONNECTIONS
    guard.authenticated(1)
    guard.release(1, "a")
    guard.release(2, "a")
    guard.release(4, "b")
    assert (guard.connections, guard.pending, guard.accepted) == (0, 0, 3)
    assert guard.per_ip("a") == (0, 0, 0)
    assert guard.refused[flood.CONNECTIONS] == 1 and guard.refused[flood.CONNECTIONS_PER_IP] == 1


def test_ipv6_addresses_count_per_64_network() -> None:
    guard = FloodGuard(GuardLimits(max_pending_per_ip=2, connections_per_minute_per_ip=0))
    assert guard.admit(1, "2001:db8:1:2::1", 0).refused is None
    assert guard.admit(2, "2001:db8:1:2:ffff::9", 0).refused is None
    assert guard.admit(3, "2001:db8:1:2::77", 0).refused == flood.PENDING_PER_IP
    assert guard.admit(4, "2001:db8:1:3::1", 0).refused is None  # the next /64 is someone else
    guard.release(1, "2001:db8:1:2::1")
    assert guard.per_ip("2001:db8:1:2::abcd") == (1, 1, 0)
    assert guard.admit(5, "::ffff:10.1.2.3", 0).refused is None and guard.per_ip("10.1.2.3") == (1, 1, 0)


def test_a_flood_from_many_addresses_cannot_keep_a_newcomer_out() -> None:
    """Issue 8: 250 addresses x 8 used to hold all 512 pending slots for the whole AuthTimeout,
    and every new password login was reset. Now the newcomer evicts the oldest pending connection
    of an address holding at least as many, and eviction never cuts a login under way."""
    lim = GuardLimits(connections_per_minute_per_ip=0)
    guard = FloodGuard(lim)
    live: dict[int, str] = {}
    now, conn = 0.0, 0
    for i in range(250):
        ip = f"127.0.{i // 250}.{i % 250 + 2}"
        for _ in range(lim.max_pending_per_ip):
            conn, now = conn + 1, now + 0.001
            decision = guard.admit(conn, ip, now)
            if decision.refused is None:
                live[conn] = ip
            else:  # only when every other address holds as many
                assert decision.refused == flood.PENDING
            if decision.evicted is not None:
                assert isinstance(decision.evicted, int)
                guard.release(decision.evicted, live.pop(decision.evicted))  # the shell closes it
    assert guard.pending == lim.max_pending == len(live)
    evicted = guard.refused[flood.EVICTED]
    assert evicted + guard.refused[flood.PENDING] == 250 * lim.max_pending_per_ip - lim.max_pending
    assert evicted > 0
    biggest = max(guard.per_ip(ip)[1] for ip in live.values())
    newcomer = guard.admit("login", "192.0.2.1", now + 0.001)
    assert newcomer.refused is None and newcomer.evicted in live
    # The victim: the oldest pending connection of an address holding the most.
    oldest = newcomer.evicted
    assert guard.per_ip(live[oldest])[1] == biggest - 1
    assert oldest == next(c for c, ip in live.items() if ip == live[oldest])
    guard.release(oldest, live.pop(oldest))
    assert guard.refused[flood.EVICTED] == evicted + 1 and guard.pending == lim.max_pending
    assert guard.begin_login("192.0.2.1", "login") is None  # its login began: no longer evictable
    for i in range(2000):  # the flood goes on: it keeps evicting itself, never the login
        conn, now = conn + 1, now + 0.001
        ip = f"127.0.{i % 250 // 250}.{i % 250 + 2}"
        decision = guard.admit(conn, ip, now)
        assert decision.refused in (None, flood.PENDING_PER_IP, flood.PENDING)
        assert decision.evicted != "login"
        if decision.refused is None:
            live[conn] = ip
        if decision.evicted is not None:
            assert isinstance(decision.evicted, int)
            guard.release(decision.evicted, live.pop(decision.evicted))
    assert guard.pending == lim.max_pending + 1  # the login's slot is its login slot now
    guard.end_login("192.0.2.1")
    assert guard.authenticated("login") and not guard.authenticated("login")
    guard.release("login", "192.0.2.1")
    for c, ip in live.items():
        guard.release(c, ip)
    assert (guard.connections, guard.pending, guard.logins) == (0, 0, 0)


def test_bytes_before_auth() -> None:
    guard = FloodGuard(GuardLimits(max_bytes_before_auth=100))
    assert not guard.too_many_bytes(100)
    assert guard.too_many_bytes(101) and guard.refused[flood.BYTES_BEFORE_AUTH] == 1


def test_half_open_logins_from_a_few_addresses_leave_room() -> None:
    guard = FloodGuard(GuardLimits(max_logins=16, max_logins_per_ip=2, login_reserve=4))
    attackers = [f"10.0.0.{i}" for i in range(1, 7)]
    taken = sum(guard.begin_login(ip) is None for ip in attackers for _ in range(5))
    assert taken == 12  # 2 per address, the second one only while the reserve is untouched
    assert guard.begin_login("192.0.2.1") is None  # a legitimate login still gets in
    for ip in attackers:
        guard.end_login(ip)
        guard.end_login(ip)
    assert guard.logins == 1 and guard.refused[flood.LOGINS_PER_IP] == 18


def test_the_reserve_is_for_addresses_without_a_login() -> None:
    guard = FloodGuard(GuardLimits(max_logins=4, max_logins_per_ip=4, login_reserve=2))
    assert guard.begin_login("a") is None and guard.begin_login("a") is None
    assert guard.begin_login("a") == flood.LOGIN_RESERVE
    assert guard.begin_login("b") is None and guard.begin_login("c") is None
    assert guard.begin_login("d") == flood.LOGINS


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        GuardLimits(max_pending=-1)


@pytest.mark.parametrize(("ip", "white", "any_address", "allowed"), [
    ("192.0.2.8", "", False, True),  # the router's own address (local_ip below)
    ("127.0.0.1", "", False, True),
    ("127.0.0.2", "", False, True),  # the whole loopback network is this machine
    ("::1", "", False, True),
    ("::ffff:127.0.0.1", "", False, True),
    ("10.0.0.5", "", False, False),
    ("10.0.0.5", "", True, True),
    ("10.0.0.5", "10.0.0.5", False, True),
    ("127.0.0.1", "10.0.0.5", True, False),  # a white list is exact, even for loopback
])
def test_relay_policy(ip: str, white: str, any_address: bool, allowed: bool) -> None:
    listed = tuple(_plain_ip(ipaddress.ip_address(a)) for a in white.split(";") if a)
    config = RouterConfig(relay_white_list=listed, relay_any_address=any_address)
    assert relay_allowed(config, ip, local_ip="192.0.2.8") is allowed


def test_housekeeping_expires_unused_host_ids_after_the_configured_days(tmp_path: Path) -> None:
    path = tmp_path / "router.db3"
    RouterDatabase.create(path)
    db = RouterDatabase.open(path)
    day = 86400.0
    for host_id, issued in ((db.add_host(b"old"), 0.0), (db.add_host(b"new"), 9 * day)):
        db.touch_host(host_id, issued, new=True)
    kept = db.add_host(b"from the original")  # no activity row: never expires

    async def run(days: int) -> None:
        config = RouterConfig(private_key=bytes(range(32)), unused_host_id_days=days)
        server = RouterServer(RouterOptions(config=config, database=path), db)
        server._wall_offset = 10 * day - server.loop.time()  # "now" is day 10
        try:
            server.housekeeping()
        finally:
            await server.close()

    asyncio.run(run(0))  # 0: never
    assert db.find_host(b"old") is not None
    asyncio.run(run(7))
    assert db.find_host(b"old") is None and db.find_host(b"new") == 2
    assert db.find_host(b"from the original") == kept
    db.close()


def test_a_login_under_way_is_never_evicted() -> None:
    guard = FloodGuard(GuardLimits(max_pending=2, max_pending_per_ip=2, connections_per_minute_per_ip=0))
    assert guard.admit("login", "192.0.2.1", 0.0).refused is None
    assert guard.admit("x1", "10.0.0.1", 1.0).refused is None
    assert guard.begin_login("192.0.2.1", "login") is None  # the SRP exchange began
    assert guard.per_ip("192.0.2.1") == (1, 0, 1) and guard.pending == 2
    assert guard.admit("y1", "10.0.0.2", 2.0).evicted is None  # a free slot: the login left the pool
    newcomer = guard.admit("z1", "10.0.0.3", 3.0)  # full: one of the others goes, not the login
    assert newcomer.refused is None and newcomer.evicted == "x1"
    guard.release("x1", "10.0.0.1")
    guard.end_login("192.0.2.1")
    for conn, ip in (("login", "192.0.2.1"), ("y1", "10.0.0.2"), ("z1", "10.0.0.3")):
        guard.release(conn, ip)
    assert (guard.connections, guard.pending, guard.logins) == (0, 0, 0)
