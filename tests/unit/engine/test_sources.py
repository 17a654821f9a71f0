"""Source keys: one per subscriber (IPv4 address, IPv6 /64), the same for every family's limits."""

from __future__ import annotations

import ipaddress

import pytest

from natrelay.engine.sources import source_key


def test_source_key_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2::1") == source_key("[2001:db8:1:2:ffff::9]") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("/run/sock") == "/run/sock" and source_key("?") == "?"


@pytest.mark.parametrize("text", [
    "192.0.2.7", "10.0.0.1%eth0", "[192.0.2.7]", "01.2.3.4", "1.2.3", "/run/sock", "::ffff:10.1.2.3",
    "[2001:db8::1]", "fe80::1%eth0", "2001:db8::/64", "", "[", "300.1.1.1", "x%y", "[::1]", "?",
])
def test_source_keys_fast_path_agrees_with_the_parse(text: str) -> None:
    """Only texts that cannot change skip the parse: the key equals what ipaddress makes of it."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        expected = text
    else:
        if isinstance(addr, ipaddress.IPv6Address):
            mapped = addr.ipv4_mapped
            expected = str(mapped) if mapped else str(ipaddress.IPv6Network((addr, 64), strict=False))
        else:
            expected = str(addr)
    assert source_key(text) == expected
    assert source_key(expected) == expected  # a key is its own key (the relay passes keys along)
