"""Cap'n Proto's packed encoding for large single-segment messages, without per-byte work.

Every Offset payload crosses two packed layers per hop (``KaMessage`` inside ``ChannelMessage``),
and pycapnp's packer inspects every byte to squeeze out zeros: ~60-120 µs per 64 KiB, which made
packing the largest cost of a tunnel. The packed format also allows *literal runs*: tag ``0xFF``,
one word copied as is, then a count N of further words copied as is (spec §4.1). Encoding a
large, mostly incompressible message that way is a handful of slices per 2 KiB, and every
Cap'n Proto reader decodes it to the same message (tested against pycapnp).

One rule of the readers is kept: a run never crosses a read boundary. C++ and Rust readers read
the segment table and each segment separately and refuse a run that spans two ("Packed input did
not end cleanly on a segment boundary"), so the one-word table of a single-segment message is
packed on its own (in the standard form), and runs start afresh at segment 0.

Small messages keep pycapnp's own packing, so the spec's vectors (§13.2) stay byte-identical.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable

#: Messages at least this long (unpacked bytes) are packed with literal runs.
LITERAL_THRESHOLD = 1024

_MAX_RUN = 256  # one word after the tag plus up to 255 counted words
_COUNT = [bytes([n]) for n in range(_MAX_RUN)]
_TAG_ALL = b"\xff"
_RUN_BYTES = 8 * _MAX_RUN
_FULL_RUN_SPLIT = ((0, 8), (8, _RUN_BYTES))


def _packed_table_word(words: int) -> bytes:
    """The packed segment table of a one-segment message of ``words`` words (``words`` >= 1).

    Bytes 0-3 (segment count - 1) are zero, so the tag has only bits 4-7: readers can tell a
    single-segment message from its first byte.
    """
    size = words.to_bytes(4, "little")
    tag = sum(1 << (4 + k) for k in range(4) if size[k])
    return bytes([tag]) + bytes(b for b in size if b)


@functools.lru_cache(maxsize=128)
def _full_run_slicer(runs: int) -> Callable[[bytes], tuple[bytes, ...]]:
    """Cuts ``runs`` full runs out of an unpacked message in C (``itemgetter`` of slices).

    Slicing in a Python loop cost more than pycapnp's packer saved; the slices depend only on
    the number of full runs, so the getter is built once per size class and reused.
    """
    cuts = [slice(8 + o + a, 8 + o + b) for o in range(0, runs * _RUN_BYTES, _RUN_BYTES)
            for a, b in _FULL_RUN_SPLIT]
    getter: Callable[[bytes], tuple[bytes, ...]] = operator.itemgetter(*cuts)  # runs >= 1: a tuple
    return getter


def pack_single_segment(unpacked: bytes) -> bytes:
    """Pack a single-segment message given in the standard unpacked stream format."""
    size = len(unpacked)
    if size % 8 or size < 16 or unpacked[:4] != b"\x00\x00\x00\x00":
        raise ValueError("not a single-segment Cap'n Proto message")
    if int.from_bytes(unpacked[4:8], "little") != size // 8 - 1:
        raise ValueError("segment size does not match the message length")
    # Output: the table word in its standard packed form (tag, then its non-zero bytes), then per
    # full run: 0xFF, word, 0xFF (count 255), 255 words, then a last partial run: 0xFF, word,
    # count, words. Every byte between the pieces below is 0xFF; the counts that are not travel
    # inside a piece. So the message is one join.
    pieces: list[bytes] = [_packed_table_word(size // 8 - 1)]
    runs = (size - 8) // _RUN_BYTES
    if runs:
        pieces += _full_run_slicer(runs)(unpacked)
    start = 8 + runs * _RUN_BYTES
    if start < size:
        count = _COUNT[(size - start) // 8 - 1]
        pieces.append(unpacked[start:start + 8] + count + unpacked[start + 8:])
    return _TAG_ALL.join(pieces)
