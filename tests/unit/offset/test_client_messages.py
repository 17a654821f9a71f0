"""What a client is told when the relay ends its connection early (offset/client.py)."""

from __future__ import annotations

from natrelay.offset.client import explain_connect_failure, explain_relay_refusal

RELAY = "203.0.113.5:1337"


def test_reset_before_the_handshake_names_the_connection_limits() -> None:
    text = explain_relay_refusal(RELAY, "connection lost: reset", established=False, reset=True)
    assert text is not None and RELAY in text and "before the secure handshake" in text
    assert "connection limits" in text and "(connection lost: reset)" in text


def test_reset_after_the_handshake_names_the_listener_and_pending_limits() -> None:
    text = explain_relay_refusal(RELAY, "connection lost: reset", established=True, reset=True)
    assert text is not None and "after the handshake" in text and "waiting for one listener" in text


def test_orderly_closes_are_not_called_limits() -> None:
    assert explain_relay_refusal(RELAY, "peer closed the connection", established=True, reset=False) is None
    during = explain_relay_refusal(RELAY, "peer closed the connection", established=False, reset=False)
    assert during is not None and "during the secure handshake" in during and "may be" in during
    wrong_key = explain_relay_refusal(RELAY, "protocol error: unexpected key", established=False, reset=False)
    assert wrong_key == f"no secure connection to the relay at {RELAY}: protocol error: unexpected key"
    absent = explain_connect_failure(b"\x00" * 32, "peer closed the connection")
    assert "not listening" in absent and "limit" not in absent
