"""The servers ``flood.py`` and ``hostile.py`` attack, each started at its default limits.

A :class:`Target` is one running server plus what the harnesses need to measure legitimate use
while it is attacked: its pid, port, a pairing opener, the /metrics port for its refusal counters,
what the bytes of a slow (never finished) first message look like, and which settings differ from
the defaults and why. Kept apart from the flood loop so both harnesses share one definition.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def source_address(index: int) -> str:
    """An attacker's address: 127.0.0.2, ... 127.0.0.251, 127.0.1.2, ...

    127.0.0.1 is left to the legitimate peers, whose per-address limits the flood must not use up."""
    return f"127.0.{index // 250}.{index % 250 + 2}"


SLOW_BYTES = b"\x00\x00\x01\x00" + b"x" * 256
"""aspia_relay: a PeerToRelay length of 256, then a body it never finishes."""

@dataclass
class Target:
    """One flooded server and the legitimate traffic measured while it is flooded."""

    server: str
    pid: int
    port: int
    slow_bytes: bytes
    opener: Any
    metrics_port: int
    changed: list[str]
    login: Callable[[str], None] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    """What hostile.py needs beyond the flood: router port and key, files, the relay's key."""


ASPIA_CHANGED = [
    "router ClientRequestsPerMinute=0 and HostRequestsPerMinute=0 (defaults 60 and 120): the bench makes "
    "2 x N pairings from one account to one host within seconds, which no user does; these limits meter "
    "one account's requests and play no part against a connection flood",
    "relay MaxPeerCount=12000 and router MaxKeysPerRelay=12000 (the aspia bench subject's key pool; "
    "capacity, not an abuse limit), relay PeerIdleTimeout=60 (idle paired sessions; none stay idle here)",
    "HttpListen=127.0.0.1:PORT on router and relay, only to read their refusal counters from /metrics",
]


@contextlib.contextmanager
def aspia_target(workdir: Path, flood_router: bool, lift_request_rates: bool = True) -> Iterator[Target]:
    """The real aspia_router + aspia_relay; the flood hits the relay's peer port or the router's port.

    The bench subject lifts the relay's per-address connection cap and the router's per-address
    rate and pending caps (its soak pairs thousands of sessions from 127.0.0.1); here they are back
    at their defaults, because the flood comes from 250 addresses of its own and the legitimate
    peers from 127.0.0.1 (logins from an address each), as on the internet. ``lift_request_rates``
    False keeps the per-account and per-host request rates at their defaults too (hostile.py's
    request flood is aimed at them; its legitimate peers pair only a few times)."""
    from relaybench.aspia import CLIENT_SESSION, USER, AspiaSubject, _RouterSession
    from relaybench.subject import free_port

    relay_http, router_http = free_port(), free_port()
    subject = AspiaSubject(
        relay_settings={"MaxConnectionsPerIp": None, "MaxConnections": None,
                        "HttpListen": f"127.0.0.1:{relay_http}"},
        router_settings={"NewConnectionsPerMinutePerIp": None, "MaxPendingConnectionsPerIp": None,
                         "HostIdRequestsPerMinute": None, "HttpListen": f"127.0.0.1:{router_http}",
                         **({} if lift_request_rates else
                            {"ClientRequestsPerMinute": None, "HostRequestsPerMinute": None})})
    changed = ASPIA_CHANGED if lift_request_rates else ASPIA_CHANGED[1:]
    missing = subject.missing()
    if missing:
        raise RuntimeError(missing)
    try:
        subject.start(workdir)
        d = workdir / "aspia"
        router_port = int(json.loads((d / "etc" / "router.json").read_text())["Port"])
        key = bytes.fromhex((d / "etc" / "router.pub").read_text().strip())
        password = (d / "bench.password").read_text().strip().encode()

        def login(source: str) -> None:
            from natrelay.aspia.handshake_client import ClientConfig

            config = ClientConfig(session_type=CLIENT_SESSION, username=USER, password=password,
                                  server_public_key=key)
            _RouterSession(router_port, config, source=source).close()

        opener = subject.opener(0)
        extras = {"workdir": d, "router_port": router_port, "router_key": key, "password": password}
        try:
            if flood_router:
                [pid] = subject.endpoint_pids()
                yield Target("aspia_router", pid, router_port, router_slow_bytes(), opener, router_http,
                             changed, login, extras)
            else:
                [pid] = subject.relay_pids()
                port = int(json.loads((d / "relay.json").read_text())["PeerPort"])
                yield Target("aspia_relay", pid, port, SLOW_BYTES, opener, relay_http, changed,
                             extras=extras)
        finally:
            opener.close()
    finally:
        subject.stop()


@contextlib.contextmanager
def strelay_target(workdir: Path) -> Iterator[Target]:
    """The real strelay at its default limits, with a natrelay Offset listener and connector pair.

    The bench subject lifts --max-per-ip and --max-connections (its idle-session measure holds
    thousands of tunnels from 127.0.0.1); here every limit is strelay's default."""
    from relaybench.offset import OffsetSubject
    from relaybench.subject import free_port

    http = free_port()

    class DefaultLimits(OffsetSubject):
        def _limit_flags(self) -> list[str]:
            return ["--http", f"127.0.0.1:{http}"]

    subject = DefaultLimits()
    missing = subject.missing()
    if missing:
        raise RuntimeError(missing)
    try:
        subject.start(workdir)
        [pid] = subject.relay_pids()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        port = int(argv[argv.index(b"--laddr") + 1].rsplit(b":", 1)[1])
        yield Target("strelay", pid, port, offset_slow_bytes(), subject.opener(0), http,
                     ["--http 127.0.0.1:PORT, only to read strelay's refusal counters from /metrics"],
                     extras={"workdir": workdir / "offset"})
    finally:
        subject.stop()


def offset_slow_bytes() -> bytes:
    """strelay: the version frame, then a handshake frame of 256 bytes it never finishes."""
    from natrelay.offset.framing import VERSION_FRAME, frame_header

    return VERSION_FRAME + frame_header(256) + b"x" * 256


def router_slow_bytes() -> bytes:
    """aspia_router: a 256-byte first frame (where the ClientHello goes) it never finishes."""
    from natrelay.aspia.framing import encode_user_frame

    return encode_user_frame(b"x" * 256)


TARGETS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Target]]] = {
    "aspia_relay": lambda d: aspia_target(d, flood_router=False),
    "aspia_router": lambda d: aspia_target(d, flood_router=True),
    "strelay": strelay_target,
}
