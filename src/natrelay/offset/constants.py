"""Protocol constants of Offset v0.1.11, in seconds where the original counts 1 s ticks.

The original's timeouts last (N-1, N] seconds because they count ticks of a global 1 s grid;
exact N-second timers are compatible (spec §12.2 item 14), so plain floats are used here.
"""

from __future__ import annotations

PROTOCOL_VERSION = 0

HANDSHAKE_TIMEOUT = 8.0  # CONN_TIMEOUT_TICKS: version + secure channel must finish within this
INIT_CONNECTION_TIMEOUT = 4.0  # RELAY_CONN_TIMEOUT_TICKS: relay waits this long for InitConnection
KEEPALIVE_TIMEOUT = 32.0  # KEEPALIVE_TICKS: a silent peer is dropped after this
HEARTBEAT_INTERVAL = 16.0  # KEEPALIVE_TICKS / 2: idle outgoing direction sends a heartbeat
HALF_TUNNEL_TIMEOUT = 32.0  # unclaimed Connect is dropped after this
REKEY_INTERVAL = 3600.0  # TICKS_TO_REKEY
BACKOFF = 8.0  # BACKOFF_TICKS of stnode between reconnect attempts

# The original enforces no frame limit at all (spec §12.2 item 1). Rust peers pad with up to 64 KiB
# and tunnel frames nest inside link frames, so the cap must exceed 1 MiB + 2 x 65,600 bytes.
DEFAULT_MAX_FRAME = 2 * 1024 * 1024

# What we send. Rust peers send up to 65,535 bytes; we accept any padding (spec §5.5, §12.2 item 4).
DEFAULT_MAX_PADDING = 255

MAX_ADDRESS_LENGTH = 256  # MAX_NET_ADDRESS_LENGTH, bytes of a ticket address
