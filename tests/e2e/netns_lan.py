"""A private LAN of network namespaces for one test: one namespace per "machine", a bridge between.

Each machine gets a namespace with loopback and one veth interface at 10.77.0.N/24; the other
ends of the veths hang on a bridge inside a switch namespace the test also creates, so nothing
touches the host's own network. Names carry the test process's PID so parallel runs do not
collide. :meth:`Lan.close` deletes every namespace (which removes their interfaces too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

SUBNET = "10.77.0"


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise OSError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"pgc{os.getpid()}probe"
    try:
        _ip("netns", "add", probe)
    except OSError as exc:
        return f"cannot create a network namespace: {exc}"
    _ip("netns", "del", probe)
    return None


@dataclass
class Lan:
    prefix: str = field(default_factory=lambda: f"pgc{os.getpid()}")
    machines: dict[str, str] = field(default_factory=dict)
    """machine name -> its address."""
    _namespaces: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.prefix}sw"

    def ns(self, machine: str) -> str:
        return f"{self.prefix}{machine}"

    def open(self) -> None:
        _ip("netns", "add", self.switch)
        self._namespaces.append(self.switch)
        _ip("link", "add", "br0", "type", "bridge", netns=self.switch)
        _ip("link", "set", "br0", "up", netns=self.switch)

    def add(self, machine: str) -> str:
        """A new machine on the LAN; returns its address."""
        number = len(self.machines) + 2
        ns = self.ns(machine)
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("link", "set", "lo", "up", netns=ns)
        outer = f"p{number}"
        _ip("link", "add", "eth0", "type", "veth", "peer", "name", outer, "netns", self.switch, netns=ns)
        _ip("link", "set", outer, "master", "br0", netns=self.switch)
        _ip("link", "set", outer, "up", netns=self.switch)
        address = f"{SUBNET}.{number}"
        _ip("addr", "add", f"{address}/24", "dev", "eth0", netns=ns)
        _ip("link", "set", "eth0", "up", netns=ns)
        self.machines[machine] = address
        return address

    def run(self, machine: str) -> list[str]:
        """The command prefix that runs a program on ``machine``."""
        return ["ip", "netns", "exec", self.ns(machine)]

    def close(self) -> None:
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True, timeout=30)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._namespaces.clear()
