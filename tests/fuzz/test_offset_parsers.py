"""Fuzzing every Offset parser: whatever arrives, nothing but ProtocolError may escape."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natrelay.offset import messages as m
from natrelay.offset.crypto import Encryptor, Identity
from natrelay.offset.errors import ProtocolError
from natrelay.offset.framing import FrameDecoder, encode_frame
from natrelay.offset.link import Link
from tests.unit.offset.link_helpers import CLIENT_SEND_KEY, pump, transcript_links
from tests.unit.offset.packing_helpers import pack_simple

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PK = bytes(range(32))
DECODERS: dict[str, Callable[[bytes], object]] = {
    "init_connection": m.decode_init_connection,
    "incoming_connection": m.decode_incoming_connection,
    "reject_connection": m.decode_reject_connection,
    "ka_message": m.decode_ka_message,
    "exchange_rand_nonce": m.decode_exchange_rand_nonce,
    "exchange_dh": m.decode_exchange_dh,
    "rekey": m.decode_rekey,
    "channel_message": m.decode_channel_message,
}


def multi_segment(padding: int, user: int) -> bytes:
    """pycapnp's default builder spills large fields into further segments reached by far pointers."""
    builder = m._dh.ChannelMessage.new_message()
    builder.randPadding = b"\x01" * padding
    builder.init("content").user = b"\x02" * user
    packed: bytes = builder.to_bytes_packed()
    return packed


VALID = [
    multi_segment(9000, 3),  # 2 segments
    multi_segment(9000, 9000),  # 3 segments
    m.encode_init_connection(m.Connect(PK)),
    m.encode_incoming_connection(PK),
    m.encode_ka_message(b"payload"),
    m.encode_ka_message(None),
    m.encode_exchange_rand_nonce(m.ExchangeRandNonce(bytes(16), PK, PK)),
    m.encode_exchange_dh(m.ExchangeDh(PK, bytes(16), PK, bytes(64))),
    m.encode_channel_message(b"padding", m.encode_ka_message(b"x")),
    m.encode_channel_message(b"", m.Rekey(PK, PK)),
]


def only_protocol_errors(action: Callable[[], object]) -> None:
    with contextlib.suppress(ProtocolError):
        action()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid encoding with a few bytes overwritten, inserted or cut: reaches deeper than noise."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "insert", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "set" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        else:
            del data[pos:]
    return bytes(data)


@st.composite
def segmented(draw: st.DrawFn) -> bytes:
    """Multi-segment messages with arbitrary tables and bodies, often cut short.

    pycapnp reads later segments lazily and aborts the process if skipping them fails, so these
    guard the completeness check in messages._check_later_segments.
    """
    count = draw(st.integers(2, 6))
    sizes = draw(st.lists(st.integers(0, 6), min_size=count, max_size=count))
    table = (count - 1).to_bytes(4, "little") + b"".join(n.to_bytes(4, "little") for n in sizes)
    table += bytes(-len(table) % 8)
    words = draw(st.integers(0, sum(sizes) + 2))
    body = draw(st.binary(min_size=8 * words, max_size=8 * words))
    packed = pack_simple(table + body)
    if draw(st.booleans()):
        packed = packed[: draw(st.integers(0, len(packed)))]
    return packed + draw(st.sampled_from([b"", b"\x00", b"\x00\x05", b"\xff" * 10]))


PAYLOADS = st.one_of(st.binary(max_size=300), mutated(), segmented())


@FUZZ
@given(name=st.sampled_from(sorted(DECODERS)), data=PAYLOADS)
def test_decoders_raise_only_protocol_error(name: str, data: bytes) -> None:
    only_protocol_errors(lambda: DECODERS[name](data))


@FUZZ
@given(chunks=st.lists(st.binary(max_size=40), max_size=12), max_frame=st.integers(0, 64))
def test_frame_decoder_raises_only_protocol_error(chunks: list[bytes], max_frame: int) -> None:
    decoder = FrameDecoder(max_frame)

    def feed_all() -> None:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert len(frame) <= max_frame
            assert decoder.buffered <= max_frame + 8 + len(chunk)

    only_protocol_errors(feed_all)


# ------------------------------------------------------------------ links in every state

FRAMED_STATES = [
    "await_version",
    "await_rand_nonce",
    "await_dh",
    "established",
    "rekey_pending",
    "old_receiver",
]
MESSAGE_STATES = FRAMED_STATES[1:]


def link_in_state(state: str, framed: bool) -> Link:
    """Our link (relay side, no expected key) driven by a genuine peer into ``state``."""
    me_id, peer_id = Identity.generate(), Identity.generate()
    me = Link(me_id, now=0.0, framed=framed)
    peer = Link(peer_id, now=0.0, expected_remote=me_id.public_key, framed=framed)
    opening = peer.take_output()
    frames = FrameDecoder().feed(b"".join(opening)) if framed else opening
    steps = ["await_rand_nonce", "await_dh"] if framed else ["await_dh"]
    if framed and state == "await_version":
        return me
    for frame, step in zip(frames, steps, strict=True):
        if framed:
            me.receive_data(encode_frame(frame), 0.0)
        else:
            me.receive_frame(frame, 0.0)
        if state == step:
            return me
    pump(peer, me)  # our opening and DH reach the peer, its DH reaches us
    assert me.established
    if state == "rekey_pending":
        me.start_rekey()
    elif state == "old_receiver":
        peer.start_rekey()
        pump(peer, me)  # we answered and now hold the peer's previous key as the old receiver
    me.take_output()
    return me


@FUZZ
@given(state=st.sampled_from(FRAMED_STATES), data=st.binary(max_size=200), wrap=st.booleans())
def test_framed_link_raises_only_protocol_error(state: str, data: bytes, wrap: bool) -> None:
    link = link_in_state(state, framed=True)
    only_protocol_errors(lambda: link.receive_data(encode_frame(data) if wrap else data, 1.0))
    only_protocol_errors(lambda: link.handle_timer(2.0))


@FUZZ
@given(state=st.sampled_from(MESSAGE_STATES), frame=PAYLOADS)
def test_message_link_raises_only_protocol_error(state: str, frame: bytes) -> None:
    link = link_in_state(state, framed=False)
    only_protocol_errors(lambda: link.receive_frame(frame, 1.0))
    only_protocol_errors(lambda: link.send(b"after"))


@FUZZ
@given(
    plaintext=st.one_of(
        st.binary(max_size=200),
        mutated(),
        st.builds(m.encode_channel_message, st.binary(max_size=20), PAYLOADS),
    )
)
def test_established_link_behind_valid_encryption(plaintext: bytes) -> None:
    """Correctly encrypted frames with arbitrary plaintext: the ChannelMessage and KaMessage parsers."""
    client, relay = transcript_links(then=os.urandom)  # a forged Rekey makes the relay draw keys
    pump(client, relay)
    forged = Encryptor(CLIENT_SEND_KEY).encrypt(plaintext)  # what the client would send as frame 0
    only_protocol_errors(lambda: relay.receive_data(encode_frame(forged), 1.0))
