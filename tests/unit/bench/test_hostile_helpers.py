"""bench/relaybench/attacks.py (used by hostile.py): how one connection's outcome is told from the answer."""

import asyncio
import socket
import struct

import pytest
from relaybench import attacks


async def _outcome(server_does: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(attacks, "VERDICT_WAIT", 0.5)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)
        if server_does == "close":
            writer.close()
        elif server_does == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            await asyncio.sleep(2)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await attacks.one(attacks.send(lambda: b"garbage"), "127.0.0.5", port)
    finally:
        server.close()


@pytest.mark.parametrize(("server_does", "expected"), [
    ("close", "closed"), ("reset", "reset"), ("nothing", "still open")])
def test_outcome_of_one_attack(server_does: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert asyncio.run(_outcome(server_does, monkeypatch)) == expected


def test_connect_failure_is_its_own_outcome() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: the connect is refused
        outcome = asyncio.run(attacks.one(attacks.send(lambda: b"x"), "127.0.0.5", port))
    assert outcome == "reset at connect (ConnectionRefusedError)"
