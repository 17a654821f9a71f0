"""SLOT: natrelay's Aspia relay with a paired raw session (not built yet).

When ``natrelay.aspia.relay`` exists, fill in start() (launch the relay on 127.0.0.1 with a peer key pool)
and an opener that performs PeerToRelay for both peers with the same key and returns the two raw sockets.
Until then the subject reports itself as missing and the run carries on without it.
"""

from __future__ import annotations

from pathlib import Path

from .subject import Opener, Subject, SubjectError


class AspiaSubject(Subject):
    name = "aspia"
    title = "natrelay Aspia relay (raw session)"

    def missing(self) -> str | None:
        return "natrelay's Aspia relay is not built yet (slot: bench/relaybench/aspia.py)"

    def start(self, workdir: Path) -> None:
        raise SubjectError(self.missing() or "")

    def opener(self, index: int) -> Opener:
        raise SubjectError(self.missing() or "")

    def stop(self) -> None:
        pass
