"""Offset's Cap'n Proto messages: packed encoding with pycapnp, bounded decoding (spec §4).

Every structured payload is one packed Cap'n Proto message. Encoders allocate fields in the
original's order, so small messages match the Rust encoder's bytes (spec §13.2). Decoders read
with explicit traversal and nesting limits (the segment table is checked against the traversal
limit before anything is allocated) and turn every failure, whatever pycapnp raised, into
ProtocolError: a malformed payload must close the connection, never crash the caller.

Fixed-size byte values travel as big-endian UInt64 limbs (spec §4.3). A null struct pointer reads
as the all-zero default, as in Rust, so a null PublicKey decodes as 32 zero bytes.

Encoders size the first segment to fit, so every message we write is single-segment (always
acceptable, spec §4.1): no far pointers, and our peers' readers need no lazy segment reads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import capnp

from .constants import DEFAULT_MAX_FRAME
from .errors import ProtocolError
from .packing import LITERAL_THRESHOLD, pack_single_segment

_SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
_dh: Any = capnp.load(str(_SCHEMA_DIR / "dh.capnp"))
_keepalive: Any = capnp.load(str(_SCHEMA_DIR / "keepalive.capnp"))
_relay: Any = capnp.load(str(_SCHEMA_DIR / "relay.capnp"))
# Bound once for the per-frame paths (encode_ka_message, encode_user_message and their decoders).
_KA_NEW: Callable[..., Any] = _keepalive.KaMessage.new_message
_KA_FROM_PACKED: Callable[..., Any] = _keepalive.KaMessage.from_bytes_packed
_CM_NEW: Callable[..., Any] = _dh.ChannelMessage.new_message
_CM_FROM_PACKED: Callable[..., Any] = _dh.ChannelMessage.from_bytes_packed

PUBLIC_KEY_LEN = 32
DH_PUBLIC_KEY_LEN = 32
SALT_LEN = 32
RAND_NONCE_LEN = 16
SIGNATURE_LEN = 64

# The handshake and relay messages are a few dozen words; 1024 words leaves room for any sane encoder.
SMALL_MESSAGE_WORDS = 1024
# Nesting of our deepest path is 5 (ChannelMessage > ChannelContent > Rekey > DhPublicKey > Buffer256).
NESTING_LIMIT = 16


def message_word_limit(max_frame: int) -> int:
    """Traversal limit for a message that arrived in a frame of at most ``max_frame`` bytes.

    Packing compresses zero words up to 1000-fold, so the limit, not the frame cap, is what bounds
    memory. Legitimate payloads (random padding, ciphertext) barely compress; twice the frame cap
    in words leaves room for some zero runs while keeping expansion bounded.
    """
    return max_frame // 4 + SMALL_MESSAGE_WORDS


DEFAULT_MESSAGE_WORDS = message_word_limit(DEFAULT_MAX_FRAME)

_T = TypeVar("_T")


def _decode(schema: Any, data: bytes, max_words: int, read: Callable[[Any], _T]) -> _T:
    """Parses ``data`` as ``schema`` and applies ``read``; any failure becomes ProtocolError."""
    if not data:
        raise ProtocolError(f"empty {_name(schema)}")
    try:
        _check_later_segments(data, max_words)
        reader = schema.from_bytes_packed(
            data, traversal_limit_in_words=max_words, nesting_limit=NESTING_LIMIT
        )
        return read(reader)
    except ProtocolError as exc:
        raise ProtocolError(f"malformed {_name(schema)}: {exc}") from None
    except Exception as exc:  # pycapnp raises KjException, but the boundary must admit nothing else
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ProtocolError(f"malformed {_name(schema)}: {reason}") from None


# ---------------------------------------------------------------- packed input that cannot abort us
#
# pycapnp's packed reader reads segment 0 when it is built and the later segments of a multi-segment
# message lazily; whatever is left unread is skipped in the C++ destructor. When that skip fails
# (input cut short, or a run that overruns the message), the exception leaves a destructor that
# Cython calls from __dealloc__, and the process aborts: one malformed frame would kill a relay.
# So a multi-segment message is first proved complete by reading it eagerly as a single segment,
# where every failure is an ordinary, catchable exception. Single-segment messages are read
# eagerly by pycapnp itself.

_MAX_SEGMENTS = 512  # the C++ and Rust readers refuse this many


def _unpack_prefix(data: bytes, words: int) -> tuple[bytes, int]:
    """The first ``words`` unpacked words and the packed bytes they took; runs must end there."""
    out = bytearray()
    i, end, need = 0, len(data), 8 * words
    while len(out) < need:
        if i >= end:
            raise ProtocolError("segment table cut short")
        tag = data[i]
        i += 1
        count = tag.bit_count()
        if i + count > end:
            raise ProtocolError("segment table cut short")
        nonzero = iter(data[i : i + count])
        out += bytes(next(nonzero) if tag >> bit & 1 else 0 for bit in range(8))
        i += count
        if tag in (0x00, 0xFF):
            if i >= end:
                raise ProtocolError("segment table cut short")
            run = data[i]
            i += 1
            if tag == 0x00:
                out += bytes(8 * run)
            else:
                out += data[i : i + 8 * run]
                i += 8 * run
    if len(out) != need:
        raise ProtocolError("packed run crosses the end of the segment table")
    return bytes(out), i


def _check_later_segments(data: bytes, max_words: int) -> None:
    """Raises ProtocolError unless every segment of ``data`` is present and ends cleanly."""
    if not data[0] & 0x0F:  # tag bits 0-3 cover "segment count - 1": all zero means one segment
        return
    first, _ = _unpack_prefix(data, 1)
    segments = int.from_bytes(first[:4], "little") + 1
    if segments == 1:
        return
    if segments >= _MAX_SEGMENTS:
        raise ProtocolError(f"{segments} segments")
    table, consumed = _unpack_prefix(data, segments // 2 + 1)
    total = sum(struct.unpack_from(f"<{segments}I", table, 4))
    if total > max_words:
        raise ProtocolError(f"message of {total} words is too large")
    # One segment of total + 1 words: a null root pointer, then all the original segments' words.
    probe = _pack_table_word(total + 1) + b"\x00\x00" + data[consumed:]
    try:
        _keepalive.KaMessage.from_bytes_packed(probe, traversal_limit_in_words=total + 1)
    except Exception as exc:
        raise ProtocolError(f"incomplete segments: {str(exc).splitlines()[0][:120]}") from None


def _pack_table_word(words: int) -> bytes:
    """The packed segment table of a one-segment message of ``words`` words."""
    size = words.to_bytes(4, "little")
    tag = sum(1 << (4 + k) for k in range(4) if size[k])
    return bytes([tag]) + bytes(b for b in size if b)


def _name(schema: Any) -> str:
    name: str = schema.schema.node.displayName
    return name.rsplit(":", 1)[-1]


def _limbs_to_bytes(buffer: Any, count: int) -> bytes:
    if count == 2:
        return struct.pack(">2Q", buffer.x0, buffer.x1)
    if count == 4:
        return struct.pack(">4Q", buffer.x0, buffer.x1, buffer.x2, buffer.x3)
    return struct.pack(
        ">8Q", buffer.x0, buffer.x1, buffer.x2, buffer.x3, buffer.x4, buffer.x5, buffer.x6, buffer.x7
    )


def _set_limbs(wrapper: Any, value: bytes, length: int, what: str) -> None:
    """Writes ``value`` into ``wrapper.inner`` (a BufferNNN) as big-endian limbs."""
    if len(value) != length:
        raise ValueError(f"{what} must be {length} bytes, got {len(value)}")
    inner = wrapper.init("inner")
    for i, limb in enumerate(struct.unpack(f">{length // 8}Q", value)):
        setattr(inner, f"x{i}", limb)


def _read_bytes(wrapper: Any, length: int) -> bytes:
    return _limbs_to_bytes(wrapper.inner, length // 8)


# ---------------------------------------------------------------- relay messages (relay.capnp)


@dataclass(frozen=True)
class Listen:
    pass


@dataclass(frozen=True)
class Accept:
    public_key: bytes  # 32 bytes: the connector whose half tunnel we accept


@dataclass(frozen=True)
class Connect:
    public_key: bytes  # 32 bytes: the listener we want to reach


InitConnection = Listen | Accept | Connect


def encode_init_connection(msg: InitConnection) -> bytes:
    builder = _relay.InitConnection.new_message()
    if isinstance(msg, Listen):
        builder.listen = None
    elif isinstance(msg, Accept):
        _set_limbs(builder.init("accept"), msg.public_key, PUBLIC_KEY_LEN, "public key")
    else:
        _set_limbs(builder.init("connect"), msg.public_key, PUBLIC_KEY_LEN, "public key")
    result: bytes = builder.to_bytes_packed()
    return result


def _read_init_connection(reader: Any) -> InitConnection:
    which = reader._which_str()
    if which == "listen":
        return Listen()
    if which == "accept":
        return Accept(_read_bytes(reader.accept, PUBLIC_KEY_LEN))
    if which == "connect":
        return Connect(_read_bytes(reader.connect, PUBLIC_KEY_LEN))
    raise ProtocolError(f"unknown InitConnection variant {which!r}")


def decode_init_connection(data: bytes) -> InitConnection:
    return _decode(_relay.InitConnection, data, SMALL_MESSAGE_WORDS, _read_init_connection)


def _encode_public_key_message(schema: Any, public_key: bytes) -> bytes:
    builder = schema.new_message()
    _set_limbs(builder.init("publicKey"), public_key, PUBLIC_KEY_LEN, "public key")
    result: bytes = builder.to_bytes_packed()
    return result


def _read_public_key_field(reader: Any) -> bytes:
    return _read_bytes(reader.publicKey, PUBLIC_KEY_LEN)


def encode_incoming_connection(public_key: bytes) -> bytes:
    return _encode_public_key_message(_relay.IncomingConnection, public_key)


def decode_incoming_connection(data: bytes) -> bytes:
    return _decode(_relay.IncomingConnection, data, SMALL_MESSAGE_WORDS, _read_public_key_field)


def encode_reject_connection(public_key: bytes) -> bytes:
    return _encode_public_key_message(_relay.RejectConnection, public_key)


def decode_reject_connection(data: bytes) -> bytes:
    return _decode(_relay.RejectConnection, data, SMALL_MESSAGE_WORDS, _read_public_key_field)


# ---------------------------------------------------------------- keepalive (keepalive.capnp)


def _one_segment(data_bytes: int, more_data_bytes: int = 0) -> int:
    """First-segment words that hold the message whole: its (one or two) Data fields plus room for
    the structs. Plain arithmetic: it runs for every message a node sends, twice."""
    return 32 + ((data_bytes + 7) >> 3) + ((more_data_bytes + 7) >> 3)


def _packed(builder: Any, data_bytes: int) -> bytes:
    """Packed bytes of a single-segment message carrying ``data_bytes`` of Data fields.

    Large ones are packed with literal runs (see ``packing.py``), small ones by pycapnp.
    """
    if data_bytes >= LITERAL_THRESHOLD:
        return pack_single_segment(builder.to_bytes())
    result: bytes = builder.to_bytes_packed()
    return result


def encode_ka_message(message: bytes | None) -> bytes:
    """``None`` is a heartbeat (``keepAlive``); bytes are one upper-layer payload."""
    if message is not None:  # the per-message path, inline
        size = len(message)
        builder = _KA_NEW(num_first_segment_words=32 + ((size + 7) >> 3))
        builder._set("message", message)
        if size >= LITERAL_THRESHOLD:
            return pack_single_segment(builder.to_bytes())
        result: bytes = builder.to_bytes_packed()
        return result
    builder = _keepalive.KaMessage.new_message(num_first_segment_words=_one_segment(0))
    builder.keepAlive = None
    return _packed(builder, 0)


# The per-message readers below (a keepalive and a channel message on every frame of every link)
# use pycapnp's ``_which_str()`` and ``_get(name)``: ``which()`` builds an enum object and compares
# it as a string, and attribute access first fails a generic lookup (formatting an AttributeError)
# before pycapnp's fallback finds the field. A keepalive and a channel message together: 5.2 -> 2.6 us.


def _read_ka_message(reader: Any) -> bytes | None:
    which = reader._which_str()
    if which == "keepAlive":
        return None
    if which == "message":
        message: bytes = reader._get("message")
        return message
    raise ProtocolError(f"unknown KaMessage variant {which!r}")


def decode_ka_message(data: bytes, *, max_words: int = DEFAULT_MESSAGE_WORDS) -> bytes | None:
    # The common case inline (one segment, a known variant): every frame of every link comes here.
    # Anything else, failures included, takes the general path, which says what is wrong.
    if data and not data[0] & 0x0F:
        try:
            reader = _KA_FROM_PACKED(data, traversal_limit_in_words=max_words, nesting_limit=NESTING_LIMIT)
            which = reader._which_str()
            if which == "message":
                message: bytes = reader._get("message")
                return message
            if which == "keepAlive":
                return None
        except Exception:  # the general path below reports it
            pass
    return _decode(_keepalive.KaMessage, data, max_words, _read_ka_message)


# ---------------------------------------------------------------- secure channel (dh.capnp)


@dataclass(frozen=True)
class ExchangeRandNonce:
    rand_nonce: bytes  # 16 bytes
    src_public_key: bytes  # 32 bytes
    opt_dest_public_key: bytes | None  # the key the sender expects us to have; receivers ignore it


@dataclass(frozen=True)
class ExchangeDh:
    dh_public_key: bytes  # 32 bytes, X25519
    rand_nonce: bytes  # 16 bytes, echo of the receiver's nonce
    key_salt: bytes  # 32 bytes
    signature: bytes  # 64 bytes, Ed25519 over dh_public_key || rand_nonce || key_salt

    def signed_bytes(self) -> bytes:
        """The 80 bytes the signature covers (spec §5.2 step 3)."""
        return self.dh_public_key + self.rand_nonce + self.key_salt


@dataclass(frozen=True)
class Rekey:
    dh_public_key: bytes  # 32 bytes
    key_salt: bytes  # 32 bytes


def encode_exchange_rand_nonce(msg: ExchangeRandNonce) -> bytes:
    builder = _dh.ExchangeRandNonce.new_message()
    _set_limbs(builder.init("randNonce"), msg.rand_nonce, RAND_NONCE_LEN, "rand nonce")
    _set_limbs(builder.init("srcPublicKey"), msg.src_public_key, PUBLIC_KEY_LEN, "public key")
    dest = builder.optDestPublicKey
    if msg.opt_dest_public_key is None:
        dest.empty = None
    else:
        _set_limbs(dest.init("publicKey"), msg.opt_dest_public_key, PUBLIC_KEY_LEN, "public key")
    result: bytes = builder.to_bytes_packed()
    return result


def _read_exchange_rand_nonce(reader: Any) -> ExchangeRandNonce:
    dest = reader.optDestPublicKey
    which = dest._which_str()
    if which == "empty":
        opt_dest = None
    elif which == "publicKey":
        opt_dest = _read_bytes(dest.publicKey, PUBLIC_KEY_LEN)
    else:
        raise ProtocolError(f"unknown optDestPublicKey variant {which!r}")
    return ExchangeRandNonce(
        rand_nonce=_read_bytes(reader.randNonce, RAND_NONCE_LEN),
        src_public_key=_read_bytes(reader.srcPublicKey, PUBLIC_KEY_LEN),
        opt_dest_public_key=opt_dest,
    )


def decode_exchange_rand_nonce(data: bytes) -> ExchangeRandNonce:
    return _decode(_dh.ExchangeRandNonce, data, SMALL_MESSAGE_WORDS, _read_exchange_rand_nonce)


def encode_exchange_dh(msg: ExchangeDh) -> bytes:
    builder = _dh.ExchangeDh.new_message()
    _set_limbs(builder.init("dhPublicKey"), msg.dh_public_key, DH_PUBLIC_KEY_LEN, "DH public key")
    _set_limbs(builder.init("randNonce"), msg.rand_nonce, RAND_NONCE_LEN, "rand nonce")
    _set_limbs(builder.init("keySalt"), msg.key_salt, SALT_LEN, "salt")
    _set_limbs(builder.init("signature"), msg.signature, SIGNATURE_LEN, "signature")
    result: bytes = builder.to_bytes_packed()
    return result


def _read_exchange_dh(reader: Any) -> ExchangeDh:
    return ExchangeDh(
        dh_public_key=_read_bytes(reader.dhPublicKey, DH_PUBLIC_KEY_LEN),
        rand_nonce=_read_bytes(reader.randNonce, RAND_NONCE_LEN),
        key_salt=_read_bytes(reader.keySalt, SALT_LEN),
        signature=_read_bytes(reader.signature, SIGNATURE_LEN),
    )


def decode_exchange_dh(data: bytes) -> ExchangeDh:
    return _decode(_dh.ExchangeDh, data, SMALL_MESSAGE_WORDS, _read_exchange_dh)


def _fill_rekey(builder: Any, msg: Rekey) -> None:
    _set_limbs(builder.init("dhPublicKey"), msg.dh_public_key, DH_PUBLIC_KEY_LEN, "DH public key")
    _set_limbs(builder.init("keySalt"), msg.key_salt, SALT_LEN, "salt")


def _read_rekey(reader: Any) -> Rekey:
    return Rekey(
        dh_public_key=_read_bytes(reader.dhPublicKey, DH_PUBLIC_KEY_LEN),
        key_salt=_read_bytes(reader.keySalt, SALT_LEN),
    )


def encode_rekey(msg: Rekey) -> bytes:
    """A standalone Rekey message; on the wire it only ever travels inside a ChannelMessage."""
    builder = _dh.Rekey.new_message()
    _fill_rekey(builder, msg)
    result: bytes = builder.to_bytes_packed()
    return result


def decode_rekey(data: bytes) -> Rekey:
    return _decode(_dh.Rekey, data, SMALL_MESSAGE_WORDS, _read_rekey)


def encode_channel_message(padding: bytes, content: bytes | Rekey) -> bytes:
    """The plaintext of one encrypted frame: ``content`` is a packed KaMessage or a Rekey."""
    size = _one_segment(len(padding), 0 if isinstance(content, Rekey) else len(content))
    builder = _dh.ChannelMessage.new_message(num_first_segment_words=size)
    builder.randPadding = padding
    body = builder.init("content")
    if isinstance(content, Rekey):
        _fill_rekey(body.init("rekey"), content)
    else:
        body.user = content
    return _packed(builder, len(padding) + (0 if isinstance(content, Rekey) else len(content)))


def encode_user_message(padding: bytes, user: bytes) -> bytes:
    """``encode_channel_message(padding, user)`` for user content, byte for byte: the per-frame path."""
    npad = len(padding)
    nuser = len(user)
    builder = _CM_NEW(num_first_segment_words=32 + ((npad + 7) >> 3) + ((nuser + 7) >> 3),
                      randPadding=padding)
    builder.init("content")._set("user", user)
    if npad + nuser >= LITERAL_THRESHOLD:
        return pack_single_segment(builder.to_bytes())
    result: bytes = builder.to_bytes_packed()
    return result


def _read_channel_message(reader: Any) -> bytes | Rekey:
    content = reader._get("content")
    which = content._which_str()
    if which == "user":
        user: bytes = content._get("user")
        return user
    if which == "rekey":
        return _read_rekey(content.rekey)
    raise ProtocolError(f"unknown ChannelContent variant {which!r}")


def decode_channel_message(data: bytes, *, max_words: int = DEFAULT_MESSAGE_WORDS) -> bytes | Rekey:
    """Returns the user payload (a packed KaMessage) or a Rekey; the padding is never read."""
    # User content in one segment inline, as in ``decode_ka_message``; the rest (Rekey, several
    # segments, failures) through the general path.
    if data and not data[0] & 0x0F:
        try:
            reader = _CM_FROM_PACKED(data, traversal_limit_in_words=max_words, nesting_limit=NESTING_LIMIT)
            content = reader._get("content")
            if content._which_str() == "user":
                user: bytes = content._get("user")
                return user
        except Exception:  # the general path below reports it
            pass
    return _decode(_dh.ChannelMessage, data, max_words, _read_channel_message)
