"""Fuzz targets of the Offset family: framing, capnp messages, keepalive, the secure channel's
handshake and established states, the framed link, and the relay's pairing table.

Only :class:`natrelay.offset.errors.ProtocolError` (and its subclasses, e.g. ``LinkTimeout``) may
escape a target; invariants that a crash would not reveal (a frame over the limit, a pairing
table that keeps entries for closed connections) are checked with ``assert``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fuzz.harness import Input, Target, chunked, lengthed
from natrelay.offset import messages as m
from natrelay.offset.crypto import NONCE_LEN, Identity
from natrelay.offset.errors import ProtocolError
from natrelay.offset.framing import FrameDecoder, check_version, encode_frame
from natrelay.offset.keepalive import Keepalive
from natrelay.offset.link import Link
from natrelay.offset.relay import CloseConnection, NotifyListener, RelayPairing, SpliceTunnel

PK = bytes(range(32))
DECODERS: tuple[Callable[[bytes], object], ...] = (
    m.decode_init_connection,
    m.decode_incoming_connection,
    m.decode_reject_connection,
    m.decode_ka_message,
    m.decode_exchange_rand_nonce,
    m.decode_exchange_dh,
    m.decode_rekey,
    m.decode_channel_message,
)


def _valid_messages() -> list[bytes]:
    return [
        m.encode_init_connection(m.Connect(PK)),
        m.encode_init_connection(m.Listen()),
        m.encode_init_connection(m.Accept(PK)),
        m.encode_incoming_connection(PK),
        m.encode_reject_connection(PK),
        m.encode_ka_message(b"payload"),
        m.encode_ka_message(None),
        m.encode_exchange_rand_nonce(m.ExchangeRandNonce(bytes(16), PK, PK)),
        m.encode_exchange_dh(m.ExchangeDh(PK, bytes(16), PK, bytes(64))),
        m.encode_channel_message(b"padding", m.encode_ka_message(b"x")),
        m.encode_channel_message(b"", m.Rekey(PK, PK)),
    ]


# ----------------------------------------------------------------------------- framing
def framing(data: bytes) -> None:
    """The 8-byte length framing and the version frame, over reads cut anywhere."""
    inp = Input(data)
    max_frame = inp.below(200)
    decoder = FrameDecoder(max_frame)
    first = True
    with contextlib.suppress(ProtocolError):
        for chunk in inp.chunks():
            for frame in decoder.feed(chunk):
                assert len(frame) <= max_frame
                if first:
                    first = False
                    with contextlib.suppress(ProtocolError):
                        check_version(frame)
            # Bounded: never more than one frame's worth plus its header and the current read.
            assert decoder.buffered <= max_frame + 8 + len(chunk)


def _framing_seeds() -> list[bytes]:
    version = encode_frame(bytes(4))
    return [bytes([100]) + chunked(version + encode_frame(b"abc"), encode_frame(b"x" * 50)[:20]),
            bytes([8]) + chunked(encode_frame(b"x" * 9))]


# ---------------------------------------------------------------------------- messages
def messages(data: bytes) -> None:
    """Every capnp decoder (packed encoding, multi-segment messages, far pointers)."""
    inp = Input(data)
    decoder = DECODERS[inp.choose(DECODERS)]
    with contextlib.suppress(ProtocolError):
        decoder(inp.rest())


def _message_seeds() -> list[bytes]:
    return [bytes([index]) + msg for index in range(len(DECODERS)) for msg in _valid_messages()]


# --------------------------------------------------------------------------- keepalive
def keepalive(data: bytes) -> None:
    """KaMessage wrapping and both clocks, over arbitrary payloads and times that only move forward."""
    inp = Input(data)
    ka = Keepalive(0.0, timeout=32.0, heartbeat_interval=16.0)
    now = 0.0
    for _ in range(inp.below(12)):
        now += inp.byte() / 8
        op = inp.below(4)
        try:
            if op == 0:
                ka.unwrap(inp.take(), now)
            elif op == 1:
                ka.poll(now)
            elif op == 2:
                assert m.decode_ka_message(ka.wrap(inp.take(), now)) is not None
            else:
                ka.defer_timeout(now)
        except ProtocolError:
            return
        assert ka.next_deadline() > now or op != 1


def _keepalive_seeds() -> list[bytes]:
    return [bytes([3, 1, 0]) + lengthed(m.encode_ka_message(b"hi")) + bytes([200, 1, 200, 1])]


# ----------------------------------------------------------------------- secure channel
ME = Identity(bytes(range(100, 132)))
PEER = Identity(bytes(range(200, 232)))
FRAMED_STATES = ("await_version", "await_rand_nonce", "await_dh", "established", "rekey_pending",
                 "old_receiver")
MESSAGE_STATES = FRAMED_STATES[1:]


def _rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


Step = tuple[str, bytes]


class _Recorder:
    """Drives our link with a genuine peer once and records what reached our link, so later
    inputs rebuild the same state by replaying those steps: half the public-key work per input."""

    def __init__(self, me: Link) -> None:
        self.me = me
        self.steps: list[Step] = []

    def feed(self, kind: str, payload: bytes) -> None:
        self.steps.append((kind, payload))
        _apply(self.me, kind, payload)

    def deliver_to_me(self, peer: Link) -> int:
        chunks = peer.take_output()
        for chunk in chunks:
            self.feed("data" if self.me.framed else "frame", chunk)
        return len(chunks)

    def pump(self, peer: Link) -> None:
        while True:
            moved = 0
            for chunk in self.me.take_output():
                moved += 1
                if peer.framed:
                    peer.receive_data(chunk, 0.0)
                else:
                    peer.receive_frame(chunk, 0.0)
            moved += self.deliver_to_me(peer)
            if not moved:
                return


def _apply(me: Link, kind: str, payload: bytes) -> None:
    if kind == "data":
        me.receive_data(payload, 0.0)
    elif kind == "frame":
        me.receive_frame(payload, 0.0)
    elif kind == "rekey":
        me.start_rekey()
    else:
        me.take_output()


def _new_me(framed: bool) -> Link:
    return Link(ME, now=0.0, framed=framed, rng=_rng(1))


def _record(state: str, framed: bool) -> tuple[list[Step], Link]:
    rec = _Recorder(_new_me(framed))
    me = rec.me
    peer = Link(PEER, now=0.0, expected_remote=ME.public_key, framed=framed, rng=_rng(2))
    opening = peer.take_output()
    frames = FrameDecoder().feed(b"".join(opening)) if framed else opening
    steps = ["await_rand_nonce", "await_dh"] if framed else ["await_dh"]
    if framed and state == "await_version":
        return rec.steps, peer
    for frame, step in zip(frames, steps, strict=True):
        rec.feed("data" if framed else "frame", encode_frame(frame) if framed else frame)
        if state == step:
            return rec.steps, peer
    rec.pump(peer)
    assert me.established
    if state == "rekey_pending":
        rec.feed("rekey", b"")
    elif state == "old_receiver":
        peer.start_rekey()
        rec.pump(peer)
    rec.feed("drain", b"")
    return rec.steps, peer


_RECORDED: dict[tuple[str, bool], tuple[list[Step], Link]] = {}


def _recorded(state: str, framed: bool) -> tuple[list[Step], Link]:
    found = _RECORDED.get((state, framed))
    if found is None:
        found = _RECORDED[state, framed] = _record(state, framed)
    return found


def link_in_state(state: str, *, framed: bool) -> Link:
    """Our link (relay side: no expected key) driven by a genuine peer into ``state``."""
    steps, _ = _recorded(state, framed)
    me = _new_me(framed)
    for kind, payload in steps:
        _apply(me, kind, payload)
    if state not in ("await_version", "await_rand_nonce", "await_dh"):
        assert me.established
    return me


def channel(data: bytes) -> None:
    """The secure channel's handshake and rekey states, fed arbitrary frames (the tunnel stack)."""
    inp = Input(data)
    link = link_in_state(MESSAGE_STATES[inp.choose(MESSAGE_STATES)], framed=False)
    now = 0.0
    try:
        for frame in inp.chunks(max_chunks=4):
            now += inp.byte()
            link.receive_frame(frame, now)
            if inp.flag():
                link.handle_timer(now)
    except ProtocolError:
        return


def _channel_seeds() -> list[bytes]:
    return [bytes([i]) + chunked(msg) for i in range(len(MESSAGE_STATES)) for msg in _valid_messages()[6:]]


def channel_plaintext(data: bytes) -> None:
    """An established channel receiving correctly encrypted frames with arbitrary plaintext.

    Random ciphertext never passes the AEAD check; sealing the fuzz bytes with the peer's real
    send key is what reaches the ChannelMessage, Rekey and KaMessage parsers behind it.
    """
    inp = Input(data)
    me = link_in_state("established", framed=False)
    aead, counter = _peer_sender()
    try:
        for plaintext in inp.chunks(max_chunks=4):
            if inp.flag():  # a well-formed ChannelMessage around the fuzz bytes
                plaintext = m.encode_channel_message(inp.take(16), plaintext)
            nonce = counter.to_bytes(NONCE_LEN, "little")
            counter += 1
            me.receive_frame(nonce + aead.encrypt(nonce, plaintext, None), 1.0)
    except ProtocolError:
        return


def _peer_sender() -> tuple[ChaCha20Poly1305, int]:
    """The genuine peer's sender (key and next nonce) at the moment our link became established.

    Our link is rebuilt for every input, so its receiver expects that same nonce each time.
    """
    _, peer = _recorded("established", False)
    enc = peer._channel._encryptor  # the harness needs the real key; nothing else reads it
    assert enc is not None
    return enc._aead, enc._counter


def check_plaintext_reaches_the_parsers() -> None:
    """The plaintext target means something only if its frames pass the AEAD check."""
    me = link_in_state("established", framed=False)
    aead, counter = _peer_sender()
    nonce = counter.to_bytes(NONCE_LEN, "little")
    sealed = aead.encrypt(nonce, m.encode_channel_message(b"", m.encode_ka_message(b"x")), None)
    assert me.receive_frame(nonce + sealed, 1.0) == [b"x"]


def _plaintext_seeds() -> list[bytes]:
    ka = m.encode_ka_message(b"data")
    return [chunked(m.encode_channel_message(b"pad", ka)) + b"\x00",
            chunked(ka) + b"\x01" + lengthed(b"pad"),
            chunked(m.encode_channel_message(b"", m.Rekey(PK, PK))) + b"\x00"]


# --------------------------------------------------------------------------------- link
def link(data: bytes) -> None:
    """The framed link (framing + version + channel + keepalive) in each state, fed a TCP stream."""
    inp = Input(data)
    the_link = link_in_state(FRAMED_STATES[inp.choose(FRAMED_STATES)], framed=True)
    now = 0.0
    try:
        for chunk in inp.chunks(max_chunks=6):
            now += inp.byte() / 4
            the_link.receive_data(chunk, now)
            if inp.flag():
                the_link.handle_timer(now)
            if inp.flag():
                the_link.send(b"reply", now)
            the_link.take_output()
    except ProtocolError:
        return


def _link_seeds() -> list[bytes]:
    out = []
    for i in range(len(FRAMED_STATES)):
        for msg in (bytes(4), *_valid_messages()[6:]):
            out.append(bytes([i]) + chunked(encode_frame(msg)))
    return out


# ------------------------------------------------------------------------ relay pairing
KEYS = tuple(bytes([k]) * 32 for k in range(4))


def relay_pairing(data: bytes) -> None:
    """The relay's listener/half-tunnel table under any order of Listen, Connect, Accept, Reject,
    closes and timeouts, as strelay would call it: one InitConnection per connection.

    Checked: actions only name connections that exist and are not closed; a spliced or closed
    connection is never named again; once every connection is closed the table is empty.
    """
    inp = Input(data)
    pairing = RelayPairing(half_tunnel_timeout=10.0, max_listeners=inp.below(4),
                           max_pending_per_listener=inp.below(4))
    live: set[int] = set()  # open connections that have sent their InitConnection
    done: set[int] = set()  # closed or spliced: must never appear again
    listeners: set[int] = set()
    next_conn = 0
    now = 0.0

    def apply(actions: Sequence[object]) -> None:
        for action in actions:
            if isinstance(action, CloseConnection):
                assert action.conn in live, action
                _close(action.conn)
            elif isinstance(action, NotifyListener):
                assert action.listener in live and action.listener in listeners, action
            elif isinstance(action, SpliceTunnel):
                assert action.connector != action.acceptor
                for conn in (action.connector, action.acceptor):
                    assert conn in live, action
                    live.discard(conn)
                    done.add(conn)
            else:  # pragma: no cover - a new action type needs a rule here
                raise AssertionError(f"unknown action {action!r}")

    def _close(conn: int) -> None:
        live.discard(conn)
        listeners.discard(conn)
        done.add(conn)
        apply(pairing.connection_closed(conn))

    for _ in range(inp.below(40)):
        op = inp.below(7)
        key, other = KEYS[inp.below(4)], KEYS[inp.below(4)]
        if op <= 2:
            conn, next_conn = next_conn, next_conn + 1
            live.add(conn)
            if op == 0:
                listeners.add(conn)
                apply(pairing.listen(conn, key))
                if not pairing.is_listening(key) or pairing.listener_conn(key) != conn:
                    listeners.discard(conn)
            elif op == 1:
                apply(pairing.connect(conn, key, other, now))
            else:
                apply(pairing.accept(conn, key, other))
        elif op == 3 and listeners:
            apply(pairing.reject(sorted(listeners)[inp.below(len(listeners))], other))
        elif op == 4 and live:
            _close(sorted(live)[inp.below(len(live))])
        elif op == 5:
            now += inp.byte() / 16
            apply(pairing.expire(now))
        deadline = pairing.next_deadline()
        assert deadline is None or deadline > now - 10.0 - 1e-9
    for conn in sorted(live):
        if conn in live:
            _close(conn)
    assert pairing.listener_count == 0 and pairing.half_tunnel_count == 0
    assert pairing.next_deadline() is None


def _pairing_seeds() -> list[bytes]:
    # listen(k0), connect(k1 -> k0), accept(k0, from k1), close the listener
    return [bytes([0, 0, 20, 0, 0, 0, 1, 1, 0, 2, 0, 1, 4, 0, 0, 0]),
            bytes([2, 1, 20, 0, 1, 1, 1, 1, 1, 0, 1, 1, 3, 1, 1, 5, 0, 0, 200])]


TARGETS: tuple[Target, ...] = (
    Target("offset_framing", framing, _framing_seeds, "8-byte length framing and the version frame"),
    Target("offset_messages", messages, _message_seeds, "every capnp message decoder"),
    Target("offset_keepalive", keepalive, _keepalive_seeds, "KaMessage wrap/unwrap and both clocks"),
    Target("offset_channel", channel, _channel_seeds, "secure channel handshake and rekey states"),
    Target("offset_channel_plaintext", channel_plaintext, _plaintext_seeds,
           "established channel, arbitrary plaintext under the real key"),
    Target("offset_link", link, _link_seeds, "framed link in every state, fed a byte stream"),
    Target("offset_relay_pairing", relay_pairing, _pairing_seeds, "strelay's pairing table"),
)
