"""Fuzz targets of the Aspia family's protocol layers: framing and keep-alive, every protobuf parser,
both handshake sides in every state, and the composed channel (the relay's, router's and peers'
state machines above them are in ``fuzz/aspia_service_targets.py``).

Only :class:`natrelay.aspia.errors.AspiaProtocolError` may escape a target; everything else is a
finding. Invariants a crash would not reveal are checked with ``assert``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from google.protobuf.message import Message

from fuzz.harness import Input, Target, chunked, lengthed
from fuzz.protobuf_gen import build
from natrelay.aspia import srp
from natrelay.aspia.channel import Channel
from natrelay.aspia.errors import AspiaProtocolError
from natrelay.aspia.framing import (
    SERVICE_HEADER_SIZE,
    DataFrame,
    FrameDecoder,
    KeepAlive,
    KeepAliveFrame,
    decode_size,
    encode_keepalive,
    encode_user_frame,
    split_channel_header,
)
from natrelay.aspia.handshake import Identify
from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
from natrelay.aspia.handshake_server import ServerConfig, ServerHandshake
from natrelay.aspia.messages import (
    ASPIA_VERSION,
    check_relay_credentials,
    first_present,
    hello_version,
    late_version,
    parse,
    serialize,
)
from natrelay.aspia.proto import (
    common_pb2,
    relay_peer_pb2,
    router_admin_pb2,
    router_common_pb2,
    router_peer_pb2,
    router_relay_pb2,
)
from natrelay.aspia.proto import key_exchange_pb2 as kx
from tests.fuzz.test_aspia_parsers import CHEAP_STATES, State, _valid_next
from tests.unit.aspia.helpers import SEED, SERVER_PRIVATE, SERVER_PUBLIC, cheap_random, lookup, make_user

G4096 = srp.GROUPS["4096"]
INTERESTING = (bytes(32), b"\x01" * 32, bytes(12), SERVER_PUBLIC, G4096.n_bytes, G4096.g_bytes, b"\xff" * 64)

ALL_TYPES: tuple[type[Message], ...] = tuple(
    cls
    for module in (kx, common_pb2, router_common_pb2, router_relay_pb2, router_peer_pb2, relay_peer_pb2,
                   router_admin_pb2)
    for cls in (getattr(module, name) for name in sorted(module.DESCRIPTOR.message_types_by_name))
)


# ---------------------------------------------------------------------------- framing
def framing(data: bytes) -> None:
    """Varint size frames, keep-alive frames and the 2-byte channel header, over reads cut anywhere."""
    inp = Input(data)
    max_frame = inp.below(300) + 1
    decoder = FrameDecoder(max_frame)
    ka = KeepAlive(30.0, 15.0)
    if inp.flag():
        ka.enable(0.0)
    now = 0.0
    try:
        for chunk in inp.chunks():
            got = decode_size(chunk)
            if got is not None:
                assert 1 <= got[1] <= 4
            for frame in decoder.feed(chunk):
                now += 1.0
                if isinstance(frame, DataFrame):
                    assert len(frame.body) <= max_frame
                    with contextlib.suppress(AspiaProtocolError):
                        split_channel_header(frame.body)
                else:
                    assert isinstance(frame, KeepAliveFrame)
                    ka.on_frame(frame, now)
            # What stays buffered is one unfinished frame: at most a size field (1 to 4 bytes:
            # non-minimal forms are valid on the wire), the service header and max_frame bytes,
            # less the one still missing.
            assert decoder.buffered < 4 + SERVICE_HEADER_SIZE + max_frame
            if inp.flag():
                now += inp.byte()
                ka.on_timer(now)
    except AspiaProtocolError:
        return


def _framing_seeds() -> list[bytes]:
    frames = encode_user_frame(b"hello") + encode_keepalive(True, b"\x00" * 4) + encode_user_frame(b"x", 3)
    return [bytes([255, 1, 1]) + chunked(frames), bytes([100, 0, 1]) + chunked(frames[:3], frames[3:]),
            # A 3-byte size 0 and a partial service header: the buffer's bound counts the size
            # field's 1-4 bytes (an invariant written for a 1-byte field failed here, 2026-12-04).
            b"\x00\x00Sl\xf8\x80\x80\x00\x00\x00\x00\x00\x00\x00\xff"]


# --------------------------------------------------------------------------- messages
def messages(data: bytes) -> None:
    """Every protobuf message type, and the checks applied right after parsing."""
    inp = Input(data)
    message_type = ALL_TYPES[inp.choose(ALL_TYPES)]
    raw = build(message_type, inp, extra_bytes=INTERESTING) if inp.flag() else inp.rest()
    try:
        message = parse(message_type, raw)
        if isinstance(message, kx.ClientHello | kx.ServerHello):
            hello_version(message)
        elif isinstance(message, kx.SessionChallenge | kx.SessionResponse):
            late_version(message)
        elif isinstance(message, router_common_pb2.RelayCredentials):
            check_relay_credentials(message)
        elif isinstance(message, router_peer_pb2.PeerToRouter | router_peer_pb2.RouterToPeer
                        | router_relay_pb2.RelayToRouter | router_relay_pb2.RouterToRelay
                        | router_admin_pb2.AdminToRouter | router_admin_pb2.RouterToAdmin):
            names = [f.name for f in message.DESCRIPTOR.fields]
            found = first_present(message, names)
            assert found is None or found[0] in names
    except AspiaProtocolError:
        return


def _message_seeds() -> list[bytes]:
    return [bytes([i, 0]) + b"\x08\x01\x12\x02ab" for i in range(len(ALL_TYPES))]


# -------------------------------------------------------------------------- handshake
_SESSION_B: list[tuple[bytes, bytes, bytes, bytes, bytes]] = []


def _s_session_b_cached() -> State:
    """``s_session_b`` of the hypothesis tests without redoing the client's SRP maths per input.

    The server draws from ``cheap_random(1)``, so for the same client messages it ends in the same
    state; the client's messages and the session key are computed once and replayed.
    """
    from natrelay.aspia.crypto import ChannelCipher, Cipher, bytes_to_int, h256, int_to_bytes
    from natrelay.aspia.handshake_server import ServerHandshake as _SH
    from tests.fuzz.test_aspia_parsers import ROUTER as FUZZ_ROUTER

    if not _SESSION_B:
        hello = serialize(kx.ClientHello(encryption=1, version=ASPIA_VERSION.to_proto()))
        identify = serialize(kx.SrpIdentify(username="small"))
        probe = _SH(FUZZ_ROUTER, 0.0, cheap_random(1))
        probe.receive(hello, 1.0)
        (reply,) = probe.receive(identify, 1.0)
        exchange = parse(kx.SrpServerKeyExchange, reply)
        group, a = srp.GROUPS["1024"], 0x1234567
        a_public, b_public = srp.compute_a_public(group, a), bytes_to_int(exchange.B)
        x = srp.aspia_x(exchange.salt, "small", b"pw")
        u = srp.compute_u(group, a_public, b_public, srp.h512_digest)
        premaster = srp.client_premaster(group, srp.compute_k(group, srp.h512_digest), b_public, x, a, u)
        client_exchange = serialize(kx.SrpClientKeyExchange(A=int_to_bytes(a_public), iv=b"\x22" * 12))
        key = h256(int_to_bytes(premaster))
        _SESSION_B.append((hello, identify, client_exchange, key, exchange.iv))
    hello, identify, client_exchange, key, server_iv = _SESSION_B[0]
    server = _SH(FUZZ_ROUTER, 0.0, cheap_random(1))
    for message in (hello, identify, client_exchange):
        server.receive(message, 1.0)
    cipher = ChannelCipher(Cipher.CHACHA20_POLY1305, key, b"\x22" * 12, server_iv)
    return server, cipher.encrypt, kx.SessionResponse


def _handshake_states() -> list[Callable[[], State]]:
    return [_s_session_b_cached if make.__name__ == "s_session_b" else make for make in CHEAP_STATES]


HANDSHAKE_STATES = _handshake_states()


def handshake(data: bytes) -> None:
    """Both handshake sides in every state (but the 4096-bit SRP client's last, too slow to
    rebuild per input), fed raw bytes, bytes sealed under the right key, or a well-formed message
    with fuzzed fields; a state that accepts its input is fed a second message."""
    inp = Input(data)
    make = HANDSHAKE_STATES[inp.choose(HANDSHAKE_STATES)]
    machine, seal, message_type = make()
    now = 1.0
    for _ in range(2):
        mode = inp.below(3)
        if mode == 0:
            payload = inp.take()
        elif mode == 1:
            payload = seal(inp.take())
        else:
            payload = seal(build(message_type, inp, depth=1, extra_bytes=INTERESTING))
        try:
            out = machine.receive(payload, now)
        except AspiaProtocolError:
            return
        assert all(isinstance(item, bytes) and item for item in out)
        if machine.done:
            return
        now += 1.0


def _handshake_seeds() -> list[bytes]:
    valid = _valid_next()
    seeds = []
    for i, make in enumerate(CHEAP_STATES):
        body = serialize(valid[make])
        seeds.append(bytes([i, 0]) + lengthed(body))
    return seeds


def check_handshake_states() -> None:
    """The target means something only if every state factory stops where it claims and its seal
    function produces input that state accepts (a wrong key would make every input an AEAD failure)."""
    valid = _valid_next()
    for original, make in zip(CHEAP_STATES, HANDSHAKE_STATES, strict=True):
        machine, seal, message_type = make()
        message = valid[original]
        assert isinstance(message, message_type) and not machine.done, original.__name__
        machine.receive(seal(serialize(message)), 2.0)
        assert machine.done is (message_type in (kx.SessionResponse, kx.SessionChallenge))


# ---------------------------------------------------------------------------- channel
USER = make_user("admin", b"secret", sessions=3, group="1024")
ROUTER = ServerConfig(private_key=SERVER_PRIVATE, seed_key=SEED, anonymous_sessions=12, users=lookup(USER))
ANON = ClientConfig(session_type=8, identify=Identify.ANONYMOUS, server_public_key=SERVER_PUBLIC)


def _server_channel(now: float = 0.0) -> Channel:
    return Channel(ServerHandshake(ROUTER, now, cheap_random(1)), now=now, max_frame=4096)


def _client_channel(now: float = 0.0) -> Channel:
    return Channel(ClientHandshake(ANON, now, cheap_random(2)), now=now, max_frame=4096)


def _established() -> tuple[Channel, Channel]:
    server, client = _server_channel(), _client_channel()
    while True:
        to_server, to_client = b"".join(client.take_output()), b"".join(server.take_output())
        if not to_server and not to_client:
            break
        if to_server:
            server.receive_data(to_server, 0.5)
        if to_client:
            client.receive_data(to_client, 0.5)
    assert server.established and client.established
    return server, client


def channel(data: bytes) -> None:
    """The composed channel (framing + keep-alive + handshake + AEAD + channel header).

    Modes: a server or a client before authentication fed a byte stream; an established server
    fed a mix of raw bytes, keep-alive frames and messages its genuine peer sealed (arbitrary
    content and channel IDs), with timers in between.
    """
    inp = Input(data)
    mode = inp.below(3)
    now = 1.0
    try:
        if mode < 2:
            chan = _server_channel() if mode == 0 else _client_channel()
            for chunk in inp.chunks(max_chunks=6):
                now += inp.byte() / 8
                chan.receive_data(chunk, now)
                chan.take_output()
                if inp.flag():
                    chan.handle_timer(now)
            return
        server, client = _established()
        for _ in range(inp.below(8)):
            now += inp.byte() / 8
            kind = inp.below(4)
            if kind == 0:
                wire = inp.take()
            elif kind == 1:
                wire = encode_keepalive(inp.flag(), inp.take(8) or b"\x00")
            else:
                message = inp.take() or b"\x00"
                client.send(message, inp.byte() if kind == 3 else None)
                wire = b"".join(client.take_output())
            server.receive_tagged(wire, now)
            server.take_output()
            if inp.flag():
                server.handle_timer(now)
    except AspiaProtocolError:
        return


def _channel_seeds() -> list[bytes]:
    return [bytes([2, 3, 10, 2, 5]) + b"hello" + bytes([0, 10, 1, 1, 4]) + b"ping" + bytes([0]),
            bytes([0, 1, 20]) + serialize(kx.ClientHello(encryption=1))]


TARGETS: tuple[Target, ...] = (
    Target("aspia_framing", framing, _framing_seeds, "varint frames, keep-alive, channel header"),
    Target("aspia_messages", messages, _message_seeds, "every protobuf type and its post-parse checks"),
    Target("aspia_handshake", handshake, _handshake_seeds, "both handshake sides in every state"),
    Target("aspia_channel", channel, _channel_seeds, "composed channel before and after authentication"),
)
"""The protocol layers' targets; ``fuzz/targets.py`` adds the services' (aspia_service_targets)."""

