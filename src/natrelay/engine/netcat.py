"""stdin/stdout joined to a relayed stream like netcat, with an exit status that can be trusted.

Both families' netcat modes (``offset listen|connect``, ``aspia client`` without addresses) run
this. The rules, which ``--help`` documents as exit statuses:

* **0** only when both directions completed: all of stdin was sent and its end passed on, the
  other side's end of stream arrived, and everything received was written to stdout and flushed
  (the program does not exit with data still in a pipe buffer or a writer thread). The other side
  closing before our input ended counts only if we had sent nothing: then nothing can be lost.
* **1** when the relayed connection could not carry the transfer to its end: it broke, the relay
  or the other peer went away, or the other side aborted. One line on stderr says what and how
  many bytes went each way.
* **3** when our own stdin or stdout failed (stdout closed, a full disk, a reader that left).
  The other side is told (an abort with the reason), so it does not take a cut stream as complete.
* **128 + signal** (130, 143) when SIGINT or SIGTERM stopped us: input stops at once, what was
  received is flushed (for at most ``FLUSH_ON_STOP`` seconds), and the other side is told.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from natrelay.engine.stdio import StdioError, StdStreams
from natrelay.engine.streams import Pump, abort_stream, describe

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_LOCAL_IO = 3
#: Seconds a stop by signal may spend flushing what was received before exiting.
FLUSH_ON_STOP = 1.5
#: Seconds a completed transfer may wait for the relayed connection to finish closing.
CLOSE_WAIT = 5.0

EXIT_STATUS_HELP = """\
exit status (without --listen/--expose):
  0    both directions completed: every byte was delivered and written out
  1    the relayed connection failed or broke mid-way (stderr says what, and
       how many bytes went each way)
  2    usage error
  3    standard input or output failed (closed stdout, full disk, broken pipe)
  130  interrupted by SIGINT (Ctrl-C);  143  stopped by SIGTERM
with --listen/--expose: 0 when stopped by SIGINT/SIGTERM, 1 if it cannot start."""


@dataclass
class TransferResult:
    """How a netcat transfer ended."""

    code: int
    sent: int
    received: int
    message: str | None = None


class Transfer:
    """One stdin/stdout <-> stream join; ``sent``/``received`` are live for progress displays."""

    def __init__(self, streams: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.tunnel_reader, self.tunnel_writer = streams
        self._up: Pump | None = None
        self._down: Pump | None = None

    @property
    def sent(self) -> int:
        return self._up.count if self._up is not None else 0

    @property
    def received(self) -> int:
        return self._down.count if self._down is not None else 0

    def _result(self, code: int, message: str | None = None) -> TransferResult:
        return TransferResult(code, self.sent, self.received, message)

    def _broken(self, what: str) -> TransferResult:
        return self._result(EXIT_BROKEN, f"{what} (sent {self.sent} bytes, received {self.received} bytes)")

    async def run(self, stop: asyncio.Event, *, stop_code: Callable[[], int] = lambda: 130,
                  std: StdStreams | None = None) -> TransferResult:
        """Move bytes until both directions end, something fails, or ``stop`` is set.

        ``stop_code`` gives the exit status of a stop (asked once the stop happened, so it can
        depend on the signal).
        """
        try:
            std = std or await StdStreams.open()
        except OSError as exc:
            abort_stream(self.tunnel_writer, "the other side cannot use its standard input or output")
            return self._result(EXIT_LOCAL_IO, f"cannot open standard input/output: {describe(exc)}")
        try:
            return await self._run(std, stop, stop_code)
        finally:
            std.close()

    async def _run(self, std: StdStreams, stop: asyncio.Event,
                   stop_code: Callable[[], int]) -> TransferResult:
        self._up = Pump(std.reader, self.tunnel_writer)
        self._down = Pump(self.tunnel_reader, std.writer)
        up = asyncio.ensure_future(self._up.run())
        down = asyncio.ensure_future(self._down_then_flush(std))
        gone = asyncio.ensure_future(self.tunnel_writer.wait_closed())
        stopper = asyncio.ensure_future(stop.wait())
        pumps: list[asyncio.Future[Any]] = [up, down]
        try:
            pending: set[asyncio.Future[Any]] = {up, down, stopper}
            while up in pending or down in pending:
                watch = pending | ({gone} if down.done() else set())
                done, _ = await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    await _cancel(pumps)
                    std.close_input()
                    abort_stream(self.tunnel_writer, "the other side was interrupted")
                    await self._flush(std)
                    return self._result(stop_code(), f"interrupted (sent {self.sent} bytes, "
                                                   f"received {self.received} bytes)")
                for task in (up, down):
                    if task in done and task.exception() is not None:
                        return await self._failed(std, pumps, task.exception())
                pending -= done
                if gone in done and up in pending:
                    # The connection ended after the other side's end of stream, before ours. The
                    # stream layer has no acknowledgements: if we had sent anything, whether it was
                    # all read is unknown (the relay may have died), so that is not a success.
                    if gone.exception() is not None:
                        return await self._failed(std, pumps, gone.exception())
                    if self._up.waiting_for_input and self.sent == 0:
                        return self._result(EXIT_OK)
                    return self._broken("the relayed connection closed before our input ended")
            self.tunnel_writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(gone), CLOSE_WAIT)
            return self._result(EXIT_OK)
        finally:
            await _cancel([*pumps, gone, stopper])

    async def _down_then_flush(self, std: StdStreams) -> int:
        """Receive until the other side's end of stream, then flush and close stdout."""
        assert self._down is not None
        count = await self._down.run()
        await std.finish_output()
        return count

    async def _failed(self, std: StdStreams, pumps: list[asyncio.Future[Any]],
                      exc: BaseException | None) -> TransferResult:
        assert exc is not None
        await _cancel(pumps)
        if isinstance(exc, StdioError):
            abort_stream(self.tunnel_writer, f"the other side failed: {describe(exc)}")
            return self._result(EXIT_LOCAL_IO, f"{describe(exc)} (sent {self.sent} bytes, "
                                               f"received {self.received} bytes)")
        abort_stream(self.tunnel_writer, describe(exc))
        await self._flush(std)
        return self._broken(describe(exc))

    @staticmethod
    async def _flush(std: StdStreams) -> None:
        """Write out what was received (bounded in time); stdout errors no longer matter here."""
        with contextlib.suppress(Exception):
            await std.finish_output(FLUSH_ON_STOP)


async def _cancel(tasks: list[asyncio.Future[Any]]) -> None:
    for task in tasks:
        if not task.done():
            task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task
