"""Kernel TCP keep-alive for a peer's long-lived control connections (protocol-neutral).

Why: when a NAT drops its mapping (a router reboot, a flushed or full conntrack table) a
connection turns into a black hole in both directions, and an idle peer notices only through its
protocol's own keep-alive timeout (Offset 32 s, Aspia interval + pong timeout). Kernel probes
notice sooner: the first probe after ``idle`` seconds of silence is dropped by the NAT (it
belongs to no tracked connection), so are the ones every ``interval`` seconds after it, and after
``count`` of them the socket fails with ETIMEDOUT; the peer then reconnects at once. The probes
are empty ACKs the other side's kernel answers, so no protocol sees them and its wire format does
not change; an idle connection costs one small packet each way per ``idle`` seconds, which also
keeps the NAT's mapping fresh.

Data changes the clock: while a segment is unacknowledged Linux sends no probes, it retransmits.
``TCP_USER_TIMEOUT`` (set to the same total, ``idle + interval * count``) bounds that too, so a
connection found dead takes that long after the last answer, or after the first unanswered
segment when the protocol's own keep-alive happened to write into the black hole first: up to
twice the total. Measured in the NAT test bed with 5,2,3 (11 s): 15-18 s after a flush, since
Offset heartbeats (16 s) and Aspia pings (20 s) often fall into that window; hence the default
3,1,3 (6 s): 5-12 s, at one probe per 3 idle seconds, still three probes lost in a row before
giving up.

``TCP_USER_TIMEOUT`` also aborts a connection whose receiver keeps a zero window for that long
(Linux counts zero-window probes against it), i.e. a healthy connection under backpressure; so
:func:`apply_tcp_keepalive` sets it only when asked, for control connections that carry small
messages (a listener's or host's registration), never for connections carrying a relayed stream.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Protocol

#: Probe limits: the kernel accepts 1..32767 s for idle and interval, 1..127 probes.
MAX_SECONDS = 32767
MAX_COUNT = 127


class SocketLike(Protocol):
    """What the helper needs: ``socket.socket`` and asyncio's/uvloop's transport sockets have it."""

    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...

    def getsockopt(self, level: int, option: int, /) -> int: ...


@dataclass(frozen=True, slots=True)
class TcpKeepAlive:
    """Probe after ``idle`` silent seconds, then every ``interval`` seconds; give up after ``count``."""

    idle: int = 3
    interval: int = 1
    count: int = 3

    def __post_init__(self) -> None:
        for name, value, top in (("idle", self.idle, MAX_SECONDS), ("interval", self.interval, MAX_SECONDS),
                                 ("count", self.count, MAX_COUNT)):
            if not 1 <= value <= top:
                raise ValueError(f"TCP keep-alive {name} must be 1..{top}, got {value}")

    @property
    def detection_seconds(self) -> int:
        """How long a black-holed idle connection lives: the first probe plus the unanswered ones."""
        return self.idle + self.interval * self.count

    def describe(self) -> str:
        return f"{self.idle},{self.interval},{self.count}"


DEFAULT_TCP_KEEPALIVE = TcpKeepAlive()
"""Finds a dead connection 6 s after the last answer (12 s if it was sending), the "within
seconds" of issue 8, at one probe per 3 idle seconds (far below any NAT's idle timeout, which it
therefore also keeps fresh)."""

OPTION_HELP = (f"kernel TCP keep-alive on the control connection: probe after IDLE silent seconds, then "
               f"every INTERVAL seconds, give up after COUNT unanswered probes (or unacknowledged data "
               f"for as long), and reconnect; 0 turns it off. A connection a NAT dropped is found "
               f"IDLE+INTERVAL*COUNT seconds after the last answer, at most twice that (default "
               f"{DEFAULT_TCP_KEEPALIVE.describe()}: {DEFAULT_TCP_KEEPALIVE.detection_seconds} s)")
"""The ``--help`` text of ``--tcp-keepalive``, the same for every peer that offers it."""


def parse_tcp_keepalive(text: str, option: str = "--tcp-keepalive") -> TcpKeepAlive | None:
    """``IDLE,INTERVAL,COUNT`` (whole numbers) or ``0``/``off`` (None).

    The ValueError names ``option`` (argparse, which names it itself, passes "").
    """
    value = text.strip().lower()
    if value in ("0", "off"):
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"{option + ' ' if option else ''}must be IDLE,INTERVAL,COUNT (three whole numbers, "
                         f"e.g. {DEFAULT_TCP_KEEPALIVE.describe()}) or 0 for off, got {text!r}")
    idle, interval, count = (int(p) for p in parts)
    try:
        return TcpKeepAlive(idle, interval, count)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}" if option else str(exc)) from None


def apply_tcp_keepalive(sock: SocketLike | None, options: TcpKeepAlive | None, *,
                        user_timeout: bool = False) -> bool:
    """Turn kernel keep-alive on for ``sock`` (and ``TCP_USER_TIMEOUT`` if asked; see module doc).

    Returns whether keep-alive is on. ``options`` None (off) and a missing socket do nothing.
    Options this platform lacks are skipped (``TCP_KEEPIDLE`` and ``TCP_USER_TIMEOUT`` are
    Linux's); an error from ``setsockopt`` (a socket already closed) leaves the connection as it was
    and returns False, since the connection works without probes, only notices a loss later.
    """
    if sock is None or options is None:
        return False
    tcp = socket.IPPROTO_TCP
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", options.idle), ("TCP_KEEPINTVL", options.interval),
                            ("TCP_KEEPCNT", options.count)):
            if hasattr(socket, name):
                sock.setsockopt(tcp, getattr(socket, name), value)
        if user_timeout and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(tcp, socket.TCP_USER_TIMEOUT, options.detection_seconds * 1000)
    except OSError:
        return False
    return True


def is_keepalive_timeout(exc: BaseException | None) -> bool:
    """Whether a connection was lost because the kernel gave up on it (ETIMEDOUT).

    On a connection with kernel keep-alive that means the probes (or data) went unanswered: the
    path is gone, most likely a NAT that dropped its mapping.
    """
    return isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT
