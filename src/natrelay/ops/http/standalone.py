"""The ``--http`` surface of one standalone relay process: accounts, server, and undoing both.

strelay, aspia_relay and ``natrelay syncthing-relay`` each serve their own HTTP page. Opening the
administrators' database, building the server and closing the database again when the port cannot be
bound is the same sequence for all three; it lives here once so that an entry point is one call and
one ``close()``, and a failure to start is one exception whose text names the cause.
"""

from __future__ import annotations

from dataclasses import dataclass

from natrelay.aspia.router.db import DatabaseError, RouterDatabase
from natrelay.ops.http.auth import open_accounts
from natrelay.ops.http.options import HttpConfigError, HttpOptions
from natrelay.ops.http.server import HttpServer
from natrelay.ops.http.source import Source


class HttpStartError(Exception):
    """The HTTP surface could not start: the port, the TLS files or the account database."""


@dataclass
class StandaloneHttp:
    """A started HTTP server and the account database it reads (if ``--http-users`` was given)."""

    server: HttpServer
    database: RouterDatabase | None

    @property
    def url(self) -> str:
        return self.server.url

    async def close(self) -> None:
        await self.server.close()
        if self.database is not None:
            self.database.close()


async def start_standalone_http(options: HttpOptions, *, version: str, title: str,
                                sources: list[Source] | None = None) -> StandaloneHttp:
    """Open the accounts, start the server; on any failure nothing stays open.

    Raises :class:`HttpStartError` (with the cause's message) if the port cannot be bound, the TLS or
    login settings are inconsistent, or the account database cannot be read.
    """
    database: RouterDatabase | None = None
    try:
        accounts = None
        if options.users is not None:
            accounts, database = open_accounts(options.users)
        server = HttpServer(options, version=version, title=title, sources=sources, authenticator=accounts)
        await server.start()
    except (OSError, HttpConfigError, DatabaseError) as exc:
        if database is not None:
            database.close()
        raise HttpStartError(str(exc)) from exc
    return StandaloneHttp(server, database)
