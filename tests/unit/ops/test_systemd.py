"""systemd units: the original's start/restart behaviour, the sandbox, and safe quoting of what we insert."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from natrelay.ops.aspia_settings import EXIT_CONFIG_ERROR
from natrelay.ops.systemd import quote_exec_word, render_unit, unit_file_name, write_unit

HARDENING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (systemd allows repeated keys), ignoring comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, line
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("program", ["relay", "router"])
def test_start_and_restart_follow_the_original(program: str) -> None:
    unit = directives(render_unit(program))
    service = unit["Service"]
    assert service["ExecStart"] == [f"/usr/bin/aspia_{program}"]
    assert service["Restart"] == ["always"] and service["RestartSec"] == ["5s"]
    assert '"ASPIA_LOG_LEVEL=2"' in service["Environment"]
    assert service["RestartPreventExitStatus"] == [str(EXIT_CONFIG_ERROR)]
    assert unit["Unit"]["After"] == ["network-online.target"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("program", ["relay", "router"])
def test_sandbox(program: str) -> None:
    service = directives(render_unit(program))["Service"]
    for key, value in HARDENING.items():
        assert service[key] == [value], key
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert "MemoryDenyWriteExecute" not in service
    assert service["LogsDirectory"] == [f"aspia/{program}"]
    assert f'"ASPIA_LOG_DIR=/var/log/aspia/{program}"' in service["Environment"]


def test_relay_runs_unprivileged_and_writes_nothing() -> None:
    service = directives(render_unit("relay"))["Service"]
    assert service["DynamicUser"] == ["yes"]
    assert "ReadWritePaths" not in service and "StateDirectory" not in service
    assert service["ConfigurationDirectory"] == ["aspia"]


def test_router_may_write_only_its_config_and_state() -> None:
    service = directives(render_unit("router"))["Service"]
    assert "DynamicUser" not in service and "User" not in service
    assert service["ReadWritePaths"] == ["/etc/aspia"]
    assert service["StateDirectory"] == ["aspia"]


def test_moved_directories_move_the_writable_paths() -> None:
    env = {"ASPIA_CONFIG_DIR": "/srv/aspia/conf/", "ASPIA_LOG_DIR": "/srv/aspia/log"}
    service = directives(render_unit("router", environment=env))["Service"]
    assert service["ReadWritePaths"] == ["-/srv/aspia/log", "/srv/aspia/conf"]
    assert "ConfigurationDirectory" not in service
    assert '"ASPIA_CONFIG_DIR=/srv/aspia/conf/"' in service["Environment"]


def test_environment_overrides_and_escaping() -> None:
    text = render_unit("relay", environment={"ASPIA_LOG_LEVEL": "0", "NOTE": 'say "hi" \\ 100%'})
    env = directives(text)["Service"]["Environment"]
    assert '"ASPIA_LOG_LEVEL=0"' in env and '"ASPIA_LOG_LEVEL=2"' not in env
    assert '"NOTE=say \\"hi\\" \\\\ 100%%"' in env


def test_command_words_are_quoted_only_when_needed() -> None:
    command = ["/opt/natrelay/bin/python", "-m", "natrelay.cli", "--name=a b", "$HOME", "50%"]
    exec_start = directives(render_unit("relay", command=command))["Service"]["ExecStart"]
    assert exec_start == ['/opt/natrelay/bin/python -m natrelay.cli "--name=a b" "$$HOME" "50%%"']
    assert quote_exec_word('a"b') == '"a\\"b"'


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"command": ["aspia_relay"]}, "absolute"),
        ({"command": []}, "absolute"),
        ({"command": ["/usr/bin/x", "a\nExecStartPre=/bin/sh"]}, "control"),
        ({"environment": {"BAD NAME": "1"}}, "variable name"),
        ({"environment": {"X": "1\nUser=root"}}, "control"),
        ({"environment": {"ASPIA_CONFIG_DIR": "relative/dir"}}, "ASPIA_CONFIG_DIR"),
        ({"environment": {"ASPIA_LOG_DIR": "/var/log/a b"}}, "ASPIA_LOG_DIR"),
    ],
)
def test_nothing_can_inject_directives(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        render_unit("relay", **kwargs)  # type: ignore[arg-type]


def test_names_and_unknown_programs() -> None:
    assert unit_file_name("relay") == "aspia-relay.service"
    assert unit_file_name("router") == "aspia-router.service"
    with pytest.raises(ValueError, match="unknown program"):
        render_unit("host")


def test_write_unit_does_not_replace_a_local_edit(tmp_path: Path) -> None:
    path = write_unit("relay", tmp_path)
    assert path == tmp_path / "aspia-relay.service"
    assert path.read_text() == render_unit("relay")
    path.write_text("edited")
    with pytest.raises(FileExistsError):
        write_unit("relay", tmp_path)
    assert path.read_text() == "edited"
    write_unit("relay", tmp_path, overwrite=True)
    assert path.read_text() == render_unit("relay")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_every_directive(tmp_path: Path) -> None:
    # systemd-analyze exits 0 even for unknown keys, so the test reads what it says instead.
    paths = [write_unit(p, tmp_path, command=[sys.executable, "-c", "pass"]) for p in ("relay", "router")]
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if str(tmp_path) in line]
    assert complaints == []
