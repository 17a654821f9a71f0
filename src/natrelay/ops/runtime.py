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


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def glue_key_values(argv: list[str], options: tuple[str, ...], *, key_length: int = 43) -> list[str]:
    """Write ``--opt KEY`` as ``--opt=KEY`` when KEY is a URL-safe base64 key starting with ``-``.

    One key in 64 starts with ``-``, and argparse takes such a value for an option of its own
    ("expected one argument"); with ``=`` it is unambiguous.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if (arg in options and nxt.startswith("-") and len(nxt) == key_length
                and set(nxt) <= _B64URL):
            out.append(f"{arg}={nxt}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out

