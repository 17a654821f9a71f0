"""The Host's small state file: its host ID and the 512-byte key that proves it to the router.

The router hands out a key with a new ID and later accepts only that key for the ID (§6.3), so
losing the file means a new ID. The key is a credential (anyone holding it can take the ID over),
hence mode 0600 and an atomic replace, so a crash never leaves half a key behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from natrelay.ops.jsonsettings import write_file_atomically

MAX_STATE_FILE = 64 * 1024
HOST_KEY_SIZE = 512


class StateError(ValueError):
    """The state file exists but cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class HostState:
    """What the host remembers between runs; both fields empty on the first run."""

    host_id: int = 0
    key: bytes = b""


def default_state_path() -> Path:
    """``$XDG_STATE_HOME/natrelay/aspia-host.json`` (``~/.local/state`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "natrelay" / "aspia-host.json"


def load_state(path: Path) -> HostState:
    """The saved state, or an empty one if the file does not exist yet."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_STATE_FILE + 1)
    except FileNotFoundError:
        return HostState()
    except OSError as exc:
        raise StateError(f"cannot read state file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_STATE_FILE:
        raise StateError(f"state file {path} is larger than {MAX_STATE_FILE} bytes")
    try:
        doc = json.loads(raw)
        host_id = int(doc.get("host_id", 0))
        key = bytes.fromhex(str(doc.get("host_key", "")))
    except (ValueError, TypeError, AttributeError) as exc:
        raise StateError(f"state file {path} is not valid: {exc}") from None
    if not 0 <= host_id < 1 << 64:
        raise StateError(f"state file {path}: host_id {host_id} out of range")
    return HostState(host_id, key)


def save_state(path: Path, state: HostState) -> None:
    """Replace the state file atomically, readable by its owner only."""
    doc = {"host_id": str(state.host_id), "host_key": state.key.hex().upper()}
    write_file_atomically(path, json.dumps(doc, indent=4, sort_keys=True).encode(), exclusive=False,
                          mode=0o600)
