"""Running a server's main coroutine: the event loop choice and clean stops on signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from natrelay.engine.busypoll import busy_poll_from_env
from natrelay.ops.allocator import tune_allocator

log = logging.getLogger(__name__)


class Stop(asyncio.Event):
    """Set by the first SIGINT or SIGTERM; remembers which, for the exit status."""

    def __init__(self) -> None:
        super().__init__()
        self.signum: int | None = None

    def trigger(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        self.set()

    @property
    def exit_code(self) -> int:
        """The shell's status for death by that signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + (self.signum if self.signum is not None else signal.SIGINT)


def run(main: Callable[[Stop], Awaitable[int]], *, use_uvloop: bool = True,
        grace: float | None = None) -> int:
    """Run ``main(stop)`` to completion; SIGINT/SIGTERM set ``stop``. Returns its exit code.

    uvloop is used where installed (it moves bytes with less per-call overhead), unless told not to.
    A second signal ends the process at once, and with ``grace`` set the process also ends by
    itself that many seconds after the first one: supervisors (``timeout``, systemd) and users
    expect a stop to take effect, whatever the program was waiting for.

    The engine's environment settings are checked first, so that a wrong one is one line naming
    the variable and exit status 2, not a traceback from deep inside the first session. glibc's
    malloc is then tuned for large short-lived buffers (:mod:`natrelay.ops.allocator`).
    """
    try:
        busy_poll_from_env(os.environ)
    except ValueError as exc:
        print(f"{os.path.basename(sys.argv[0]) or 'natrelay'}: {exc}", file=sys.stderr)
        return 2
    log.debug("%s", tune_allocator(os.environ))  # see ops/allocator.py: large messages, fewer page faults
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if use_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - platform without uvloop
            pass

    async def wrapper() -> int:
        stop = Stop()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                _exit_now(128 + signum)
            stop.trigger(signum)
            if grace is not None:
                loop.call_later(grace, _exit_now, stop.exit_code)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        return await main(stop)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(wrapper())


def _exit_now(code: int) -> None:
    """End the process without waiting for anything (a stop that did not finish in time)."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(code)


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

