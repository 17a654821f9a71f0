"""Turn per-round figures into the JSON document and the printed table.

Every figure is the median over rounds with its min-max, plus its ratio to direct TCP and to strelaysrv
measured in the same run (ratio of medians, value / reference, whatever the direction of "better").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .measures import RoundResult
from .stats import Summary, ratio, summarize


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: str  # "higher" or "lower"


METRICS = (
    Metric("bulk1_mibps", "single-session throughput", "MiB/s", "higher"),
    Metric("bulk16_mibps", "16 concurrent sessions, aggregate", "MiB/s", "higher"),
    Metric("rtt_p50_us", "64-byte round trip p50", "us", "lower"),
    Metric("rtt_p99_us", "64-byte round trip p99", "us", "lower"),
    Metric("rtt_poll_p50_us", "64-byte round trip p50, polling client", "us", "lower"),
    Metric("rtt_poll_p99_us", "64-byte round trip p99, polling client", "us", "lower"),
    Metric("pair_seq_per_s", "pairings/s, sequential", "1/s", "higher"),
    Metric("pair_conc_per_s", "pairings/s, concurrent openers", "1/s", "higher"),
    Metric("rss_idle_mib", "relay RSS idle", "MiB", "lower"),
    Metric("kib_per_session", "relay RSS per idle session", "KiB", "lower"),
    Metric("cpu_s_per_gb", "relay CPU seconds per GB", "s/GB", "lower"),
)

ROLES = {
    "relay": "relay",
    "endpoint": "endpoint helpers (router, nodes)",
    "opener": "opener processes",
    "generator": "traffic generator",
}
"""Process groups whose CPU time per operation is reported; a subject has the ones that apply."""

OPERATIONS = (
    ("cpu_us_per_pair_seq", "pairing, sequential", ("relay", "endpoint", "opener")),
    ("cpu_us_per_pair_conc", "pairing, concurrent openers", ("relay", "endpoint", "opener")),
    ("cpu_us_per_rtt", "64-byte round trip", ("relay", "endpoint", "generator")),
    ("cpu_us_per_gb_bulk1", "GB, single session", ("relay", "endpoint", "generator")),
    ("cpu_us_per_gb_bulk16", "GB, 16 sessions", ("relay", "endpoint", "generator")),
)


def cpu_metrics() -> list[Metric]:
    """CPU microseconds per operation, one row per operation and process group."""
    return [
        Metric(f"{prefix}_{role}", f"CPU per {what}: {ROLES[role]}", "CPU us/op", "lower")
        for prefix, what, roles in OPERATIONS
        for role in roles
    ]

REFERENCES = ("direct", "strelaysrv")


def metrics_for(idle_counts: tuple[int, ...]) -> list[Metric]:
    """The fixed metrics plus one RSS row per idle-session count of this run."""
    rss = [Metric(f"rss_{n}_mib", f"relay RSS, {n} idle sessions", "MiB", "lower") for n in idle_counts]
    out = list(METRICS)
    at = next(i for i, m in enumerate(out) if m.key == "rss_idle_mib") + 1
    return [*out[:at], *rss, *out[at:], *cpu_metrics()]


def load_line(rounds_extra: list[dict[str, Any]]) -> str:
    """The 1-minute load seen at the start of each measure, per round: 'pairing 4.1/3.9, rtt 5.0/4.2'."""
    seen: dict[str, list[str]] = {}
    for extra in rounds_extra:
        for measure, load in extra.get("load", {}).items():
            mark = "" if load.get("quiet") is not False else "!"
            seen.setdefault(measure, []).append(f"{load['load_at_start']:.1f}{mark}")
    return ", ".join(f"{m} {'/'.join(v)}" for m, v in seen.items())


def build(
    subjects: dict[str, dict[str, Any]],
    rounds: dict[str, list[RoundResult]],
    metrics: list[Metric],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document; ``subjects`` maps name to {"title", "skipped"}, ``rounds`` to per-round results."""
    summaries: dict[str, dict[str, Summary | None]] = {}
    for name, results in rounds.items():
        summaries[name] = {m.key: summarize([r.values.get(m.key) for r in results]) for m in metrics}
    doc_subjects: dict[str, Any] = {}
    for name, info in subjects.items():
        entry: dict[str, Any] = {"title": info["title"]}
        if info.get("skipped"):
            entry["skipped"] = info["skipped"]
            doc_subjects[name] = entry
            continue
        figures: dict[str, Any] = {}
        for m in metrics:
            s = summaries.get(name, {}).get(m.key)
            if s is None:
                continue
            fig: dict[str, Any] = {"unit": m.unit, "better": m.better, **s.as_dict()}
            for ref in REFERENCES:
                fig[f"ratio_to_{ref}"] = ratio(s, summaries.get(ref, {}).get(m.key))
            fig["values"] = [r.values.get(m.key) for r in rounds.get(name, [])]
            figures[m.key] = fig
        entry["figures"] = figures
        share = summarize([r.extra.get("generator_cpu_share_bulk1") for r in rounds.get(name, [])])
        if share is not None:
            entry["generator_cpu_share_bulk1"] = share.median
        entry["notes"] = sorted({n for r in rounds.get(name, []) for n in r.notes})
        entry["rounds"] = [r.extra for r in rounds.get(name, [])]
        doc_subjects[name] = entry
    return {"meta": meta, "subjects": doc_subjects}


def _num(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def format_table(doc: dict[str, Any], metrics: list[Metric]) -> str:
    """One block per metric: subjects as rows, median [min-max], and the two ratios."""
    subjects = doc["subjects"]
    lines: list[str] = []
    names = [n for n, s in subjects.items() if "skipped" not in s]
    width = max([len(n) for n in names] + [10])
    for m in metrics:
        rows = []
        for name in names:
            fig = subjects[name]["figures"].get(m.key)
            if fig is None:
                continue
            span = f"[{_num(fig['min'])}-{_num(fig['max'])}]" if fig["rounds"] > 1 else ""
            rows.append(
                f"  {name:<{width}} {_num(fig['median']):>10} {span:<22} "
                f"{_ratio(fig['ratio_to_direct']):>8} {_ratio(fig['ratio_to_strelaysrv']):>8}"
            )
        if rows:
            lines.append(f"{m.label} ({m.unit}, {m.better} is better)")
            head = f"  {'subject':<{width}} {'median':>10} {'[min-max]':<22} {'/direct':>8} {'/strelay':>8}"
            lines.append(head)
            lines.extend(rows)
            lines.append("")
    gen = doc["meta"].get("generator_check")
    if gen:
        lines.append("generator self-check (direct TCP, one session, MiB/s, median):")
        lines.append("  " + ", ".join(f"{k} {_num(v)}" for k, v in gen.items()))
        lines.append("")
    key = "generator_cpu_share_bulk1"
    shares = {n: s[key] for n, s in subjects.items() if key in s}
    if shares:
        lines.append("generator CPU during the single-session transfer (1.00 = one core busy), median:")
        lines.append("  " + ", ".join(f"{n} {v:.2f}" for n, v in shares.items()))
        lines.append("")
    loads = {n: line for n, s in subjects.items() if (line := load_line(s.get("rounds", [])))}
    if loads:
        lines.append("1-minute load average at the start of each measure, per round (! = not quiet):")
        lines.extend(f"  {n}: {line}" for n, line in loads.items())
        lines.append("")
    for name, s in subjects.items():
        if "skipped" in s:
            lines.append(f"skipped {name}: {s['skipped']}")
        for note in s.get("notes", []):
            lines.append(f"note {name}: {note}")
    return "\n".join(lines).rstrip() + "\n"
