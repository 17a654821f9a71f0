"""``natrelay aspia host`` with fallback routers, for the cluster test: a real host process.

The host library takes further routers of a cluster (``HostSettings.fallback_routers``); the
command line that will pass them belongs to another change, so this launcher runs the real
``natrelay`` entry point with the list from ``NATRELAY_TEST_FALLBACK_ROUTERS`` (host:port,...)
added to the settings the command line builds.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from natrelay.aspia.peer import host as host_module
from natrelay.cli import natrelay
from natrelay.ops.addresses import parse_host_port


def main() -> int:
    fallbacks = tuple(parse_host_port(a) for a in os.environ["NATRELAY_TEST_FALLBACK_ROUTERS"].split(","))
    original = host_module.AspiaHost.__init__

    def with_fallbacks(self: host_module.AspiaHost, settings: host_module.HostSettings, *args: Any,
                       **kwargs: Any) -> None:
        original(self, dataclasses.replace(settings, fallback_routers=fallbacks), *args, **kwargs)

    host_module.AspiaHost.__init__ = with_fallbacks  # type: ignore[method-assign]
    return natrelay.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
