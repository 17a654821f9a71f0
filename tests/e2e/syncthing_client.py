"""A small blocking relay-protocol client for tests: what a Syncthing device does, step by step.

Built on the family's own messages (``natrelay.syncthing.xdr``) and run against both our relay and
Debian's ``strelaysrv``, so the two agree on the wire.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from natrelay.syncthing import xdr
from natrelay.syncthing.tls import RelayIdentity, client_context, make_device_identity


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def exchange(s: socket.socket, c: socket.socket, size: int = 256 * 1024) -> None:
    """``size`` bytes from ``s`` to ``c`` and four back: the two sides of a session really meet."""
    payload = bytes(range(256)) * (size // 256)
    t = threading.Thread(target=s.sendall, args=(payload,))
    t.start()
    assert recv_exact(c, len(payload)) == payload
    t.join()
    c.sendall(b"back")
    assert recv_exact(s, 4) == b"back"


def read_message(sock: socket.socket) -> xdr.Message:
    msg_type, length = xdr.parse_header(recv_exact(sock, xdr.HEADER_SIZE))
    return xdr.decode_body(msg_type, recv_exact(sock, length) if length else b"")


def send(sock: socket.socket, msg: xdr.Message) -> None:
    sock.sendall(xdr.encode(msg))


class Device:
    """One device identity; opens protocol-mode (TLS) and session-mode (plain) connections."""

    def __init__(self, directory: Path, name: str, port: int) -> None:
        self.identity: RelayIdentity = make_device_identity(directory, name)
        self.ctx: ssl.SSLContext = client_context(self.identity.cert_path, self.identity.key_path)
        self.port = port

    @property
    def device_id(self) -> bytes:
        return self.identity.device_id

    def protocol(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        try:
            return self.ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        except BaseException:
            raw.close()
            raise

    def join(self, token: str = "") -> tuple[ssl.SSLSocket, xdr.Message]:
        """A permanent connection; returns it with the relay's answer to JoinRelayRequest."""
        sock = self.protocol()
        send(sock, xdr.JoinRelayRequest(token))
        return sock, read_message(sock)

    def connect_to(self, target: bytes) -> xdr.Message:
        """ConnectRequest on a temporary connection; the relay's answer (an invitation or a Response)."""
        with self.protocol() as sock:
            send(sock, xdr.ConnectRequest(target))
            return read_message(sock)

    def session(self, inv: xdr.SessionInvitation) -> tuple[socket.socket, xdr.Message]:
        sock = socket.create_connection(("127.0.0.1", inv.port or self.port), timeout=30)
        send(sock, xdr.JoinSessionRequest(inv.key))
        return sock, read_message(sock)


def wait_invitation(sock: socket.socket) -> xdr.SessionInvitation:
    while True:
        msg = read_message(sock)
        if isinstance(msg, xdr.SessionInvitation):
            return msg
        if isinstance(msg, xdr.Ping):
            send(sock, xdr.Pong())
        elif not isinstance(msg, xdr.Pong):
            raise AssertionError(f"expected an invitation, got {msg}")


def pair(server: Device, server_conn: socket.socket, client: Device) -> tuple[socket.socket, socket.socket]:
    """The full dance: client asks for server, both join the session; returns (server, client) sockets."""
    inv_client = client.connect_to(server.device_id)
    assert isinstance(inv_client, xdr.SessionInvitation), inv_client
    inv_server = wait_invitation(server_conn)
    assert inv_server.server_socket and not inv_client.server_socket
    assert inv_server.from_id == client.device_id and inv_client.from_id == server.device_id
    s, r1 = server.session(inv_server)
    c, r2 = client.session(inv_client)
    assert r1 == xdr.RESPONSE_SUCCESS and r2 == xdr.RESPONSE_SUCCESS, (r1, r2)
    return s, c
