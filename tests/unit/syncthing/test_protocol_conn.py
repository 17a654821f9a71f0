"""The protocol mode's TLS carriage when a device does not read: what OpenSSL cannot write at once is
kept and written in order once the device reads again, and a device that never reads is dropped
(and unjoined) past the write bound, never buffered without limit. A real relay on the loop and a
real TLS device in a thread, with small socket buffers so that the writes block."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from natrelay.syncthing import xdr
from natrelay.syncthing.protocol_conn import MAX_WRITE_BUFFER
from natrelay.syncthing.relay import RelayConfig
from natrelay.syncthing.server import RelayOptions, SyncthingRelay
from natrelay.syncthing.tls import client_context, ensure_identity, make_device_identity, server_context
from tests.e2e.syncthing_client import read_message

PING = xdr.encode(xdr.Ping())


async def _joined_device(tmp_path: Path) -> tuple[SyncthingRelay, socket.socket, bytes]:
    relay = SyncthingRelay(RelayOptions(host="127.0.0.1", port=0, config=RelayConfig(session_port=0)),
                           server_context(ensure_identity(tmp_path / "relay")))
    _, port = relay.start()
    device = make_device_identity(tmp_path, "dev")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(30)
    raw.connect(("127.0.0.1", port))
    ctx = client_context(device.cert_path, device.key_path)
    tls = await asyncio.to_thread(ctx.wrap_socket, raw, server_hostname="127.0.0.1")
    await asyncio.to_thread(tls.sendall, xdr.encode(xdr.JoinRelayRequest("")))
    assert await asyncio.to_thread(read_message, tls) == xdr.RESPONSE_SUCCESS
    return relay, tls, device.device_id


async def _until(predicate: object, what: str) -> None:
    assert callable(predicate)
    for _ in range(600):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_blocked_writes_are_kept_and_flushed_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay, tls, device_id = await _joined_device(tmp_path)
        try:
            conn = relay.relay.joined[device_id]
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sent = 0
            while not conn._out and sent < 100_000:
                conn.send(xdr.Ping())
                sent += 1
            assert conn._out, "the socket never filled up"
            for _ in range(5):  # queued behind the blocked write
                conn.send(xdr.Ping())
                sent += 1
            got = await asyncio.to_thread(lambda: [read_message(tls) for _ in range(sent)])
            assert got == [xdr.Ping()] * sent
            await _until(lambda: not conn._out and not conn._writing, "the kept bytes to be written")
            assert relay.relay.joined.get(device_id) is conn
        finally:
            tls.close()
            relay.close()

    asyncio.run(scenario())


def test_a_device_that_never_reads_is_dropped_past_the_bound(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay, tls, device_id = await _joined_device(tmp_path)
        try:
            conn = relay.relay.joined[device_id]
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            for _ in range(2 * MAX_WRITE_BUFFER // len(PING) + 10_000):
                conn.send(xdr.Ping())
                if device_id not in relay.relay.joined:
                    break
            assert device_id not in relay.relay.joined
            assert relay.protocol_connections == 0 and relay.admission.connections == 0
            assert len(conn._out) <= MAX_WRITE_BUFFER + len(PING)
        finally:
            tls.close()
            relay.close()

    asyncio.run(scenario())
