"""TLS for the protocol mode: the relay's certificate in ``-keys``, ALPN ``bep-relay``, client identity.

Syncthing devices present self-signed certificates; the relay does not verify them, it names the device
by the SHA-256 of the certificate (the device ID). Go does that with ``tls.RequestClientCert``. Python's
ssl module can only request a client certificate together with verifying it, and a self-signed one
never verifies, so :func:`server_context` asks OpenSSL (the very library the ssl module runs on, found
through the ``_ssl`` extension) for a verify callback that accepts whatever chain the client sends.
Nothing else changes: the handshake, ciphers and the proof that the client holds the certificate's key
are OpenSSL's own. If that hook cannot be installed the relay refuses to start (a relay that cannot
tell devices apart would be useless), rather than silently running without client certificates.

Every pairing costs the relay one handshake (the requesting device's ConnectRequest comes on a fresh
TLS connection), and the handshake is most of a pairing's CPU, so two settings trim it:

* the chain is not verified at all (``SSL_CTX_set_cert_verify_callback`` answers "good" in place of
  ``X509_verify_cert``): it was built, checked and then overruled by the callback above on every
  handshake, only to accept whatever the client sent; strelaysrv (Go's ``RequestClientCert``) skips it too;
* TLS 1.3 prefers ``TLS_AES_128_GCM_SHA256`` (as Go does on CPUs with AES instructions): the key
  schedule and transcript run on SHA-256, which has CPU instructions where SHA-384 has none.
  AES-256 and ChaCha20 stay allowed.

Together: the relay's side of a handshake -7 % (435 -> 403 us in a loop, 825 -> 780 us with cold
caches, as between a relay's pairings), the device's side -4 to -6 %.

Why the stdlib ssl module and not pyOpenSSL, though pyOpenSSL's wheels bring a newer OpenSSL (4.0,
where parsing the client's certificate costs ~19 us against ~97 us in Debian's 3.0): measured per
pairing, the relay's CPU came out only 1-4 % lower, inside the noise of repeated runs of the same tree,
and pyOpenSSL cannot turn TLS 1.3 session tickets off, so the relay would send two tickets per
handshake that Syncthing devices never use. Not worth a second TLS stack.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from natrelay.syncthing.deviceid import device_id_of

ALPN = "bep-relay"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
_SSL_VERIFY_PEER = 0x01
_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
#: ``int (*)(X509_STORE_CTX *, void *arg)``: what OpenSSL calls instead of ``X509_verify_cert``.
_CHAIN_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
#: The server's TLS 1.3 order; OpenSSL's default puts AES-256 first.
TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def _accept_any(_preverify_ok: int, _store: int | None) -> int:
    return 1


def _accept_chain(_store: int | None, _arg: int | None) -> int:
    return 1


#: Kept alive for the process: OpenSSL holds raw pointers to them.
_ACCEPT_ANY = _VERIFY_CB(_accept_any)
_ACCEPT_CHAIN = _CHAIN_CB(_accept_chain)


class TLSSetupError(RuntimeError):
    """The relay's certificate cannot be loaded or made, or client certificates cannot be requested."""


@dataclass(frozen=True)
class RelayIdentity:
    cert_path: Path
    key_path: Path
    device_id: bytes


def ensure_identity(keys_dir: Path) -> RelayIdentity:
    """Load ``cert.pem``/``key.pem`` from ``keys_dir``, generating them if absent (as strelaysrv does)."""
    cert_path, key_path = keys_dir / CERT_FILE, keys_dir / KEY_FILE
    if not cert_path.exists() and not key_path.exists():
        try:
            keys_dir.mkdir(parents=True, exist_ok=True)
            _generate(cert_path, key_path)
        except OSError as exc:
            raise TLSSetupError(f"cannot create the relay's key pair in {keys_dir}: {exc}") from exc
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TLSSetupError(f"cannot read the relay certificate {cert_path}: {exc}") from exc
    if not key_path.exists():
        raise TLSSetupError(f"{key_path} is missing (it belongs with {cert_path})")
    return RelayIdentity(cert_path, key_path, device_id_of(cert.public_bytes(serialization.Encoding.DER)))


def _generate(cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())  # fastest handshakes; any Syncthing accepts it
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strelaysrv")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=20 * 365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _request_any_client_cert(ctx: ssl.SSLContext) -> None:
    """Make ``ctx`` request a client certificate and accept it unverified (Go's RequestClientCert),
    and prefer the cheaper TLS 1.3 cipher suite."""
    try:
        import _ssl  # the extension module that links the OpenSSL the ssl module uses

        lib = ctypes.CDLL(_ssl.__file__)
        set_verify = lib.SSL_CTX_set_verify
        set_chain_verify = lib.SSL_CTX_set_cert_verify_callback
        set_suites = lib.SSL_CTX_set_ciphersuites
    except (OSError, AttributeError, ImportError) as exc:
        raise TLSSetupError(f"cannot reach OpenSSL to request client certificates: {exc}") from exc
    set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CB]
    set_verify.restype = None
    set_chain_verify.argtypes = [ctypes.c_void_p, _CHAIN_CB, ctypes.c_void_p]
    set_chain_verify.restype = None
    set_suites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    set_suites.restype = ctypes.c_int
    if sys.implementation.name != "cpython":
        raise TLSSetupError("requesting unverified client certificates needs CPython")
    # CPython's SSLContext object is PyObject_HEAD followed by the SSL_CTX pointer.
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ssl_ctx:
        raise TLSSetupError("cannot find OpenSSL's context behind the SSLContext")
    # Make sure the pointer really is this context before writing through it: OpenSSL must report
    # the very options and verify mode the ssl module reports.
    try:
        get_options, get_mode = lib.SSL_CTX_get_options, lib.SSL_CTX_get_verify_mode
    except AttributeError as exc:
        raise TLSSetupError(f"cannot reach OpenSSL to request client certificates: {exc}") from exc
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    get_mode.argtypes = [ctypes.c_void_p]
    get_mode.restype = ctypes.c_int
    if get_options(ssl_ctx) != int(ctx.options) or get_mode(ssl_ctx) != _SSL_VERIFY_PEER:
        raise TLSSetupError("OpenSSL's context does not match the SSLContext; refusing to patch it")
    set_verify(ssl_ctx, _SSL_VERIFY_PEER, _ACCEPT_ANY)
    set_chain_verify(ssl_ctx, _ACCEPT_CHAIN, None)
    if set_suites(ssl_ctx, TLS13_CIPHERSUITES) != 1:  # pragma: no cover - suites every OpenSSL 1.1.1+ has
        raise TLSSetupError("OpenSSL refused the TLS 1.3 cipher suites")


def server_context(identity: RelayIdentity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Devices never resume relay sessions (strelaysrv disables tickets too); TLS 1.3 would otherwise
    # still mint tickets on every handshake.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    try:
        ctx.load_cert_chain(identity.cert_path, identity.key_path)
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"cannot load {identity.cert_path} with {identity.key_path}: {exc}") from exc
    ctx.set_alpn_protocols([ALPN])
    ctx.verify_mode = ssl.CERT_OPTIONAL  # sets SSL_VERIFY_PEER; the callback below replaces verification
    _request_any_client_cert(ctx)
    return ctx


def client_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A device's side (tests and the benchmark): its certificate, no check of the relay's."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ALPN])
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


def make_device_identity(directory: Path, stem: str) -> RelayIdentity:
    """A fresh self-signed device certificate (for tests and clients)."""
    cert_path, key_path = directory / f"{stem}-cert.pem", directory / f"{stem}-key.pem"
    _generate(cert_path, key_path)
    return ensure_identity_files(cert_path, key_path)


def ensure_identity_files(cert_path: Path, key_path: Path) -> RelayIdentity:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return RelayIdentity(cert_path, key_path, device_id_of(cert.public_bytes(serialization.Encoding.DER)))
