"""Reading relay memory and CPU from /proc text."""

import os

from relaybench import procstat


def test_parse_stat_survives_spaces_and_parentheses_in_the_name() -> None:
    fields = ["S", "42"] + ["0"] * 9 + ["150", "50"] + ["0"] * 30
    line = "1234 (weird) name (x)) " + " ".join(fields)
    s = procstat.parse_stat(line)
    assert (s.pid, s.ppid, s.cpu_ticks) == (1234, 42, 200)


def test_parse_vmrss() -> None:
    text = "Name:\tstrelaysrv\nVmPeak:\t 9999 kB\nVmRSS:\t   12044 kB\nThreads:\t7\n"
    assert procstat.parse_vmrss_kib(text) == 12044
    assert procstat.parse_vmrss_kib("Name:\tzombie\n") == 0


def test_descendants_follow_the_parent_chain_only() -> None:
    stats = [
        procstat.StatLine(10, 1, 0),
        procstat.StatLine(11, 10, 0),
        procstat.StatLine(12, 11, 0),
        procstat.StatLine(20, 1, 0),
    ]
    assert procstat.descendants(stats, [10]) == {10, 11, 12}
    assert procstat.descendants(stats, [20]) == {20}


def test_reads_this_process() -> None:
    me = os.getpid()
    assert procstat.rss_kib([me]) > 1000
    assert procstat.cpu_seconds([me]) > 0


def test_parse_schedstat_and_its_precision() -> None:
    assert procstat.parse_schedstat_ns("179592 3346944 2\n") == 179592
    if not procstat.SCHEDSTAT:
        return
    before = procstat.cpu_seconds([os.getpid()])
    sum(i for i in range(20_000))  # a millisecond or so: below one 10 ms clock tick
    spent = procstat.cpu_seconds([os.getpid()]) - before
    assert 0 < spent < 1.0
