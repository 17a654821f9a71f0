"""The Offset secure channel as a sans-IO state machine (spec §5).

It works on whole frames: it is fed one received frame at a time and queues the frames to send,
each as a tuple of byte chunks whose concatenation is the frame (an encrypted frame is
``(nonce, ciphertext)``, so a writer can send it without joining 64 KiB buffers). The layers
around it (version prefix, length framing, keepalive) live in ``link.py`` and ``keepalive.py``.

The handshake is symmetric: both ends send ExchangeRandNonce at once, answer the peer's with a
signed ExchangeDh that echoes the peer's nonce, and derive one key per direction, salted by the
sender's salt. Rekeying follows the original exactly, including the "old receiver" that still
accepts frames the peer sent under the previous key (spec §5.6).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import Enum, auto

from .crypto import CipherCache, Decryptor, DhKeyPair, Encryptor, Identity, verify_signature
from .errors import ProtocolError
from .messages import (
    DEFAULT_MESSAGE_WORDS,
    RAND_NONCE_LEN,
    SALT_LEN,
    ExchangeDh,
    ExchangeRandNonce,
    Rekey,
    decode_channel_message,
    decode_exchange_dh,
    decode_exchange_rand_nonce,
    encode_channel_message,
    encode_exchange_dh,
    encode_exchange_rand_nonce,
    encode_user_message,
)

Frame = tuple[bytes, ...]  # the chunks of one outgoing frame, in order
Rng = Callable[[int], bytes]

DH_PRIVATE_LEN = 32
_NEVER = float("inf")


class _State(Enum):
    AWAIT_RAND_NONCE = auto()
    AWAIT_DH = auto()
    ESTABLISHED = auto()


def uniform_below(rng: Rng, bound: int) -> int:
    """A uniform integer in [0, bound), by rejection sampling so no length is favoured."""
    if bound <= 1:
        return 0
    nbytes = ((bound - 1).bit_length() + 7) // 8
    span = 1 << (8 * nbytes)
    limit = span - span % bound
    while True:
        value = int.from_bytes(rng(nbytes), "big")
        if value < limit:
            return value % bound


class RandomPool:
    """Random bytes drawn from ``os.urandom`` a block at a time, for padding only.

    Each frame draws its padding length (one byte) and its padding (0-255 bytes): two getrandom
    system calls per frame, four per message a node tunnels (an end-to-end frame inside a relay
    link frame), each a kernel entry on the round trip's path. Padding hides a frame's length and
    travels encrypted; it is no secret, so it may sit in a buffer. Key material never comes from
    here: DH keys, salts and nonces are still drawn from the link's ``rng`` one by one.

    One pool per process-level owner (a node's client, a relay), passed to its links as
    ``CipherCache`` is: no module-level state. A child forked with a pool in hand may use the
    rest of the block its parent also uses; padding travels encrypted under each link's own keys,
    so repeated padding bytes tell an observer nothing.
    """

    __slots__ = ("_block", "_buf", "_pos")

    def __init__(self, block: int = 4096) -> None:
        self._block = block
        self._buf = b""
        self._pos = 0

    def _refill(self, size: int) -> bytes:
        self._buf = os.urandom(size)
        return self._buf

    def __call__(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if end > len(self._buf):
            if n > self._block:
                return os.urandom(n)
            self._refill(self._block)
            pos, end = 0, n
        self._pos = end
        return self._buf[pos:end]

    def padding(self) -> bytes:
        """0-255 random bytes, the length uniform: one byte for it, then the padding, in one call.

        The same draws as ``SecureChannel._padding`` makes at its default bound, for the per-frame path.
        """
        buf = self._buf
        pos = self._pos
        if pos + 256 > len(buf):  # room for the length byte and the longest padding
            buf = self._refill(max(self._block, 256))
            pos = 0
        start = pos + 1
        end = start + buf[pos]
        self._pos = end
        return buf[start:end]


class _PendingRekey:
    """Our half of a rekey we started, waiting for the peer's Rekey."""

    def __init__(self, dh: DhKeyPair, salt: bytes) -> None:
        self.dh = dh
        self.salt = salt


class SecureChannel:
    """One end of a secure channel. Construction queues our ExchangeRandNonce."""

    # No instance dict: a relay keeps one per link, two links per idle tunnel (about 290 bytes each).
    __slots__ = (
        "_ciphers",
        "_decryptor",
        "_encryptor",
        "_expected_remote",
        "_handshake_dh",
        "_handshake_salt",
        "_identity",
        "_local_nonce",
        "_max_message_words",
        "_max_padding",
        "_old_decryptor",
        "_outbox",
        "_pad_rng",
        "_pending_rekey",
        "_pool",
        "_rekey_at",
        "_rekey_interval",
        "_rng",
        "_state",
        "last_plaintext",
        "remote_public_key",
    )

    def __init__(
        self,
        identity: Identity,
        *,
        expected_remote: bytes | None,
        rng: Rng,
        max_padding: int,
        rekey_interval: float | None,
        max_message_words: int = DEFAULT_MESSAGE_WORDS,
        ciphers: CipherCache | None = None,
        padding: RandomPool | None = None,
    ) -> None:
        self._identity = identity
        self._ciphers = ciphers
        self._expected_remote = expected_remote
        self._rng = rng
        # Padding from the owner's pool when the randomness is the system's (None: the pool's
        # one-call ``padding()``, for the default bound); a scripted rng (tests, the spec's
        # vectors) supplies padding too, in the same order of draws as before.
        self._pool = padding
        self._pad_rng: Rng | None = rng
        if padding is not None and rng is os.urandom:
            self._pad_rng = None if max_padding == 255 else padding
        self._max_padding = max_padding
        self._rekey_interval = rekey_interval
        self._max_message_words = max_message_words
        self._state = _State.AWAIT_RAND_NONCE
        self._outbox: list[Frame] = []
        self.remote_public_key: bytes | None = None
        #: The decrypted ChannelMessage of the last user payload received (see ``send_plaintext``).
        self.last_plaintext: bytes | None = None

        self._local_nonce = rng(RAND_NONCE_LEN)
        self._handshake_dh: DhKeyPair | None = None
        self._handshake_salt = b""

        self._encryptor: Encryptor | None = None
        self._decryptor: Decryptor | None = None
        self._old_decryptor: Decryptor | None = None
        self._pending_rekey: _PendingRekey | None = None
        self._rekey_at: float | None = None

        hello = ExchangeRandNonce(self._local_nonce, identity.public_key, expected_remote)
        self._outbox.append((encode_exchange_rand_nonce(hello),))

    @property
    def established(self) -> bool:
        return self._state is _State.ESTABLISHED

    @property
    def rekey_pending(self) -> bool:
        """True between sending our Rekey and receiving the peer's."""
        return self._pending_rekey is not None

    def take_frames(self) -> list[Frame]:
        frames, self._outbox = self._outbox, []
        return frames

    # ------------------------------------------------------------ receiving

    def receive_frame(self, frame: bytes, now: float) -> bytes | None:
        """Consumes one frame; returns a user payload (a packed KaMessage) or None."""
        if self._state is _State.ESTABLISHED:
            decryptor = self._decryptor
            if self._old_decryptor is None and decryptor is not None:  # no rekey in progress
                plaintext = decryptor.try_decrypt(frame)
                if plaintext is None:
                    raise ProtocolError("encrypted frame with unexpected nonce or bad tag")
            else:
                plaintext = self._decrypt(frame)
            content = decode_channel_message(plaintext, max_words=self._max_message_words)
            if isinstance(content, Rekey):
                self.last_plaintext = None
                self._on_rekey(content, now)
                return None
            self.last_plaintext = plaintext
            return content
        if self._state is _State.AWAIT_RAND_NONCE:
            self._on_rand_nonce(decode_exchange_rand_nonce(frame))
        else:
            self._on_exchange_dh(decode_exchange_dh(frame), now)
        return None

    def _on_rand_nonce(self, msg: ExchangeRandNonce) -> None:
        if self._expected_remote is not None and msg.src_public_key != self._expected_remote:
            raise ProtocolError("remote public key is not the expected one")
        # The peer's optDestPublicKey is ignored, as by the original (spec §12.2 item 15).
        self.remote_public_key = msg.src_public_key
        dh = DhKeyPair(self._rng(DH_PRIVATE_LEN))
        salt = self._rng(SALT_LEN)
        signature = self._identity.sign(dh.public_key + msg.rand_nonce + salt)
        self._outbox.append((encode_exchange_dh(ExchangeDh(dh.public_key, msg.rand_nonce, salt, signature)),))
        self._handshake_dh, self._handshake_salt = dh, salt
        self._state = _State.AWAIT_DH

    def _on_exchange_dh(self, msg: ExchangeDh, now: float) -> None:
        if msg.rand_nonce != self._local_nonce:
            raise ProtocolError("ExchangeDh does not echo our nonce")
        assert self.remote_public_key is not None and self._handshake_dh is not None
        if not verify_signature(self.remote_public_key, msg.signed_bytes(), msg.signature):
            raise ProtocolError("ExchangeDh signature is invalid")
        send_key, recv_key = self._handshake_dh.derive_keys(
            self._handshake_salt, msg.dh_public_key, msg.key_salt
        )
        self._encryptor = Encryptor(send_key, self._ciphers)
        self._decryptor = Decryptor(recv_key, self._ciphers)
        self._handshake_dh, self._handshake_salt = None, b""
        self._state = _State.ESTABLISHED
        self._restart_rekey_clock(now)

    def _decrypt(self, frame: bytes) -> bytes:
        """Tries the old receiver first, so frames sent before the peer switched keys still pass."""
        if self._old_decryptor is not None:
            plaintext = self._old_decryptor.try_decrypt(frame)
            if plaintext is not None:
                return plaintext
        assert self._decryptor is not None
        plaintext = self._decryptor.try_decrypt(frame)
        if plaintext is None:
            raise ProtocolError("encrypted frame with unexpected nonce or bad tag")
        self._old_decryptor = None  # the peer has switched: nothing more can come under the old key
        return plaintext

    def _on_rekey(self, rekey: Rekey, now: float) -> None:
        pending = self._pending_rekey
        if pending is not None:
            # We started (or both started at once): install both directions, send nothing.
            send_key, recv_key = pending.dh.derive_keys(pending.salt, rekey.dh_public_key, rekey.key_salt)
            self._pending_rekey = None
            self._switch_receiver(recv_key)
            self._encryptor = Encryptor(send_key, self._ciphers)
        else:
            # The peer started: answer under the old send key, then switch sending.
            dh = DhKeyPair(self._rng(DH_PRIVATE_LEN))
            salt = self._rng(SALT_LEN)
            send_key, recv_key = dh.derive_keys(salt, rekey.dh_public_key, rekey.key_salt)
            self._switch_receiver(recv_key)
            self._send_content(Rekey(dh.public_key, salt))
            self._encryptor = Encryptor(send_key, self._ciphers)
        self._restart_rekey_clock(now)

    def _switch_receiver(self, recv_key: bytes) -> None:
        self._old_decryptor = self._decryptor
        self._decryptor = Decryptor(recv_key, self._ciphers)

    # ------------------------------------------------------------ sending

    def send(self, user: bytes) -> None:
        """Queues one encrypted frame carrying ``user`` (a packed KaMessage)."""
        if self._state is not _State.ESTABLISHED:
            raise RuntimeError("secure channel not established")
        self._send_content(user)

    def send_plaintext(self, plaintext: bytes) -> None:
        """Queues one encrypted frame whose plaintext is a ChannelMessage received on another channel.

        A relay forwards user payloads unchanged; the ChannelMessage it decrypted already reads
        ``user(KaMessage{message})``, exactly what it would build, so it is encrypted again as is
        (keeping the sender's random padding) instead of being packed afresh, the costliest step
        of a hop. Only plaintexts that decoded as user content are ever passed here.
        """
        if self._state is not _State.ESTABLISHED:
            raise RuntimeError("secure channel not established")
        assert self._encryptor is not None
        self._outbox.append(self._encryptor.encrypt_parts(plaintext))

    def seal(self, user: bytes) -> Frame:
        """The encrypted frame carrying ``user`` (a packed KaMessage), returned instead of queued.

        The link's send path: it takes each frame as it is made, so nothing waits in the outbox
        (which only rekeying and the handshake use, and the link drains after each of them).
        """
        encryptor = self._encryptor
        if encryptor is None or self._state is not _State.ESTABLISHED:
            raise RuntimeError("secure channel not established")
        pool = self._pool
        padding = pool.padding() if pool is not None and self._pad_rng is None else self._padding()
        return encryptor.encrypt_parts(encode_user_message(padding, user))

    def seal_plaintext(self, plaintext: bytes) -> Frame:
        """``send_plaintext``, returning the frame instead of queueing it (see ``seal``)."""
        encryptor = self._encryptor
        if encryptor is None or self._state is not _State.ESTABLISHED:
            raise RuntimeError("secure channel not established")
        return encryptor.encrypt_parts(plaintext)

    def _send_content(self, content: bytes | Rekey) -> None:
        assert self._encryptor is not None
        plaintext = encode_channel_message(self._padding(), content)
        self._outbox.append(self._encryptor.encrypt_parts(plaintext))

    def _padding(self) -> bytes:
        rng = self._pad_rng
        if rng is None:
            assert self._pool is not None  # None only with a pool (see __init__)
            return self._pool.padding()
        bound = self._max_padding + 1
        # One byte is exactly uniform over 0..255: the default bound needs no rejection loop (and
        # draws the same single byte that ``uniform_below`` would).
        length = rng(1)[0] if bound == 256 else uniform_below(rng, bound)
        return rng(length) if length else b""

    # ------------------------------------------------------------ rekeying

    def start_rekey(self) -> None:
        """Sends our Rekey under the current key (initiator path of spec §5.6); no-op if one is pending."""
        if self._state is not _State.ESTABLISHED:
            raise RuntimeError("secure channel not established")
        if self._pending_rekey is not None:
            return
        pending = _PendingRekey(DhKeyPair(self._rng(DH_PRIVATE_LEN)), self._rng(SALT_LEN))
        self._send_content(Rekey(pending.dh.public_key, pending.salt))
        self._pending_rekey = pending
        self._rekey_at = None  # completing the rekey restarts the clock

    def _restart_rekey_clock(self, now: float) -> None:
        self._rekey_at = None if self._rekey_interval is None else now + self._rekey_interval

    def handle_timer(self, now: float) -> None:
        if self._rekey_at is not None and now >= self._rekey_at:
            self.start_rekey()

    def next_deadline(self) -> float:
        return _NEVER if self._rekey_at is None else self._rekey_at
