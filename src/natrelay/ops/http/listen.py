"""Start an aiohttp application on one address, leaving nothing behind when the port is taken.

Both HTTP servers of a process (the full surface in :mod:`natrelay.ops.http.server` and the public
``-status-srv`` document in :mod:`natrelay.ops.http.public`) start the same way: a runner without
aiohttp's own signal handling (the servers' entry points own SIGTERM), no access log (request counts
live in the metrics), and, when binding fails, the runner cleaned up before the error goes on so a
failed start holds no descriptor.
"""

from __future__ import annotations

import ssl

from aiohttp import web

BACKLOG = 128


async def listen(app: web.Application, host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` (empty host: every interface) and return its runner.

    Raises OSError (port in use, address not available) after undoing everything it set up.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host or None, port, ssl_context=ssl_context, backlog=BACKLOG,
                       reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner
