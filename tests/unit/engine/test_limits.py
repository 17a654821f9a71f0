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
    for _ in range(100):
        assert adm.admit("127.0.0.1") is None
    for _ in range(100):
        adm.release("127.0.0.1")
    assert adm.connections == 0 and adm.per_ip("127.0.0.1") == 0


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
