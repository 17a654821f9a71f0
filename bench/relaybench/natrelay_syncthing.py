"""natrelay's Syncthing relay (``natrelay syncthing-relay``), driven by the very client the ``strelaysrv``
subject uses (:class:`relaybench.strelaysrv.StrelaysrvOpener`), so the ratio is like for like."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .strelaysrv import StrelaysrvOpener
from .subject import LOOPBACK, ManagedProcess, Opener, Subject, free_port, wait_port

REPO = Path(__file__).resolve().parent.parent.parent
SRC = REPO / "src"


def _ensure_importable() -> str | None:
    if str(SRC) not in sys.path and (SRC / "natrelay").is_dir():
        sys.path.insert(0, str(SRC))
    try:
        import natrelay.cli.syncthing_relay  # noqa: F401
    except ImportError as exc:
        return f"natrelay's Syncthing relay cannot be imported: {exc}"
    return None


class NatrelaySyncthingSubject(Subject):
    name = "stnatrelay"
    title = "natrelay syncthing-relay"

    def __init__(self) -> None:
        self._proc: ManagedProcess | None = None
        self._port = 0

    def missing(self) -> str | None:
        return _ensure_importable()

    def start(self, workdir: Path) -> None:
        self._port = free_port()
        d = workdir / "stnatrelay"
        d.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["NATRELAY_LOG"] = "warning"
        # The same settings as the strelaysrv subject.
        argv = [sys.executable, "-c",
                "import sys; from natrelay.cli.natrelay import main; sys.exit(main())",
                "syncthing-relay", f"-keys={d}", f"-listen={LOOPBACK}:{self._port}", "-pools=",
                "-status-srv=", "-ping-interval=1m", "-network-timeout=30m", "-message-timeout=1m"]
        self._proc = ManagedProcess("stnatrelay", argv, d / "stdout.log", cwd=d, env=env)
        wait_port(self._port, 30, self._proc)

    def opener(self, index: int) -> Opener:
        return StrelaysrvOpener(self._port)

    def relay_pids(self) -> list[int]:
        return [self._proc.pid] if self._proc else []

    def stop(self) -> None:
        if self._proc:
            self._proc.stop()
            self._proc = None
