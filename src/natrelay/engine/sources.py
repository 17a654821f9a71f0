"""What a per-source limit counts: one source key per subscriber, for every family and every limit.

Why one definition: strelay's admission, the Aspia relay's flood guard and the Aspia router's
guard each had their own (``source_of``, ``source_key``, ``address_key``), and they disagreed on
IPv4-mapped IPv6 addresses, zone suffixes and bracketed text, so the same peer could count as
two sources in one process. Every per-source cap, rate and summary now keys on
:func:`source_key`.

A source is an IPv4 address, or the /64 network of an IPv6 address: one subscriber usually holds
a whole /64, so counting single IPv6 addresses would give an attacker 2**64 fresh sources.
IPv4-mapped IPv6 addresses (from dual-stack listeners) count as their IPv4 address. Sans-IO.
"""

from __future__ import annotations

import ipaddress

__all__ = ["source_key"]

_NOT_PARSED = frozenset(":[%")
"""Characters without which ``source_key`` returns its argument unchanged (IPv4 text, a path)."""


def source_key(ip: str) -> str:
    """The unit of fairness for ``ip``: the IPv4 address itself, or the IPv6 /64 it is in.

    Text that is no IP address at all (a Unix socket path, ``"?"``) is its own source, and a key
    is its own key (``source_key(source_key(x)) == source_key(x)``), so shells may pass keys on.
    """
    if _NOT_PARSED.isdisjoint(ip):
        # A dotted quad is already its own key, and text that is no address stays as it is:
        # the parse below would give ``ip`` back either way. It cost four ``ipaddress``
        # parses per relay connection (a tenth of the Aspia relay's CPU per pairing).
        return ip
    host = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)
