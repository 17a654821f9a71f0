#!/usr/bin/env python3
"""Hostile traffic against a real server alongside one legitimate 20 MB transfer (issue 8).

A few thousand connections per server, each one attack, from 250 source addresses 127.0.x.y (so
the per-address limits see many attackers, as on the internet), while one legitimate pair moves
20 MB through the relay and checks its SHA-256. ``--subject`` picks the server, each at its
default limits (the same targets as ``flood.py``, which also says which settings differ):

- ``strelay``: random bytes, a huge declared frame length, a wrong version, a truncated frame, an
  ExchangeDh with a bad signature, a replayed handshake (a real client's handshake bytes sent again
  to a relay that has chosen another nonce), a short ciphertext after a real handshake, and
  ``--listens`` Listen registrations under random keys, all at once (each held ``--hold`` seconds).
- ``aspia_relay``: random bytes, a huge PeerToRelay length, a truncated one, a malformed one, a
  PeerToRelay sealed for a key the relay never issued, and a replayed PeerToRelay (the bytes of a
  real peer's, whose key has been used).
- ``aspia_router``: random bytes, a huge varint frame length, a truncated frame, a ClientHello with
  no cipher the router knows, a short ciphertext after a real anonymous handshake, a replayed
  handshake, and one logged-in account (its own, ``mallory``) flooding ConnectionRequests to the
  legitimate host, at the router's default per-account and per-host request rates.

The legitimate pair is made before the attacks start (for the router: a full ConnectionRequest,
both offers, the relay; the router's attackers come afterwards) and its 20 MB go while they run,
paced at most 25 MiB/s; the attacks go on in further rounds until the transfer has ended.
Reported per server: connections made per attack and how the server answered (closed, reset,
still open when we gave up, connect failed), the server's refusal and close counters during the
attacks (from its /metrics), its RSS and descriptors before and after, the transfer's time and
integrity, and whether a fresh legitimate pairing works after the attacks.

    python3 bench/hostile.py --subject strelay
    python3 bench/hostile.py --subject aspia_router --count 300
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flood
from relaybench.attacks import offset_attacks, relay_attacks, router_attacks, run_attacks
from relaybench.flood_targets import TARGETS, Target, aspia_target

TRANSFER = 20 * 1024 * 1024


# ---------------------------------------------------------------------- the legitimate transfer
def transfer(a: Any, b: Any, size: int, pace: float = 0.01) -> dict[str, Any]:
    """``size`` random bytes from ``a`` to ``b``, SHA-256 checked; the time from first to last byte.

    A pause of ``pace`` seconds after each 256 KiB (at most 25 MiB/s) spreads the transfer over the
    attacks, which against a fast server are over in well under a second."""
    data = os.urandom(size)
    got = hashlib.sha256()
    received = [0]

    def reader() -> None:
        b.settimeout(120)
        while received[0] < size:
            chunk = b.recv(1 << 20)
            if not chunk:
                return
            got.update(chunk)
            received[0] += len(chunk)

    started = time.perf_counter()
    t = threading.Thread(target=reader)
    t.start()
    try:
        a.settimeout(120)
        view = memoryview(data)
        for off in range(0, size, 1 << 18):
            a.sendall(view[off:off + (1 << 18)])
            time.sleep(pace)
    except OSError as exc:
        t.join(130)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "received": received[0]}
    t.join(130)
    elapsed = time.perf_counter() - started
    intact = received[0] == size and got.digest() == hashlib.sha256(data).digest()
    return {"ok": intact, "bytes": received[0], "seconds": round(elapsed, 2),
            "sha256_match": intact, "mib_per_s": round(size / 2**20 / elapsed, 1)}


# ------------------------------------------------------------------- the router's request flood
def request_flood(target: Target, host_id: int, requests: int) -> dict[str, Any]:
    """One logged-in account (``mallory``, added for this) sends ``requests`` ConnectionRequests to
    the legitimate host as fast as the router answers; offers are counted by error code."""
    from relaybench.aspia import CLIENT_SESSION, _cli, _env, _RouterSession

    from natrelay.aspia.handshake_client import ClientConfig
    from natrelay.aspia.messages import make_envelope, serialize
    from natrelay.aspia.proto import router_peer_pb2

    d: Path = target.extras["workdir"]
    pw = d / "mallory.password"
    pw.write_text("mallory-password\n")
    pw.chmod(0o600)
    done = subprocess.run([*_cli("aspia_router"), "--config", str(d / "etc" / "router.json"), "--data-dir",
                           str(d / "lib"), "--add-user", "mallory", "--password-file", str(pw)],
                          capture_output=True, text=True, env=_env(), timeout=120)
    if done.returncode != 0:
        return {"error": f"--add-user mallory failed: {done.stderr.strip()[-200:]}"}
    config = ClientConfig(session_type=CLIENT_SESSION, username="mallory", password=b"mallory-password",
                          server_public_key=target.extras["router_key"])
    session = _RouterSession(target.extras["router_port"], config, source="127.0.9.9")
    payload = serialize(make_envelope(router_peer_pb2.PeerToRouter, "connection_request",
                                      router_peer_pb2.ConnectionRequest(host_id=host_id)))
    codes: Counter[str] = Counter()
    started = time.perf_counter()
    try:
        for _ in range(requests):
            session.send_payload(payload)
            offer = session.receive().connection_offer
            codes[router_peer_pb2.ConnectionOffer.ErrorCode.Name(offer.error_code)] += 1
    except (OSError, ConnectionError) as exc:
        codes[f"session ended: {type(exc).__name__}"] += 1
    finally:
        session.close()
    return {"requests_sent": sum(codes.values()), "answers": dict(codes),
            "seconds": round(time.perf_counter() - started, 2)}


# ------------------------------------------------------------------------------------------ main
def measure(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"server": target.server, "settings_changed": target.changed}
    opener = target.opener
    if target.server == "strelay":
        from natrelay.offset.files import read_ticket

        relay_key = read_ticket(target.extras["workdir"] / "relay.ticket").public_key
        attacks = offset_attacks(relay_key, args.hold, target.port)
    else:
        from natrelay.aspia.messages import build_peer_to_relay

        host_creds, client_creds = opener._offers()
        replay_ptr = build_peer_to_relay(host_creds)
        with flood_connect(host_creds.port) as h, flood_connect(client_creds.port) as c:
            h.sendall(replay_ptr)  # a real pairing: afterwards its key is spent and the bytes replayable
            c.sendall(build_peer_to_relay(client_creds))
            h.sendall(b"!")
            c.recv(1)
        if target.server == "aspia_relay":
            attacks = relay_attacks(replay_ptr)
        else:
            attacks = router_attacks(target.extras["router_key"], recorded_router_handshake(target))
    a, b = opener.open_pair()  # the legitimate pair, made before any attack
    report["before"] = flood.server_sample(target.pid)
    counters = flood.scrape(target.metrics_port)
    outcome: dict[str, Any] = {}
    mover = threading.Thread(target=lambda: outcome.update(transfer(a, b, TRANSFER)))

    async def attack_all() -> dict[str, dict[str, int]]:
        wide = {"listen_random_key": args.listens} if "listen_random_key" in attacks else {}
        task = asyncio.create_task(run_attacks(attacks, target.port, args.count, args.addresses,
                                               args.parallel, wide,
                                               lambda: mover.ident is None or mover.is_alive()))
        await asyncio.sleep(0.2)  # the attacks are in full swing before the transfer starts
        mover.start()
        if target.server == "aspia_router":
            host_id = opener._host_id
            report["request_flood"] = await asyncio.to_thread(request_flood, target, host_id, args.requests)
        result = await task
        return result

    started = time.monotonic()
    report["attacks"] = asyncio.run(attack_all())
    report["attack_seconds"] = round(time.monotonic() - started, 1)
    mover.join(300)
    a.close()
    b.close()
    report["transfer_20MB"] = outcome
    report["hostile_connections"] = sum(sum(c.values()) for c in report["attacks"].values())
    time.sleep(args.settle)
    report["after"] = flood.server_sample(target.pid)
    report["counters_during_attacks"] = flood.counter_delta(counters, flood.scrape(target.metrics_port))
    if target.server == "aspia_router":
        report["offers_the_flooded_host_received"] = drain_offers(opener)
    try:
        x, y = opener.open_pair()
        x.sendall(b"?")
        report["fresh_pairing_after"] = "ok" if y.recv(1) == b"?" else "wrong byte"
        x.close()
        y.close()
    except Exception as exc:
        report["fresh_pairing_after"] = f"failed: {type(exc).__name__}: {exc}"
    report["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return report


def drain_offers(opener: Any) -> int:
    """Read and drop the offers the request flood sent to the opener's host (a real host would have
    opened a relay connection for each); the next legitimate pairing would read them otherwise."""
    host = opener._host
    host.sock.settimeout(2.0)
    try:
        while True:
            host._pump()
    except (TimeoutError, OSError):
        pass
    finally:
        host.sock.settimeout(15.0)
    stray = len(host.inbox)
    host.inbox.clear()
    return stray


def flood_connect(port: int) -> Any:
    from relaybench.subject import connect

    return connect(port)


def recorded_router_handshake(target: Target) -> bytes:
    """The bytes of a real anonymous host handshake and a HostIdRequest, recorded for replaying."""
    from relaybench.aspia import HOST_SESSION
    from relaybench.subject import connect

    from natrelay.aspia.channel import Channel
    from natrelay.aspia.handshake import Identify
    from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
    from natrelay.aspia.messages import make_envelope, serialize
    from natrelay.aspia.proto import router_peer_pb2

    config = ClientConfig(session_type=HOST_SESSION, identify=Identify.ANONYMOUS,
                          server_public_key=target.extras["router_key"])
    channel = Channel(ClientHandshake(config, time.monotonic()), now=time.monotonic())
    sent = bytearray()
    with connect(target.extras["router_port"], source="127.0.9.2") as sock:
        def flush() -> None:
            out = b"".join(channel.take_output())
            sent.extend(out)
            sock.sendall(out)

        flush()
        while not channel.established:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the router closed the recorded handshake")
            channel.receive_data(data, time.monotonic())
            flush()
        request = router_peer_pb2.HostIdRequest(type=router_peer_pb2.HostIdRequest.NEW_ID)
        channel.send(serialize(make_envelope(router_peer_pb2.PeerToRouter, "host_id_request", request)))
        flush()
        sock.recv(65536)
    return bytes(sent)


def table(r: dict[str, Any]) -> str:
    b, a, t = r["before"], r["after"], r["transfer_20MB"]
    lines = [f"| {r['server']}: attack | connections | server's answer |", "| --- | --- | --- |"]
    for name, answers in r["attacks"].items():
        lines.append(f"| {name} | {sum(answers.values())} | "
                     + ", ".join(f"{k} {v}" for k, v in sorted(answers.items())) + " |")
    lines += [
        "", f"| {r['server']} | |", "| --- | --- |",
        f"| hostile connections | {r['hostile_connections']} in {r['attack_seconds']} s |",
        f"| 20 MB transfer | {'intact' if t.get('ok') else 'FAILED'}, {t.get('seconds')} s "
        f"({t.get('mib_per_s')} MiB/s){'' if t.get('ok') else ' ' + str(t)} |",
        f"| RSS before / after | {b['rss_kib'] / 1024:.1f} / {a['rss_kib'] / 1024:.1f} MiB |",
        f"| descriptors before / after | {b['fds']} / {a['fds']} |",
        f"| fresh legitimate pairing after | {r['fresh_pairing_after']} |",
        "| server counters during the attacks | "
        + (", ".join(f"{k} {v}" for k, v in r["counters_during_attacks"].items()) or "none") + " |",
    ]
    if "request_flood" in r:
        rf = r["request_flood"]
        lines.append(f"| ConnectionRequest flood (one account) | {rf} |")
        lines.append(f"| offers the flooded host received | {r['offers_the_flooded_host_received']} |")
    lines.append(f"| load average at the end | {' '.join(str(x) for x in r['load_average'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subject", choices=sorted(TARGETS), default="strelay")
    p.add_argument("--count", type=int, default=400, help="connections per attack (default %(default)s)")
    p.add_argument("--addresses", type=int, default=250, help="127.0.x.y source addresses")
    p.add_argument("--parallel", type=int, help="attack connections at once (default 200; aspia_relay: "
                   "40, below its 60 pending slots, so that attacks reach its parser instead of evicting "
                   "each other)")
    p.add_argument("--hold", type=float, default=10.0, help="seconds a Listen registration is held")
    p.add_argument("--listens", type=int, default=3000,
                   help="strelay: Listen registrations under random keys, all at once (default %(default)s)")
    p.add_argument("--requests", type=int, default=300, help="ConnectionRequests of the router's flood")
    p.add_argument("--settle", type=float, default=10.0, help="seconds after the attacks before sampling")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.parallel is None:
        args.parallel = 40 if args.subject == "aspia_relay" else 200
    with tempfile.TemporaryDirectory(prefix="natrelay-hostile-") as tmp:
        make = TARGETS[args.subject]
        if args.subject == "aspia_router":
            def make(d: Path) -> Any:
                return aspia_target(d, flood_router=True, lift_request_rates=False)
        try:
            with make(Path(tmp)) as target:
                report = measure(target, args)
        except RuntimeError as exc:
            print(f"hostile: {exc}", file=sys.stderr)
            return 1
    report["args"] = {k: v for k, v in vars(args).items() if k != "json"}
    print(json.dumps(report, indent=2, default=str))
    print()
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if report["transfer_20MB"].get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
