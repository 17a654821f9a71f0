"""Python fallback for loadgen.c, with the same command line and JSON output, for machines without ``cc``.

It avoids per-byte work: the writer sends slices of one preallocated buffer (or sendfile from a memfd in
splice mode) and the reader either receives into a reused buffer or splices the socket into /dev/null,
so the kernel does the copying, as in the C program. The generator self-check in run.py compares this
with the C program on direct TCP.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
import struct
import sys
import time

READ_BUF = 1 << 20
WARMUP = 200


def _pairs(specs: list[str]) -> list[tuple[int, int]]:
    out = []
    for spec in specs:
        a, b = spec.split(":")
        out.append((int(a), int(b)))
    return out


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _writer(wfds: list[int], nbytes: int, chunk: int, deadline: float, splice_mode: bool) -> None:
    left = dict.fromkeys(wfds, nbytes)
    data = memoryview(b"\x5a" * chunk)
    memfd = -1
    if splice_mode:
        memfd = os.memfd_create("pyloadgen")
        os.ftruncate(memfd, chunk)
    for fd in wfds:
        os.set_blocking(fd, False)
    poller = select.poll()
    for fd in wfds:
        poller.register(fd, select.POLLOUT)
    while left and time.monotonic() < deadline:
        for fd, _ev in poller.poll(200):
            while fd in left:
                want = min(left[fd], chunk)
                try:
                    n = os.sendfile(fd, memfd, 0, want) if splice_mode else os.write(fd, data[:want])
                except BlockingIOError:
                    break
                except OSError:
                    n = left[fd]  # peer gone: the reader reports the shortfall
                left[fd] -= n
                if left[fd] == 0:
                    del left[fd]
                    poller.unregister(fd)
                    with socket.socket(fileno=os.dup(fd)) as s, contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_WR)
    os._exit(0)


def bulk(nbytes: int, chunk: int, seconds: float, mode: str, specs: list[str]) -> dict[str, object]:
    pairs = _pairs(specs)
    splice_mode = mode == "splice"
    t0 = time.monotonic()
    deadline = t0 + seconds
    child = os.fork()
    if child == 0:
        _writer([w for w, _ in pairs], nbytes, chunk, deadline, splice_mode)
    rfds = [r for _, r in pairs]
    got = dict.fromkeys(rfds, 0)
    active = set(rfds)
    eof_early = 0
    buf = bytearray(READ_BUF)
    pipe_r = pipe_w = devnull = -1
    if splice_mode:
        pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK)
        devnull = os.open("/dev/null", os.O_WRONLY)
    poller = select.poll()
    for fd in rfds:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    while active and time.monotonic() < deadline:
        for fd, _ev in poller.poll(200):
            while fd in active:
                try:
                    if splice_mode:
                        n = os.splice(fd, pipe_w, READ_BUF, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                        left = n
                        while left:
                            left -= os.splice(pipe_r, devnull, left, flags=os.SPLICE_F_MOVE)
                    else:
                        n = os.readv(fd, [buf])
                except BlockingIOError:
                    break
                except OSError:
                    n = 0
                if n:
                    got[fd] += n
                if n == 0 or got[fd] >= nbytes:
                    if got[fd] < nbytes:
                        eof_early += 1
                    active.discard(fd)
                    poller.unregister(fd)
    elapsed = time.monotonic() - t0
    timed_out = bool(active)
    if timed_out:
        os.kill(child, 9)
    os.waitpid(child, 0)
    return {
        "mode": mode,
        "sessions": len(pairs),
        "bytes": sum(got.values()),
        "min_session_bytes": min(got.values()),
        "seconds": elapsed,
        "complete": not timed_out and not eof_early,
        "timed_out": timed_out,
        "eof_early": eof_early,
        "cpu_s": _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN),
    }


def _read_exact(fd: int, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise OSError("eof")
        got += n


def _read_exact_poll(sock: socket.socket, view: memoryview, give_up: float) -> None:
    """Like _read_exact, but never sleeps: non-blocking reads in a spin loop until the bytes are there,
    the peer is gone, or the clock passes ``give_up`` (a stuck relay cannot hang the run)."""
    got = 0
    while got < len(view):
        try:
            n = sock.recv_into(view[got:], 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if time.monotonic() >= give_up:
                raise TimeoutError("nothing arrived before the time limit") from None
            continue
        if n == 0:
            raise OSError("eof")
        got += n


PING_MODES = ("block", "poll")


def pingpong(size: int, count: int, seconds: float, spec: str, mode: str = "block") -> dict[str, object]:
    """``mode`` "block" reads with blocking reads (the generator sleeps until data arrives); "poll" spins
    on non-blocking reads, so the generator's own wake-ups are not in the round trip (see loadgen.c)."""
    if mode not in PING_MODES:
        raise ValueError(f"pingpong mode must be one of {PING_MODES}, not {mode!r}")
    ((a, b),) = _pairs([spec])
    for fd in (a, b):
        os.set_blocking(fd, True)  # writes block in both modes; poll mode's reads pass MSG_DONTWAIT
        # A stuck relay must not hang the run: blocking reads give up after the time budget.
        s = socket.socket(fileno=os.dup(fd))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", int(seconds) + 1, 0))
        s.close()
    sock_a = socket.socket(fileno=os.dup(a))
    sock_b = socket.socket(fileno=os.dup(b))
    msg = b"\x42" * size
    inbuf = memoryview(bytearray(size))
    lat: list[float] = []
    t0 = time.monotonic()
    deadline = t0 + seconds
    give_up = deadline + 1.0  # the same grace as the blocking reads' SO_RCVTIMEO
    poll_mode = mode == "poll"
    failed = False
    with sock_a, sock_b:
        for i in range(WARMUP + count):
            t = time.monotonic()
            if t >= deadline:
                break
            try:
                os.write(a, msg)
                if poll_mode:
                    _read_exact_poll(sock_b, inbuf, give_up)
                else:
                    _read_exact(b, inbuf)
                os.write(b, inbuf)
                if poll_mode:
                    _read_exact_poll(sock_a, inbuf, give_up)
                else:
                    _read_exact(a, inbuf)
            except OSError:
                failed = True
                break
            if i >= WARMUP:
                lat.append(time.monotonic() - t)
    elapsed = time.monotonic() - t0
    if not lat:
        return {"mode": mode, "count": 0, "failed": failed, "seconds": elapsed,
                "cpu_s": _cpu(resource.RUSAGE_SELF)}
    lat.sort()
    n = len(lat)

    def pct(p: float) -> float:
        return lat[int(p * (n - 1) + 0.5)] * 1e6

    return {
        "mode": mode,
        "count": n,
        "failed": failed,
        "seconds": elapsed,
        "mean_us": sum(lat) / n * 1e6,
        "p50_us": pct(0.5),
        "p90_us": pct(0.9),
        "p99_us": pct(0.99),
        "max_us": lat[-1] * 1e6,
        "cpu_s": _cpu(resource.RUSAGE_SELF),
    }


def main(argv: list[str]) -> int:
    if len(argv) >= 6 and argv[0] == "bulk":
        result = bulk(int(argv[1]), int(argv[2]), float(argv[3]), argv[4], argv[5:])
    elif len(argv) in (5, 6) and argv[0] == "pingpong" and argv[5:6] in ([], ["block"], ["poll"]):
        result = pingpong(int(argv[1]), int(argv[2]), float(argv[3]), argv[4], *argv[5:6])
    else:
        print(
            "usage: pyloadgen.py bulk BYTES CHUNK SECONDS copy|splice W:R..."
            " | pingpong SIZE COUNT SECONDS A:B [block|poll]",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
