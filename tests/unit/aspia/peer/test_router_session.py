"""The peers' router conversations (spec §8.1, §8.2) as pure message exchanges."""

from __future__ import annotations

import pytest

from natrelay.aspia.errors import AspiaProtocolError
from natrelay.aspia.messages import make_envelope, parse, serialize
from natrelay.aspia.peer.router_session import (
    ClientRouterSession,
    HostIdAssigned,
    HostIdRefused,
    HostOffer,
    HostRouterSession,
    OfferError,
)
from natrelay.aspia.proto import router_common_pb2, router_peer_pb2

Offer = router_peer_pb2.ConnectionOffer
IdRequest = router_peer_pb2.HostIdRequest
IdResponse = router_peer_pb2.HostIdResponse


def to_peer(field: str, body: object) -> bytes:
    return serialize(make_envelope(router_peer_pb2.RouterToPeer, field, body))  # type: ignore[arg-type]


def sent(payload: bytes) -> router_peer_pb2.PeerToRouter:
    return parse(router_peer_pb2.PeerToRouter, payload)


def credentials(**changes: object) -> router_common_pb2.RelayCredentials:
    key = router_common_pb2.RelayKey(key_id=3, type=1, encryption=1, public_key=bytes(range(32)),
                                     iv=bytes(12))
    c = router_common_pb2.RelayCredentials(host="127.0.0.1", port=8070, key=key, secret=b"opaque")
    for name, value in changes.items():
        if name.startswith("key_"):
            setattr(c.key, name[4:], value)
        else:
            setattr(c, name, value)
    return c


def test_new_host_asks_for_a_new_id_and_keeps_the_key() -> None:
    session = HostRouterSession()
    [request] = session.start()
    assert request == bytes.fromhex("12020801")  # the spec's §5.6 encoding of NEW_ID
    key = bytes(range(256)) * 2
    replies, events = session.receive(to_peer("host_id_response", IdResponse(host_id=5, key=key)))
    assert replies == []
    assert events == [HostIdAssigned(5, key)]
    assert (session.host_id, session.key) == (5, key)


def test_known_host_proves_its_key_and_starts_over_when_the_router_forgot_it() -> None:
    session = HostRouterSession(b"K" * 512)
    first = sent(session.start()[0]).host_id_request
    assert (first.type, first.key) == (IdRequest.EXISTING_ID, b"K" * 512)
    forgot = IdResponse(error_code=IdResponse.NO_HOST_FOUND)
    replies, events = session.receive(to_peer("host_id_response", forgot))
    assert events == []
    again = sent(replies[0]).host_id_request
    assert again.type == IdRequest.NEW_ID and not again.key
    # EXISTING_ID success carries no key: the stored one stays.
    session = HostRouterSession(b"K" * 512)
    _, events = session.receive(to_peer("host_id_response", IdResponse(host_id=9)))
    assert events == [HostIdAssigned(9, b"K" * 512)]


@pytest.mark.parametrize("response", [IdResponse(error_code=IdResponse.UNKNOWN), IdResponse(key=b"k")])
def test_unusable_id_responses_are_refusals(response: router_peer_pb2.HostIdResponse) -> None:
    _, events = HostRouterSession().receive(to_peer("host_id_response", response))
    assert len(events) == 1 and isinstance(events[0], HostIdRefused)


def test_host_accepts_only_successful_host_role_offers_with_usable_keys() -> None:
    session = HostRouterSession()
    good = Offer(peer_role=Offer.HOST, relay=credentials())
    good.host_data.host_id = 5
    assert session.receive(to_peer("connection_offer", good))[1] == [HostOffer(credentials(), 5)]
    for bad in (Offer(peer_role=Offer.CLIENT, relay=credentials()),
                Offer(peer_role=Offer.HOST, error_code=Offer.KEY_POOL_EMPTY),
                Offer(peer_role=Offer.HOST, relay=credentials(key_type=0)),
                Offer(peer_role=Offer.HOST, relay=credentials(key_iv=b"short")),
                Offer(peer_role=Offer.HOST, relay=credentials(secret=b"")),
                Offer(peer_role=Offer.HOST, relay=credentials(host="")),
                Offer(peer_role=Offer.HOST, relay=credentials(port=0)),
                Offer(peer_role=Offer.HOST, relay=credentials(port=70000))):
        assert session.receive(to_peer("connection_offer", bad)) == ([], [])


def test_host_ignores_garbage_and_foreign_messages() -> None:
    session = HostRouterSession()
    assert session.receive(b"\xff\xff\xff") == ([], [])
    status = router_peer_pb2.HostStatus(status=router_peer_pb2.HostStatus.STATUS_ONLINE)
    assert session.receive(to_peer("host_status", status)) == ([], [])


def test_host_id_response_wins_over_an_offer_in_the_same_envelope() -> None:
    envelope = router_peer_pb2.RouterToPeer()
    envelope.host_id_response.host_id = 4
    envelope.connection_offer.relay.CopyFrom(credentials())
    _, events = HostRouterSession().receive(serialize(envelope))
    assert events == [HostIdAssigned(4, b"")]


def test_client_matches_offers_to_requests_in_order() -> None:
    session = ClientRouterSession()
    assert session.request(5) == bytes.fromhex("0a09090500000000000000")  # §5.6 encoding
    session.request(6)
    session.request(7)
    assert session.outstanding == 3
    [first] = session.receive(to_peer("connection_offer", Offer(peer_role=Offer.CLIENT, relay=credentials())))
    assert first.error is OfferError.SUCCESS and first.credentials == credentials()
    [second] = session.receive(to_peer("connection_offer", Offer(peer_role=Offer.CLIENT,
                                                                 error_code=Offer.PEER_NOT_FOUND)))
    assert second.error is OfferError.PEER_NOT_FOUND and second.credentials is None
    [third] = session.receive(to_peer("connection_offer", Offer(peer_role=Offer.CLIENT, error_code=77)))
    assert third.error is OfferError.UNKNOWN_ERROR
    assert session.outstanding == 0
    session.request(8)  # success without a usable relay address is no success
    [fourth] = session.receive(to_peer("connection_offer", Offer(peer_role=Offer.CLIENT,
                                                                 relay=credentials(host=""))))
    assert fourth.error is OfferError.UNKNOWN_ERROR and fourth.credentials is None


def test_client_refuses_unrequested_or_wrong_role_offers() -> None:
    session = ClientRouterSession()
    with pytest.raises(AspiaProtocolError):
        session.receive(to_peer("connection_offer", Offer(peer_role=Offer.CLIENT, relay=credentials())))
    session.request(1)
    with pytest.raises(AspiaProtocolError):
        session.receive(to_peer("connection_offer", Offer(peer_role=Offer.HOST, relay=credentials())))


def test_client_ignores_host_status_and_garbage() -> None:
    session = ClientRouterSession()
    session.request(1)
    assert session.receive(to_peer("host_status", router_peer_pb2.HostStatus(status=2))) == []
    assert session.receive(b"\x0a\xff") == []
    assert session.outstanding == 1


@pytest.mark.parametrize("host_id", [0, 1 << 64])
def test_client_refuses_impossible_host_ids(host_id: int) -> None:
    with pytest.raises(ValueError):
        ClientRouterSession().request(host_id)
