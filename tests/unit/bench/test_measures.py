"""One round on direct TCP through the real orchestration: generator processes, forked pairing workers."""

import resource
from pathlib import Path

import pytest
from relaybench.direct import DirectSubject
from relaybench.loadgen import Generator, build_c
from relaybench.measures import MEASURES, Sizes, SubjectRound, idle_session_cap

TINY = Sizes(
    bulk_bytes=1 << 20,
    bulk_chunk=16 * 1024,
    bulk16_sessions=4,
    bulk16_bytes_each=256 * 1024,
    bulk_seconds=20.0,
    ping_size=64,
    ping_count=50,
    ping_seconds=10.0,
    pair_seq=20,
    pair_workers=2,
    pair_each=10,
    pair_seconds=20.0,
    idle_counts=(5,),
    idle_workers=1,
    idle_seconds=10.0,
    settle_seconds=0.0,
)


def test_direct_round_yields_every_figure_that_applies(tmp_path: Path) -> None:
    binary = build_c(tmp_path)
    gen = Generator("c", binary) if binary else Generator("python")
    subject = DirectSubject()
    subject.start(tmp_path)
    try:
        result = SubjectRound(subject, gen, TINY, "copy").run(MEASURES)
    finally:
        subject.stop()
    assert result.notes == []
    figures = ("bulk1_mibps", "bulk16_mibps", "rtt_p50_us", "rtt_p99_us", "pair_seq_per_s", "pair_conc_per_s")
    for key in figures:
        assert result.values[key] > 0, key
    assert result.values["rtt_p50_us"] <= result.values["rtt_p99_us"]
    # Direct TCP has no relay process: no memory or relay-CPU figures rather than zeros.
    assert not any(k.startswith("rss_") or k == "cpu_s_per_gb" for k in result.values)
    assert result.extra["pair_seq_per_s_latency_ms"]["pairings"] == 20
    assert result.extra["pair_conc_per_s_latency_ms"]["pairings"] == 20
    # CPU per operation: the openers' and the generator's, never a relay's that does not exist.
    for key in ("cpu_us_per_pair_seq_opener", "cpu_us_per_pair_conc_opener", "cpu_us_per_rtt_generator",
                "cpu_us_per_gb_bulk1_generator"):
        assert result.values[key] > 0, key
    assert not any(k.endswith(("_relay", "_endpoint")) for k in result.values)
    assert set(result.extra["load"]) == set(MEASURES)


def test_idle_session_cap_leaves_room_under_the_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no fd limit")
    cap = idle_session_cap(DirectSubject())
    assert cap * 2 < hard
    assert cap >= (hard - 1024) // 2
