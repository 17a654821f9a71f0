"""Admission limits: exact counts and refusals with a reason."""

from __future__ import annotations

import pytest

from natrelay.engine.limits import Admission, Limits


def test_per_ip_and_total_caps() -> None:
    adm = Admission(Limits(max_connections=3, max_per_ip=2))
    assert adm.admit("10.0.0.1") is None
    assert adm.admit("10.0.0.1") is None
    reason = adm.admit("10.0.0.1")
    assert reason is not None and "per-IP" in reason and "10.0.0.1" in reason
    assert adm.admit("10.0.0.2") is None
    reason = adm.admit("10.0.0.3")
    assert reason is not None and "connection limit" in reason
    assert adm.connections == 3
    adm.release("10.0.0.1")
    assert adm.per_ip("10.0.0.1") == 1
    assert adm.admit("10.0.0.3") is None


def test_release_returns_to_zero() -> None:
    adm = Admission(Limits())
    for _ in range(60):
        assert adm.admit("127.0.0.1") is None
        assert adm.begin_handshake("127.0.0.1") is None or adm.handshakes_per_ip("127.0.0.1") == 8
    for _ in range(8):
        adm.end_handshake("127.0.0.1")
    for _ in range(60):
        adm.release("127.0.0.1")
    assert adm.connections == 0 and adm.per_ip("127.0.0.1") == 0
    assert adm.handshakes == 0 and adm.sources == 0


def test_handshake_cap_and_zero_means_unlimited() -> None:
    adm = Admission(Limits(max_handshakes=1))
    assert adm.begin_handshake() is None
    assert adm.begin_handshake() is not None
    adm.end_handshake()
    assert adm.begin_handshake() is None
    free = Admission(Limits(max_connections=0, max_per_ip=0, max_handshakes=0))
    for _ in range(1000):
        assert free.admit("x") is None and free.begin_handshake() is None


def test_negative_limit_rejected() -> None:
    with pytest.raises(ValueError, match="max_per_ip"):
        Limits(max_per_ip=-1)


def test_two_sources_cannot_take_every_handshake_slot() -> None:
    """The bug of issue 8: 2 x the per-IP connection cap used to equal the handshake total."""
    adm = Admission(Limits())
    for ip in ("10.0.0.1", "10.0.0.2"):
        held = 0
        while True:
            if adm.admit(ip) is not None:
                break
            refusal = adm.begin_handshake(ip)
            if refusal is not None:
                assert refusal.code == "handshakes_per_ip" and ip in refusal
                adm.release(ip)
                break
            held += 1
        assert held == Limits().max_handshakes_per_ip
    assert adm.handshakes == 2 * Limits().max_handshakes_per_ip
    for n in range(3, 50):  # everyone else still gets a handshake slot
        assert adm.admit(f"10.0.0.{n}") is None and adm.begin_handshake(f"10.0.0.{n}") is None


def test_refusals_carry_a_counter_code_and_stay_strings() -> None:
    adm = Admission(Limits(max_connections=2, max_per_ip=1, max_handshakes=1, max_handshakes_per_ip=1))
    assert adm.admit("10.0.0.1") is None
    per_ip = adm.admit("10.0.0.1")
    assert isinstance(per_ip, str) and per_ip is not None and per_ip.code == "connections_per_ip"
    assert adm.admit("10.0.0.2") is None
    total = adm.admit("10.0.0.3")
    assert total is not None and total.code == "connections" and "10.0.0.3" not in total
    assert adm.begin_handshake("10.0.0.1") is None
    hs = adm.begin_handshake("10.0.0.2")
    assert hs is not None and hs.code == "handshakes"
    assert f"refused: {hs}" == "refused: concurrent handshake limit reached (1)"


def test_ipv6_sources_count_by_their_64() -> None:
    adm = Admission(Limits(max_per_ip=2, max_handshakes_per_ip=1))
    assert adm.admit("2001:db8:1:2::1") is None
    assert adm.admit("2001:db8:1:2:ffff::9") is None
    refusal = adm.admit("2001:db8:1:2::abcd")
    assert refusal is not None and "2001:db8:1:2::/64" in refusal
    assert adm.admit("2001:db8:1:3::1") is None  # another /64 is another source
    assert adm.begin_handshake("2001:db8:1:2::1") is None
    assert adm.begin_handshake("2001:db8:1:2::2") is not None
    assert adm.admit("::ffff:10.1.2.3") is None and adm.per_ip("10.1.2.3") == 1  # mapped IPv4 is IPv4


def test_default_per_source_caps_sit_well_below_the_totals() -> None:
    """Filling any total takes well over a hundred source addresses with the defaults."""
    lim = Limits()
    assert lim.weak_spots() == []
    assert lim.max_connections / lim.max_per_ip > 100
    assert lim.max_handshakes / lim.max_handshakes_per_ip > 100
    assert lim.max_listeners / lim.max_listeners_per_ip > 500
    assert lim.max_listeners <= lim.max_connections // 2  # listeners leave room for tunnels


def test_weak_spots_name_the_caps_that_two_sources_fill() -> None:
    weak = Limits(max_connections=100, max_per_ip=50, max_handshakes=10, max_handshakes_per_ip=0).weak_spots()
    assert any(w.startswith("max_per_ip (50)") for w in weak)
    assert any(w.startswith("max_handshakes_per_ip (unlimited)") for w in weak)
    assert all(w.endswith("two source addresses could fill it") for w in weak if "_per_ip " in w)
    (listeners,) = Limits(max_connections=1000, max_listeners=1000).weak_spots()
    assert listeners.startswith("max_listeners (1000)")
    assert listeners.endswith("listeners alone could fill it")
    assert Limits(max_connections=0, max_per_ip=0, max_handshakes=0, max_handshakes_per_ip=0,
                  max_listeners=0, max_listeners_per_ip=0).weak_spots() == []
