"""Bandwidth values as operators write them: ``500K``, ``10M``, ``1G`` or plain bytes per second.

Suffixes are binary (K = 1024 bytes/s), as in the sizes elsewhere in natrelay's options; ``0``
means "no limit".
"""

from __future__ import annotations

import re

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B(?:/s)?)?", re.IGNORECASE)
_FACTOR = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
MAX_RATE = 1024**4


def parse_rate(text: str, what: str = "rate") -> int:
    """Bytes per second from ``text``; raises ValueError naming ``what`` and the accepted forms."""
    match = _RATE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{what} {text!r} is not a rate: bytes per second, optionally with K, M or G "
                         "(binary: 1K = 1024 bytes/s), e.g. 500K or 10M; 0 for no limit")
    value = int(float(match.group(1)) * _FACTOR[match.group(2).upper()])
    if value > MAX_RATE:
        raise ValueError(f"{what} {text!r} is more than 1T bytes per second")
    return value


def format_rate(rate: int) -> str:
    for suffix in ("G", "M", "K"):
        if rate and rate % _FACTOR[suffix] == 0:
            return f"{rate // _FACTOR[suffix]}{suffix}"
    return str(rate)
