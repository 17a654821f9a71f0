"""Syncthing's ``strelaysrv`` (relay protocol v1) and a minimal client for it.

The relay listens on one port for both modes: TLS (ALPN ``bep-relay``, client certificate = device
identity) for the protocol mode, plain TCP for the session mode. A pairing is the dance a real Syncthing
pair does: A holds a permanent joined connection; B opens a temporary TLS connection with a
ConnectRequest for A's device ID; both receive a SessionInvitation (each with its own key); both open plain
session connections with a JoinSessionRequest and, after a success response, are spliced.
"""

from __future__ import annotations

import datetime
import hashlib
import shutil
import socket
import ssl
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import xdr
from .subject import (
    LOOPBACK,
    ManagedProcess,
    Opener,
    Subject,
    SubjectError,
    connect,
    free_port,
    recv_exact,
    wait_port,
)

PING_EVERY = 20.0  # well inside the relay's ping interval, so the permanent connection is never dropped
ATTEMPTS = 5
ALREADY_CONNECTED = 2


class JoinRefused(SubjectError):
    def __init__(self, what: str, code: int, message: str) -> None:
        super().__init__(f"{what}: relay answered {code} {message!r}")
        self.code = code


def make_identity(directory: Path, stem: str) -> tuple[Path, Path, bytes]:
    """A self-signed ECDSA certificate; the device ID is the SHA-256 of its DER form, as in Syncthing."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syncthing")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    device_id = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return cert_path, key_path, device_id


def tls_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The relay's certificate is self-signed and identity is not what is being measured.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["bep-relay"])
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


def read_message(sock: socket.socket) -> tuple[int, bytes]:
    msg_type, length = xdr.parse_header(recv_exact(sock, xdr.HEADER.size))
    return msg_type, recv_exact(sock, length) if length else b""


def expect_success(sock: socket.socket, what: str) -> None:
    msg_type, body = read_message(sock)
    if msg_type != xdr.TYPE_RESPONSE:
        raise SubjectError(f"{what}: relay sent message type {msg_type}")
    resp = xdr.parse_response(body)
    if resp.code != 0:
        raise JoinRefused(what, resp.code, resp.message)


class StrelaysrvOpener(Opener):
    """One A identity joined permanently, one B identity for connect requests.

    The relay drops every session of a device whose permanent connection closes, so the opener must stay
    open for as long as its sessions are meant to live.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._dir = tempfile.TemporaryDirectory(prefix="strelay-id-")
        d = Path(self._dir.name)
        a_cert, a_key, self._a_id = make_identity(d, "a")
        b_cert, b_key, _ = make_identity(d, "b")
        self._a_ctx = tls_context(a_cert, a_key)
        self._b_ctx = tls_context(b_cert, b_key)
        self._permanent = self._tls(self._a_ctx)
        self._permanent.sendall(xdr.join_relay_request())
        expect_success(self._permanent, "JoinRelayRequest")
        self._last_sent = time.monotonic()

    def _tls(self, ctx: ssl.SSLContext) -> ssl.SSLSocket:
        raw = connect(self._port)
        try:
            return ctx.wrap_socket(raw, server_hostname=LOOPBACK)
        except BaseException:
            raw.close()
            raise

    def _invitation(self, sock: socket.socket) -> xdr.SessionInvitation:
        while True:
            msg_type, body = read_message(sock)
            if msg_type == xdr.TYPE_SESSION_INVITATION:
                return xdr.parse_session_invitation(body)
            if msg_type == xdr.TYPE_PING:
                sock.sendall(xdr.pong())
            elif msg_type == xdr.TYPE_RESPONSE:
                resp = xdr.parse_response(body)
                raise SubjectError(f"relay answered {resp.code} {resp.message!r} instead of an invitation")
            elif msg_type != xdr.TYPE_PONG:
                raise SubjectError(f"unexpected message type {msg_type} while waiting for an invitation")

    def open_pair(self) -> tuple[socket.socket, socket.socket]:
        """Pair as a Syncthing client would, starting over when the relay's session hand-off races.

        The relay passes a joining connection to its session without waiting; if the session's goroutine
        has not come back for the second connection yet, the join is refused as "already connected"
        and the session is lost. Real clients redial; so do we, and the retries are counted.
        """
        for attempt in range(ATTEMPTS):
            try:
                return self._open_pair_once()
            except JoinRefused as exc:
                if exc.code != ALREADY_CONNECTED or attempt == ATTEMPTS - 1:
                    raise
                self.retries += 1
        raise AssertionError("unreachable")

    def _open_pair_once(self) -> tuple[socket.socket, socket.socket]:
        if time.monotonic() - self._last_sent > PING_EVERY:
            self._permanent.sendall(xdr.ping())
            self._last_sent = time.monotonic()
        temp = self._tls(self._b_ctx)
        try:
            temp.sendall(xdr.connect_request(self._a_id))
            inv_b = self._invitation(temp)
        finally:
            temp.close()
        inv_a = self._invitation(self._permanent)
        # The relay gives each side its own key for the same session; B's invitation names A.
        if inv_b.from_id != self._a_id:
            raise SubjectError("the invitation names a different device")
        # Whatever address the relay advertises, traffic goes to loopback only.
        a = connect(inv_a.port or self._port)
        b = connect(inv_b.port or self._port)
        try:
            # One after the other: the relay hands each joining connection to the session without
            # waiting, so two joins landing in the same instant can make the second one fail with
            # "already connected" (real peers are never that close together).
            a.sendall(xdr.join_session_request(inv_a.key))
            expect_success(a, "JoinSessionRequest")
            b.sendall(xdr.join_session_request(inv_b.key))
            expect_success(b, "JoinSessionRequest")
        except BaseException:
            a.close()
            b.close()
            raise
        return a, b

    def close(self) -> None:
        self._permanent.close()
        self._dir.cleanup()


class StrelaysrvSubject(Subject):
    name = "strelaysrv"
    title = "Syncthing strelaysrv"

    def __init__(self) -> None:
        self._proc: ManagedProcess | None = None
        self._port = 0

    def missing(self) -> str | None:
        if shutil.which("strelaysrv") is None:
            return "strelaysrv not installed (apt-get install syncthing-relaysrv)"
        return None

    def start(self, workdir: Path) -> None:
        exe = shutil.which("strelaysrv")
        assert exe is not None
        self._port = free_port()
        d = workdir / "strelaysrv"
        d.mkdir(parents=True, exist_ok=True)
        argv = [
            exe,
            f"-keys={d}",
            f"-listen={LOOPBACK}:{self._port}",
            "-protocol=tcp4",
            "-pools=",  # never join a public pool
            "-status-srv=",  # no status listener
            "-nat=false",
            "-ping-interval=1m",
            "-network-timeout=30m",  # idle-session measurements hold sessions silent for minutes
            "-message-timeout=1m",
        ]
        self._proc = ManagedProcess("strelaysrv", argv, d / "stdout.log", cwd=d)
        wait_port(self._port, 30, self._proc)

    def opener(self, index: int) -> Opener:
        return StrelaysrvOpener(self._port)

    def relay_pids(self) -> list[int]:
        return [self._proc.pid] if self._proc else []

    def stop(self) -> None:
        if self._proc:
            self._proc.stop()
            self._proc = None
