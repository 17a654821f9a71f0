"""``--http-cert/--http-key`` and the rule that HTTP off loopback needs logins, on a real strelay."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from natrelay.aspia import srp
from natrelay.aspia.router.db import RouterDatabase, StoredUser
from tests.e2e import offset_env

pytestmark = pytest.mark.timeout(120)


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "http.crt", directory / "http.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def user_db(path: Path, name: str, password: str) -> Path:
    group, salt, verifier = srp.new_account(name, password.encode(), secrets.token_bytes(64))
    RouterDatabase.create(path, [StoredUser(name, group, salt, verifier, 1)])  # 1 = ADMIN
    return path


def test_tls_with_basic_auth_from_a_router_database(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    users = user_db(tmp_path / "router.db3", "ops", "s3cret")
    port = offset_env.free_port()
    relay = offset_env.start_relay(tmp_path / "relay", "--http", f"127.0.0.1:{port}", "--http-auth",
                                   "--http-cert", str(cert), "--http-key", str(key),
                                   "--http-users", str(users))
    offset_env.wait_for(lambda: "HTTP on" in relay.log(), 20, "HTTP to listen")
    context = ssl.create_default_context(cafile=str(cert))
    base = f"https://127.0.0.1:{port}/"
    try:
        with urllib.request.urlopen(base + "healthz", context=context, timeout=20) as answer:
            assert answer.read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "status", context=context, timeout=20)
        assert info.value.code == 401
        auth = "Basic " + base64.b64encode(b"ops:s3cret").decode()
        request = urllib.request.Request(base + "status", headers={"Authorization": auth})
        with urllib.request.urlopen(request, context=context, timeout=20) as answer:
            assert b"numActiveSessions" in answer.read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP on the TLS port: nothing
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=20)
    finally:
        assert relay.stop() == 0, relay.log()


def test_http_beyond_loopback_without_accounts_refuses_to_start(tmp_path: Path) -> None:
    ident, _ = offset_env.make_identity(tmp_path, "relay")
    free = offset_env.free_port
    done = subprocess.run([*offset_env.tool("strelay"), "--idfile", str(ident), "--laddr",
                           f"127.0.0.1:{free()}", "--http", f"0.0.0.0:{free()}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "logins are required" in done.stderr and "--http-users" in done.stderr
    assert "Traceback" not in done.stderr
