"""Resident memory and CPU time of a relay, read from /proc.

A relay may run helper processes (worker loops per core, a twistd child), so figures are summed over the
process tree rooted at the pid the benchmark started. RSS summed over processes counts shared pages more
than once; that over-states multi-process relays slightly and is noted in the README.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class StatLine:
    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime


def parse_stat(text: str) -> StatLine:
    """Parse /proc/PID/stat; the command name may hold spaces and parentheses: split after the last ')'."""
    close = text.rfind(")")
    if close < 0:
        raise ValueError("no command field in stat line")
    pid = int(text[: text.index("(")].strip())
    fields = text[close + 2 :].split()
    # fields[0] is field 3 (state); ppid is field 4, utime 14, stime 15 (1-based, per proc(5)).
    return StatLine(pid=pid, ppid=int(fields[1]), cpu_ticks=int(fields[11]) + int(fields[12]))


def parse_vmrss_kib(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1])  # always reported in kB
    return 0  # a zombie or kernel thread has no VmRSS line


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _all_stats() -> list[StatLine]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            text = _read(f"/proc/{name}/stat")
            if text:
                try:
                    out.append(parse_stat(text))
                except (ValueError, IndexError):
                    continue
    return out


def descendants(stats: Iterable[StatLine], roots: Iterable[int]) -> set[int]:
    """Roots plus every process whose parent chain reaches one of them."""
    children: dict[int, list[int]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s.pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def tree(roots: Iterable[int]) -> set[int]:
    return descendants(_all_stats(), roots)


def rss_kib(roots: Iterable[int]) -> int:
    total = 0
    for pid in tree(roots):
        text = _read(f"/proc/{pid}/status")
        if text:
            total += parse_vmrss_kib(text)
    return total


def parse_schedstat_ns(text: str) -> int:
    """Nanoseconds a task ran on a CPU: the first field of /proc/PID/task/TID/schedstat."""
    return int(text.split()[0])


def _task_ns(pid: int) -> int:
    """CPU nanoseconds of ``pid``'s live threads (0 for a process that is gone)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    total = 0
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/schedstat")
        if text:
            try:
                total += parse_schedstat_ns(text)
            except (ValueError, IndexError):
                continue
    return total


SCHEDSTAT = os.path.exists("/proc/self/schedstat")
"""Whether this kernel keeps per-task run time in nanoseconds (CONFIG_SCHED_INFO)."""


def cpu_seconds(roots: Iterable[int]) -> float:
    """CPU time of the process trees: nanoseconds from schedstat where the kernel keeps it.

    utime+stime from /proc/PID/stat advance in clock ticks (10 ms here): fine for a gigabyte,
    too coarse for a few thousand round trips of a few microseconds each. schedstat counts
    live threads only, so a thread that exits inside a measuring window takes its time with
    it; the relays' threads live as long as the relays do.
    """
    pids = tree(roots)
    if SCHEDSTAT:
        return sum(_task_ns(pid) for pid in pids) / 1e9
    return _tick_seconds(pids)


def _tick_seconds(pids: Iterable[int]) -> float:
    ticks = 0
    for pid in pids:
        text = _read(f"/proc/{pid}/stat")
        if text:
            try:
                ticks += parse_stat(text).cpu_ticks
            except (ValueError, IndexError):
                continue
    return ticks / CLOCK_TICKS
