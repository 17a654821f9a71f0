"""Direct TCP between the two ends: the ceiling every relay is compared with."""

from __future__ import annotations

import socket
from pathlib import Path

from .subject import LOOPBACK, PAIR_TIMEOUT, Opener, Subject, connect


class DirectOpener(Opener):
    def __init__(self) -> None:
        self._listener = socket.create_server((LOOPBACK, 0), backlog=512)
        self._listener.settimeout(PAIR_TIMEOUT)
        self._port = int(self._listener.getsockname()[1])

    def open_pair(self) -> tuple[socket.socket, socket.socket]:
        a = connect(self._port)
        b, _ = self._listener.accept()
        b.settimeout(PAIR_TIMEOUT)
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return a, b

    def close(self) -> None:
        self._listener.close()


class DirectSubject(Subject):
    name = "direct"
    title = "direct TCP (ceiling)"

    def start(self, workdir: Path) -> None:
        pass

    def opener(self, index: int) -> Opener:
        return DirectOpener()

    def stop(self) -> None:
        pass
