"""The HTTP surface of natrelay's servers: Prometheus metrics, JSON status, health, dashboard.

``server`` (aiohttp app and lifecycle), ``options`` (the shared ``--http`` switches), ``source``
(what a server exposes, family-neutral) with ``offset_source``, ``aspia_sources`` and
``syncthing_source`` adapting the families, ``metrics``, ``status`` with ``rates``, ``dashboard`` and
``auth``; ``public`` serves one read-only JSON document on an address of its own (strelaysrv's
``-status-srv``).
"""
