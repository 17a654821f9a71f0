"""Real processes for the Syncthing relay tests: our relay (``natrelay syncthing-relay``) and real
Syncthing instances (Debian's ``syncthing``), every one on 127.0.0.1 and ended by the test."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.offset_env import free_port, tool, wait_for


@dataclass
class RelayProcess:
    proc: subprocess.Popen[bytes]
    out: Path
    port: int
    status_port: int
    url: str
    device_id: str

    def log(self) -> str:
        return self.out.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status", timeout=10) as r:
            doc: dict[str, Any] = json.load(r)
            return doc

    def stop(self) -> None:
        """SIGTERM; the relay must exit cleanly by itself (killed means the test fails)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"relay did not stop on SIGTERM:\n{self.log()}") from None
            assert code == 0, f"relay exited {code}:\n{self.log()}"


def start_relay(directory: Path, *extra: str, prefix: tuple[str, ...] = ()) -> RelayProcess:
    directory.mkdir(parents=True, exist_ok=True)
    port, status_port = free_port(), free_port()
    out = directory / "relay.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([*prefix, *tool("natrelay"), "syncthing-relay", f"-listen=127.0.0.1:{port}",
                                 "-keys", str(directory / "keys"), f"--status-srv=127.0.0.1:{status_port}",
                                 *extra], stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "URI: relay://" in out.read_text() or proc.poll() is not None, 30,
                 "the relay to start")
        text = out.read_text()
        m = re.search(r"URI: (relay://\S+)", text)
        assert m, text
        url = m.group(1)
        dev = re.search(r"id=([A-Z0-9-]{63})", url)
        assert dev, url
        return RelayProcess(proc, out, port, status_port, url, dev.group(1))
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def syncthing_available() -> str | None:
    return shutil.which("syncthing")


@dataclass
class Syncthing:
    home: Path
    folder: Path
    device_id: str
    gui_port: int
    api_key: str
    proc: subprocess.Popen[bytes] | None = None

    def api(self, path: str, method: str = "GET", body: object = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.gui_port}{path}", data=data, method=method,
                                     headers={"X-API-Key": self.api_key, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def log(self) -> str:
        p = self.home / "syncthing.out"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self) -> None:
        env = dict(os.environ, STNOUPGRADE="1", STNORESTART="1", STNODEFAULTFOLDER="1",
                   HOME=str(self.home), STTRACE="")
        with open(self.home / "syncthing.out", "wb") as out:
            self.proc = subprocess.Popen(
                ["syncthing", "serve", f"--home={self.home}", "--no-browser", "--no-restart", "--no-upgrade",
                 f"--gui-address=127.0.0.1:{self.gui_port}", f"--gui-apikey={self.api_key}"],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop(self) -> None:
        """SIGTERM to its process group (Syncthing may run a monitor and a child); must exit by itself."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"syncthing {self.device_id} did not stop on SIGTERM") from None
        # Nothing of the group may outlive it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("a syncthing child outlived its parent")


def _set(parent: ET.Element, tag: str, text: str) -> None:
    el = parent.find(tag)
    if el is None:
        el = ET.SubElement(parent, tag)
    el.text = text


def make_syncthing(directory: Path, name: str) -> Syncthing:
    """``syncthing generate`` a home, then a key for the API and a GUI port on loopback."""
    home = directory / name
    subprocess.run(["syncthing", "generate", f"--home={home}", "--no-default-folder", "--skip-port-probing"],
                   check=True, capture_output=True, env=dict(os.environ, HOME=str(directory)), timeout=120)
    device_id = subprocess.run(["syncthing", "serve", f"--home={home}", "--device-id"], check=True,
                               capture_output=True, text=True, timeout=60).stdout.strip()
    folder = directory / f"{name}-folder"
    folder.mkdir()
    return Syncthing(home, folder, device_id, free_port(), secrets.token_urlsafe(24))


def configure(me: Syncthing, other: Syncthing, relay_url: str) -> None:
    """Relay only: no discovery, NAT traversal, pools or direct listening; listen on (join) our relay,
    reach the other device through it, share one folder."""
    path = me.home / "config.xml"
    tree = ET.parse(path)
    root = tree.getroot()
    opts = root.find("options")
    assert opts is not None
    for el in opts.findall("listenAddress"):
        opts.remove(el)
    ET.SubElement(opts, "listenAddress").text = relay_url
    for tag, value in (("globalAnnounceEnabled", "false"), ("localAnnounceEnabled", "false"),
                       ("natEnabled", "false"), ("relaysEnabled", "true"), ("startBrowser", "false"),
                       ("urAccepted", "-1"), ("autoUpgradeIntervalH", "0"),
                       ("crashReportingEnabled", "false"),
                       ("reconnectionIntervalS", "5"), ("relayReconnectIntervalM", "1"),
                       ("setLowPriority", "false")):
        _set(opts, tag, value)
    gui = root.find("gui")
    assert gui is not None
    _set(gui, "address", f"127.0.0.1:{me.gui_port}")
    _set(gui, "apikey", me.api_key)
    mine = root.find("device")
    assert mine is not None
    dev = ET.SubElement(root, "device", dict(mine.attrib, id=other.device_id, name=other.home.name))
    ET.SubElement(dev, "address").text = relay_url
    for child in mine:
        if child.tag != "address":
            dev.append(child)
    root.remove(dev)
    root.insert(list(root).index(mine) + 1, dev)
    template = root.find("defaults/folder")
    assert template is not None
    folder = ET.fromstring(ET.tostring(template))
    folder.set("id", "data")
    folder.set("label", "data")
    folder.set("path", str(me.folder))
    folder.set("rescanIntervalS", "5")
    folder.set("fsWatcherEnabled", "false")
    for d in folder.findall("device"):
        folder.remove(d)
    for dev_id in (me.device_id, other.device_id):
        ET.SubElement(folder, "device", {"id": dev_id, "introducedBy": ""})
    root.insert(0, folder)
    tree.write(path)
