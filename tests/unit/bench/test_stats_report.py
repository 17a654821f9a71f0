"""Statistics and report assembly: medians over rounds, ratios to the references, the printed table."""

import pytest
from relaybench import report
from relaybench.measures import RoundResult
from relaybench.stats import Summary, percentile, ratio, rotate, summarize


def test_summarize_ignores_missing_rounds() -> None:
    assert summarize([3.0, None, 1.0, 2.0]) == Summary(2.0, 1.0, 3.0, 3)
    assert summarize([None, None]) is None
    assert summarize([4.0, 1.0]) == Summary(2.5, 1.0, 4.0, 2)


def test_ratio_of_medians_and_missing_references() -> None:
    assert ratio(Summary(50.0, 40.0, 60.0, 3), Summary(200.0, 1.0, 300.0, 3)) == pytest.approx(0.25)
    assert ratio(Summary(1.0, 1.0, 1.0, 1), None) is None
    assert ratio(Summary(1.0, 1.0, 1.0, 1), Summary(0.0, 0.0, 0.0, 1)) is None


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 51.0  # rounds half up on index 49.5
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 100.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_rotate_moves_the_first_subject_each_round() -> None:
    names = ["direct", "strelaysrv", "wormhole"]
    assert rotate(names, 0) == names
    assert rotate(names, 1) == ["strelaysrv", "wormhole", "direct"]
    assert rotate(names, 4) == rotate(names, 1)
    assert rotate([], 3) == []


def _rounds(values: list[float]) -> list[RoundResult]:
    return [RoundResult(values={"bulk1_mibps": v, "rss_idle_mib": v / 100}) for v in values]


def test_build_reports_median_range_and_both_ratios() -> None:
    subjects = {
        "direct": {"title": "direct", "skipped": None},
        "strelaysrv": {"title": "strelaysrv", "skipped": None},
        "natrelay": {"title": "ours", "skipped": None},
        "aspia": {"title": "slot", "skipped": "not built"},
    }
    rounds = {
        "direct": [RoundResult(values={"bulk1_mibps": v}) for v in (4000.0, 5000.0, 6000.0)],
        "strelaysrv": _rounds([900.0, 1000.0, 1100.0]),
        "natrelay": _rounds([400.0, 500.0, 700.0]),
    }
    metrics = report.metrics_for((2000,))
    doc = report.build(subjects, rounds, metrics, {"rounds": 3})
    fig = doc["subjects"]["natrelay"]["figures"]["bulk1_mibps"]
    assert (fig["median"], fig["min"], fig["max"]) == (500.0, 400.0, 700.0)
    assert fig["ratio_to_direct"] == pytest.approx(0.1)
    assert fig["ratio_to_strelaysrv"] == pytest.approx(0.5)
    rss = doc["subjects"]["natrelay"]["figures"]["rss_idle_mib"]
    assert rss["ratio_to_direct"] is None  # direct TCP has no relay process
    assert rss["ratio_to_strelaysrv"] == pytest.approx(0.5)
    assert doc["subjects"]["aspia"] == {"title": "slot", "skipped": "not built"}

    table = report.format_table(doc, metrics)
    assert "single-session throughput" in table
    assert "0.10x" in table and "0.50x" in table
    assert "[400-700]" in table
    assert "skipped aspia: not built" in table


def test_round_trip_rows_blocking_then_polling_client() -> None:
    metrics = report.metrics_for((2000,))
    keys = [m.key for m in metrics]
    at = keys.index("rtt_p50_us")
    assert keys[at : at + 4] == ["rtt_p50_us", "rtt_p99_us", "rtt_poll_p50_us", "rtt_poll_p99_us"]
    labels = {m.key: m.label for m in metrics}
    assert labels["rtt_p50_us"] == "64-byte round trip p50"  # unchanged: the blocking client
    assert labels["rtt_poll_p50_us"] == "64-byte round trip p50, polling client"
    rounds = {
        "direct": [RoundResult(values={"rtt_p50_us": 10.0, "rtt_poll_p50_us": 10.0})],
        "strelaysrv": [RoundResult(values={"rtt_p50_us": 130.0, "rtt_poll_p50_us": 60.0})],
        "engine": [RoundResult(values={"rtt_p50_us": 50.0, "rtt_poll_p50_us": 20.0})],
    }
    subjects = {n: {"title": n, "skipped": None} for n in rounds}
    doc = report.build(subjects, rounds, metrics, {})
    fig = doc["subjects"]["engine"]["figures"]["rtt_poll_p50_us"]
    assert fig["ratio_to_direct"] == pytest.approx(2.0)
    assert fig["ratio_to_strelaysrv"] == pytest.approx(1 / 3)
    table = report.format_table(doc, metrics)
    assert "64-byte round trip p50, polling client (us, lower is better)" in table


def test_metrics_for_adds_one_rss_row_per_idle_count_after_idle() -> None:
    keys = [m.key for m in report.metrics_for((2000, 10000))]
    at = keys.index("rss_idle_mib")
    assert keys[at + 1 : at + 3] == ["rss_2000_mib", "rss_10000_mib"]
