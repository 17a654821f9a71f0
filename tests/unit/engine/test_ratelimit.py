"""Rate limits pause reading: the token bucket, and a paused session that holds bytes back."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from natrelay.engine.forward import ForwardEngine
from natrelay.engine.ratelimit import SessionThrottle, TokenBucket


def test_bucket_burst_debt_and_refill() -> None:
    b = TokenBucket(100.0, 200.0, 0.0)
    assert b.take(150, 0.0) == 0.0
    assert b.take(100, 0.0) == pytest.approx(0.5)  # 50 in debt at 100/s
    assert b.delay(0.25) == pytest.approx(0.25)
    assert b.delay(0.5) == 0.0
    assert b.delay(100.0) == 0.0 and b.tokens == 200.0  # never more than the burst
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)


@pytest.mark.parametrize("method", ["splice", "portable"])
def test_paused_session_holds_bytes_until_resumed(method: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine = ForwardEngine(loop, method=method)  # type: ignore[arg-type]
        a_out, a_in = socket.socketpair()
        b_in, b_out = socket.socketpair()
        session = engine.start(a_in, b_in)
        session.pause_reading()
        a_out.sendall(b"x" * 1000)
        await asyncio.sleep(0.3)
        assert session.counters.a_to_b == 0
        session.resume_reading()
        b_out.setblocking(False)
        got = b""
        for _ in range(100):
            await asyncio.sleep(0.02)
            with contextlib.suppress(BlockingIOError):
                got += b_out.recv(4096)
            if len(got) == 1000:
                break
        assert got == b"x" * 1000
        engine.close()
        a_out.close()
        b_out.close()

    asyncio.run(main())


def test_throttle_pauses_over_budget_and_resumes_when_paid() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine = ForwardEngine(loop, method="portable")
        a_out, a_in = socket.socketpair()
        b_in, b_out = socket.socketpair()
        session = engine.start(a_in, b_in)
        own = TokenBucket(10_000.0, 1_000.0, loop.time())
        shared = TokenBucket(1e9, 1e9, loop.time())
        throttle = SessionThrottle(loop, session, [own, shared])
        a_out.sendall(b"y" * 3000)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if throttle.paused:
                break
        assert throttle.paused and session.paused
        b_out.setblocking(False)
        got = 0
        for _ in range(200):
            await asyncio.sleep(0.02)
            with contextlib.suppress(BlockingIOError):
                got += len(b_out.recv(65536))
            if got == 3000:
                break
        assert got == 3000
        throttle.cancel()
        engine.close()
        a_out.close()
        b_out.close()

    asyncio.run(main())
