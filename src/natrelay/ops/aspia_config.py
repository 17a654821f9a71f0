"""relay.json and router.json: the Aspia configuration models, their validation and ``--create-config``.

Field names, types and defaults follow the Aspia 2.7.0 manual and the spec (sections 6.10, 7.6).
Where the original quietly falls back to a default for a value it cannot use (``"PeerPort":
"70000"``) or starts and then idles (spec section 12, item 4), we refuse to start instead and
say why: every problem in the file is collected and reported at once, by key, with the allowed
values and the file path, as one ``ConfigError`` the CLI prints before exiting with
``EXIT_CONFIG_ERROR`` (both in :mod:`natrelay.ops.aspia_settings`, which reads and checks the files;
this module declares their fields). An operator fixing a fresh file therefore sees the whole to-do list in
one run rather than one complaint per restart.

Deliberate differences from the original, all harmless to files it wrote:

* ``--create-config`` also writes ``ListenInterface`` (empty) so every field is visible, and
  leaves ``RouterAddress`` empty instead of ``127.0.0.1`` so that loading the fresh file names all
  three fields the operator has to fill in.
* Invalid entries in a router white list are errors, not silently dropped: dropping every entry
  of a mistyped list would turn "allow only these" into "allow everyone".
* ``StatisticsInterval`` accepts 1..3600 seconds as the original code does, although the manual
  says 1..60; files that work with the original keep working.

Default locations are ``/etc/aspia/<name>`` (``%ProgramData%\\aspia`` on Windows). Setting the
environment variable ``ASPIA_CONFIG_DIR`` moves them, which lets a non-root user run and test
the programs without touching ``/etc``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Self

from natrelay.ops.aspia_settings import (
    RELAY_CONFIG_NAME,
    ROUTER_CONFIG_NAME,
    FieldInfo,
    IPAddress,
    SettingsFile,
    SettingsReader,
    ip_list_text,
)
from natrelay.ops.bandwidth import format_rate

_PORT = "an integer from 1 to 65535"
_RATE = ("natrelay only, ignored by Aspia: bytes per second for {}, with K, M or G (binary), "
         "e.g. 10M; empty or 0 for no limit")
_HTTP_LISTEN = ("natrelay only, ignored by Aspia: empty (no HTTP) or HOST:PORT for /metrics, /status "
                "and the dashboard, e.g. 127.0.0.1:9070")


@dataclass(frozen=True)
class _GuardField:
    """A relay.json key of natrelay's flood guard: a whole number in ``low..high``."""

    key: str
    attr: str
    allowed: str
    default: int
    low: int
    high: int


# natrelay's flood guard; the original does not know these keys and ignores them.
_RELAY_GUARD: Final = (
    _GuardField("PeerFirstMessageTimeout", "peer_first_message_timeout", "seconds until a new peer "
                "connection has sent its PeerToRelay, an integer from 1 to 300; default 5", 5, 1, 300),
    _GuardField("MaxPendingPeers", "max_pending_peers", "peer connections waiting for their PeerToRelay "
                "at once, an integer from 0 (no cap) to 1000000; default 60", 60, 0, 1_000_000),
    _GuardField("MaxPendingPeersPerIp", "max_pending_peers_per_ip", "peer connections from one IP address "
                "(IPv6: one /64) waiting for their PeerToRelay at once, an integer from 0 (no cap) to "
                "1000000; default 16", 16, 0, 1_000_000),
    _GuardField("MaxConnectionsPerMinutePerIp", "max_connections_per_minute_per_ip", "new peer connections "
                "per minute from one IP address (IPv6: one /64) that do not present a valid key, an integer "
                "from 0 (no cap) to 1000000; default 60", 60, 0, 1_000_000),
    _GuardField("MaxBytesBeforeAuth", "max_bytes_before_auth", "bytes a peer may send before its "
                "PeerToRelay is complete, an integer from 64 to 1048580; default 16384",
                16384, 64, 1_048_580),
    _GuardField("MaxSessionDuration", "max_session_duration", "minutes a paired session may last, an "
                "integer from 0 (no cap) to 525600; default 1440", 1440, 0, 525_600),
    _GuardField("MaxConnections", "max_connections", "peer connections open at once, an integer from 0 "
                "(no cap) to 1000000; default 10000", 10_000, 0, 1_000_000),
    _GuardField("MaxConnectionsPerIp", "max_connections_per_ip", "peer connections open at once from one "
                "IP address, an integer from 0 (no cap) to 1000000; default 256", 256, 0, 1_000_000),
)

_RELAY_FIELDS: Final = (
    FieldInfo("RouterAddress", "host name or IP address of the Router", required=True),
    FieldInfo("RouterPort", f"{_PORT}; default 8060"),
    FieldInfo(
        "RouterPublicKey", "64 hexadecimal digits, the content of the Router's router.pub", required=True
    ),
    FieldInfo("ListenInterface", "empty for all interfaces, or an IP address of this machine"),
    FieldInfo("PeerAddress", "host name or IP address at which peers reach this Relay", required=True),
    FieldInfo("PeerPort", f"{_PORT}; default 8070"),
    FieldInfo("PeerIdleTimeout", "minutes, an integer from 1 to 60; default 5"),
    FieldInfo("MaxPeerCount", "an integer from 0 to 4294967295; default 100"),
    FieldInfo("StatisticsEnabled", "true or false (or 1 or 0); default false"),
    FieldInfo("StatisticsInterval", "seconds, an integer from 1 to 3600; default 5"),
    *(FieldInfo(g.key, g.allowed) for g in _RELAY_GUARD),
    FieldInfo("HttpListen", _HTTP_LISTEN),
    FieldInfo("RateSession", _RATE.format("each session (both directions together)")),
    FieldInfo("RateGlobal", _RATE.format("all sessions together")),
    FieldInfo("RouterAddresses", "empty, or further routers of the same cluster as HOST:PORT separated by "
                                 "';' (the relay splits its keys between them and RouterAddress)"),
)


@dataclass(frozen=True)
class RelayConfig(SettingsFile):
    """relay.json. Times keep the file's units: ``peer_idle_timeout`` in minutes, ``statistics_interval`` in
    seconds, so a value in a message or a log means the same as in the file."""

    router_address: str = ""
    router_port: int = 8060
    router_public_key: bytes = b""
    listen_interface: str = ""
    peer_address: str = ""
    peer_port: int = 8070
    peer_idle_timeout: int = 5
    max_peer_count: int = 100
    statistics_enabled: bool = False
    statistics_interval: int = 5
    # The flood guard (natrelay only; see _RELAY_GUARD for the keys, units and ranges).
    peer_first_message_timeout: int = 5
    max_pending_peers: int = 60
    max_pending_peers_per_ip: int = 16
    max_connections_per_minute_per_ip: int = 60
    max_bytes_before_auth: int = 16384
    max_session_duration: int = 1440
    max_connections: int = 10_000
    max_connections_per_ip: int = 256
    http_listen: str = ""
    rate_session: int = 0
    rate_global: int = 0
    router_addresses: tuple[tuple[str, int], ...] = ()
    """Not in the original's relay.json; written only when set."""

    FILE_NAME: ClassVar[str] = RELAY_CONFIG_NAME
    FILE_MODE: ClassVar[int] = 0o644  # no secrets inside; a non-root service user must be able to read it
    FIELDS: ClassVar[tuple[FieldInfo, ...]] = _RELAY_FIELDS

    @property
    def routers(self) -> tuple[tuple[str, int], ...]:
        """RouterAddress:RouterPort first, then RouterAddresses."""
        return ((self.router_address, self.router_port), *self.router_addresses)

    @classmethod
    def _from_reader(cls, reader: SettingsReader) -> Self:
        return cls(
            router_address=reader.host("RouterAddress"),
            router_port=reader.uint("RouterPort", 8060, 1, 65535),
            router_public_key=reader.hex_bytes("RouterPublicKey", 32),
            listen_interface=reader.interface("ListenInterface"),
            peer_address=reader.host("PeerAddress", reachable=True),
            peer_port=reader.uint("PeerPort", 8070, 1, 65535),
            peer_idle_timeout=reader.uint("PeerIdleTimeout", 5, 1, 60),
            max_peer_count=reader.uint("MaxPeerCount", 100, 0, 2**32 - 1),
            statistics_enabled=reader.boolean("StatisticsEnabled", False),
            statistics_interval=reader.uint("StatisticsInterval", 5, 1, 3600),
            **{g.attr: reader.uint(g.key, g.default, g.low, g.high) for g in _RELAY_GUARD},
            http_listen=reader.listen("HttpListen"),
            rate_session=reader.rate("RateSession"),
            rate_global=reader.rate("RateGlobal"),
            router_addresses=reader.host_port_list("RouterAddresses"),
        )

    def to_settings(self) -> dict[str, str]:
        # Flood-guard keys only when they differ from the default, so --create-config writes the
        # original's file and a file written back stays what the operator (or Aspia) wrote.
        guard = {g.key: str(value) for g in _RELAY_GUARD if (value := getattr(self, g.attr)) != g.default}
        if self.http_listen:
            guard["HttpListen"] = self.http_listen
        if self.rate_session:
            guard["RateSession"] = format_rate(self.rate_session)
        if self.rate_global:
            guard["RateGlobal"] = format_rate(self.rate_global)
        return guard | {
            "ListenInterface": self.listen_interface,
            "MaxPeerCount": str(self.max_peer_count),
            "PeerAddress": self.peer_address,
            "PeerIdleTimeout": str(self.peer_idle_timeout),
            "PeerPort": str(self.peer_port),
            "RouterAddress": self.router_address,
            "RouterPort": str(self.router_port),
            "RouterPublicKey": self.router_public_key.hex().upper(),
            "StatisticsEnabled": "true" if self.statistics_enabled else "false",
            "StatisticsInterval": str(self.statistics_interval),
        } | ({"RouterAddresses": ";".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
                                          for h, p in self.router_addresses)}
             if self.router_addresses else {})

    @classmethod
    def _check(cls, config: Self, reader: SettingsReader) -> None:
        if config.max_peer_count == 0:
            reader.warn("MaxPeerCount", "is 0: the Router gets no keys from this Relay and no peer can "
                        "connect through it (allowed: " + reader.fields["MaxPeerCount"].allowed + ")")


_WHITE_LIST = "IP addresses separated by ';'; empty allows every address"
_ROUTER_ORIGINAL_FIELDS: Final = (
    FieldInfo("ListenInterface", "empty for all interfaces, or an IP address of this machine"),
    FieldInfo("Port", f"{_PORT}; default 8060"),
    FieldInfo("PrivateKey", "64 hexadecimal digits (a 32-byte X25519 private key)", required=True),
    FieldInfo("SeedKey", "empty (generated at startup) or 128 hexadecimal digits (64 bytes)"),
    FieldInfo("ClientWhiteList", _WHITE_LIST),
    FieldInfo("HostWhiteList", _WHITE_LIST),
    FieldInfo("AdminWhiteList", _WHITE_LIST),
    FieldInfo("RelayWhiteList", _WHITE_LIST + " (empty: loopback only, see RelayAllowAnyAddress)"),
    FieldInfo("HttpListen", _HTTP_LISTEN),
)
# Router guard fields (issues 8 and 9): unknown to the original, which ignores them. Each is an
# unsigned integer with a default; 0 turns a cap off where the text says so. --create-config and
# to_settings() write them only when they differ from the default, so files stay the original's.
ROUTER_GUARD_FIELDS: Final = (
    # key, attribute, default, low, high, what it is
    ("MaxConnections", "max_connections", 10_000, 0, 1_000_000, "connections in total; 0 = no cap"),
    ("MaxConnectionsPerIp", "max_connections_per_ip", 256, 0, 1_000_000,
     "connections per source address; 0 = no cap"),
    ("NewConnectionsPerMinutePerIp", "connections_per_minute_per_ip", 60, 0, 1_000_000,
     "new connections per minute per source address (also the burst); 0 = no limit"),
    ("MaxPendingConnections", "max_pending", 512, 0, 1_000_000,
     "connections not authenticated yet, in total; 0 = no cap"),
    ("MaxPendingConnectionsPerIp", "max_pending_per_ip", 8, 0, 1_000_000,
     "connections not authenticated yet, per source address; 0 = no cap"),
    ("MaxBytesBeforeAuth", "max_bytes_before_auth", 16_384, 0, 1 << 30,
     "bytes a connection may send before it has authenticated; 0 = no cap"),
    ("AuthTimeout", "auth_timeout", 20, 1, 600, "seconds a connection may take to authenticate"),
    ("LoginTimeout", "login_timeout", 10, 1, 600,
     "seconds from the user name to a finished password login"),
    ("MaxKeysPerRelay", "max_keys_per_relay", 1000, 1, 1_000_000,
     "relay keys the router holds per relay; more are dropped"),
    ("ClientRequestsPerMinute", "client_requests_per_minute", 60, 0, 1_000_000,
     "connection requests per minute per client account (half of it at once); 0 = no limit"),
    ("HostRequestsPerMinute", "host_requests_per_minute", 120, 0, 1_000_000,
     "connection requests per minute to one host ID (half of it at once); 0 = no limit"),
    ("HostIdRequestsPerMinute", "host_id_requests_per_minute", 10, 0, 1_000_000,
     "new host IDs per minute per source address; 0 = no limit"),
    ("UnusedHostIdExpiryDays", "unused_host_id_days", 7, 0, 36_500,
     "days after which a host ID that was issued but never used again is deleted; 0 = never"),
)
_ROUTER_FIELDS: Final = _ROUTER_ORIGINAL_FIELDS + tuple(
    FieldInfo(key, f"{what}; an integer from {low} to {high}, default {default}")
    for key, _attr, default, low, high, what in ROUTER_GUARD_FIELDS
) + (FieldInfo("RelayAllowAnyAddress", "true or false (or 1 or 0); default false: with an empty "
               "RelayWhiteList only relays on this machine (loopback) may register; true: any "
               "address, as the original does"),
    FieldInfo("Database", "empty (router.db3 in the data directory), a postgresql://user:password@host:port/"
                          "dbname URL (routers sharing it form a cluster), or the absolute path of an SQLite "
                          "database"),
)


@dataclass(frozen=True)
class RouterConfig(SettingsFile):
    """router.json (its JSON part: generating keys and the database belong to the router's setup).

    The keys are kept out of ``repr`` so a logged config never leaks them.
    """

    listen_interface: str = ""
    port: int = 8060
    private_key: bytes = field(default=b"", repr=False)
    seed_key: bytes = field(default=b"", repr=False)
    client_white_list: tuple[IPAddress, ...] = ()
    host_white_list: tuple[IPAddress, ...] = ()
    admin_white_list: tuple[IPAddress, ...] = ()
    relay_white_list: tuple[IPAddress, ...] = ()
    relay_any_address: bool = False
    max_connections: int = 10_000
    max_connections_per_ip: int = 256
    connections_per_minute_per_ip: int = 60
    max_pending: int = 512
    max_pending_per_ip: int = 8
    max_bytes_before_auth: int = 16_384
    auth_timeout: int = 20
    login_timeout: int = 10
    max_keys_per_relay: int = 1000
    client_requests_per_minute: int = 60
    host_requests_per_minute: int = 120
    host_id_requests_per_minute: int = 10
    unused_host_id_days: int = 7
    http_listen: str = ""
    database: str = field(default="", repr=False)
    """Not in the original's router.json; written only when set. Kept out of ``repr``: it may hold
    a password."""

    FILE_NAME: ClassVar[str] = ROUTER_CONFIG_NAME
    FILE_MODE: ClassVar[int] = 0o600  # holds the private key and the seed key
    FIELDS: ClassVar[tuple[FieldInfo, ...]] = _ROUTER_FIELDS

    @classmethod
    def _from_reader(cls, reader: SettingsReader) -> Self:
        guard: dict[str, Any] = {attr: reader.uint(key, default, low, high)
                                 for key, attr, default, low, high, _what in ROUTER_GUARD_FIELDS}
        return dataclasses.replace(cls(
            listen_interface=reader.interface("ListenInterface"),
            port=reader.uint("Port", 8060, 1, 65535),
            private_key=reader.hex_bytes("PrivateKey", 32),
            seed_key=reader.hex_bytes("SeedKey", 64),
            client_white_list=reader.ip_list("ClientWhiteList"),
            host_white_list=reader.ip_list("HostWhiteList"),
            admin_white_list=reader.ip_list("AdminWhiteList"),
            relay_white_list=reader.ip_list("RelayWhiteList"),
            relay_any_address=reader.boolean("RelayAllowAnyAddress", False),
            http_listen=reader.listen("HttpListen"),
            database=reader.database("Database"),
        ), **guard)

    def to_settings(self) -> dict[str, str]:
        extra = {"Database": self.database} if self.database else {}
        return extra | {
            "AdminWhiteList": ip_list_text(self.admin_white_list),
            "ClientWhiteList": ip_list_text(self.client_white_list),
            "HostWhiteList": ip_list_text(self.host_white_list),
            "ListenInterface": self.listen_interface,
            "Port": str(self.port),
            "PrivateKey": self.private_key.hex().upper(),
            "RelayWhiteList": ip_list_text(self.relay_white_list),
            "SeedKey": self.seed_key.hex().upper(),
            **{key: str(getattr(self, attr)) for key, attr, default, _low, _high, _what in ROUTER_GUARD_FIELDS
               if getattr(self, attr) != default},
            **({"RelayAllowAnyAddress": "true"} if self.relay_any_address else {}),
        } | ({"HttpListen": self.http_listen} if self.http_listen else {})
