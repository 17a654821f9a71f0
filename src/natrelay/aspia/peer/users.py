"""The Host's own user accounts, kept only in memory as SRP verifiers.

A Client proves it knows a host user's password with SRP (spec §8.1 step 5), so the host needs
a verifier per user, never the password: it is derived once at start-up with a fresh random
salt and the password is dropped. User names are matched case-insensitively with Unicode case
folding and the last of several matching entries wins, as the C++ host does (§8.1).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from natrelay.aspia import srp
from natrelay.aspia.crypto import RandomBytes
from natrelay.aspia.handshake_server import UserRecord

PORT_FORWARD_SESSION = 0x20
"""The session type a natrelay Client requests and a natrelay Host grants.

Aspia 2.7.0 defines no port-forwarding session (its types are the bits of 31, desktop, file
transfer, system info and chat), and our byte stream is none of those protocols. So we use the
first bit 2.7.0 leaves undefined: a C++ 2.7.0 client can never open it on our host, and our
client asking a C++ host for it gets a clean SESSION_DENIED instead of a desktop session it
would misread. It still has exactly one bit set, as §4.9 requires."""

MAX_PASSWORD_FILE = 64 * 1024
MAX_USERS_FILE = 1024 * 1024


class UsersError(ValueError):
    """A user definition that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password as the user gave them (client side, or before hashing)."""

    name: str
    password: bytes


def read_password_file(path: str | os.PathLike[str]) -> bytes:
    """The password stored in ``path``: its bytes without one trailing line break.

    Passwords come from files, never argv, so that they do not show up in ``ps``; an editor's
    final newline is not part of the password.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_PASSWORD_FILE + 1)
    except OSError as exc:
        raise UsersError(f"cannot read password file {p}: {exc.strerror or exc}") from None
    if len(data) > MAX_PASSWORD_FILE:
        raise UsersError(f"password file {p} is larger than {MAX_PASSWORD_FILE} bytes")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise UsersError(f"password file {p} is empty")
    return data


def read_users_file(path: str | os.PathLike[str]) -> list[Credentials]:
    """Host users from a text file: one ``name:password`` per line; ``#`` comments, blank lines.

    The password is everything after the first colon, so it may contain colons itself.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_USERS_FILE + 1)
    except OSError as exc:
        raise UsersError(f"cannot read users file {p}: {exc.strerror or exc}") from None
    if len(raw) > MAX_USERS_FILE:
        raise UsersError(f"users file {p} is larger than {MAX_USERS_FILE} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsersError(f"users file {p} is not UTF-8: {exc}") from None
    users: list[Credentials] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        name = name.strip()
        if not sep or not name or not password:
            raise UsersError(f"{p}:{number}: expected 'name:password'")
        users.append(Credentials(name, password.encode("utf-8")))
    if not users:
        raise UsersError(f"users file {p} defines no user")
    return users


class HostUsers:
    """Lookup table for the host's SRP server: case-folded name -> verifier record."""

    def __init__(self, users: Iterable[Credentials], *, sessions: int = PORT_FORWARD_SESSION,
                 random_bytes: RandomBytes | None = None) -> None:
        rand = random_bytes or os.urandom
        self._table: dict[str, UserRecord] = {}
        for user in users:
            if not user.name:
                raise UsersError("a host user needs a name")
            salt = rand(srp.NEW_USER_SALT_SIZE)
            group, salt, verifier = srp.new_account(user.name, user.password, salt)
            # Later entries replace earlier ones: "if several users match, the last one wins".
            self._table[user.name.casefold()] = UserRecord(user.name, group, salt, verifier, sessions)

    def __len__(self) -> int:
        return len(self._table)

    @property
    def names(self) -> list[str]:
        return sorted(record.name for record in self._table.values())

    def lookup(self, name: str) -> UserRecord | None:
        """The record for ``name`` (case-insensitive), or None: the handshake then fakes one."""
        return self._table.get(name.casefold())
