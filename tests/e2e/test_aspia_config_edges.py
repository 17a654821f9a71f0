"""Config problems reach stderr from the real ``aspia_relay``/``aspia_router`` under the default
ASPIA_LOG_LEVEL (fatal only), and ``--create-config`` is private under ``umask 000`` (issue 8)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.aspia_env import create_router, run_tool, tool

pytestmark = pytest.mark.timeout(120)

KEY_HEX = "AB" * 32


def default_level_env() -> dict[str, str]:
    """The environment of an operator who set nothing: ASPIA_LOG_LEVEL unset means fatal only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASPIA_LOG")}
    env["ASPIA_LOG_TO_FILE"] = "0"
    return env


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_until_stderr_has(argv: list[str], log: Path, needles: list[str], timeout: float = 60) -> str:
    """Start a long-running server, wait until its stderr holds every needle, then stop it with SIGTERM.

    Fails if the process had to be killed or exited on its own before saying everything.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=default_level_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not all(n in log.read_text() for n in needles):
            assert proc.poll() is None, f"exited {proc.returncode} early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"timed out; stderr so far:\n{log.read_text()}"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                pytest.fail("the server did not stop on SIGTERM and had to be killed")
    return log.read_text()


def test_relay_rejects_an_object_value_with_field_file_and_allowed_values(tmp_path: Path) -> None:
    path = tmp_path / "relay.json"
    path.write_text(json.dumps({"RouterAddress": "127.0.0.1", "RouterPublicKey": KEY_HEX,
                                "PeerAddress": "127.0.0.1", "RouterPort": {"a": 1}, "PeerPrt": "1"}))
    done = run_tool("aspia_relay", "--config", str(path), env=default_level_env(), timeout=30)
    assert done.returncode == 78, done.stderr
    assert f"{path}: RouterPort: got a JSON object" in done.stderr and "1 to 65535" in done.stderr
    # Unknown keys are printed next to the errors, with the closest known key.
    assert "unknown key 'PeerPrt'" in done.stderr and "did you mean 'PeerPort'" in done.stderr
    assert "Traceback" not in done.stderr


def test_relay_warns_about_typos_and_max_peer_count_0_at_the_default_level(tmp_path: Path) -> None:
    path = tmp_path / "relay.json"
    path.write_text(json.dumps({"RouterAddress": "127.0.0.1", "RouterPort": str(closed_port()),
                                "RouterPublicKey": KEY_HEX, "PeerAddress": "127.0.0.1",
                                "ListenInterface": "127.0.0.1", "PeerPort": str(closed_port()),
                                "MaxPeerCount": "0", "StatisticsEnabld": "true"}))
    path.chmod(0o644)
    text = run_until_stderr_has([*tool("aspia_relay"), "--config", str(path)], tmp_path / "relay.log",
                                ["MaxPeerCount: is 0", "'StatisticsEnabld'"])
    assert "did you mean 'StatisticsEnabled'" in text and f"{path}: warning:" in text


def test_router_warns_that_others_can_read_its_private_key(tmp_path: Path) -> None:
    setup = create_router(tmp_path)
    setup.config.chmod(0o644)
    text = run_until_stderr_has(
        [*tool("aspia_router"), "--config", str(setup.config), "--data-dir", str(setup.data_dir)],
        tmp_path / "router.log", ["holds a private key but its mode is 0644"])
    assert f"chmod 600 {setup.config}" in text


def test_create_config_under_umask_000_makes_nothing_others_can_write_or_read_secrets(tmp_path: Path) -> None:
    etc, lib = tmp_path / "new" / "etc", tmp_path / "new" / "lib"
    done = subprocess.run([*tool("aspia_router"), "--create-config", "--config", str(etc / "router.json"),
                           "--data-dir", str(lib)], capture_output=True, text=True, timeout=60,
                          env=default_level_env(), umask=0)
    assert done.returncode == 0, done.stderr
    relay = subprocess.run([*tool("aspia_relay"), "--create-config", "--config",
                            str(tmp_path / "relay" / "relay.json")], capture_output=True, text=True,
                           timeout=60, env=default_level_env(), umask=0)
    assert relay.returncode == 0, relay.stderr
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [tmp_path / "new", etc, lib, *etc.iterdir(), *lib.iterdir(),
                       tmp_path / "relay", tmp_path / "relay" / "relay.json"]}
    # "new" was made for the data folder (created first), hence 0700 like it.
    assert modes == {"new": 0o700, "new/etc": 0o755, "new/lib": 0o700, "new/etc/router.json": 0o600,
                     "new/etc/router.pub": 0o644, "new/lib/router.db3": 0o600,
                     "relay": 0o755, "relay/relay.json": 0o644}
