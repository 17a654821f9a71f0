"""Host users (verifiers, case-insensitive lookup), password and users files, the state file."""

from __future__ import annotations

from pathlib import Path

import pytest

from natrelay.aspia import srp
from natrelay.aspia.peer.state import HostState, StateError, load_state, save_state
from natrelay.aspia.peer.users import (
    PORT_FORWARD_SESSION,
    Credentials,
    HostUsers,
    UsersError,
    read_password_file,
    read_users_file,
)


def test_port_forward_session_is_one_bit_outside_the_2_7_0_types() -> None:
    assert PORT_FORWARD_SESSION & (PORT_FORWARD_SESSION - 1) == 0
    assert PORT_FORWARD_SESSION & 31 == 0


def test_users_are_verifiers_found_case_insensitively_last_wins() -> None:
    users = HostUsers([Credentials("Bob", b"one"), Credentials("alice", b"a"), Credentials("BOB", b"two")])
    assert len(users) == 2
    record = users.lookup("bob")
    assert record is not None and users.lookup("bOB") == record
    assert record.name == "BOB" and record.sessions == PORT_FORWARD_SESSION and record.group == "4096"
    assert len(record.salt) == srp.NEW_USER_SALT_SIZE
    assert record.verifier == srp.make_verifier(srp.GROUPS["4096"], record.salt, "bob", b"two")
    assert users.lookup("carol") is None
    # Salts are fresh per user, so equal passwords do not give equal verifiers.
    twins = HostUsers([Credentials("x", b"p"), Credentials("y", b"p")])
    x, y = twins.lookup("x"), twins.lookup("y")
    assert x is not None and y is not None and x.salt != y.salt


def test_password_file_drops_one_line_break_only(tmp_path: Path) -> None:
    p = tmp_path / "pw"
    p.write_bytes(b"s3cret\n")
    assert read_password_file(p) == b"s3cret"
    p.write_bytes(b" spaced \r\n")
    assert read_password_file(p) == b" spaced "
    p.write_bytes(b"two\n\n")
    assert read_password_file(p) == b"two\n"
    for bad in (b"", b"\n"):
        p.write_bytes(bad)
        with pytest.raises(UsersError, match="empty"):
            read_password_file(p)
    p.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(UsersError, match="larger"):
        read_password_file(p)
    with pytest.raises(UsersError, match="cannot read"):
        read_password_file(tmp_path / "missing")


def test_users_file(tmp_path: Path) -> None:
    p = tmp_path / "users"
    p.write_text("# host users\n\nbob:pa:ss\n  carol : x\n")
    assert read_users_file(p) == [Credentials("bob", b"pa:ss"), Credentials("carol", b" x")]
    p.write_text("bob\n")
    with pytest.raises(UsersError, match=r"users:1: expected"):
        read_users_file(p)
    p.write_text("# nothing\n")
    with pytest.raises(UsersError, match="no user"):
        read_users_file(p)
    p.write_bytes(b"bob:\xff\n")
    with pytest.raises(UsersError, match="UTF-8"):
        read_users_file(p)


def test_state_round_trip_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    assert load_state(path) == HostState()
    state = HostState(2**64 - 1, bytes(range(256)) * 2)
    save_state(path, state)
    assert load_state(path) == state
    assert path.stat().st_mode & 0o777 == 0o600
    save_state(path, HostState(3, b"k"))
    assert load_state(path) == HostState(3, b"k")


@pytest.mark.parametrize("text", ["[]", "{", '{"host_id": "x"}', '{"host_key": "zz"}', '{"host_id": "-1"}'])
def test_broken_state_files_are_reported(tmp_path: Path, text: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateError, match="state file"):
        load_state(path)
