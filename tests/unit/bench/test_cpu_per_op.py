"""CPU time per operation per process group, and the load record / bounded quiet wait."""

import os

import pytest
from relaybench import cpuper, quiet, report
from relaybench.workers import PairingReport, roles_spent


def test_per_op_us_and_no_figure_without_operations() -> None:
    assert cpuper.per_op_us(0.5, 1000) == pytest.approx(500.0)
    assert cpuper.per_op_us(0.5, 0) is None


def test_meter_reports_only_roles_with_pids_and_never_negative() -> None:
    readings = {"relay": iter([1.0, 1.25]), "endpoint": iter([2.0, 1.0])}

    def read(pids: list[int]) -> float:
        return next(readings["relay" if pids == [1] else "endpoint"])

    meter = cpuper.CpuMeter({"relay": [1], "endpoint": [2], "none": []}, read=read)
    meter.start()
    spent = meter.stop()
    assert spent == {"relay": pytest.approx(0.25), "endpoint": 0.0}
    assert cpuper.figures("cpu_us_per_rtt", spent, 1000) == {
        "cpu_us_per_rtt_relay": pytest.approx(250.0),
        "cpu_us_per_rtt_endpoint": 0.0,
    }
    assert cpuper.figures("x", spent, 0) == {}


def test_meter_reads_a_real_process() -> None:
    meter = cpuper.CpuMeter({"relay": [os.getpid()]})
    meter.start()
    sum(i * i for i in range(300_000))
    assert meter.stop()["relay"] > 0


def test_roles_spent_spans_first_start_to_last_end() -> None:
    a = PairingReport(pairings=5, roles_start={"relay": 10.0}, roles_end={"relay": 12.0})
    b = PairingReport(pairings=5, roles_start={"relay": 10.5}, roles_end={"relay": 13.0})
    failed = PairingReport(error="opener: boom")
    assert roles_spent([a, b, failed]) == {"relay": pytest.approx(3.0)}
    assert roles_spent([failed]) == {}


def test_parse_loadavg() -> None:
    assert quiet.parse_loadavg("4.73 4.63 4.98 7/612 12345\n") == (4.73, 4.63, 4.98)
    with pytest.raises(ValueError):
        quiet.parse_loadavg("")
    assert quiet.read_load1() >= 0


class FakeClock:
    def __init__(self, loads: list[float]) -> None:
        self.t = 0.0
        self.loads = loads
        self.sleeps: list[float] = []

    def read(self) -> float:
        return self.loads.pop(0) if len(self.loads) > 1 else self.loads[0]

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s

    def clock(self) -> float:
        return self.t


def test_wait_quiet_without_threshold_only_reads() -> None:
    f = FakeClock([6.0])
    seen = quiet.wait_quiet(None, 60, read=f.read, sleep=f.sleep, clock=f.clock)
    assert (seen.load_before, seen.waited_s, seen.quiet) == (6.0, 0.0, None)
    assert f.sleeps == []


def test_wait_quiet_waits_until_the_load_drops() -> None:
    f = FakeClock([6.0, 4.0, 1.5])
    seen = quiet.wait_quiet(2.0, 60, read=f.read, sleep=f.sleep, clock=f.clock, poll=5)
    assert seen == quiet.LoadSeen(6.0, 1.5, 10.0, True)


def test_wait_quiet_is_bounded_and_says_so() -> None:
    f = FakeClock([6.0])
    seen = quiet.wait_quiet(2.0, 12, read=f.read, sleep=f.sleep, clock=f.clock, poll=5)
    assert f.sleeps == [5, 5, 2]
    assert seen == quiet.LoadSeen(6.0, 6.0, 12.0, False)


def test_load_line_and_cpu_metrics_in_the_table() -> None:
    extras = [
        {"load": {"rtt": {"load_at_start": 4.04, "quiet": None}}},
        {"load": {"rtt": {"load_at_start": 3.0, "quiet": False}}},
    ]
    assert report.load_line(extras) == "rtt 4.0/3.0!"
    keys = {m.key for m in report.metrics_for((10,))}
    assert {"cpu_us_per_pair_seq_relay", "cpu_us_per_pair_seq_endpoint", "cpu_us_per_rtt_relay",
            "cpu_us_per_gb_bulk1_endpoint", "cpu_us_per_pair_conc_opener"} <= keys
