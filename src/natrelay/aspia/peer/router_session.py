"""What a Host and a Client say to the router once their channel is up (spec §8.1, §8.2), sans-IO.

Both classes take decrypted ``RouterToPeer`` payloads and return the payloads to send back plus
events for the shell; they never touch sockets or clocks. The router answers every request in
order and offers carry no request identifier, so the client matches offers to its
``connection_request``s first-in, first-out.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from dataclasses import dataclass

from natrelay.aspia.errors import AspiaProtocolError
from natrelay.aspia.messages import (
    CLIENT_FROM_ROUTER,
    HOST_FROM_ROUTER,
    check_relay_credentials,
    first_present,
    make_envelope,
    parse,
    serialize,
)
from natrelay.aspia.proto import router_common_pb2, router_peer_pb2

log = logging.getLogger(__name__)

ConnectionOffer = router_peer_pb2.ConnectionOffer
HostIdRequest = router_peer_pb2.HostIdRequest
HostIdResponse = router_peer_pb2.HostIdResponse
RelayCredentials = router_common_pb2.RelayCredentials


class OfferError(enum.IntEnum):
    """``ConnectionOffer.ErrorCode`` values (§5.3)."""

    SUCCESS = 0
    UNKNOWN_ERROR = 1
    PEER_NOT_FOUND = 2
    ACCESS_DENIED = 3
    KEY_POOL_EMPTY = 4


def _request(field: str, body: router_peer_pb2.HostIdRequest | router_peer_pb2.ConnectionRequest) -> bytes:
    return serialize(make_envelope(router_peer_pb2.PeerToRouter, field, body))


def check_offer_relay(credentials: router_common_pb2.RelayCredentials) -> None:
    """Refuse credentials a peer cannot use: §8.3's key checks plus a dialable address."""
    check_relay_credentials(credentials)
    if not credentials.host or not 0 < credentials.port < 65536:
        raise AspiaProtocolError(f"relay address {credentials.host!r}:{credentials.port} is not usable")


def _parse_envelope(payload: bytes) -> router_peer_pb2.RouterToPeer | None:
    # The C++ peers log an unparsable message and keep the connection (§5.6); so do we.
    try:
        return parse(router_peer_pb2.RouterToPeer, payload)
    except AspiaProtocolError as exc:
        log.info("ignored a malformed message from the router: %s", exc)
        return None


# --------------------------------------------------------------------------- host
@dataclass(frozen=True, slots=True)
class HostIdAssigned:
    """The router confirmed (or assigned) our host ID; ``key`` is the key to keep for it."""

    host_id: int
    key: bytes


@dataclass(frozen=True, slots=True)
class HostIdRefused:
    """The router answered the ID request with an error we cannot recover from by ourselves."""

    reason: str


@dataclass(frozen=True, slots=True)
class HostOffer:
    """A client wants us: meet it on this relay."""

    credentials: router_common_pb2.RelayCredentials
    host_id: int


HostEvent = HostIdAssigned | HostIdRefused | HostOffer


class HostRouterSession:
    """The host's side of a HOST router session: claim an ID, then wait for offers."""

    def __init__(self, key: bytes = b"") -> None:
        self.key = key
        self.host_id = 0

    def start(self) -> list[bytes]:
        """The first request: prove our stored key if we have one, else ask for a new ID."""
        if self.key:
            return [self._id_request(HostIdRequest.EXISTING_ID)]
        return [self._id_request(HostIdRequest.NEW_ID)]

    def _id_request(self, kind: router_peer_pb2.HostIdRequest.Type.ValueType) -> bytes:
        body = HostIdRequest(type=kind)
        if kind == HostIdRequest.EXISTING_ID:
            body.key = self.key
        return _request("host_id_request", body)

    def receive(self, payload: bytes) -> tuple[list[bytes], list[HostEvent]]:
        """One decrypted router message -> (replies, events)."""
        envelope = _parse_envelope(payload)
        if envelope is None:
            return [], []
        found = first_present(envelope, HOST_FROM_ROUTER)
        if found is None:
            log.info("ignored a router message with no field a host handles")
            return [], []
        name, body = found
        if name == "host_id_response":
            assert isinstance(body, HostIdResponse)
            return self._on_id_response(body)
        assert isinstance(body, ConnectionOffer)
        return [], self._on_offer(body)

    def _on_id_response(
        self, response: router_peer_pb2.HostIdResponse
    ) -> tuple[list[bytes], list[HostEvent]]:
        if response.error_code == HostIdResponse.NO_HOST_FOUND:
            # The router no longer knows our key (a new database): start over with a new ID.
            log.warning("the router does not know this host's key any more; asking for a new host ID")
            self.key = b""
            return [self._id_request(HostIdRequest.NEW_ID)], []
        if response.error_code != HostIdResponse.SUCCESS:
            return [], [HostIdRefused(f"the router could not assign a host ID (error {response.error_code})")]
        if response.host_id == 0:
            return [], [HostIdRefused("the router assigned the invalid host ID 0")]
        if response.key:
            self.key = response.key
        self.host_id = response.host_id
        return [], [HostIdAssigned(response.host_id, self.key)]

    def _on_offer(self, offer: router_peer_pb2.ConnectionOffer) -> list[HostEvent]:
        if offer.error_code != ConnectionOffer.SUCCESS or offer.peer_role != ConnectionOffer.HOST:
            log.info("ignored a connection offer (role %d, error %d)", offer.peer_role, offer.error_code)
            return []
        try:
            check_offer_relay(offer.relay)
        except AspiaProtocolError as exc:
            log.warning("ignored a connection offer with unusable relay credentials: %s", exc)
            return []
        return [HostOffer(offer.relay, offer.host_data.host_id)]


# ------------------------------------------------------------------------- client
@dataclass(frozen=True, slots=True)
class ClientOffer:
    """The answer to one ``connection_request``: credentials, or the router's error code."""

    error: OfferError
    credentials: router_common_pb2.RelayCredentials | None = None


class ClientRouterSession:
    """The client's side of a CLIENT router session: requests answered in order by offers."""

    def __init__(self) -> None:
        self._waiting: deque[int] = deque()

    @property
    def outstanding(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._waiting)

    def request(self, host_id: int) -> bytes:
        """A ``connection_request`` for ``host_id``; its answer is the next offer received."""
        if not 0 < host_id < 1 << 64:
            raise ValueError("host IDs are 1 .. 2**64-1")
        self._waiting.append(host_id)
        return _request("connection_request", router_peer_pb2.ConnectionRequest(host_id=host_id))

    def receive(self, payload: bytes) -> list[ClientOffer]:
        """One decrypted router message -> the offers it answers (zero or one)."""
        envelope = _parse_envelope(payload)
        if envelope is None:
            return []
        found = first_present(envelope, CLIENT_FROM_ROUTER)
        if found is None or found[0] != "connection_offer":
            log.info("ignored a router message a client does not expect")
            return []
        offer = found[1]
        assert isinstance(offer, ConnectionOffer)
        if not self._waiting:
            raise AspiaProtocolError("connection offer without a request")
        self._waiting.popleft()
        try:
            error = OfferError(offer.error_code)
        except ValueError:
            error = OfferError.UNKNOWN_ERROR
        if error is not OfferError.SUCCESS:
            return [ClientOffer(error)]
        if offer.peer_role != ConnectionOffer.CLIENT:
            raise AspiaProtocolError("the router offered us the host's role")
        try:
            check_offer_relay(offer.relay)
        except AspiaProtocolError as exc:
            log.warning("the router's relay credentials are unusable: %s", exc)
            return [ClientOffer(OfferError.UNKNOWN_ERROR)]
        return [ClientOffer(OfferError.SUCCESS, offer.relay)]
