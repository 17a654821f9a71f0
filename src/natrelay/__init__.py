"""natrelay: relays that let peers behind NAT reach each other.

Packages: ``engine`` (protocol-neutral pairing, forwarding, limits, timers, counters),
``offset`` (the Offset relay family), ``aspia`` (the Aspia relay/router family),
``ops`` (configuration, logging, service files) and ``cli`` (entry points only).
"""

__version__ = "0.1.0"
