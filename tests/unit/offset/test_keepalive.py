"""Keepalive and handshake clocks with fake time (spec §5.7, §6)."""

from __future__ import annotations

import pytest

from natrelay.offset import messages as m
from natrelay.offset.crypto import Identity
from natrelay.offset.errors import LinkTimeout, ProtocolError
from natrelay.offset.keepalive import HEARTBEAT, Keepalive, ReceivedPayload
from natrelay.offset.link import Link

from .link_helpers import deliver, link_pair, pump

# ------------------------------------------------------------------ the Keepalive state machine


def test_heartbeat_after_16_seconds_idle() -> None:
    ka = Keepalive(100.0)
    assert ka.next_deadline() == 116.0
    assert ka.poll(115.9) is None
    assert ka.poll(116.0) == HEARTBEAT == m.encode_ka_message(None)
    assert ka.next_deadline() == 132.0  # the receive clock is now the earliest
    assert ka.poll(131.0) is None


def test_sending_restarts_the_heartbeat_clock() -> None:
    ka = Keepalive(0.0)
    assert m.decode_ka_message(ka.wrap(b"data", 10.0)) == b"data"
    assert ka.poll(16.0) is None
    assert ka.poll(26.0) == HEARTBEAT


def test_timeout_after_32_seconds_of_silence() -> None:
    ka = Keepalive(0.0)
    ka.poll(16.0)
    with pytest.raises(LinkTimeout):
        ka.poll(32.0)


def test_any_received_kamessage_restarts_the_receive_clock() -> None:
    ka = Keepalive(0.0)
    assert ka.unwrap(HEARTBEAT, 20.0) is None
    ka.poll(51.9)
    assert ka.unwrap(m.encode_ka_message(b"x"), 50.0) == b"x"
    ka.poll(81.9)
    with pytest.raises(LinkTimeout):
        ka.poll(82.0)


def test_unparsable_kamessage_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="KaMessage"):
        Keepalive(0.0).unwrap(b"\x00", 1.0)


def test_received_payload_reuses_its_kamessage_when_forwarded() -> None:
    rx, tx = Keepalive(0.0), Keepalive(0.0)
    packed = m.encode_ka_message(b"tunnel frame") + b"trailing bytes a Rust reader ignores"
    payload = rx.unwrap(packed, 1.0)
    assert isinstance(payload, ReceivedPayload)
    assert payload == b"tunnel frame"
    assert tx.wrap(payload, 1.0) is payload.packed_ka  # no re-packing
    assert tx.wrap(payload[:6], 1.0) == m.encode_ka_message(b"tunnel")  # derived bytes are packed afresh


# ------------------------------------------------------------------ through a Link


def test_a_node_link_hands_out_plain_bytes() -> None:
    """A node consumes its payloads: no forwarding copy (``ReceivedPayload``) is made for them."""
    keepalive = Keepalive(0.0, forwardable=False)
    payload = keepalive.unwrap(m.encode_ka_message(b"x" * 5000), 1.0)
    assert type(payload) is bytes and payload == b"x" * 5000
    client, relay = link_pair(forwardable=False)
    client.send(b"data")
    assert [type(p) for p in deliver(client, relay, 1.0)[1]] == [bytes]


def test_link_heartbeat_reaches_the_peer_and_counts_as_traffic() -> None:
    client, relay = link_pair(now=0.0)
    assert client.next_deadline() == 16.0  # REKEY_INTERVAL (3600 s) is later
    client.handle_timer(15.9)
    assert client.take_output() == []
    client.handle_timer(16.0)
    assert deliver(client, relay, 16.0)[1] == []  # a heartbeat carries no payload
    relay.handle_timer(16.0)  # the relay's own heartbeat is due too
    deliver(relay, client, 16.0)
    relay.handle_timer(47.9)  # 32 s after the client's heartbeat: not yet silent
    deliver(relay, client, 47.9)
    with pytest.raises(LinkTimeout):
        relay.handle_timer(48.0)


def test_link_times_out_after_32_seconds_of_silence() -> None:
    client, _ = link_pair(now=5.0)
    client.handle_timer(21.0)  # sends a heartbeat; receiving nothing
    client.handle_timer(36.9)
    with pytest.raises(LinkTimeout, match="32"):
        client.handle_timer(37.0)
    with pytest.raises(ProtocolError, match="already failed"):
        client.handle_timer(38.0)


def test_link_received_data_postpones_the_timeout() -> None:
    client, relay = link_pair(now=0.0)
    relay.send(b"news", now=30.0)
    assert deliver(relay, client, 30.0)[1] == [b"news"]
    client.handle_timer(61.9)
    with pytest.raises(LinkTimeout):
        client.handle_timer(62.0)


def test_link_send_postpones_the_heartbeat() -> None:
    client, relay = link_pair(now=0.0)
    client.send(b"a", now=10.0)
    assert client.next_deadline() == 26.0
    deliver(client, relay, 10.0)
    client.handle_timer(16.0)
    assert client.take_output() == []


def test_send_without_now_uses_the_last_seen_time() -> None:
    client, _ = link_pair(now=0.0)
    client.handle_timer(9.0)
    client.send(b"a")
    assert client.next_deadline() == 25.0


def test_rekey_frames_do_not_count_as_traffic() -> None:
    client, relay = link_pair(now=0.0)
    client.start_rekey()
    pump(client, relay, 20.0)  # Rekey and its reply cross at t = 20
    with pytest.raises(LinkTimeout):
        relay.handle_timer(32.0)


def test_handshake_timeout_at_8_seconds() -> None:
    link = Link(Identity.generate(), now=100.0)
    assert link.next_deadline() == 108.0
    link.handle_timer(107.9)
    with pytest.raises(LinkTimeout, match="handshake"):
        link.handle_timer(108.0)


def test_no_handshake_timeout_once_established() -> None:
    client, _ = link_pair(now=0.0)
    client.handle_timer(8.0)
    assert client.next_deadline() == 16.0


def test_own_rekey_on_the_timer() -> None:
    client, relay = link_pair(now=0.0, rekey_interval=60.0, heartbeat_interval=1e3, keepalive_timeout=2e3)
    assert client.next_deadline() == 60.0
    client.handle_timer(60.0)
    assert client.rekey_pending
    pump(client, relay, 60.0)
    assert not client.rekey_pending
    assert client.next_deadline() == relay.next_deadline() == 120.0
    client.send(b"after rekey")
    assert pump(client, relay, 61.0) == ([], [b"after rekey"])


def test_deferring_while_not_reading_postpones_the_silence_timeout() -> None:
    from natrelay.offset.errors import LinkTimeout
    from natrelay.offset.keepalive import Keepalive

    ka = Keepalive(0.0, timeout=32.0, heartbeat_interval=16.0)
    ka.defer_timeout(30.0)  # the shell was not reading at t=30: close no earlier than 62
    ka.poll(61.0)
    try:
        ka.poll(62.0)
    except LinkTimeout:
        pass
    else:
        raise AssertionError("still silent at 62 s must time out")
