"""HOST:PORT parsing for ticket addresses and listen addresses."""

from __future__ import annotations

import contextlib
import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natrelay.offset.constants import MAX_ADDRESS_LENGTH
from natrelay.ops.addresses import (
    AddressError,
    parse_host_port,
    parse_listen_address,
    validate_ticket_address,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1337", ("127.0.0.1", 1337)),
        ("relay.example:1", ("relay.example", 1)),
        ("relay.example.:65535", ("relay.example.", 65535)),
        ("[::1]:8080", ("::1", 8080)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
        ("[fe80::1%eth0]:9", ("fe80::1%eth0", 9)),
        ("relé.example:1337", ("relé.example", 1337)),
        ("h:00080", ("h", 80)),  # leading zeros, as Rust's u16 parser accepts
    ],
)
def test_parse_host_port_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("127.0.0.1", "no port"),
        ("127.0.0.1:", "no port"),
        (":1337", "no host"),
        ("h:0", "port 0 is outside 1-65535"),
        ("h:65536", "port 65536 is outside 1-65535"),
        ("h:99999999999999999999", "outside 1-65535"),
        ("h:http", "'http' is not a number"),
        ("h:-1", "is not a number"),
        ("h:+1", "is not a number"),
        ("h:1 ", "is not a number"),
        ("h:١٢", "is not a number"),  # Arabic-Indic digits pass str.isdigit()
        ("::1:80", "must be written in brackets"),
        ("[::1]", "no port"),
        ("[::1]80", "expected ':'"),
        ("[::1:80", "without a closing"),
        ("[]:80", "empty host"),
        ("[relay.example]:80", "not an IPv6 address"),
        ("my host:80", "whitespace"),
        ("http://h:80", "looks like a URL"),
        ("h/x:80", "'/'"),
        ("a:b:80", "host 'a:b' contains ':'"),
        ("user@h:80", "'@'"),
        ("h..example:80", "empty name label"),
        (".h:80", "empty name label"),
    ],
)
def test_parse_host_port_rejects_with_a_message(text: str, fragment: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_host_port(text, what="--address")
    assert str(info.value).startswith("--address")
    assert fragment in str(info.value)


def test_address_error_is_a_value_error() -> None:
    assert issubclass(AddressError, ValueError)


@pytest.mark.parametrize("port", [1, 65535])
def test_ticket_port_boundaries_accepted(port: int) -> None:
    assert validate_ticket_address(f"127.0.0.1:{port}", max_bytes=MAX_ADDRESS_LENGTH) == f"127.0.0.1:{port}"


@pytest.mark.parametrize("port", [0, 65536])
def test_ticket_port_boundaries_rejected(port: int) -> None:
    with pytest.raises(AddressError, match="outside 1-65535"):
        validate_ticket_address(f"127.0.0.1:{port}", max_bytes=MAX_ADDRESS_LENGTH)


def test_ticket_address_length_boundary_is_256_bytes() -> None:
    at_limit = "a" * (MAX_ADDRESS_LENGTH - 5) + ":1337"
    assert len(at_limit.encode()) == 256
    assert validate_ticket_address(at_limit, max_bytes=MAX_ADDRESS_LENGTH) == at_limit
    with pytest.raises(AddressError, match="257 bytes long; at most 256"):
        validate_ticket_address("a" + at_limit, max_bytes=MAX_ADDRESS_LENGTH)


def test_ticket_address_length_counts_utf8_bytes() -> None:
    host = "é" * 125  # 250 bytes
    at_255 = host + ":1337"
    assert validate_ticket_address(at_255, max_bytes=MAX_ADDRESS_LENGTH) == at_255
    with pytest.raises(AddressError, match="257 bytes"):
        # 257 bytes, only 132 characters
        validate_ticket_address(host + "x:13370", max_bytes=MAX_ADDRESS_LENGTH)


@pytest.mark.parametrize(("text", "fragment"), [("", "empty"), ("relay", "no port"), ("h:x", "not a number")])
def test_ticket_address_names_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(AddressError, match=fragment):
        validate_ticket_address(text, max_bytes=MAX_ADDRESS_LENGTH)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1337", ("", 1337)),
        ("0", ("", 0)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:1337", ("0.0.0.0", 1337)),
        ("[::]:1337", ("::", 1337)),
        ("[::1]:65535", ("::1", 65535)),
    ],
)
def test_parse_listen_address_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("localhost:1", "not an IP address"),  # the original's SocketAddr parser refuses host names
        ("65536", "outside 0-65535"),
        ("127.0.0.1:65536", "outside 0-65535"),
        ("", "is empty"),
        (" 1337", "whitespace"),
        ("127.0.0.1", "no port"),
        ("1.2.3:80", "not an IP address"),
        ("::1:80", "brackets"),
        ("[localhost]:80", "not an IPv6 address"),
    ],
)
def test_parse_listen_address_rejects(text: str, fragment: str) -> None:
    with pytest.raises(AddressError, match=fragment):
        parse_listen_address(text)


@given(st.integers(min_value=1, max_value=65535), st.ip_addresses())
def test_ip_and_port_round_trip(port: int, ip: object) -> None:
    host = str(ip)
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert parse_host_port(text) == (host, port)
    assert parse_listen_address(text) == (host, port)
    assert validate_ticket_address(text, max_bytes=MAX_ADDRESS_LENGTH) == text


@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_address_error(text: str) -> None:
    for parse in (parse_host_port, parse_listen_address,
                  functools.partial(validate_ticket_address, max_bytes=MAX_ADDRESS_LENGTH)):
        with contextlib.suppress(AddressError):
            parse(text)
