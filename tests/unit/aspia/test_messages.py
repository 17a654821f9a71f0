"""Aspia protobuf schemas against the spec's tables, envelopes and the relay's first message (§4.2, §5)."""

from __future__ import annotations

import struct

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from natrelay.aspia import messages as msg
from natrelay.aspia.crypto import X25519KeyPair, open_relay_secret
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.proto import (
    common_pb2,
    key_exchange_pb2,
    relay_peer_pb2,
    router_admin_pb2,
    router_common_pb2,
    router_peer_pb2,
    router_relay_pb2,
)

MODULES = [
    common_pb2,
    key_exchange_pb2,
    router_common_pb2,
    router_relay_pb2,
    router_peer_pb2,
    relay_peer_pb2,
    router_admin_pb2,
]

# Transcribed from the spec's tables: "Message: field number type, ...". Types name the proto
# type; enums and messages are named relative to package `proto`.
SPEC_FIELDS = """
Version: major 1 uint32, minor 2 uint32, patch 3 uint32, revision 4 uint32
ClientHello: encryption 1 uint32, identify 2 Identify, public_key 3 bytes, iv 4 bytes, version 5 Version
ServerHello: encryption 1 Encryption, iv 2 bytes, version 3 Version
SrpIdentify: username 1 string
SrpServerKeyExchange: number 1 bytes, generator 2 bytes, salt 3 bytes, B 4 bytes, iv 5 bytes
SrpClientKeyExchange: A 1 bytes, iv 2 bytes
SessionChallenge: version 1 Version, session_types 2 uint32, cpu_cores 3 uint32, os_name 4 string,
    computer_name 5 string, arch 6 string, display_name 7 string
SessionResponse: version 1 Version, session_type 2 uint32, cpu_cores 3 uint32, os_name 4 string,
    computer_name 5 string, arch 6 string, display_name 7 string
RelayKey: key_id 1 uint32, type 2 RelayKey.Type, encryption 3 RelayKey.Encryption, public_key 4 bytes,
    iv 5 bytes
RelayCredentials: host 1 string, port 2 uint32, key 3 RelayKey, secret 4 bytes
PeerConnection: session_id 1 uint64, status 2 PeerStatus, client_address 3 string, client_user_name 4 string,
    host_address 5 string, host_id 6 fixed64, bytes_transferred 7 int64, duration 8 int64, idle_time 9 int64
PeerConnectionRequest: relay_session_id 1 int64, type 2 PeerConnectionRequestType, peer_session_id 3 uint64
RelayKeyPool: peer_host 1 string, peer_port 2 uint32, key 3 repeated:RelayKey
RelayKeyUsed: key_id 1 uint32
RelayStat: peer_connection 1 repeated:PeerConnection, uptime 2 int64
RelayToRouter: key_pool 1 RelayKeyPool, relay_stat 2 RelayStat
RouterToRelay: key_used 1 RelayKeyUsed, peer_connection_request 2 PeerConnectionRequest
HostIdRequest: type 1 HostIdRequest.Type, key 2 bytes
ResetHostId: host_id 1 fixed64
HostIdResponse: host_id 1 fixed64, key 2 bytes, error_code 3 HostIdResponse.ErrorCode
ConnectionRequest: host_id 1 fixed64
HostOfferData: host_id 1 fixed64
ConnectionOffer: peer_role 1 ConnectionOffer.PeerRole, error_code 2 ConnectionOffer.ErrorCode,
    relay 3 RelayCredentials, host_data 4 HostOfferData
CheckHostStatus: host_id 1 fixed64
HostStatus: status 1 HostStatus.Status
RouterToPeer: host_id_response 1 HostIdResponse, connection_offer 2 ConnectionOffer, host_status 3 HostStatus
PeerToRouter: connection_request 1 ConnectionRequest, host_id_request 2 HostIdRequest,
    reset_host_id 3 ResetHostId, check_host_status 4 CheckHostStatus
PeerToRelay: key_id 1 uint32, public_key 2 bytes, data 3 bytes
PeerToRelay.Secret: random_data 1 bytes, client_address 2 string, client_user_name 3 string,
    host_address 4 string, host_id 5 fixed64
Session: session_id 1 int64, session_type 2 RouterSession, session_data 3 bytes, timepoint 4 fixed64,
    ip_address 5 string, version 6 Version, os_name 7 string, computer_name 8 string, architecture 9 string
SessionRequest: type 1 SessionRequestType, session_id 2 int64
SessionResult: type 1 SessionRequestType, error_code 2 SessionResult.ErrorCode
SessionListRequest: dummy 1 int64
SessionList: error_code 1 SessionList.ErrorCode, session 2 repeated:Session
HostSessionData: host_id 1 repeated:fixed64
RelaySessionData: pool_size 1 uint64, relay_stat 2 RelaySessionData.RelayStat
RelaySessionData.RelayStat: peer_connection 1 repeated:PeerConnection, uptime 2 int64
User: entry_id 1 int64, name 2 string, group 3 string, salt 4 bytes, verifier 5 bytes, sessions 6 uint32,
    flags 7 uint32
UserListRequest: dummy 1 uint32
UserList: error_code 1 UserList.ErrorCode, user 2 repeated:User
UserRequest: type 1 UserRequestType, user 2 User
UserResult: type 1 UserRequestType, error_code 2 UserResult.ErrorCode
RouterToAdmin: session_list 1 SessionList, session_result 2 SessionResult, user_list 3 UserList,
    user_result 4 UserResult
AdminToRouter: session_list_request 1 SessionListRequest, session_request 2 SessionRequest,
    user_list_request 3 UserListRequest, user_request 4 UserRequest,
    peer_connection_request 5 PeerConnectionRequest
"""

# Enum numbers from §4.1 and §5; value names are ours, so only the numbers are checked.
SPEC_ENUMS = {
    "Identify": [0, 1],
    "Encryption": [0, 1, 2],
    "SessionType": [0, 1, 2, 4, 8, 16, 31],
    "HostChannelId": [0, 1],
    "RouterSession": [0, 1, 2, 4, 8],
    "RouterChannelId": [0],
    "RelayKey.Type": [0, 1],
    "RelayKey.Encryption": [0, 1],
    "PeerStatus": [0, 1, 2],
    "PeerConnectionRequestType": [0, 1],
    "HostIdRequest.Type": [0, 1, 2],
    "HostIdResponse.ErrorCode": [0, 1, 2],
    "ConnectionOffer.PeerRole": [0, 1],
    "ConnectionOffer.ErrorCode": [0, 1, 2, 3, 4],
    "HostStatus.Status": [0, 1, 2],
    "SessionRequestType": [0, 1],
    "SessionResult.ErrorCode": [0, 1, 2, 3],
    "SessionList.ErrorCode": [0, 1],
    "UserList.ErrorCode": [0, 1],
    "UserRequestType": [0, 1, 2, 3],
    "UserResult.ErrorCode": [0, 1, 2, 3],
}

_SCALAR = {
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_STRING: "string",
}


def _spec_table() -> dict[str, dict[str, tuple[int, str]]]:
    """Parse SPEC_FIELDS: a record starts at a word ending in ':' and lists "name number type"."""
    records: list[list[str]] = []
    for word in SPEC_FIELDS.split():
        if word.endswith(":") and not word.startswith("repeated:"):
            records.append([word[:-1]])
        else:
            records[-1].append(word)
    table: dict[str, dict[str, tuple[int, str]]] = {}
    for name, *rest in records:
        table[name] = {}
        for spec in " ".join(rest).split(","):
            field, number, kind = spec.split()
            table[name][field] = (int(number), kind)
    return table


def _describe(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        kind = field.message_type.full_name.removeprefix("proto.")
    elif field.enum_type is not None:
        kind = field.enum_type.full_name.removeprefix("proto.")
    else:
        kind = _SCALAR[field.type]
    return f"repeated:{kind}" if field.is_repeated else kind


def _all_messages() -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}

    def walk(desc: Descriptor) -> None:
        found[desc.full_name.removeprefix("proto.")] = desc
        for nested in desc.nested_types:
            walk(nested)

    for module in MODULES:
        assert module.DESCRIPTOR.package == "proto"
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            walk(desc)
    return found


# natrelay's extensions of the spec's messages, far from the spec's numbers (a relay registered
# with several routers of a cluster takes free keys back; never sent to a relay's only router).
EXTENSION_FIELDS = """
RelayKeyWithdraw: key_id 1 repeated:uint32
RelayKeysWithdrawn: key_id 1 repeated:uint32
RelayToRouter: key_withdraw 1001 RelayKeyWithdraw
RouterToRelay: keys_withdrawn 1001 RelayKeysWithdrawn
"""


def _extensions() -> dict[str, dict[str, tuple[int, str]]]:
    table: dict[str, dict[str, tuple[int, str]]] = {}
    for line in EXTENSION_FIELDS.strip().splitlines():
        name, field, number, kind = line.replace(":", "", 1).split()
        table.setdefault(name, {})[field] = (int(number), kind)
    return table


def test_every_message_has_the_spec_field_numbers_and_types() -> None:
    spec = _spec_table()
    for name, fields in _extensions().items():
        if name in spec:  # a field added to a spec message: far numbers, no name taken
            assert all(number > 1000 for number, _ in fields.values()), name
            assert not set(fields) & set(spec[name]), name
        spec.setdefault(name, {}).update(fields)
    ours = _all_messages()
    assert sorted(ours) == sorted(spec)
    for name, desc in ours.items():
        actual = {f.name: (f.number, _describe(f)) for f in desc.fields}
        assert actual == spec[name], name


def test_every_enum_has_the_spec_numbers() -> None:
    found: dict[str, list[int]] = {}
    for module in MODULES:
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            found[enum.full_name.removeprefix("proto.")] = [v.number for v in enum.values]
        for desc in _all_messages().values():
            for enum in desc.enum_types:
                found[enum.full_name.removeprefix("proto.")] = [v.number for v in enum.values]
    assert found == SPEC_ENUMS


def test_fields_are_proto3_singular_without_presence_for_scalars() -> None:
    hello = key_exchange_pb2.ClientHello(encryption=1, identify=key_exchange_pb2.IDENTIFY_SRP)
    assert hello.SerializeToString() == b"\x08\x01"  # identify SRP (0) is omitted on the wire


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (
            router_peer_pb2.PeerToRouter(
                host_id_request=router_peer_pb2.HostIdRequest(type=router_peer_pb2.HostIdRequest.NEW_ID)
            ),
            "12020801",
        ),
        (
            router_peer_pb2.PeerToRouter(connection_request=router_peer_pb2.ConnectionRequest(host_id=5)),
            "0a09090500000000000000",
        ),
        (key_exchange_pb2.SessionResponse(session_type=8), "1008"),
        (
            key_exchange_pb2.ClientHello(
                encryption=1,
                identify=key_exchange_pb2.IDENTIFY_ANONYMOUS,
                version=msg.ASPIA_VERSION.to_proto(),
            ),
            "080110012a0708021007208226",
        ),
    ],
)
def test_spec_encoding_examples(message: object, wire: str) -> None:
    assert msg.serialize(message).hex() == wire  # type: ignore[arg-type]


def test_empty_submessage_envelope_is_present_on_the_wire() -> None:
    used = router_relay_pb2.RelayKeyUsed(key_id=0)
    envelope = msg.make_envelope(router_relay_pb2.RouterToRelay, "key_used", used)
    assert msg.serialize(envelope) == b"\x0a\x00"
    parsed = msg.parse(router_relay_pb2.RouterToRelay, b"\x0a\x00")
    found = msg.first_present(parsed, msg.RELAY_FROM_ROUTER)
    assert found is not None and found[0] == "key_used"
    assert found[1] == router_relay_pb2.RelayKeyUsed(key_id=0)


def test_serialize_refuses_all_default_message() -> None:
    with pytest.raises(ValueError):
        msg.serialize(router_relay_pb2.RelayKeyUsed(key_id=0))


def test_receiver_priority_takes_the_first_present_field() -> None:
    envelope = router_peer_pb2.PeerToRouter(
        check_host_status=router_peer_pb2.CheckHostStatus(host_id=1),
        connection_request=router_peer_pb2.ConnectionRequest(host_id=2),
        host_id_request=router_peer_pb2.HostIdRequest(type=router_peer_pb2.HostIdRequest.NEW_ID),
    )
    assert msg.first_present(envelope, msg.ROUTER_FROM_CLIENT)[0] == "connection_request"  # type: ignore[index]
    assert msg.first_present(envelope, msg.ROUTER_FROM_HOST)[0] == "host_id_request"  # type: ignore[index]
    only_reset = router_peer_pb2.PeerToRouter(reset_host_id=router_peer_pb2.ResetHostId(host_id=3))
    assert msg.first_present(only_reset, msg.ROUTER_FROM_CLIENT) is None  # "unhandled", not an error
    admin = router_admin_pb2.AdminToRouter(
        peer_connection_request=router_common_pb2.PeerConnectionRequest(relay_session_id=1),
        user_list_request=router_admin_pb2.UserListRequest(),
    )
    assert msg.first_present(admin, msg.ROUTER_FROM_ADMIN)[0] == "user_list_request"  # type: ignore[index]


@pytest.mark.parametrize("data", [b"\x0a", b"\x0a\x05\x01", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"])
def test_parse_errors_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(AspiaProtocolError):
        msg.parse(router_peer_pb2.PeerToRouter, data)


def test_parse_rejects_invalid_utf8_in_strings() -> None:
    with pytest.raises(AspiaProtocolError):
        msg.parse(key_exchange_pb2.SrpIdentify, b"\x0a\x02\xc3\x28")


def test_parse_bounds_size_before_parsing() -> None:
    with pytest.raises(AspiaProtocolError):
        msg.parse(relay_peer_pb2.PeerToRelay, b"\x08\x01" * 10, max_size=19)
    assert msg.parse(relay_peer_pb2.PeerToRelay, b"\x08\x01" * 10, max_size=20).key_id == 1


def test_unknown_fields_are_tolerated() -> None:
    # A newer peer may add fields; proto3 keeps them rather than failing.
    assert msg.parse(router_relay_pb2.RelayKeyUsed, b"\x08\x07\x50\x01").key_id == 7


def test_version_ordering_is_component_wise() -> None:
    v = msg.Version
    assert v(2, 7, 0, 4866) > v(2, 7) >= v(2, 7, 0, 0)
    assert v(2, 6, 99) < v(2, 7) < v(2, 7, 0, 1) < v(3, 0)
    assert msg.Version.from_proto(msg.ASPIA_VERSION.to_proto()) == msg.ASPIA_VERSION
    assert str(msg.ASPIA_VERSION) == "2.7.0.4866"


def test_hello_and_late_version_rules() -> None:
    hello = key_exchange_pb2.ClientHello(encryption=1)
    assert msg.hello_version(hello) is None
    hello.version.CopyFrom(msg.Version(2, 6).to_proto())
    with pytest.raises(AspiaProtocolError) as info:
        msg.hello_version(hello)
    assert info.value.code is ErrorCode.PROTOCOL_ERROR
    hello.version.CopyFrom(msg.Version(2, 7).to_proto())
    assert msg.hello_version(hello) == msg.Version(2, 7)

    def late(version: msg.Version | None) -> msg.Version:
        response = key_exchange_pb2.SessionResponse(session_type=1)
        if version is not None:
            response.version.CopyFrom(version.to_proto())
        return msg.late_version(response)

    assert late(msg.Version(2, 6, 1)) == msg.Version(2, 6, 1)
    assert late(msg.Version(2, 3)) == msg.Version(2, 3)
    for too_new in (msg.Version(2, 7), msg.Version(3, 0)):
        with pytest.raises(AspiaProtocolError) as info:
            late(too_new)
        assert info.value.code is ErrorCode.PROTOCOL_ERROR
    for too_old in (msg.Version(2, 2, 9), None):
        with pytest.raises(AspiaProtocolError) as info:
            late(too_old)
        assert info.value.code is ErrorCode.VERSION_ERROR


# --- the relay's first message ----------------------------------------------------------------

RELAY_KEY = X25519KeyPair.from_private_bytes(bytes(range(1, 33)))


def _credentials(**overrides: object) -> router_common_pb2.RelayCredentials:
    key = router_common_pb2.RelayKey(
        key_id=7,
        type=router_common_pb2.RelayKey.TYPE_X25519,
        encryption=router_common_pb2.RelayKey.ENCRYPTION_CHACHA20_POLY1305,
        public_key=RELAY_KEY.public_bytes,
        iv=bytes(range(0x30, 0x3C)),
    )
    creds = router_common_pb2.RelayCredentials(host="127.0.0.1", port=8070, key=key, secret=b"SECRET-BYTES")
    for name, value in overrides.items():
        target = creds.key if hasattr(creds.key, name) and name != "secret" else creds
        setattr(target, name, value)
    return creds


def test_build_peer_to_relay_is_length_prefixed_and_decryptable() -> None:
    peer_private = bytes(range(0x51, 0x71))
    wire = msg.build_peer_to_relay(_credentials(), lambda n: peer_private[:n])
    (length,) = struct.unpack(">I", wire[:4])
    assert length == len(wire) - 4
    message = msg.parse(relay_peer_pb2.PeerToRelay, wire[4:])
    assert message.key_id == 7
    assert message.data.hex() == "002695d996b2dd9b4e7f3eb2006d941323dd9f0b80e5c46a4e1c27fe"  # §8.3 vector
    secret = open_relay_secret(RELAY_KEY, bytes(range(0x30, 0x3C)), message.public_key, message.data)
    assert secret == b"SECRET-BYTES"


@pytest.mark.parametrize(
    "overrides",
    [
        {"type": router_common_pb2.RelayKey.TYPE_UNKNOWN},
        {"encryption": router_common_pb2.RelayKey.ENCRYPTION_UNKNOWN},
        {"public_key": b""},
        {"iv": b""},
        {"iv": bytes(11)},
        {"secret": b""},
    ],
)
def test_bad_relay_credentials_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(AspiaProtocolError):
        msg.build_peer_to_relay(_credentials(**overrides))


def test_reader_takes_exactly_the_message_and_keeps_early_data() -> None:
    body = relay_peer_pb2.PeerToRelay(key_id=3, public_key=b"k" * 32, data=b"d" * 20).SerializeToString()
    wire = struct.pack(">I", len(body)) + body
    reader = msg.PeerToRelayReader()
    assert reader.wanted == 4
    assert reader.feed(wire[:2]) is None
    assert reader.wanted == 2
    assert reader.feed(wire[2:6]) is None
    assert reader.wanted == len(body) - 2
    done = reader.feed(wire[6:] + b"early ClientHello")
    assert done is not None and done.key_id == 3
    assert reader.wanted == 0
    assert reader.leftover == b"early ClientHello"
    assert reader.feed(b" more") is None
    assert reader.leftover == b"early ClientHello more"


@pytest.mark.parametrize("length", [0, msg.MAX_PEER_TO_RELAY_SIZE + 1, 0xFFFFFFFF])
def test_reader_refuses_lengths_before_reading_the_body(length: int) -> None:
    with pytest.raises(AspiaProtocolError):
        msg.PeerToRelayReader().feed(struct.pack(">I", length))


def test_reader_accepts_exactly_one_mebibyte() -> None:
    body = relay_peer_pb2.PeerToRelay(data=b"x" * (msg.MAX_PEER_TO_RELAY_SIZE - 4)).SerializeToString()
    assert len(body) == msg.MAX_PEER_TO_RELAY_SIZE
    reader = msg.PeerToRelayReader()
    assert reader.feed(struct.pack(">I", len(body))) is None
    assert reader.wanted == msg.MAX_PEER_TO_RELAY_SIZE
    assert reader.feed(body) is not None


def test_reader_refuses_unparsable_body() -> None:
    with pytest.raises(AspiaProtocolError):
        msg.PeerToRelayReader().feed(struct.pack(">I", 2) + b"\x0a\x05")
