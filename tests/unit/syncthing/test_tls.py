"""The relay's identity and TLS: keys made once, ALPN bep-relay, any self-signed client certificate
accepted and identified by its SHA-256."""

from __future__ import annotations

import hashlib
import socket
import threading
from pathlib import Path

import pytest

from natrelay.syncthing.tls import (
    TLSSetupError,
    client_context,
    ensure_identity,
    make_device_identity,
    server_context,
)


def test_identity_is_made_once_and_kept(tmp_path: Path) -> None:
    first = ensure_identity(tmp_path / "keys")
    assert (tmp_path / "keys" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert ensure_identity(tmp_path / "keys").device_id == first.device_id
    (tmp_path / "keys" / "key.pem").unlink()
    with pytest.raises(TLSSetupError, match=r"key\.pem"):
        ensure_identity(tmp_path / "keys")


def test_self_signed_client_is_identified_and_alpn_negotiated(tmp_path: Path) -> None:
    relay = ensure_identity(tmp_path / "keys")
    server = server_context(relay)
    device = make_device_identity(tmp_path, "dev")
    client = client_context(device.cert_path, device.key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server.wrap_socket(conn, server_side=True) as tls:
            der = tls.getpeercert(binary_form=True)
            seen["id"] = hashlib.sha256(der).digest() if der else None
            seen["alpn"] = tls.selected_alpn_protocol()

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client.wrap_socket(socket.create_connection(listener.getsockname()[:2], timeout=10)) as c:
            relay_cert = c.getpeercert(binary_form=True)
            assert relay_cert is not None and hashlib.sha256(relay_cert).digest() == relay.device_id
    finally:
        t.join(10)
        listener.close()
    assert seen == {"id": device.device_id, "alpn": "bep-relay"}
