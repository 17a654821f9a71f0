"""One end of an Offset link: version prefix + secure channel + keepalive, sans-IO (spec §2).

Two transports use the same stack:

* framed (a relay link over TCP, spec §2.1): bytes in via ``receive_data``, length-framed byte
  chunks out, and the first frame in each direction is the protocol version;
* message mode (the end-to-end stack inside a tunnel, spec §2.2): one whole frame per relay
  payload in via ``receive_frame`` and out of ``take_output``, no length prefix, no version.

The link never reads a clock: every entry point takes ``now`` and ``next_deadline`` says when
``handle_timer`` must run. After any ProtocolError the link is dead and keeps raising it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .channel import Frame, RandomPool, SecureChannel
from .constants import (
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_PADDING,
    HANDSHAKE_TIMEOUT,
    HEARTBEAT_INTERVAL,
    KEEPALIVE_TIMEOUT,
    REKEY_INTERVAL,
)
from .crypto import CipherCache, Identity
from .errors import LinkTimeout, ProtocolError
from .framing import VERSION_FRAME, FrameDecoder, check_version, frame_header
from .keepalive import Keepalive, ReceivedPayload
from .messages import message_word_limit


class Link:
    """One end of an Offset link. Construction queues the opening output."""

    # No instance dict: a relay keeps one per link, two links per idle tunnel (about 290 bytes each).
    __slots__ = (
        "_await_version",
        "_channel",
        "_dead",
        "_decoder",
        "_forwardable",
        "_framed",
        "_handshake_deadline",
        "_heartbeat_interval",
        "_held",
        "_keepalive",
        "_keepalive_timeout",
        "_max_frame",
        "_max_message_words",
        "_now",
        "_output",
    )

    def __init__(
        self,
        identity: Identity,
        *,
        now: float,
        expected_remote: bytes | None = None,
        framed: bool = True,
        version_prefix: bool = True,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_padding: int = DEFAULT_MAX_PADDING,
        rng: Callable[[int], bytes] = os.urandom,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        rekey_interval: float | None = REKEY_INTERVAL,
        forwardable: bool = True,
        ciphers: CipherCache | None = None,
        padding: RandomPool | None = None,
    ) -> None:
        """``version_prefix`` applies to framed mode only: the tunnel stack has no version (spec §2.2).

        ``forwardable=False`` is for links whose payloads end at this process (a node's links):
        they skip the copy that lets a relay re-send a payload without packing it again.
        ``ciphers``: the process's shared AEAD contexts (see ``CipherCache``); None = the link's own.
        ``padding``: the owner's pool of padding bytes (see ``RandomPool``); None = one draw each.
        """
        self._forwardable = forwardable
        self._framed = framed
        self._max_frame = max_frame
        self._decoder = FrameDecoder(max_frame) if framed else None
        self._await_version = framed and version_prefix
        self._keepalive_timeout = keepalive_timeout
        self._heartbeat_interval = heartbeat_interval
        self._max_message_words = message_word_limit(max_frame)
        self._handshake_deadline = now + handshake_timeout
        self._now = now
        self._output: list[bytes] = []
        self._held: list[bytes] = []  # payloads sent before the handshake finished
        self._keepalive: Keepalive | None = None
        self._dead: ProtocolError | None = None
        if self._await_version:
            self._output.append(VERSION_FRAME)
        self._channel = SecureChannel(
            identity,
            expected_remote=expected_remote,
            rng=rng,
            max_padding=max_padding,
            rekey_interval=rekey_interval,
            max_message_words=self._max_message_words,
            ciphers=ciphers,
            padding=padding,
        )
        self._drain_channel()

    # ------------------------------------------------------------ state

    @property
    def framed(self) -> bool:
        """True for a byte-stream link (``receive_data``), False for message mode (``receive_frame``)."""
        return self._framed

    @property
    def established(self) -> bool:
        """True once the handshake is done."""
        return self._keepalive is not None

    @property
    def remote_public_key(self) -> bytes | None:
        """The peer's identity, known once its ExchangeRandNonce has been accepted."""
        return self._channel.remote_public_key

    @property
    def rekey_pending(self) -> bool:
        return self._channel.rekey_pending

    @property
    def buffered(self) -> int:
        """Received bytes held in the frame decoder (framed mode), for memory accounting."""
        return 0 if self._decoder is None else self._decoder.buffered

    # ------------------------------------------------------------ input

    def receive_data(self, data: bytes, now: float) -> list[bytes]:
        """Framed mode: consumes stream bytes; returns the user payloads they completed."""
        decoder = self._decoder
        if decoder is None:
            raise RuntimeError("receive_data is for framed links; use receive_frame")
        if self._dead is not None:
            self._check_alive()
        try:
            payloads: list[bytes] = []
            for frame in decoder.feed(data):
                payload = self._on_frame(frame, now)
                if payload is not None:
                    payloads.append(payload)
            return payloads
        except ProtocolError as exc:
            self._dead = exc
            raise

    def receive_frame(self, frame: bytes, now: float) -> list[bytes]:
        """Consumes one whole frame; returns the user payload it carried, if any."""
        if self._dead is not None:
            self._check_alive()
        try:
            if len(frame) > self._max_frame:
                raise ProtocolError(f"frame of {len(frame)} bytes exceeds the {self._max_frame}-byte limit")
            payload = self._on_frame(frame, now)
        except ProtocolError as exc:
            self._dead = exc
            raise
        return [] if payload is None else [payload]

    def _on_frame(self, frame: bytes, now: float) -> bytes | None:
        self._now = now
        if self._await_version:
            check_version(frame)
            self._await_version = False
            return None
        keepalive = self._keepalive
        if keepalive is None:
            self._channel.receive_frame(frame, now)
            self._drain_channel()
            if self._channel.established:
                self._on_established(now)
            return None
        channel = self._channel
        content = channel.receive_frame(frame, now)
        if content is None:  # a rekey: below the keepalive layer, it does not count as traffic
            self._drain_channel()
            return None
        if not self._forwardable:  # the plaintext is for re-encrypting a forwarded payload only
            channel.last_plaintext = None
            return keepalive.unwrap(content, now)
        plaintext = channel.last_plaintext
        channel.last_plaintext = None  # an idle link must not keep its last 64 KiB frame alive
        return keepalive.unwrap(content, now, plaintext)

    def _on_established(self, now: float) -> None:
        self._keepalive = Keepalive(
            now,
            timeout=self._keepalive_timeout,
            heartbeat_interval=self._heartbeat_interval,
            max_message_words=self._max_message_words,
            forwardable=self._forwardable,
        )
        held, self._held = self._held, []
        for payload in held:
            self._send_now(payload, now)

    # ------------------------------------------------------------ output

    def send(self, payload: bytes, now: float | None = None) -> None:
        """Queues one user payload; before the handshake ends it is held and sent right after.

        ``now`` restarts the heartbeat clock; without it the last time the link saw is used,
        which can only make the next heartbeat early, never late.
        """
        if self._dead is not None:
            self._check_alive()
        if now is not None:
            self._now = now
        if self._keepalive is None:
            self._held.append(payload)
        else:
            self._send_now(payload, self._now)

    def _send_now(self, payload: bytes, now: float) -> None:
        """One frame straight into the output (every call of the channel leaves its outbox empty)."""
        keepalive = self._keepalive
        assert keepalive is not None
        packed_ka = keepalive.wrap(payload, now)
        if type(payload) is ReceivedPayload and payload.plaintext is not None:
            frame = self._channel.seal_plaintext(payload.plaintext)  # a relay forwarding: no re-packing
        else:
            frame = self._channel.seal(packed_ka)
        if self._framed:
            nonce, sealed = frame
            self._output += (frame_header(len(nonce) + len(sealed)), nonce, sealed)
        else:
            self._output.append(_joined(frame))

    def take_output(self) -> list[bytes]:
        """Drains pending output: byte chunks for ``writelines`` (framed) or whole frames (message mode)."""
        output, self._output = self._output, []
        return output

    def _drain_channel(self) -> None:
        frames = self._channel.take_frames()
        if self._framed:
            for frame in frames:
                self._output.append(frame_header(sum(map(len, frame))))
                self._output.extend(frame)
        else:
            self._output.extend(_joined(frame) for frame in frames)

    # ------------------------------------------------------------ time

    def handle_timer(self, now: float) -> None:
        """Runs heartbeats and our own rekey; raises LinkTimeout on handshake or keepalive expiry."""
        self._check_alive()
        self._now = now
        try:
            keepalive = self._keepalive
            if keepalive is None:
                if now >= self._handshake_deadline:
                    raise LinkTimeout("handshake not finished in time")
                return
            heartbeat = keepalive.poll(now)
            if heartbeat is not None:
                self._channel.send(heartbeat)
            self._channel.handle_timer(now)
            self._drain_channel()
        except ProtocolError as exc:
            self._dead = exc
            raise

    def defer_receive_timeout(self, now: float) -> None:
        """While the shell is not reading (backpressure), don't count the peer as silent.

        Its heartbeats sit unread in our socket buffer; timing out would kill a link whose only
        fault is a slow consumer on our side.
        """
        if self._keepalive is not None:
            self._keepalive.defer_timeout(now)

    def next_deadline(self) -> float:
        """The earliest ``now`` at which ``handle_timer`` must be called."""
        if self._keepalive is None:
            return self._handshake_deadline
        return min(self._keepalive.next_deadline(), self._channel.next_deadline())

    def start_rekey(self) -> None:
        """Test hook: starts a rekey now (initiator path of spec §5.6)."""
        self._check_alive()
        self._channel.start_rekey()
        self._drain_channel()

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise ProtocolError(f"link already failed: {self._dead}")


def _joined(frame: Frame) -> bytes:
    return frame[0] if len(frame) == 1 else b"".join(frame)
