"""The Syncthing family: a relay speaking Syncthing's relay protocol v1 (``strelaysrv``-compatible).

Facts from Syncthing's public sources (``lib/relay/protocol``, ``cmd/strelaysrv``); the code is our own.
"""
