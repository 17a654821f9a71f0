"""One round on direct TCP through the real orchestration: generator processes, forked pairing workers."""

import resource
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from relaybench.cpuper import CpuMeter
from relaybench.direct import DirectSubject
from relaybench.loadgen import Generator, LoadgenError, build_c
from relaybench.measures import MEASURES, Sizes, SubjectRound, idle_session_cap
from relaybench.pyloadgen import WARMUP as PING_WARMUP

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
    figures = ("bulk1_mibps", "bulk16_mibps", "rtt_p50_us", "rtt_p99_us", "rtt_poll_p50_us",
               "rtt_poll_p99_us", "pair_seq_per_s", "pair_conc_per_s")
    for key in figures:
        assert result.values[key] > 0, key
    assert result.values["rtt_p50_us"] <= result.values["rtt_p99_us"]
    assert result.values["rtt_poll_p50_us"] <= result.values["rtt_poll_p99_us"]
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


class _RecordingGenerator(Generator):
    """Answers pingpong without running anything and records when it was called, between meter reads."""

    def __init__(self, events: list[str], poll_result: dict[str, Any] | Exception) -> None:
        super().__init__("python")
        self.events = events
        self.poll_result = poll_result

    def pingpong(
        self,
        pair: tuple[socket.socket, socket.socket],
        size: int,
        count: int,
        seconds: float,
        mode: str = "block",
    ) -> dict[str, Any]:
        self.events.append(f"pingpong {mode}")
        if mode == "block":
            return {"mode": mode, "count": count, "failed": False, "p50_us": 100.0, "p99_us": 150.0,
                    "cpu_s": 0.5}
        if isinstance(self.poll_result, Exception):
            raise self.poll_result
        return self.poll_result


def _rtt_round(gen: Generator, events: list[str]) -> SubjectRound:
    def read(pids: Iterable[int]) -> float:
        events.append("cpu read")
        return 2.0 * (events.count("cpu read") - 1)  # the relay spends 2 CPU s between two reads

    class Metered(SubjectRound):
        def meter(self) -> CpuMeter:
            return CpuMeter({"relay": [1]}, read=read)

    return Metered(DirectSubject(), gen, TINY, "copy")


def test_rtt_cpu_figures_come_from_the_blocking_run_only() -> None:
    """The polling run starts after the CPU meter stopped: its round trips and spinning are not counted."""
    events: list[str] = []
    poll = {"mode": "poll", "count": 50, "failed": False, "p50_us": 20.0, "p99_us": 30.0, "cpu_s": 9.0}
    result = _rtt_round(_RecordingGenerator(events, poll), events).run(("rtt",))
    assert events == ["cpu read", "pingpong block", "cpu read", "pingpong poll"]
    assert result.notes == []
    v = result.values
    assert (v["rtt_p50_us"], v["rtt_p99_us"]) == (100, 150)
    assert (v["rtt_poll_p50_us"], v["rtt_poll_p99_us"]) == (20, 30)
    trips = TINY.ping_count + PING_WARMUP
    assert v["cpu_us_per_rtt_relay"] == pytest.approx(2.0e6 / trips)
    assert v["cpu_us_per_rtt_generator"] == pytest.approx(0.5e6 / trips)  # not the polling run's 9 s


def test_a_failed_polling_run_keeps_the_blocking_figures() -> None:
    for poll in ({"mode": "poll", "count": 0, "failed": True, "seconds": 11.0}, LoadgenError("exited 2")):
        events: list[str] = []
        result = _rtt_round(_RecordingGenerator(events, poll), events).run(("rtt",))
        assert result.values["rtt_p50_us"] == 100.0
        assert "cpu_us_per_rtt_relay" in result.values
        assert not any(k.startswith("rtt_poll_") for k in result.values)
        assert len(result.notes) == 1 and result.notes[0].startswith("rtt, polling client: "), result.notes
