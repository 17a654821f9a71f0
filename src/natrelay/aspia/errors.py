"""The one exception type every Aspia protocol core raises for bad input.

Callers (the asyncio shells) close the connection on any protocol failure and never tell the
peer why (spec §2.5, §4.9), so one exception type is enough to catch; the ``code`` only says
what to log and what a client should report to its user.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Local failure reasons, mirroring the C++ channel and authenticator codes (§2.5, §4.9).

    They are never sent on the wire.
    """

    PROTOCOL_ERROR = "protocol_error"
    VERSION_ERROR = "version_error"
    ACCESS_DENIED = "access_denied"
    SESSION_DENIED = "session_denied"
    UNKNOWN_ERROR = "unknown_error"
    TIMEOUT = "timeout"


class AspiaProtocolError(Exception):
    """Malformed, unexpected or unauthenticated input from an Aspia peer.

    Parsers and state machines raise only this (never ``ValueError``, ``IndexError`` or a
    protobuf ``DecodeError``), so a shell can treat "the peer misbehaved" with a single handler.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args[0]!r}, code={self.code.name})"


class DecryptionError(AspiaProtocolError):
    """An AEAD frame failed authentication (or was too short to hold a tag).

    Distinct subclass because a failed decrypt is how a wrong password surfaces on the client
    (§4.8) and how the C++ side classifies it (ACCESS_DENIED), unlike framing errors.
    """

    def __init__(self, message: str = "frame failed authentication") -> None:
        super().__init__(message, ErrorCode.ACCESS_DENIED)
