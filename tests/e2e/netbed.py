"""A test bed of network namespaces: a public network and two homes, each behind its own NAT.

Why: on 127.0.0.1 every peer is reachable and nothing ever forgets a connection, so the tests
there cannot show that relays see a NAT's address, that keep-alives outlive a consumer router's
connection-tracking timeout, or that a peer notices when its router drops the mapping. Here each
home reaches the public network only through a namespace doing source NAT with nftables, whose
conntrack timeouts the test sets (they are per network namespace).

Addresses (all private, inside namespaces this module creates; nothing leaves the machine)::

    pub   10.200.0.1/32 on lo (servers listen here); veth p<i> 10.200.<i>.1/24 to nat<i>
    nat<i>  w<i> 10.200.<i>.2/24 (its public address)   l<i> 10.201.<i>.1/24 (the home side)
    home<i> h<i> 10.201.<i>.2/24, default route via 10.201.<i>.1

The NATs behave like a strict consumer router: masquerade outbound, nothing inbound unless it
belongs to a tracked connection, and ``nf_conntrack_tcp_loose=0`` with invalid packets dropped,
so a connection whose mapping expired or was flushed is a black hole (not silently re-created
by the next outgoing segment). Peers notice that only through their own keep-alives.

Processes are started with ``ip netns exec``, which execs the program (the Popen's pid is the
program's). :meth:`NetBed.close` kills whatever still runs in the namespaces (only processes this
bed started can be there) and deletes them; :func:`bed` is the pytest fixture body.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PUBLIC_IP = "10.200.0.1"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def nat_public_ip(i: int) -> str:
    return f"10.200.{i}.2"


def home_ip(i: int) -> str:
    return f"10.201.{i}.2"


def _run(*args: str, input_text: str | None = None) -> None:
    done = subprocess.run(list(args), capture_output=True, text=True, input=input_text, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")


def unavailable_reason() -> str | None:
    """Why this machine cannot build the bed (None when it can): used to skip with a clear message."""
    for tool in ("ip", "nft", "conntrack"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"the NAT test bed needs `{tool}` (Debian: iproute2, nftables, conntrack)"
    probe = f"nrprobe{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` is not permitted here ({done.stderr.strip()}); run as root"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_NFT_RULES = """\
table ip natrelay_nat {{
    chain drop_invalid {{
        type filter hook prerouting priority -150;
        ct state invalid drop
    }}
    chain inbound_filter {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "{inside}" ct state new accept
    }}
    chain masq {{
        type nat hook postrouting priority 100;
        oifname "{outside}" masquerade
    }}
}}
"""


@dataclass
class NetBed:
    """The namespaces of one test; :meth:`close` removes them and everything running inside."""

    prefix: str
    established_timeout: int
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pub(self) -> str:
        return f"{self.prefix}pub"

    def nat(self, i: int) -> str:
        return f"{self.prefix}nat{i}"

    def home(self, i: int) -> str:
        return f"{self.prefix}home{i}"

    # -------------------------------------------------------------- building
    def _add_ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def build(self) -> None:
        self._add_ns(self.pub)
        _run("ip", "-n", self.pub, "addr", "add", f"{PUBLIC_IP}/32", "dev", "lo")
        for i in (1, 2):
            nat, home = self.nat(i), self.home(i)
            self._add_ns(nat)
            self._add_ns(home)
            _run("ip", "-n", self.pub, "link", "add", f"p{i}", "type", "veth", "peer", "name", f"w{i}",
                 "netns", nat)
            _run("ip", "-n", nat, "link", "add", f"l{i}", "type", "veth", "peer", "name", f"h{i}",
                 "netns", home)
            for ns, dev, addr in ((self.pub, f"p{i}", f"10.200.{i}.1/24"), (nat, f"w{i}", f"10.200.{i}.2/24"),
                                  (nat, f"l{i}", f"10.201.{i}.1/24"), (home, f"h{i}", f"10.201.{i}.2/24")):
                _run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
                _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", nat, "route", "add", "default", "via", f"10.200.{i}.1")
            _run("ip", "-n", home, "route", "add", "default", "via", f"10.201.{i}.1")
            _run("ip", "netns", "exec", nat, "nft", "-f", "-",
                 input_text=_NFT_RULES.format(inside=f"l{i}", outside=f"w{i}"))
            self.set_nat_sysctl(i, "net.ipv4.ip_forward", 1)
            self.set_nat_sysctl(i, "net.netfilter.nf_conntrack_tcp_loose", 0)
            self.set_nat_sysctl(i, "net.netfilter.nf_conntrack_tcp_timeout_established",
                                self.established_timeout)

    def set_nat_sysctl(self, i: int, key: str, value: int) -> None:
        _run("ip", "netns", "exec", self.nat(i), "sysctl", "-q", "-w", f"{key}={value}")

    def flush_conntrack(self, i: int) -> None:
        """The NAT forgets every mapping (a router reboot, a full table): existing connections die."""
        _run("ip", "netns", "exec", self.nat(i), "conntrack", "-F")

    def conntrack_count(self, i: int) -> int:
        done = subprocess.run(["ip", "netns", "exec", self.nat(i), "conntrack", "-L"], capture_output=True,
                              text=True, timeout=30)
        return sum(1 for line in done.stdout.splitlines() if line.startswith("tcp"))

    # ------------------------------------------------------------- processes
    def popen(self, ns: str, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        """``argv`` inside ``ns``; the bed kills it on close if the test did not."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    @contextlib.contextmanager
    def inside(self, ns: str) -> Iterator[None]:
        """Run this thread inside ``ns`` for a moment: sockets created meanwhile stay in ``ns``."""
        with open("/proc/thread-self/ns/net", "rb") as own, open(f"/run/netns/{ns}", "rb") as target:
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(own.fileno())

    def connect(self, ns: str, host: str, port: int, timeout: float = 30) -> socket.socket:
        """A TCP connection made from inside ``ns`` (e.g. to a forwarder on a home's 127.0.0.1)."""
        with self.inside(ns):
            return socket.create_connection((host, port), timeout=timeout)

    def pids(self, ns: str) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
        return [int(x) for x in done.stdout.split()]

    # --------------------------------------------------------------- cleanup
    def close(self) -> list[str]:
        """Kill leftovers, delete the namespaces; returns what had to be killed (tests fail on it)."""
        killed: list[str] = []
        for proc in self.procs:
            if proc.poll() is None:
                killed.append(" ".join(str(a) for a in proc.args))  # type: ignore[union-attr]
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for ns in self.namespaces:
            for pid in self.pids(ns):  # children of ours that outlived their parent
                with contextlib.suppress(ProcessLookupError):
                    killed.append(f"pid {pid} in {ns}: {Path(f'/proc/{pid}/cmdline').read_bytes()!r}")
                    os.kill(pid, 9)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.namespaces.clear()
        return killed


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


_beds = itertools.count(1)


def make_bed(established_timeout: int = 300) -> NetBed:
    """Build a bed with unique namespace names (tests may run in parallel processes)."""
    bed = NetBed(f"nr{os.getpid()}x{next(_beds)}", established_timeout)
    try:
        bed.build()
    except BaseException:
        bed.close()
        raise
    return bed
