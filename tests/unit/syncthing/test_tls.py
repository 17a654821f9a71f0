"""The relay's identity and TLS: keys made once, ALPN bep-relay, any self-signed client certificate
accepted and identified by its SHA-256."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import socket
import ssl
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


def test_tls13_prefers_aes128_and_still_accepts_the_others(tmp_path: Path) -> None:
    """The relay picks the cheapest suite a device offers; a device offering only another still joins."""
    server = server_context(ensure_identity(tmp_path / "keys"))
    device = make_device_identity(tmp_path, "dev")
    for offered, expected in ((None, "TLS_AES_128_GCM_SHA256"),
                              (b"TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256")):
        client = client_context(device.cert_path, device.key_path)
        client.minimum_version = ssl.TLSVersion.TLSv1_3
        if offered is not None:
            import _ssl

            lib = ctypes.CDLL(_ssl.__file__)
            lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            ptr = ctypes.c_void_p.from_address(id(client) + object.__basicsize__).value
            assert lib.SSL_CTX_set_ciphersuites(ptr, offered) == 1
        s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        s = server.wrap_bio(s_in, s_out, server_side=True)
        c = client.wrap_bio(c_in, c_out)
        for _ in range(4):
            for side, out, other_in in ((c, c_out, s_in), (s, s_out, c_in)):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
                other_in.write(out.read())
        cipher = s.cipher()
        assert cipher is not None and cipher[0] == expected
        der = s.getpeercert(binary_form=True)
        assert der is not None and hashlib.sha256(der).digest() == device.device_id
