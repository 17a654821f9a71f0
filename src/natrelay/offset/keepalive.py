"""The Offset keepalive layer as a sans-IO state machine with explicit deadlines (spec §6).

Every secure-channel payload is a packed KaMessage: ``message`` carries one upper-layer payload,
``keepAlive`` is a heartbeat. Two clocks run: the receive clock closes the link when the peer has
sent no KaMessage for ``timeout`` seconds, and the send clock emits a heartbeat when we have sent
nothing for ``heartbeat_interval`` seconds. Rust peers drop a link after 32 silent ticks, so the
heartbeat is what keeps an idle link alive.
"""

from __future__ import annotations

from .constants import HEARTBEAT_INTERVAL, KEEPALIVE_TIMEOUT
from .errors import LinkTimeout
from .messages import DEFAULT_MESSAGE_WORDS, decode_ka_message, encode_ka_message

HEARTBEAT = encode_ka_message(None)


class ReceivedPayload(bytes):
    """A received payload that remembers the packed KaMessage it arrived in.

    A relay forwards each payload unchanged to another link, where it must be wrapped in a
    KaMessage again. Packing 64 KiB costs more than encrypting it, so ``wrap`` reuses the received
    KaMessage instead: it decodes to the same message, and receivers decode structurally (spec §4.1).
    Slicing or joining yields plain bytes, which are simply packed afresh.
    """

    packed_ka: bytes
    #: The decrypted ChannelMessage it arrived in, when it came straight off a channel: a relay
    #: re-encrypts that as is (``SecureChannel.send_plaintext``).
    plaintext: bytes | None


class Keepalive:
    """Wraps payloads into KaMessages and keeps both clocks. Started when the channel is up."""

    # No instance dict: a relay keeps one per link, two links per idle tunnel (about 290 bytes each).
    __slots__ = (
        "_close_at",
        "_forwardable",
        "_heartbeat_at",
        "_heartbeat_interval",
        "_max_message_words",
        "_timeout",
    )

    def __init__(
        self,
        now: float,
        *,
        timeout: float = KEEPALIVE_TIMEOUT,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        max_message_words: int = DEFAULT_MESSAGE_WORDS,
        forwardable: bool = True,
    ) -> None:
        """``forwardable=False``: payloads are consumed here, never sent on to another link (a
        node), so they are returned as plain bytes instead of a ``ReceivedPayload`` copy."""
        self._forwardable = forwardable
        self._timeout = timeout
        self._heartbeat_interval = heartbeat_interval
        self._max_message_words = max_message_words
        self._close_at = now + timeout
        self._heartbeat_at = now + heartbeat_interval

    def wrap(self, payload: bytes, now: float) -> bytes:
        """The KaMessage carrying ``payload``; sending it restarts the heartbeat clock."""
        self._heartbeat_at = now + self._heartbeat_interval
        if type(payload) is ReceivedPayload:
            return payload.packed_ka
        return encode_ka_message(payload)

    def unwrap(self, data: bytes, now: float, plaintext: bytes | None = None) -> bytes | None:
        """The payload of a received KaMessage, None for a heartbeat. Either restarts the receive clock.

        Raises ProtocolError when ``data`` is not a KaMessage: the original closes the link then.
        """
        payload = decode_ka_message(data, max_words=self._max_message_words)
        self._close_at = now + self._timeout
        if payload is None or not self._forwardable:
            return payload
        received = ReceivedPayload(payload)
        received.packed_ka = data
        received.plaintext = plaintext
        return received

    def defer_timeout(self, now: float) -> None:
        """We are not reading (our consumer is slow): the peer's silence is not observable now."""
        self._close_at = max(self._close_at, now + self._timeout)

    def poll(self, now: float) -> bytes | None:
        """A heartbeat to send if one is due; raises LinkTimeout once the peer has been silent too long."""
        if now >= self._close_at:
            raise LinkTimeout(f"no keepalive traffic for {self._timeout:g} s")
        if now >= self._heartbeat_at:
            self._heartbeat_at = now + self._heartbeat_interval
            return HEARTBEAT
        return None

    def next_deadline(self) -> float:
        return min(self._close_at, self._heartbeat_at)
