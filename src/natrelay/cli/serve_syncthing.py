"""The Syncthing relay part of ``natrelay serve``: keys in the data folder, no pools, no status page."""

from __future__ import annotations

import sys
from pathlib import Path

from natrelay.syncthing.app import AppConfig, AppConfigError, RunningRelay, start_relay
from natrelay.syncthing.tls import TLSSetupError

DEFAULT_SYNCTHING_PORT = 22067


async def start_syncthing(data: Path, host: str, port: int) -> RunningRelay | None:
    """Start it and print its ``relay://`` URL; None (after printing why) if it cannot start."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        running = await start_relay(AppConfig(listen=shown, keys_dir=data / "syncthing", status_srv=""))
    except (AppConfigError, TLSSetupError) as exc:
        print(f"natrelay: error: {exc}", file=sys.stderr)
        return None
    except OSError as exc:
        print(f"natrelay: error: cannot start the Syncthing relay on {shown}: {exc.strerror or exc}",
              file=sys.stderr)
        return None
    print(f"Syncthing relay listening on {shown}\n"
          f"  relay URL: {running.url}\n"
          f"  use it in Syncthing: set a device's address (and your listen address) to that URL",
          flush=True)
    return running
