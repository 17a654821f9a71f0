"""Hypothesis against the Syncthing relay's XDR parser and protocol state machine: any input gives
messages or an XdrError (never another exception), and no sequence of events breaks the bookkeeping."""

from __future__ import annotations

import contextlib
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from natrelay.syncthing import xdr
from natrelay.syncthing.relay import Close, EndSession, ProtocolRelay, RelayConfig, Send
from natrelay.syncthing.sessions import Paired, SessionTable

opaque = st.binary(max_size=32)
messages = st.one_of(
    st.just(xdr.Ping()), st.just(xdr.Pong()), st.just(xdr.RelayFull()),
    st.builds(xdr.JoinRelayRequest, st.text(max_size=40)),
    st.builds(xdr.JoinSessionRequest, opaque),
    st.builds(xdr.Response, st.integers(-(2**31), 2**31 - 1), st.text(max_size=40)),
    st.builds(xdr.ConnectRequest, opaque),
    st.builds(xdr.SessionInvitation, opaque, opaque, opaque, st.integers(0, 0xFFFF), st.booleans()),
)


@given(st.binary(max_size=2048), st.integers(0, 2048))
def test_decoder_never_raises_anything_but_xdr_error(data: bytes, cut: int) -> None:
    d = xdr.Decoder()
    try:
        d.feed(data[:cut])
        d.feed(data[cut:])
    except xdr.XdrError:
        pass
    assert d.buffered <= xdr.HEADER_SIZE + xdr.MAX_BODY


@given(st.integers(-5, 12), st.binary(max_size=300))
def test_bodies_of_any_type(msg_type: int, body: bytes) -> None:
    with contextlib.suppress(xdr.XdrError):
        xdr.decode_body(msg_type, body)


@given(st.lists(messages, max_size=8))
def test_encode_decode_round_trip(msgs: list[xdr.Message]) -> None:
    stream = b"".join(xdr.encode(m) for m in msgs)
    d = xdr.Decoder()
    assert d.feed(stream) == msgs


DEVICES = [bytes([i]) * 32 for i in range(3)]
events = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4), messages | st.sampled_from(
    [xdr.ConnectRequest(d) for d in DEVICES] + [xdr.JoinRelayRequest(""), xdr.JoinRelayRequest("t")]),
    st.floats(0, 400)), max_size=40)


@settings(max_examples=200)
@given(events, st.booleans())
def test_state_machine_bookkeeping_holds(evs: list[tuple[int, int, xdr.Message, float]], token: bool) -> None:
    counter = itertools.count()
    table: SessionTable[str] = SessionTable(60.0)
    r: ProtocolRelay[int] = ProtocolRelay(RelayConfig(token="t" if token else ""), table,
                                          lambda n: next(counter).to_bytes(n, "big"))
    open_conns: set[int] = set()
    now = 0.0
    keys: list[bytes] = []
    for conn, kind, msg, dt in evs:
        now += dt
        actions: list[object] = []
        if kind == 0 and conn not in open_conns:
            r.opened(conn, DEVICES[conn % 3], now)
            open_conns.add(conn)
        elif kind == 1 and conn in open_conns:
            open_conns.discard(conn)
            actions = list(r.closed(conn))
        elif kind == 2:
            actions = list(r.tick(now))
            table.expired(now)
        elif kind == 3 and keys:
            result = table.join(keys[conn % len(keys)], f"s{conn}")
            if isinstance(result, Paired):
                assert result.session.active
        elif conn in open_conns:
            actions = list(r.received(conn, msg, now))
        for a in actions:
            if isinstance(a, Send) and isinstance(a.message, xdr.SessionInvitation):
                keys.append(a.message.key)
                assert len(a.message.key) == 32
            if isinstance(a, Send | Close):
                assert a.conn in open_conns
            if isinstance(a, EndSession):
                table.end(a.session)
        # Every joined device maps to an open connection of that device.
        for dev, c in r.joined.items():
            assert c in open_conns and DEVICES[c % 3] == dev
        assert table.pending_keys <= 2 * table.pending
    for c in list(open_conns):
        r.closed(c)
    assert r.joined == {} and len(r) == 0
