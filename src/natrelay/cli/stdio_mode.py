"""The netcat mode shared by ``natrelay offset listen|connect`` and ``natrelay aspia client``.

Options (``--progress``, ``-v``), the exit statuses in ``--help``, and what is printed at the end;
the transfer itself is :class:`natrelay.engine.netcat.Transfer`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

from natrelay.engine.netcat import EXIT_LOCAL_IO, EXIT_STATUS_HELP, Transfer
from natrelay.engine.stdio import StdioError, check_stdout
from natrelay.ops.progress import ProgressLine, progress_default, summary
from natrelay.ops.runtime import Stop

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

#: Seconds a peer may take to stop after SIGINT/SIGTERM before it ends regardless.
STOP_GRACE = 4.0


def add_options(p: argparse.ArgumentParser) -> None:
    """``--progress``/``--no-progress`` and ``-v``, and the exit statuses at the end of ``--help``."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EXIT_STATUS_HELP
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show bytes and rate each way on stderr while transferring (default: on when "
                        "stderr is a terminal and stdout is not)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print a one-line summary (bytes, rate, time) on stderr at the end")


def fail(message: str, code: int = 1) -> int:
    print(f"natrelay: error: {message}", file=sys.stderr, flush=True)
    return code


def stdout_problem() -> int | None:
    """Exit status 3 with a message if stdout cannot take the data; checked before connecting."""
    try:
        check_stdout()
    except StdioError as exc:
        return fail(f"{exc.strerror}: nowhere to write what arrives (redirect it, e.g. > file "
                    f"or > /dev/null)", EXIT_LOCAL_IO)
    return None


async def transfer(streams: Streams, stop: Stop, args: argparse.Namespace) -> int:
    """Join stdin/stdout to ``streams``; print what went wrong (and ``-v``'s summary); exit status."""
    job = Transfer(streams)
    started = time.monotonic()
    show = args.progress if args.progress is not None else progress_default()
    display = asyncio.ensure_future(ProgressLine(job).run()) if show else None
    try:
        result = await job.run(stop, stop_code=lambda: stop.exit_code)
    finally:
        if display is not None:
            display.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await display
    if result.code != 0 and result.message:
        if stop.is_set():
            print(f"natrelay: {result.message}", file=sys.stderr, flush=True)
        else:
            fail(result.message, result.code)
    if args.verbose:
        print(f"natrelay: {summary(job, time.monotonic() - started)}", file=sys.stderr, flush=True)
    return result.code
