"""bench/soak.py: the verified byte streams and the sampling loop (no timing is asserted)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import soak
from relaybench.direct import DirectSubject


def test_a_stream_is_checked_across_pattern_wraps_and_corruption_is_caught() -> None:
    a, b = socket.socketpair()
    try:
        d = soak.Direction(a, b, seed=7)
        sent = b""
        while len(sent) < 3 * soak.PATTERN_LEN + 5:
            piece = d.chunk(1000)
            sent += piece
            d.sent += len(piece)
        assert d.check(sent[:10]) and d.check(sent[10:9000]) and d.check(sent[9000:])
        assert d.received == len(sent)
        other = soak.Direction(a, b, seed=7)
        bad = bytearray(sent[:100])
        bad[50] ^= 1
        assert not other.check(bytes(bad))
    finally:
        a.close()
        b.close()


def test_parse_rate() -> None:
    assert soak.parse_rate("1K") == 1024 and soak.parse_rate("2M/s") == 2 << 20
    assert soak.parse_rate("500") == 500


class _ThisProcess(DirectSubject):
    """Direct TCP pairs, sampled on this very process (there is no relay to sample)."""

    def relay_pids(self) -> list[int]:
        return [os.getpid()]


def test_soak_moves_verified_bytes_and_samples(tmp_path: Path) -> None:
    subject = _ThisProcess()
    subject.start(tmp_path)
    try:
        result = soak.soak(subject, "direct", sessions=5, rate=4096, seconds=2.2, interval=0.5, log=False)
    finally:
        subject.stop()
    assert result.lost == {}
    assert len(result.samples) >= 3 and all(s.sessions_alive == 5 for s in result.samples)
    summary = result.summary()
    assert summary["sessions_lost"] == 0 and float(summary["delivered_mib"]) > 0  # type: ignore[arg-type]
