"""Parsing of the ``HOST:PORT`` strings users type on command lines.

Two consumers with different rules share this module so that they report problems
with the same wording:

* ticket addresses (``stmgr relay-ticket --address``) are what *peers* will dial, so a
  host name is fine, the port must be a real one (1-65535), and the whole string must
  fit the family's address limit (Offset: 256 UTF-8 bytes, spec §10.3, §11.3), given by the caller;
* listen addresses (``strelay --laddr``) are bound locally; like the original's Rust
  ``SocketAddr`` parser they must be IP literals, so ``localhost:1`` is refused rather
  than silently resolved to whichever family the resolver returns first.

The original validates only the length of a ticket address; we also require a host and
a valid port, because a ticket that nobody can dial is only discovered much later, on
another machine.
"""

from __future__ import annotations

import ipaddress

__all__ = [
    "AddressError",
    "parse_host_port",
    "parse_listen_address",
    "validate_ticket_address",
]

#: Offset's limit on a ticket address, in UTF-8 bytes (``proto/src/consts.rs``).

# Port strings longer than this cannot be a valid port even with leading zeros that
# Rust's ``u16`` parser would accept; checking the length first keeps ``int()`` cheap.
_MAX_PORT_DIGITS = 10

# Characters that can never be part of a host name or IP literal and almost always
# mean the user pasted a URL or a path instead of an address.
_FORBIDDEN_HOST_CHARS = frozenset("/\\@?#[]<>\"'`{}|^%,;=")


class AddressError(ValueError):
    """A textual address that cannot be used; the message says what is wrong with it."""


def _parse_port(port_text: str, *, what: str, text: str, allow_zero: bool) -> int:
    """Parse a decimal port, with messages that quote the offending input."""
    if not port_text:
        raise AddressError(f"{what} {text!r} has no port after ':'")
    # str.isdigit() also accepts non-ASCII digits such as '٣'; only 0-9 are allowed.
    if not (port_text.isascii() and port_text.isdigit()):
        raise AddressError(f"{what} {text!r}: port {port_text!r} is not a number")
    lowest = 0 if allow_zero else 1
    if len(port_text) > _MAX_PORT_DIGITS:
        raise AddressError(f"{what} {text!r}: port {port_text!r} is outside {lowest}-65535")
    port = int(port_text)
    if not lowest <= port <= 65535:
        raise AddressError(f"{what} {text!r}: port {port} is outside {lowest}-65535")
    return port


def _check_host_name(host: str, *, what: str, text: str) -> None:
    """Reject hosts that cannot be a DNS name or IPv4 literal (whitespace, URL syntax)."""
    for char in host:
        if char.isspace() or not char.isprintable():
            raise AddressError(f"{what} {text!r}: host contains whitespace or a control character")
        if char in _FORBIDDEN_HOST_CHARS:
            raise AddressError(f"{what} {text!r}: host contains the character {char!r}")
    if host.startswith(".") or ".." in host:
        raise AddressError(f"{what} {text!r}: host {host!r} has an empty name label")


def _split(text: str, *, what: str) -> tuple[str, str, bool]:
    """Split into (host, port text, bracketed?) without judging either part yet."""
    if not text:
        raise AddressError(f"{what} is empty")
    if "://" in text:
        raise AddressError(f"{what} {text!r} looks like a URL; give HOST:PORT without a scheme")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise AddressError(f"{what} {text!r}: '[' without a closing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if not rest:
            raise AddressError(f"{what} {text!r} has no port (expected [IPv6]:PORT)")
        if not rest.startswith(":"):
            raise AddressError(f"{what} {text!r}: expected ':' and a port after ']'")
        if not host:
            raise AddressError(f"{what} {text!r} has an empty host between '[' and ']'")
        return host, rest[1:], True
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise AddressError(f"{what} {text!r} has no port (expected HOST:PORT)")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"{what} {text!r}: host {host!r} contains ':'") from None
        raise AddressError(f"{what} {text!r}: an IPv6 host must be written in brackets, as [HOST]:PORT")
    if not host:
        raise AddressError(f"{what} {text!r} has no host before ':'")
    return host, port_text, False


def _check_ipv6(host: str, *, what: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise AddressError(f"{what} {text!r}: {host!r} inside brackets is not an IPv6 address") from None


def parse_host_port(text: str, *, what: str = "address") -> tuple[str, int]:
    """Split ``host:port`` or ``[ipv6]:port`` into a host (brackets removed) and a port.

    Host names are allowed (ticket addresses are dialled by remote peers, which resolve
    them). ``what`` names the value in error messages, e.g. ``"--address"``.
    """
    host, port_text, bracketed = _split(text, what=what)
    if bracketed:
        _check_ipv6(host, what=what, text=text)
    else:
        _check_host_name(host, what=what, text=text)
    return host, _parse_port(port_text, what=what, text=text, allow_zero=False)


def parse_listen_address(text: str) -> tuple[str, int]:
    """Parse a listen address: ``IPv4:PORT``, ``[IPv6]:PORT`` or a bare ``PORT``.

    A bare port means "all interfaces" and returns host ``""``, which asyncio's
    ``create_server`` binds on every address family (``0.0.0.0`` and ``::``). Host names
    are refused, like the original's ``SocketAddr`` parser. Port 0 is accepted and asks
    the kernel for a free port, which tests rely on.
    """
    what = "listen address"
    stripped = text.strip()
    if stripped != text:
        raise AddressError(f"{what} {text!r} has leading or trailing whitespace")
    if text.isascii() and text.isdigit():
        return "", _parse_port(text, what=what, text=text, allow_zero=True)
    host, port_text, bracketed = _split(text, what=what)
    if bracketed:
        _check_ipv6(host, what=what, text=text)
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise AddressError(
                f"{what} {text!r}: {host!r} is not an IP address (host names are not accepted "
                "for listening; use e.g. 127.0.0.1:PORT, [::1]:PORT or a bare PORT)"
            ) from None
    return host, _parse_port(port_text, what=what, text=text, allow_zero=True)


def validate_ticket_address(text: str, *, max_bytes: int, what: str = "address") -> str:
    """Check a relay ticket address and return it unchanged.

    Rules: at most ``max_bytes`` of UTF-8 (the family's limit, the original's only rule), plus a
    host and a port in 1-65535 so that the ticket is dialable.
    """
    if not text:
        raise AddressError(f"{what} is empty")
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise AddressError(f"{what} is {size} bytes long; at most {max_bytes} bytes are allowed")
    parse_host_port(text, what=what)
    return text
