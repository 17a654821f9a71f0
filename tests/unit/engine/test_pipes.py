"""The splice pipe pool: large pipes first, within a budget of pipe capacity, then the default size."""

from __future__ import annotations

import asyncio
import fcntl

import pytest

from natrelay.engine.forward import ForwardEngine
from natrelay.engine.splice import (
    DEFAULT_PIPE_SIZE,
    LARGE_PIPE_BUDGET,
    LARGE_PIPE_SIZE,
    PipePool,
    splice_available,
)

pytestmark = pytest.mark.skipif(not splice_available(), reason="splice(2) not available")

K = 1024


def _real_size(pipe: tuple[int, int, int]) -> int:
    return int(fcntl.fcntl(pipe[1], fcntl.F_GETPIPE_SZ))


def test_large_pipes_until_the_budget_then_the_default_size() -> None:
    pool = PipePool(64 * K, max_spare=4, large_size=256 * K, large_budget=512 * K)
    try:
        pipes = [pool.acquire() for _ in range(3)]
        assert [p[2] for p in pipes] == [256 * K, 256 * K, 64 * K]
        assert [_real_size(p) for p in pipes] == [256 * K, 256 * K, 64 * K]
        assert pool.capacity == 576 * K
        pool.discard(pipes[0])
        assert pool.capacity == 320 * K
        assert pool.acquire()[2] == 64 * K  # 320 + 256 would pass the budget
        pool.discard(pipes[2])
        assert pool.capacity == 320 * K  # one large, one small lent
        pool.discard(pipes[1])  # a large one closed: room for another
        assert pool.acquire()[2] == 256 * K
    finally:
        pool.close()


def test_spares_count_until_closed() -> None:
    pool = PipePool(64 * K, max_spare=1, large_size=256 * K, large_budget=256 * K)
    a, b = pool.acquire(), pool.acquire()
    assert (a[2], b[2]) == (256 * K, 64 * K)
    pool.release(a)  # kept as the one spare: still counted
    pool.release(b)  # over max_spare: closed
    assert pool.capacity == 256 * K and pool.spare == 1
    assert pool.acquire() == a  # reused, not a new large pipe
    pool.release(a)
    pool.close()
    assert pool.capacity == 0


def test_without_a_budget_every_pipe_has_the_size_asked() -> None:
    pool = PipePool(64 * K, max_spare=2)
    try:
        assert [pool.acquire()[2] for _ in range(3)] == [64 * K] * 3
    finally:
        pool.close()


def test_the_engine_tiers_its_own_default_but_never_a_size_or_a_rate_given() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        default = ForwardEngine(loop, method="splice")
        sized = ForwardEngine(loop, method="splice", pipe_size=64 * K)
        limited = ForwardEngine(loop, method="splice", session_rate=1e6)
        try:
            assert (default.pool.size, default.pool.large_size, default.pool.large_budget) == (
                DEFAULT_PIPE_SIZE, LARGE_PIPE_SIZE, LARGE_PIPE_BUDGET)
            assert sized.pool.large_budget == 0 and sized.pool.size == 64 * K
            assert limited.pool.large_budget == 0
        finally:
            for engine in (default, sized, limited):
                engine.close()

    asyncio.run(main())
