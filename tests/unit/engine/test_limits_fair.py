"""strelay's fair handshake slots: a flood from many addresses cannot keep a newcomer out (issue 8)."""

from __future__ import annotations

from collections.abc import Hashable

from natrelay.engine.limits import Admission, Limits


def flood_address(i: int) -> str:
    return f"127.0.{i // 250}.{i % 250 + 2}"


def test_many_sources_fill_the_total_then_a_newcomer_evicts_the_biggest_holders_oldest() -> None:
    """250 addresses x 8 (the default per-address cap) exceed the 1,024 handshakes in total."""
    lim = Limits()
    adm = Admission(lim)
    now, conn = 0.0, 0
    held: dict[Hashable, str] = {}
    for i in range(250):
        for _ in range(lim.max_handshakes_per_ip):
            conn += 1
            now += 0.001
            start = adm.start_handshake(conn, flood_address(i), now + 4.0)
            if start.evicted is not None:
                held.pop(start.evicted)  # the flood evicts its own oldest slots too
            if start.refusal is None:
                held[conn] = flood_address(i)
    assert adm.handshakes == lim.max_handshakes == len(held)
    biggest = max(adm.handshakes_per_ip(ip) for ip in set(held.values()))
    assert biggest <= lim.max_handshakes_per_ip
    newcomer = adm.start_handshake("legit", "192.0.2.1", now + 4.0)
    assert newcomer.refusal is None and newcomer.evicted in held, newcomer
    # The victim: the oldest handshake of an address holding the most (dicts keep insertion order).
    oldest = newcomer.evicted
    victim_ip = held[oldest]
    assert adm.handshakes_per_ip(victim_ip) == biggest - 1
    assert oldest == next(c for c, ip in held.items() if ip == victim_ip)
    assert "evicted" in newcomer.evicted_message
    assert adm.handshakes == lim.max_handshakes and adm.handshakes_per_ip("192.0.2.1") == 1
    # The flood goes on: its addresses hold 4 or 5 each, so they evict each other, never the
    # newcomer holding one.
    for i in range(2000):
        conn, now = conn + 1, now + 0.001
        start = adm.start_handshake(conn, flood_address(i % 250), now + 4.0)
        assert start.evicted != "legit"
        if start.evicted is not None:
            held.pop(start.evicted)
        if start.refusal is None:
            held[conn] = flood_address(i % 250)
    assert adm.handshakes_per_ip("192.0.2.1") == 1
    # The evicted handle's slot is already free: finishing it is a no-op, the counts stay exact.
    assert adm.finish_handshake(oldest) is False
    del held[oldest]
    assert adm.finish_handshake("legit") is True
    for c in list(held):
        assert adm.finish_handshake(c)
    assert adm.handshakes == 0 and adm.sources == 0


def test_a_source_holding_as_many_as_everyone_is_refused_not_evicting() -> None:
    adm = Admission(Limits(max_handshakes=4, max_handshakes_per_ip=3))
    for n, ip in enumerate(("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2")):
        assert adm.start_handshake(n, ip, float(n)).refusal is None
    per_ip = Admission(Limits(max_handshakes_per_ip=1))
    assert per_ip.start_handshake(0, "10.0.0.1", 0.0).refusal is None
    over = per_ip.start_handshake(1, "10.0.0.1", 0.0)
    assert over.refusal is not None and over.refusal.code == "handshakes_per_ip"
    assert over.evicted is None
    third = adm.start_handshake(10, "10.0.0.3", 10.0)  # holds none: the oldest of a 2-holder goes
    assert third.refusal is None and third.evicted == 0
    # 10.0.0.1 now holds 1, fewer than 10.0.0.2 (2): it evicts 10.0.0.2's oldest.
    again = adm.start_handshake(11, "10.0.0.1", 11.0)
    assert again.refusal is None and again.evicted == 2
    # Everyone holds at most one more than anyone else; one more from 10.0.0.1 (2) finds no
    # other source holding as many: refused by the total.
    full = adm.start_handshake(12, "10.0.0.1", 12.0)
    assert full.refusal is not None and full.refusal.code == "handshakes" and full.evicted is None
    assert adm.handshakes == 4
    for c in (1, 3, 10, 11):
        assert adm.finish_handshake(c)
    assert adm.handshakes == 0 and adm.sources == 0


def test_zero_means_unlimited_for_fair_handshakes() -> None:
    adm = Admission(Limits(max_handshakes=0, max_handshakes_per_ip=0))
    for n in range(2000):
        start = adm.start_handshake(n, "10.0.0.1", 0.0)
        assert start.refusal is None and start.evicted is None
    assert adm.handshakes == 2000 and adm.handshakes_per_ip("10.0.0.1") == 2000
