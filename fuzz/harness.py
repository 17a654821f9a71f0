"""What every fuzz target shares: the target record and a reader that turns fuzz bytes into choices.

A target is a plain function of one ``bytes`` argument, so the same code runs under atheris
(libFuzzer mutates the bytes, guided by the coverage of ``natrelay``) and under the portable
random engine of ``fuzz/run.py`` when atheris is missing. A target lets only the family's
protocol error escape; anything else (an ``IndexError`` in a parser, a broken invariant checked
with ``assert``) is a finding, which the engine reports with the input that caused it.

Choices are read from the front of the input (:class:`Input`): libFuzzer's mutations then change
one decision at a time, which keeps the corpus meaningful, and an input that runs out simply
yields zeros and empty strings so every input is valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """One fuzz target: ``run`` takes the fuzz input; ``seeds`` builds a starting corpus."""

    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], Sequence[bytes]] = field(default=lambda: ())
    doc: str = ""


class Input:
    """Reads decisions and byte strings off a fuzz input, front to back; never fails."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def empty(self) -> bool:
        return self._pos >= len(self._data)

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        value = self._data[self._pos]
        self._pos += 1
        return value

    def below(self, bound: int) -> int:
        """An integer in ``[0, bound)`` (one or two bytes, so mutations change it gradually)."""
        if bound <= 1:
            return 0
        value = self.byte() if bound <= 256 else self.byte() << 8 | self.byte()
        return value % bound

    def flag(self) -> bool:
        return self.byte() & 1 == 1

    def choose(self, options: Sequence[object]) -> int:
        """The index of one of ``options``."""
        return self.below(len(options))

    def take(self, max_len: int = 255) -> bytes:
        """A length byte (or two, for ``max_len`` over 255), then that many bytes (fewer at the end)."""
        size = self.below(max_len + 1)
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk

    def chunks(self, max_chunks: int = 16, max_len: int = 255) -> list[bytes]:
        """A count, then that many length-prefixed chunks: how bytes arrive over TCP, cut anywhere."""
        return [self.take(max_len) for _ in range(self.below(max_chunks + 1))]


def chunked(*pieces: bytes, count_bound: int = 17) -> bytes:
    """The inverse of :meth:`Input.chunks` for seeds: encode ``pieces`` as a count then chunks."""
    out = bytearray([len(pieces) % count_bound])
    for piece in pieces:
        out.append(min(len(piece), 255))
        out += piece[:255]
    return bytes(out)


def lengthed(piece: bytes, max_len: int = 255) -> bytes:
    """The inverse of :meth:`Input.take` for seeds."""
    piece = piece[:max_len]
    if max_len <= 255:
        return bytes([len(piece)]) + piece
    return len(piece).to_bytes(2, "big") + piece
