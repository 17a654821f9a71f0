"""Errors of the Offset protocol cores.

One exception family, so a shell can close a connection on ``except ProtocolError`` without
knowing which layer objected; the layers never send an explanation on the wire (spec §5.2).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A violation of the Offset wire protocol: the connection must be closed. str(e) is a short reason."""


class LinkTimeout(ProtocolError):
    """Handshake not finished in time, or peer silent past the keepalive timeout."""
