"""systemd's readiness protocol without a dependency: one datagram to ``$NOTIFY_SOCKET``.

With ``Type=notify`` a ``systemctl start`` returns only once the service said ``READY=1``, which
natrelay's servers say after their listeners are bound, so scripts and dependent units never see
a "started" relay that refuses connections. Outside systemd (no ``$NOTIFY_SOCKET``) it does
nothing. Abstract socket names (``@...``) are supported as systemd uses them.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("natrelay.systemd")

NOTIFY_ENV = "NOTIFY_SOCKET"


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); True if a service manager was told."""
    address = (os.environ if env is None else env).get(NOTIFY_ENV, "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("%s=%r is neither a path nor an abstract socket; not notifying", NOTIFY_ENV, address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", address.lstrip("\0"), exc)
        return False
    return True


def ready(status: str = "") -> bool:
    """``READY=1``, with an optional one-line ``STATUS=`` for ``systemctl status``."""
    return notify("READY=1" + (f"\nSTATUS={status.splitlines()[0]}" if status else ""))


def stopping() -> bool:
    return notify("STOPPING=1")
