"""Well-formed protobuf messages of any type, built from fuzz input.

Random bytes rarely parse as a message with the right field numbers, and even a parsed one seldom
has the fields a state machine looks at. Building the message field by field from the input's
decisions reaches the validation rules behind the parser: which oneof body is set, which values
are zero, empty, huge or negative. Interesting constants (32-byte keys, 12-byte IVs, the SRP
group) are offered alongside arbitrary bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from fuzz.harness import Input

_INTS = (0, 1, 2, 3, 4, 8, 12, 15, 255, 256, 65535, 2**31 - 1, 2**32 - 1)
_BYTES_SIZES = (0, 1, 12, 16, 32, 64, 255)


def _scalar(field: Any, inp: Input, extra_bytes: Sequence[bytes]) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_BYTES:
        choice = inp.below(4)
        if choice == 0 and extra_bytes:
            return extra_bytes[inp.below(len(extra_bytes))]
        if choice == 1:
            return bytes([inp.byte()]) * _BYTES_SIZES[inp.below(len(_BYTES_SIZES))]
        return inp.take(64)
    if kind == FieldDescriptor.TYPE_STRING:
        return inp.take(24).decode("utf-8", "replace")
    if kind == FieldDescriptor.TYPE_BOOL:
        return inp.flag()
    if field.enum_type is not None:
        values = [v.number for v in field.enum_type.values]
        return values[inp.below(len(values))] if inp.flag() else inp.below(2**16) - 2**15
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float(inp.below(2**16))
    value = _INTS[inp.below(len(_INTS))] if inp.flag() else inp.below(2**16)
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32,
                FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return min(value, 2**31 - 1) * (-1 if inp.flag() and inp.flag() else 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64) and inp.flag():
        return value << 32
    return value


def fill(message: Message, inp: Input, *, depth: int = 3, extra_bytes: Sequence[bytes] = ()) -> Message:
    """Set a subset of ``message``'s fields from ``inp``; returns ``message``."""
    descriptor = message.DESCRIPTOR
    oneof_done: set[str] = set()
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.name in oneof_done:
            continue
        if not inp.flag():
            continue
        if oneof is not None:
            oneof_done.add(oneof.name)
        repeated = field.is_repeated
        count = inp.below(4) if repeated else 1
        for _ in range(count):
            if field.message_type is not None:
                if depth <= 0:
                    break
                target = getattr(message, field.name)
                sub = target.add() if repeated else target
                fill(sub, inp, depth=depth - 1, extra_bytes=extra_bytes)
                if not repeated:
                    sub.SetInParent()
            else:
                value = _scalar(field, inp, extra_bytes)
                if repeated:
                    getattr(message, field.name).append(value)
                else:
                    setattr(message, field.name, value)
    return message


def build(message_type: type[Message], inp: Input, *, depth: int = 3,
          extra_bytes: Sequence[bytes] = ()) -> bytes:
    """A serialized ``message_type`` whose fields come from ``inp``."""
    return fill(message_type(), inp, depth=depth, extra_bytes=extra_bytes).SerializeToString()
