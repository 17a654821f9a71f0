"""Pending peers and the pairing rule (spec §7.3), with fake time and real relay-secret crypto."""

from __future__ import annotations

import pytest

from natrelay.aspia.crypto import seal_relay_secret
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.proto import relay_peer_pb2
from natrelay.aspia.relay.keypool import KeyPool, PoolKey
from natrelay.aspia.relay.pairing import Pairing, PeerInfo
from tests.unit.aspia.helpers import seeded_random

SECRET = relay_peer_pb2.PeerToRelay.Secret(
    random_data=b"r" * 16, client_address="10.0.0.2", client_user_name="alice", host_address="10.0.0.3",
    host_id=42,
).SerializeToString()


def _setup(max_peer_count: int = 3) -> tuple[KeyPool, list[PoolKey], Pairing[str]]:
    pool = KeyPool(max_peer_count, random_bytes=seeded_random(3))
    keys = pool.on_connected()
    return pool, keys, Pairing(pool, timeout=30.0)


def _offer(key: PoolKey, secret: bytes = SECRET) -> relay_peer_pb2.PeerToRelay:
    public, data = seal_relay_secret(key.pair.public_bytes, key.iv, secret)
    return relay_peer_pb2.PeerToRelay(key_id=key.key_id, public_key=public, data=data)


def test_two_peers_with_the_same_credentials_pair_and_consume_the_key() -> None:
    pool, keys, pairing = _setup()
    pairing.add("host", 0.0)
    pairing.add("client", 0.5)
    assert pairing.offer("host", _offer(keys[1])) is None
    paired = pairing.offer("client", _offer(keys[1]))
    assert paired is not None
    assert (paired.first, paired.second, paired.key_id) == ("host", "client", 1)
    assert paired.info == PeerInfo("10.0.0.2", "alice", "10.0.0.3", 42)
    assert len(pairing) == 0 and pool.get(1) is None and pool.active == 1


def test_a_third_peer_with_a_used_key_is_refused() -> None:
    _, keys, pairing = _setup()
    for conn in ("a", "b", "c"):
        pairing.add(conn, 0.0)
    pairing.offer("a", _offer(keys[0]))
    assert pairing.offer("b", _offer(keys[0])) is not None
    with pytest.raises(AspiaProtocolError) as err:
        pairing.offer("c", _offer(keys[0]))
    assert err.value.code is ErrorCode.ACCESS_DENIED
    assert "c" not in pairing


def test_different_secrets_on_one_key_do_not_pair() -> None:
    pool, keys, pairing = _setup()
    pairing.add("a", 0.0)
    pairing.add("b", 0.0)
    assert pairing.offer("a", _offer(keys[0], SECRET)) is None
    assert pairing.offer("b", _offer(keys[0], SECRET + b"x")) is None
    assert len(pairing) == 2 and pool.active == 0
    assert pairing.expired(29.9) == []
    assert sorted(pairing.expired(30.0)) == ["a", "b"]
    assert len(pairing) == 0


def test_unknown_key_and_forged_or_short_secret_are_refused() -> None:
    _, keys, pairing = _setup()
    pairing.add("x", 0.0)
    with pytest.raises(AspiaProtocolError):
        pairing.offer("x", relay_peer_pb2.PeerToRelay(key_id=77, public_key=b"k" * 32, data=b"d" * 40))
    assert "x" not in pairing
    bad = _offer(keys[0])
    for data in (b"abcde", bad.data[:-1] + bytes([bad.data[-1] ^ 1]), b""):  # §12 bug 7: short data
        pairing.add("y", 0.0)
        with pytest.raises(AspiaProtocolError) as err:
            pairing.offer("y", relay_peer_pb2.PeerToRelay(key_id=0, public_key=bad.public_key, data=data))
        assert err.value.code is ErrorCode.ACCESS_DENIED
        assert "y" not in pairing


def test_a_peer_that_leaves_while_waiting_is_forgotten() -> None:
    pool, keys, pairing = _setup()
    pairing.add("a", 0.0)
    pairing.offer("a", _offer(keys[0]))
    assert pairing.remove("a")
    assert not pairing.remove("a")
    pairing.add("b", 1.0)
    assert pairing.offer("b", _offer(keys[0])) is None  # waits: its partner is gone
    assert pairing.next_deadline() == 31.0
    assert pool.active == 0


def test_pending_deadline_counts_from_accept_not_from_the_offer() -> None:
    _, keys, pairing = _setup()
    pairing.add("slow", 10.0)
    assert pairing.next_deadline() == 40.0
    assert pairing.expired(40.0) == ["slow"]
    with pytest.raises(ValueError):
        pairing.offer("slow", _offer(keys[0]))


def test_unreadable_secret_still_pairs_without_details() -> None:
    _, keys, pairing = _setup()
    pairing.add("a", 0.0)
    pairing.add("b", 0.0)
    pairing.offer("a", _offer(keys[2], b"\xff\xff"))
    paired = pairing.offer("b", _offer(keys[2], b"\xff\xff"))
    assert paired is not None and paired.info == PeerInfo()
