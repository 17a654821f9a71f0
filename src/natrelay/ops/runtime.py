"""Running a server's main coroutine: the event loop choice and clean stops on signals."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def run(main: Callable[[asyncio.Event], Awaitable[int]], *, use_uvloop: bool = True) -> int:
    """Run ``main(stop)`` to completion; SIGINT/SIGTERM set ``stop``. Returns its exit code.

    uvloop is used where installed (it moves bytes with less per-call overhead), unless told not to.
    """
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if use_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - platform without uvloop
            pass

    async def wrapper() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(wrapper())


def extract_attached(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """Split ``--optVALUE`` into ``--opt VALUE`` for the given long options.

    The Offset seed document writes ``strelay --laddr$RELAY_PORT``; argparse (like clap) does not
    accept a value glued to a long option, so such arguments are split before parsing.
    """
    out: list[str] = []
    for arg in argv:
        for opt in options:
            if arg.startswith(opt) and len(arg) > len(opt) and arg[len(opt)] != "=":
                out += [opt, arg[len(opt):]]
                break
        else:
            out.append(arg)
    return out

