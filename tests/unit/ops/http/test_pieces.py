"""The HTTP surface's pure parts: histograms, rate windows, options, password checks, sessions."""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

import pytest

from natrelay.aspia import srp
from natrelay.aspia.router.db import RouterDatabase, StoredUser
from natrelay.aspia.router.sessions import SessionKind
from natrelay.engine.stats import Histogram
from natrelay.ops.http.auth import Gate, RouterAccounts, Sessions
from natrelay.ops.http.options import HttpConfigError, HttpOptions, add_http_arguments, http_options
from natrelay.ops.http.rates import RateWindows


def test_histogram_buckets_are_exact_and_cumulative() -> None:
    h = Histogram((1.0, 10.0))
    for v in (0.5, 1.0, 1.5, 10.0, 11.0, 100.0):
        h.observe(v)
    assert h.counts == [2, 2, 2]
    assert h.cumulative() == [(1.0, 2), (10.0, 4), (float("inf"), 6)]
    assert h.sum == pytest.approx(124.0)
    merged = Histogram.merged([h, h], (1.0, 10.0))
    assert merged.counts == [4, 4, 4] and merged.count == 12
    with pytest.raises(ValueError):
        Histogram((2.0, 1.0))


def test_rate_windows_use_the_history_there_is() -> None:
    rates = RateWindows(0, now=0.0)
    for i in range(1, 7):
        rates.sample(i * 125_000, now=i * 10.0)  # 100 kbit/s
    assert rates.kbps(6 * 125_000 + 125_000, now=70.0) == [100] * 6
    assert RateWindows(0, now=5.0).kbps(0, now=5.0) == [0] * 6


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_http_arguments(p)
    return p.parse_args(list(argv))


def test_options_need_auth_off_loopback_and_cert_with_key() -> None:
    assert http_options(parse()) is None
    opts = http_options(parse("--http", "127.0.0.1:0"))
    assert opts == HttpOptions("127.0.0.1", 0) and not opts.needs_auth
    assert http_options(parse("--http", "0.0.0.0:80")).needs_auth  # type: ignore[union-attr]
    assert http_options(parse("--http", "8080")).needs_auth  # type: ignore[union-attr]
    assert http_options(parse("--http", "[::1]:80", "--http-auth")).needs_auth  # type: ignore[union-attr]
    assert http_options(parse(), "127.0.0.1:8080") == HttpOptions("127.0.0.1", 8080)
    for bad in (["--http", "localhost:80"], ["--http-auth"], ["--http", "1.2.3.4:1", "--http-cert", "c"]):
        with pytest.raises(HttpConfigError):
            http_options(parse(*bad))


@pytest.fixture
def accounts(tmp_path: Path) -> RouterAccounts:
    def user(name: str, password: str, sessions: int, flags: int = 1) -> StoredUser:
        group, salt, verifier = srp.new_account(name, password.encode(), secrets.token_bytes(64))
        return StoredUser(name, group, salt, verifier, sessions, flags)

    path = tmp_path / "router.db3"
    RouterDatabase.create(path, [user("admin", "right", int(SessionKind.ADMIN | SessionKind.CLIENT)),
                                 user("client", "right", int(SessionKind.CLIENT)),
                                 user("off", "right", int(SessionKind.ADMIN), flags=0)])
    return RouterAccounts(RouterDatabase.open(path))


def test_only_enabled_administrators_with_the_right_password_get_in(accounts: RouterAccounts) -> None:
    assert accounts.check("admin", "right")
    assert not accounts.check("admin", "wrong")
    assert not accounts.check("Admin", "right")  # names are case-sensitive, as at the router
    assert not accounts.check("client", "right")  # no ADMIN right
    assert not accounts.check("off", "right")  # disabled
    assert not accounts.check("nobody", "right")
    assert not accounts.check("", "")


def test_gate_throttles_an_address_after_repeated_failures(accounts: RouterAccounts,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate(accounts)
    for _ in range(10):
        assert not gate.login("admin", "wrong", "10.0.0.1", now=100.0)
    assert gate.throttled("10.0.0.1", now=101.0)
    assert not gate.throttled("10.0.0.2", now=101.0)
    assert not gate.throttled("10.0.0.1", now=200.0)  # the window has passed
    assert "HTTP login refused for user 'admin' from 10.0.0.1" in caplog.text
    assert "Traceback" not in caplog.text
    assert gate.basic("admin", "right", "10.0.0.3", now=0.0)
    assert gate.basic_csrf("admin") != gate.basic_csrf("other")


def test_sessions_expire_and_are_bounded() -> None:
    sessions = Sessions(ttl=10.0, cap=2)
    t1, s1 = sessions.create("a", now=0.0)
    assert sessions.get(t1, now=5.0) is s1
    assert sessions.get(t1, now=10.0) is None
    tokens = [sessions.create("b", now=0.0)[0] for _ in range(3)]
    assert sessions.get(tokens[0], now=1.0) is None and sessions.get(tokens[2], now=1.0) is not None


def test_rates_take_binary_suffixes_and_say_what_is_accepted() -> None:
    from natrelay.ops.bandwidth import format_rate, parse_rate

    assert parse_rate("0") == 0 and parse_rate("1500") == 1500
    assert parse_rate("500K") == 500 * 1024 and parse_rate("10m") == 10 * 1024**2
    assert parse_rate("1.5G") == 3 * 1024**3 // 2 and parse_rate("2MiB/s") == 2 * 1024**2
    assert format_rate(10 * 1024**2) == "10M" and format_rate(1500) == "1500"
    for bad in ("fast", "-1", "10X", "", "2T"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad, "--rate-session")


def test_relay_json_rate_fields_round_trip_and_name_the_field(tmp_path: Path) -> None:
    from natrelay.ops.aspia_config import RelayConfig
    from natrelay.ops.aspia_settings import ConfigError
    from natrelay.ops.jsonsettings import SettingsDocument

    base = RelayConfig(router_address="127.0.0.1", router_public_key=b"\x01" * 32, peer_address="10.0.0.1")
    limited = RelayConfig.from_settings(SettingsDocument("relay.json", {
        **base.to_settings(), "RateSession": "2M", "RateGlobal": "1G", "HttpListen": "127.0.0.1:9070"}))
    assert (limited.rate_session, limited.rate_global) == (2 * 1024**2, 1024**3)
    assert limited.http_listen == "127.0.0.1:9070"
    assert RelayConfig.from_settings(SettingsDocument("relay.json", limited.to_settings())) == limited
    assert "RateSession" not in base.to_settings() and "HttpListen" not in base.to_settings()
    with pytest.raises(ConfigError) as info:
        RelayConfig.from_settings(SettingsDocument("relay.json", {**base.to_settings(), "RateGlobal": "lots",
                                                                  "HttpListen": "example.org:80"}))
    text = "\n".join(info.value.lines())
    assert "RateGlobal" in text and "HttpListen" in text
