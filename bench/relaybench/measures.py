"""The measurements taken on one subject in one round, and the sizes of a quick or full run.

Order within a round matters and is fixed: idle memory first (a fresh relay), then idle sessions (so the
per-session figure is not inflated by buffers grown during bulk transfers), then throughput, round trip
and pairing rates.
"""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import cpuper, procstat
from .cpuper import CpuMeter
from .loadgen import Generator
from .pyloadgen import WARMUP as PING_WARMUP
from .quiet import wait_quiet
from .stats import percentile
from .subject import Opener, Subject, open_verified_pair
from .workers import Holders, PairingReport, roles_spent, run_pairing

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Sizes:
    bulk_bytes: int
    bulk_chunk: int
    bulk16_sessions: int
    bulk16_bytes_each: int
    bulk_seconds: float
    ping_size: int
    ping_count: int
    ping_seconds: float
    pair_seq: int
    pair_workers: int
    pair_each: int
    pair_seconds: float
    idle_counts: tuple[int, ...]
    idle_workers: int
    idle_seconds: float
    settle_seconds: float


FULL = Sizes(
    bulk_bytes=2 * GIB,
    bulk_chunk=64 * 1024,
    bulk16_sessions=16,
    bulk16_bytes_each=128 * MIB,
    bulk_seconds=120.0,
    ping_size=64,
    ping_count=20_000,
    ping_seconds=60.0,
    pair_seq=2_000,
    pair_workers=8,
    pair_each=250,
    pair_seconds=120.0,
    idle_counts=(2_000, 10_000),
    idle_workers=4,
    idle_seconds=300.0,
    settle_seconds=2.0,
)

QUICK = Sizes(
    bulk_bytes=256 * MIB,  # smaller and direct TCP's transfer is over before the scheduler notices
    bulk_chunk=64 * 1024,
    bulk16_sessions=16,
    bulk16_bytes_each=16 * MIB,
    bulk_seconds=20.0,
    ping_size=64,
    ping_count=2_000,
    ping_seconds=10.0,
    pair_seq=200,
    pair_workers=4,  # fewer than the full run's 8: each Offset opener costs a node pair to start
    pair_each=50,
    pair_seconds=15.0,
    idle_counts=(200, 1_000),
    idle_workers=2,
    idle_seconds=30.0,
    settle_seconds=0.5,
)

MEASURES = ("memory", "bulk1", "bulk16", "rtt", "pairing")


@dataclass
class RoundResult:
    """Figures of one subject in one round; a figure is absent when it does not apply or failed."""

    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def idle_session_cap(subject: Subject) -> int:
    """The most idle sessions the relay can hold under this machine's RLIMIT_NOFILE hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 1 << 30
    return max(0, (hard - 512) // subject.sessions_per_fd_budget())


def _close_pairs(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for a, b in pairs:
        a.close()
        b.close()


class SubjectRound:
    """Runs the selected measurements on a started subject."""

    def __init__(
        self,
        subject: Subject,
        gen: Generator,
        sizes: Sizes,
        bulk_mode: str,
        progress: Callable[[str], None] = lambda _msg: None,
        quiet_load: float | None = None,
        quiet_max_wait: float = 0.0,
    ) -> None:
        self.subject = subject
        self.progress = progress
        self.gen = gen
        self.sizes = sizes
        self.bulk_mode = bulk_mode
        self.result = RoundResult()
        self.relay = subject.relay_pids()
        self.quiet_load = quiet_load
        self.quiet_max_wait = quiet_max_wait
        self._opener: Opener | None = None

    def meter(self) -> CpuMeter:
        """CPU of the relay and of the endpoint helpers (router, nodes) over one measure."""
        return CpuMeter({"relay": self.relay, "endpoint": self.subject.endpoint_pids()})

    def opener(self) -> Opener:
        if self._opener is None:
            self._opener = self.subject.opener(0)
        return self._opener

    def close(self) -> None:
        if self._opener is not None:
            self._retries("main", self._opener.retries)
            self._opener.close()
            self._opener = None

    def _guard(self, name: str, fn: Callable[[], None]) -> None:
        seen = wait_quiet(self.quiet_load, self.quiet_max_wait)
        self.result.extra.setdefault("load", {})[name] = seen.as_dict()
        if seen.quiet is False:
            self.result.notes.append(
                f"{name}: load stayed at or above {self.quiet_load} for {self.quiet_max_wait:.0f}s"
            )
        t = time.monotonic()
        try:
            fn()
        except Exception as exc:  # one failed measurement must not lose the rest of the run
            self.result.notes.append(f"{name}: failed: {exc!r}")
        self.progress(f"{name} {time.monotonic() - t:.1f}s")

    def run(self, measures: tuple[str, ...]) -> RoundResult:
        try:
            for name in MEASURES:
                if name in measures:
                    self._guard(name, getattr(self, f"_{name}"))
        finally:
            self.close()
        return self.result

    def _memory(self) -> None:
        if not self.relay:
            return
        time.sleep(self.sizes.settle_seconds)
        idle = procstat.rss_kib(self.relay)
        self.result.values["rss_idle_mib"] = idle / 1024
        cap = idle_session_cap(self.subject)
        holders = Holders()
        held = 0
        try:
            for target in self.sizes.idle_counts:
                want = min(target, cap)
                if want < target:
                    self.result.notes.append(
                        f"idle sessions: {target} requested, capped at {want} by RLIMIT_NOFILE"
                    )
                opened, retries, errors = holders.open(
                    self.subject, want - held, self.sizes.idle_workers, self.sizes.idle_seconds
                )
                held += opened
                self._retries("idle", retries)
                for e in errors[:3]:
                    self.result.notes.append(f"idle sessions ({target}): {e}")
                time.sleep(self.sizes.settle_seconds)
                rss = procstat.rss_kib(self.relay)
                self.result.values[f"rss_{target}_mib"] = rss / 1024
                self.result.extra[f"held_{target}"] = held
                if held:
                    self.result.values["kib_per_session"] = (rss - idle) / held
                if held < want:
                    self.result.notes.append(f"idle sessions: only {held} of {want} opened")
                    break
        finally:
            holders.release()

    def _bulk(self, tag: str, sessions: int, nbytes: int) -> tuple[float, float, bool]:
        """Returns (MiB/s, relay CPU s per GB, complete); generator and endpoint CPU go to extras."""
        pairs: list[tuple[socket.socket, socket.socket]] = []
        ends = self.subject.endpoint_pids()
        try:
            for _ in range(sessions):
                pairs.append(open_verified_pair(self.opener()))
            meter = self.meter()
            meter.start()
            r = self.gen.bulk(pairs, nbytes, self.sizes.bulk_chunk, self.sizes.bulk_seconds, self.bulk_mode)
            spent = meter.stop()
        finally:
            _close_pairs(pairs)
        cpu = spent.get("relay", 0.0)
        end = spent.get("endpoint", 0.0)
        gb = r.bytes / 1e9
        spent["generator"] = r.cpu_s
        self.result.values.update(cpuper.figures(f"cpu_us_per_gb_{tag}", spent, gb))
        # Generator CPU as a share of wall time (1.0 = one core busy): far below the core count means
        # the generator was waiting for the relay, not the other way round.
        self.result.extra[f"generator_cpu_share_{tag}"] = r.cpu_s / r.seconds if r.seconds > 0 else 0.0
        if ends and gb:
            self.result.extra[f"endpoint_cpu_s_per_gb_{tag}"] = end / gb
        return r.mib_per_s, cpu / gb if gb else 0.0, r.complete

    def _bulk1(self) -> None:
        mibps, cpu_per_gb, complete = self._bulk("bulk1", 1, self.sizes.bulk_bytes)
        self.result.values["bulk1_mibps"] = mibps
        if self.relay:
            self.result.values["cpu_s_per_gb"] = cpu_per_gb
        if not complete:
            self.result.notes.append("bulk1: stopped at the time limit (figure is bytes moved / time)")

    def _bulk16(self) -> None:
        s = self.sizes
        mibps, cpu_per_gb, complete = self._bulk("bulk16", s.bulk16_sessions, s.bulk16_bytes_each)
        self.result.values["bulk16_mibps"] = mibps
        if self.relay:
            self.result.extra["cpu_s_per_gb_bulk16"] = cpu_per_gb
        if not complete:
            self.result.notes.append("bulk16: stopped at the time limit (figure is bytes moved / time)")

    def _rtt(self) -> None:
        """Two runs on one verified pair: blocking reads (the generator sleeps until the data is there),
        then polling reads (it spins, so its own wake-ups are out of the figure; see bench/README.md).

        CPU per round trip comes from the blocking run alone: only it is inside the CPU meter window, so
        the polling run's round trips are not counted twice and its spinning generator is not counted.
        """
        s = self.sizes
        pair = open_verified_pair(self.opener())
        meter = self.meter()
        polled: dict[str, Any] | None = None
        try:
            meter.start()
            r = self.gen.pingpong(pair, s.ping_size, s.ping_count, s.ping_seconds, "block")
            spent = meter.stop()
            # A pair that failed under the blocking run would only make the polling run wait out its limit.
            if not r.get("failed") and int(r.get("count", 0)) > 0:
                try:
                    polled = self.gen.pingpong(pair, s.ping_size, s.ping_count, s.ping_seconds, "poll")
                except Exception as exc:  # the blocking figures stand on their own
                    polled = {"count": 0, "error": repr(exc)}
        finally:
            _close_pairs([pair])
        if int(r.get("count", 0)) == 0:
            raise RuntimeError(f"no round trip completed: {r}")
        spent["generator"] = float(r.get("cpu_s", 0.0))
        # The warm-up round trips ran inside the CPU window too; a failure cuts both short alike.
        trips = int(r["count"]) + PING_WARMUP
        self.result.values.update(cpuper.figures("cpu_us_per_rtt", spent, trips))
        self.result.values["rtt_p50_us"] = float(r["p50_us"])
        self.result.values["rtt_p99_us"] = float(r["p99_us"])
        if r.get("failed"):
            self.result.notes.append(f"rtt: connection failed after {r['count']} round trips")
            self.result.notes.append("rtt, polling client: not run (the blocking run's connection failed)")
            return
        if polled is None:
            return
        if int(polled.get("count", 0)) == 0:
            self.result.notes.append(f"rtt, polling client: no round trip completed: {polled}")
            return
        self.result.values["rtt_poll_p50_us"] = float(polled["p50_us"])
        self.result.values["rtt_poll_p99_us"] = float(polled["p99_us"])
        if polled.get("failed"):
            self.result.notes.append(
                f"rtt, polling client: connection failed after {polled['count']} round trips"
            )

    def _pairing(self) -> None:
        s = self.sizes
        roles = dict(self.meter().roles)
        seq = run_pairing(self.subject, 1, s.pair_seq, s.pair_seconds, roles)
        self._pairing_figure("pair_seq_per_s", seq)
        conc = run_pairing(self.subject, s.pair_workers, s.pair_each, s.pair_seconds, roles)
        self._pairing_figure("pair_conc_per_s", conc)

    def _retries(self, what: str, n: int) -> None:
        if n:
            key = f"retries_{what}"
            self.result.extra[key] = self.result.extra.get(key, 0) + n

    def _pairing_figure(self, key: str, reports: list[PairingReport]) -> None:
        done = sum(r.pairings for r in reports)
        spent = roles_spent(reports)
        spent["opener"] = sum(r.cpu_s for r in reports)
        tag = key.removeprefix("pair_").removesuffix("_per_s")
        self.result.values.update(cpuper.figures(f"cpu_us_per_pair_{tag}", spent, done))
        self._retries(key, sum(r.retries for r in reports))
        for r in reports:
            if r.error:
                self.result.notes.append(f"{key}: {r.error}")
                break
        started = [r for r in reports if r.pairings]
        if not started:
            return
        span = max(r.end for r in started) - min(r.start for r in started)
        if span > 0:
            self.result.values[key] = done / span
        lat = sorted(x for r in started for x in r.latencies)
        self.result.extra[f"{key}_latency_ms"] = {
            "p50": percentile(lat, 0.5) * 1e3,
            "p99": percentile(lat, 0.99) * 1e3,
            "pairings": done,
        }
