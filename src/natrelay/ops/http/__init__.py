"""The HTTP surface of natrelay's servers: Prometheus metrics, JSON status, health, dashboard.

``server`` (aiohttp app and lifecycle), ``options`` (the shared ``--http`` switches), ``source``
(what a server exposes, family-neutral) with ``offset_source`` and ``aspia_sources`` adapting the
families, ``metrics``, ``status`` with ``rates``, ``dashboard`` and ``auth``.
"""
