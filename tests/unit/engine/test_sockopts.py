"""Kernel TCP keep-alive options (engine/sockopts.py): parsed strictly, really set on the socket.

The last two tests check the peers' control connections (an Offset listen connection, an Aspia
router link) through their own protocol classes, reading the options back with getsockopt: the
option is only worth something if the connect paths apply it.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from natrelay.engine.sockopts import (
    DEFAULT_TCP_KEEPALIVE,
    TcpKeepAlive,
    apply_tcp_keepalive,
    is_keepalive_timeout,
    parse_tcp_keepalive,
)

linux_only = pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux socket options")


def _options(sock: socket.socket) -> dict[str, int]:
    tcp = socket.IPPROTO_TCP
    return {"keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(tcp, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(tcp, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(tcp, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT)}


@contextmanager
def _connected() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as sock:
        yield sock


@linux_only
def test_the_options_are_set_on_the_socket() -> None:
    with _connected() as sock:
        assert apply_tcp_keepalive(sock, TcpKeepAlive(7, 3, 4), user_timeout=True)
        assert _options(sock) == {"keepalive": 1, "idle": 7, "interval": 3, "count": 4,
                                  "user_timeout_ms": (7 + 3 * 4) * 1000}


@linux_only
def test_user_timeout_only_when_asked() -> None:
    """Relayed streams must not get it: a zero window (backpressure) would abort them."""
    with _connected() as sock:
        assert apply_tcp_keepalive(sock, DEFAULT_TCP_KEEPALIVE)
        assert _options(sock) == {"keepalive": 1, "idle": 3, "interval": 1, "count": 3, "user_timeout_ms": 0}


@linux_only
def test_off_leaves_the_socket_alone() -> None:
    with _connected() as sock:
        before = _options(sock)
        assert not apply_tcp_keepalive(sock, None, user_timeout=True)
        assert not apply_tcp_keepalive(None, DEFAULT_TCP_KEEPALIVE)
        assert _options(sock) == before and before["keepalive"] == 0


def test_a_closed_socket_is_reported_not_raised() -> None:
    sock = socket.socket()
    sock.close()
    assert not apply_tcp_keepalive(sock, DEFAULT_TCP_KEEPALIVE, user_timeout=True)


def test_defaults_detect_within_seconds() -> None:
    assert TcpKeepAlive(3, 1, 3) == DEFAULT_TCP_KEEPALIVE
    assert DEFAULT_TCP_KEEPALIVE.detection_seconds == 6
    assert parse_tcp_keepalive(DEFAULT_TCP_KEEPALIVE.describe()) == DEFAULT_TCP_KEEPALIVE


@pytest.mark.parametrize(("text", "expected"), [
    ("5,2,3", TcpKeepAlive(5, 2, 3)), (" 60 , 10 , 6 ", TcpKeepAlive(60, 10, 6)),
    ("0", None), ("off", None), ("OFF", None),
])
def test_parse(text: str, expected: TcpKeepAlive | None) -> None:
    assert parse_tcp_keepalive(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("5,2", "must be IDLE,INTERVAL,COUNT"), ("5,2,3,4", "must be IDLE,INTERVAL,COUNT"),
    ("a,b,c", "must be IDLE,INTERVAL,COUNT"), ("5,-2,3", "must be IDLE,INTERVAL,COUNT"),
    ("1.5,2,3", "must be IDLE,INTERVAL,COUNT"), ("", "must be IDLE,INTERVAL,COUNT"),
    ("0,2,3", "idle must be 1..32767, got 0"), ("5,40000,3", "interval must be 1..32767, got 40000"),
    ("5,2,128", "count must be 1..127, got 128"),
])
def test_parse_errors_name_the_option_and_the_allowed_values(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="--tcp-keepalive") as caught:
        parse_tcp_keepalive(text)
    assert message in str(caught.value)


def test_only_etimedout_counts_as_a_keepalive_timeout() -> None:
    assert is_keepalive_timeout(TimeoutError(errno.ETIMEDOUT, "Connection timed out"))
    assert is_keepalive_timeout(OSError(errno.ETIMEDOUT, "Connection timed out"))
    assert not is_keepalive_timeout(TimeoutError())  # asyncio's own timeouts
    assert not is_keepalive_timeout(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert not is_keepalive_timeout(None)


# ------------------------------------------------------------- the peers use it
@linux_only
def test_the_offset_listen_connection_gets_the_options() -> None:
    asyncio.run(_offset_listen_connection())


async def _offset_listen_connection() -> None:
    from natrelay.offset.client import ListenConnection, OffsetClient
    from natrelay.offset.crypto import Identity
    from natrelay.offset.files import RelayTicket

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = OffsetClient(Identity.generate(), RelayTicket(bytes(32), f"127.0.0.1:{port}"),
                          tcp_keepalive=TcpKeepAlive(9, 4, 2))
    listener = client.listener(lambda *_: asyncio.sleep(0))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(lambda: ListenConnection(listener), "127.0.0.1", port)
    try:
        sock = transport.get_extra_info("socket")
        assert _options(sock) == {"keepalive": 1, "idle": 9, "interval": 4, "count": 2,
                                  "user_timeout_ms": (9 + 4 * 2) * 1000}
    finally:
        transport.abort()
        client.close()
        server.close()


@linux_only
def test_the_aspia_router_link_gets_the_options() -> None:
    asyncio.run(_aspia_router_link())


async def _aspia_router_link() -> None:
    from natrelay.aspia.connection import make_wheel
    from natrelay.aspia.peer.router_link import HostRouterLink
    from natrelay.aspia.peer.router_session import HostRouterSession

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    timers = make_wheel(loop)
    results = {}

    def link(options: TcpKeepAlive | None) -> HostRouterLink:
        return HostRouterLink(bytes(range(1, 33)), HostRouterSession(bytes(32)), timers, lambda _e: None,
                              tcp_keepalive=options)

    for name, options in (("default", DEFAULT_TCP_KEEPALIVE), ("off", None)):
        transport, _ = await loop.create_connection(functools.partial(link, options), "127.0.0.1", port)
        results[name] = _options(transport.get_extra_info("socket"))
        transport.abort()
    timers.close()
    server.close()
    assert results["default"] == {"keepalive": 1, "idle": 3, "interval": 1, "count": 3,
                                  "user_timeout_ms": 6000}
    assert results["off"]["keepalive"] == 0 and results["off"]["user_timeout_ms"] == 0


# ------------------------------------------------------------------ the CLIs
PEER_ARGS = {
    "offset listen": ["offset", "listen", "-i", "id", "-r", "ticket"],
    "aspia host": ["aspia", "host", "--router", "h:1", "--router-key", "k", "--expose", "h:2"],
    "aspia client": ["aspia", "client", "--router", "h:1", "--router-key", "k", "--user", "u",
                     "--password-file", "f", "--host-id", "1"],
}


@pytest.mark.parametrize("peer", sorted(PEER_ARGS))
def test_the_peers_take_the_option(peer: str, capsys: pytest.CaptureFixture[str]) -> None:
    from natrelay.cli.natrelay import build_parser

    parser, argv = build_parser(), PEER_ARGS[peer]
    assert parser.parse_args(argv).tcp_keepalive == DEFAULT_TCP_KEEPALIVE
    assert parser.parse_args([*argv, "--tcp-keepalive", "0"]).tcp_keepalive is None
    assert parser.parse_args([*argv, "--tcp-keepalive", "9,4,2"]).tcp_keepalive == TcpKeepAlive(9, 4, 2)
    with pytest.raises(SystemExit) as caught:
        parser.parse_args([*argv, "--tcp-keepalive", "9,4"])
    assert caught.value.code == 2  # a usage error, with the reason
    assert "argument --tcp-keepalive: must be IDLE,INTERVAL,COUNT" in capsys.readouterr().err
