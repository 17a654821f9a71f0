"""One end of an Aspia ``TcpChannel`` (spec §2-§4) as a sans-IO endpoint.

It composes the pieces that already exist -- :class:`FrameDecoder`, :class:`KeepAlive`, a
server or client handshake -- into the object every Aspia program talks through: bytes and a
clock go in, decrypted application messages, bytes to write and a deadline come out. It does
no I/O, so the router, the relay's router link and both peers share it, and its timers (the
60-second authentication limit, keep-alive pings and their timeout) are testable with fake time.

The state that changes mid-stream (encryption on, channel header on) is applied frame by frame
as the decoder yields them, never ahead: a single TCP read may carry the last handshake message
and the first tagged, encrypted application frame back to back (§4.3).
"""

from __future__ import annotations

from natrelay.aspia.crypto import ChannelCipher
from natrelay.aspia.errors import AspiaProtocolError
from natrelay.aspia.framing import (
    MAX_MESSAGE_SIZE,
    DataFrame,
    FrameDecoder,
    KeepAlive,
    encode_user_frame,
    split_channel_header,
)
from natrelay.aspia.handshake import HandshakeResult
from natrelay.aspia.handshake_client import ClientHandshake
from natrelay.aspia.handshake_server import ServerHandshake

IDLE_RECHECK = 3600.0
"""How far ahead :meth:`Channel.next_deadline` points when no timer is running: a finite value
keeps every event loop's timer arithmetic (uvloop converts to integer milliseconds) safe."""
KEEPALIVE_INTERVAL = 60.0
KEEPALIVE_TIMEOUT = 30.0
SESSION_CHANNEL_ID = 0
"""``ROUTER_CHANNEL_ID_SESSION`` / ``HOST_CHANNEL_ID_SESSION``: the channel of every message
exchanged with the router and of the host session (§2.3)."""


class Channel:
    """One end of an Aspia TcpChannel (spec §2-§4): framing, keep-alive, authentication, then messages.

    A client queues its ClientHello at construction, so the first :meth:`take_output` after
    connecting already holds it. Any violation raises :class:`AspiaProtocolError`, after which
    the channel is unusable and the connection must be closed without telling the peer (§2.5).

    ``keepalive`` enables our own pings from construction, as the router and everyone talking
    to it do before authentication; a Host toward its Client enables them only after
    authentication, through :meth:`enable_keepalive`. Pings from the peer are answered in every
    state either way (§2.4).
    """

    def __init__(
        self,
        handshake: ServerHandshake | ClientHandshake,
        *,
        now: float,
        keepalive: bool = True,
        max_frame: int = MAX_MESSAGE_SIZE,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        channel_id: int = SESSION_CHANNEL_ID,
    ) -> None:
        if not 0 <= channel_id <= 0xFF:
            raise ValueError("channel id must fit one byte")
        self._handshake = handshake
        self._decoder = FrameDecoder(max_frame)
        self._keepalive = KeepAlive(keepalive_interval, keepalive_timeout)
        self._out: list[bytes] = []
        self._cipher: ChannelCipher | None = None
        self._channel_ids = False
        self._channel_id = channel_id
        self._failed: AspiaProtocolError | None = None
        self._now = now
        self.result: HandshakeResult | None = None
        self.ignored_messages = 0
        """Authenticated messages dropped because they arrived on another channel ID; the
        router logs and ignores those (§2.3), so a shell may log when this grows."""
        if keepalive:
            self._keepalive.enable(now)
        if isinstance(handshake, ClientHandshake):
            self._out.extend(encode_user_frame(p) for p in handshake.start())

    # ------------------------------------------------------------------ state
    @property
    def established(self) -> bool:
        """Authentication is done; :meth:`send` is allowed and messages flow."""
        return self.result is not None

    @property
    def channel_ids(self) -> bool:
        """Whether application frames carry the 2-byte channel header (peer >= 2.6.0)."""
        return self._channel_ids

    @property
    def error(self) -> AspiaProtocolError | None:
        """The violation that failed this channel, if any (for precise log lines and user errors)."""
        return self._failed

    def enable_keepalive(self, now: float) -> None:
        """Start our own pings now (a Host does this once its Client has authenticated)."""
        self._now = now
        if not self._keepalive.enabled:
            self._keepalive.enable(now)

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes, now: float) -> list[bytes]:
        """Feed received bytes; return the decrypted messages of our channel ID, in order.

        Messages on another channel ID are authenticated (their nonces must advance) but
        dropped and counted in :attr:`ignored_messages`.
        """
        own = self._channel_id
        messages: list[bytes] = []
        for channel_id, message in self.receive_tagged(data, now):
            if channel_id == own:
                messages.append(message)
            else:
                self.ignored_messages += 1
        return messages

    def receive_tagged(self, data: bytes, now: float) -> list[tuple[int, bytes]]:
        """Like :meth:`receive_data` but keeps every message with its channel ID (0 if untagged)."""
        self._check_alive()
        self._now = now
        try:
            return self._receive(data, now)
        except AspiaProtocolError as exc:
            self._failed = exc
            self._out.clear()
            raise

    def _receive(self, data: bytes, now: float) -> list[tuple[int, bytes]]:
        decoder = self._decoder
        decoder.receive_data(data)
        received: list[tuple[int, bytes]] = []
        while (frame := decoder.next_frame()) is not None:
            if not isinstance(frame, DataFrame):
                self._out.extend(self._keepalive.on_frame(frame, now))
                continue
            cipher = self._cipher
            if cipher is None:
                self._on_handshake_frame(frame.body, now)
                continue
            if self._channel_ids:
                channel_id, payload = split_channel_header(frame.body)
            else:
                channel_id, payload = SESSION_CHANNEL_ID, frame.body
            received.append((channel_id, cipher.decrypt(payload)))
        return received

    def _on_handshake_frame(self, body: bytes, now: float) -> None:
        handshake = self._handshake
        replies = handshake.receive(body, now)
        # Handshake messages never carry the channel header, even the client's last one (§2.3).
        self._out.extend(encode_user_frame(p) for p in replies)
        if handshake.done:
            result = handshake.result
            assert result is not None  # set whenever the machine reaches DONE
            self.result = result
            self._cipher = result.cipher
            self._channel_ids = result.channel_ids

    # ----------------------------------------------------------------- output
    def send(self, message: bytes, channel_id: int | None = None) -> None:
        """Encrypt and frame one application message (only once established).

        ``channel_id`` defaults to the channel given at construction; it is written only when
        the peer supports channel IDs.
        """
        self._check_alive()
        cipher = self._cipher
        if cipher is None:
            raise RuntimeError("cannot send application messages before authentication")
        if not message:
            raise ValueError("an empty message cannot be sent (size 0 marks a service frame)")
        tag = (self._channel_id if channel_id is None else channel_id) if self._channel_ids else None
        self._out.append(encode_user_frame(cipher.encrypt(message), tag))

    def take_output(self) -> list[bytes]:
        """Chunks to write, in order (for ``transport.writelines``)."""
        out, self._out = self._out, []
        return out

    # ----------------------------------------------------------------- timers
    def handle_timer(self, now: float) -> None:
        """Run the authentication limit and keep-alive; raises on either timing out."""
        self._check_alive()
        self._now = now
        try:
            if self.result is None:
                self._handshake.check_timeout(now)
            self._out.extend(self._keepalive.on_timer(now))
        except AspiaProtocolError as exc:
            self._failed = exc
            raise

    def defer_receive_timeout(self, now: float) -> None:
        """While the shell is not reading (backpressure), an unread PONG must not time us out."""
        self._keepalive.defer_timeout(now)

    def next_deadline(self) -> float:
        """The earliest time :meth:`handle_timer` has something to do."""
        when = self._now + IDLE_RECHECK if self.result is not None else self._handshake.deadline
        ka = self._keepalive.deadline
        if ka is not None and ka < when:
            when = ka
        return when

    def _check_alive(self) -> None:
        if self._failed is not None:
            raise AspiaProtocolError(f"channel already failed: {self._failed}", self._failed.code)
