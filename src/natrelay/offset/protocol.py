"""An Offset link carried by the engine's endpoint shell."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from natrelay.engine.clock import WheelDriver
from natrelay.engine.endpoint import EndpointProtocol, make_wheel
from natrelay.offset.errors import ProtocolError
from natrelay.offset.link import Link

__all__ = ["LinkProtocol", "make_wheel"]


class LinkProtocol(EndpointProtocol[Link]):
    """Carries one Offset link over one TCP connection; ``ProtocolError`` closes it."""

    def __init__(self, make_link: Callable[[float], Link], timers: WheelDriver[Any]) -> None:
        super().__init__(make_link, timers, (ProtocolError,))
