"""``--install``, ``--remove``, ``--start``, ``--stop`` of aspia_relay and aspia_router, done with systemd.

The original's switches manage a Windows service; on Linux the same words act on the systemd
unit: install writes the unit (pointing at the running program) and enables it, start and stop
call ``systemctl``, remove stops, disables and deletes the unit. Each step says what it did or
exactly which command failed; nothing is left half-installed silently (a failed enable keeps
the unit file and says so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from natrelay.ops.systemd import unit_file_name, write_unit

UNIT_DIR_ENV = "NATRELAY_SYSTEMD_DIR"
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")


def unit_dir() -> Path:
    return Path(os.environ.get(UNIT_DIR_ENV) or DEFAULT_UNIT_DIR)


def _systemctl(*args: str) -> str | None:
    """Run ``systemctl args``; None on success, else the error for the operator."""
    tool = shutil.which("systemctl")
    if tool is None:
        return "systemctl is not installed: is this a systemd system?"
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        last = detail[-1] if detail else "no output"
        return f"systemctl {' '.join(args)} failed ({done.returncode}): {last}"
    return None


def manage(program: str, action: str, prog: str, command: Sequence[str] | None = None) -> int:
    """Carry out ``action`` (install/remove/start/stop) for ``program`` ("relay" or "router")."""
    name = unit_file_name(program)
    path = unit_dir() / name
    if action == "install":
        argv = list(command) if command is not None else [str(Path(sys.argv[0]).resolve())]
        try:
            write_unit(program, path.parent, command=argv)
        except FileExistsError:
            print(f"{prog}: {path} already exists; --remove it first (or edit it with systemctl edit)",
                  file=sys.stderr)
            return 1
        except (OSError, ValueError) as exc:
            print(f"{prog}: cannot write {path}: {exc}", file=sys.stderr)
            return 1
        steps: list[tuple[str, ...]] = [("daemon-reload",), ("enable", name)]
        done_text = f"Service installed: {path} (enabled; start it with --start)"
    elif action == "start":
        steps, done_text = [("start", name)], f"Service {name} started."
    elif action == "stop":
        steps, done_text = [("stop", name)], f"Service {name} stopped."
    elif action == "remove":
        if not path.exists():
            print(f"{prog}: {path} does not exist: the service is not installed", file=sys.stderr)
            return 1
        for verb in ("stop", "disable"):
            error = _systemctl(verb, name)
            if error is not None:
                print(f"{prog}: {error}", file=sys.stderr)
                return 1
        try:
            path.unlink()
        except OSError as exc:
            print(f"{prog}: cannot remove {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        steps, done_text = [("daemon-reload",)], f"Service removed: {path}"
    else:
        raise ValueError(f"unknown action {action!r}")
    for step in steps:
        error = _systemctl(*step)
        if error is not None:
            print(f"{prog}: {error}", file=sys.stderr)
            return 1
    print(done_text)
    return 0


def service_switch(program: str, switch: str, prog: str, extra_args: Sequence[str]) -> int:
    """The original's Windows switch on this system: systemd on Linux, an explanation elsewhere."""
    if not sys.platform.startswith("linux"):
        print(f"{prog}: {switch} is only available on Windows and Linux (systemd)", file=sys.stderr)
        return 1
    exe = shutil.which(prog) or sys.argv[0]
    return manage(program, switch[2:], prog, [str(Path(exe).resolve()), *extra_args])
