"""The shared start of a relay's ``--http`` surface: a failure leaves nothing open and says why."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

import pytest

from natrelay.ops.http.options import HttpOptions
from natrelay.ops.http.standalone import HttpStartError, start_standalone_http


def _get_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return int(reply.status)


def test_serves_healthz_and_closes() -> None:
    async def scenario() -> int:
        web = await start_standalone_http(HttpOptions("127.0.0.1", 0), version="t", title="test")
        try:
            assert web.url.startswith("http://127.0.0.1:")
            status = await asyncio.to_thread(_get_status, web.url + "healthz")
        finally:
            await web.close()
        return status

    assert asyncio.run(scenario()) == 200


def test_a_busy_port_is_one_error_naming_the_cause() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(HttpStartError, match=str(port)):
            asyncio.run(start_standalone_http(HttpOptions("127.0.0.1", port), version="t", title="test"))


def test_logins_without_an_account_database_are_refused_before_binding() -> None:
    with pytest.raises(HttpStartError, match="--http-users"):
        asyncio.run(start_standalone_http(HttpOptions("127.0.0.1", 0, auth=True), version="t", title="t"))


def test_an_unreadable_account_database_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "router.db3"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(HttpStartError, match=r"router\.db3"):
        asyncio.run(start_standalone_http(HttpOptions("127.0.0.1", 0, users=bad), version="t", title="t"))
