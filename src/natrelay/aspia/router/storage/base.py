"""What the router keeps in its database, independent of the engine that keeps it.

The router stores two things durably: user accounts (SRP verifiers, allowed session types) and
host IDs (the hash of each host's secret key, whose row ID is the host ID). Relays, their key
pools and statistics live only in the router's memory, as in the original: a relay re-uploads
its keys when it reconnects, so nothing about it needs to survive a restart.

Every method is one short statement and synchronous, because its callers are synchronous: the
SRP handshake asks for a user in the middle of a sans-IO step, and the session core answers a
host-ID request within one call. A backend bounds each statement's time (SQLite's busy timeout,
PostgreSQL's statement and connection timeouts) so a stuck database costs at most that long and
fails into :class:`DatabaseError`, which the callers answer as the protocol's internal error.

New operations go here as an abstract method (so both backends must provide them) plus one
implementation per backend module; the shared test suite runs every case against both.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from natrelay.aspia.handshake_server import USER_FLAG_ENABLED, UserRecord

MAX_NAME_LENGTH: Final = 64


class DatabaseError(Exception):
    """The database is missing, unreadable or not a router database; the message says which."""


class UserExistsError(DatabaseError):
    """An account with that name is already stored."""


def valid_user_name(name: str) -> bool:
    """The router's rule for account names: 1-64 characters, letters, digits or ``. _ - @`` (§6.7)."""
    return 1 <= len(name) <= MAX_NAME_LENGTH and all(c.isalnum() or c in "._-@" for c in name)


@dataclass(frozen=True, slots=True)
class StoredUser:
    """One ``users`` row; ``entry_id`` is 0 for a user not stored yet."""

    name: str
    group: str
    salt: bytes
    verifier: bytes
    sessions: int
    flags: int = USER_FLAG_ENABLED
    entry_id: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.flags & USER_FLAG_ENABLED)

    def record(self) -> UserRecord:
        return UserRecord(self.name, self.group, self.salt, self.verifier, self.sessions, self.flags)

    def complete(self) -> bool:
        """Whether every field the handshake needs is filled in (the admin protocol's check)."""
        return bool(self.name and self.group and self.salt and self.verifier)


@dataclass(frozen=True, slots=True)
class StoredHost:
    """One ``hosts`` row: the host ID and the SHA-512 hash of the host's secret key."""

    host_id: int
    key_hash: bytes


@dataclass(frozen=True, slots=True)
class HostActivity:
    """One ``host_activity`` row: when a host ID was issued and whether it was presented again."""

    host_id: int
    issued: float
    used: bool


def i32(value: int) -> int:
    """``sessions``/``flags`` are stored as 32-bit signed integers, as the C++ side writes them."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def row_to_user(row: tuple[object, ...]) -> StoredUser | None:
    """A row as the C++ router reads it: any wrongly typed or empty column skips the row."""
    entry_id, name, group, salt, verifier, sessions, flags = row
    if isinstance(salt, memoryview):
        salt = bytes(salt)
    if isinstance(verifier, memoryview):
        verifier = bytes(verifier)
    if not (isinstance(entry_id, int) and isinstance(name, str) and isinstance(group, str)
            and isinstance(salt, bytes) and isinstance(verifier, bytes)
            and isinstance(sessions, int) and isinstance(flags, int)):
        return None
    if not (name and group and salt and verifier):
        return None
    return StoredUser(name, group, salt, verifier, sessions & 0xFFFFFFFF, flags & 0xFFFFFFFF, entry_id)


class RouterStorage(abc.ABC):
    """Users and host IDs of one router, or of every router sharing the database."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Where the data lives, for log lines: a file path or a URL without its password."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the object is unusable afterwards."""

    # ---------------------------------------------------------------- users
    @abc.abstractmethod
    def find_user(self, name: str) -> StoredUser | None:
        """Exact, case-sensitive lookup by name, as the C++ router does (§4.8, §12 bug 22).

        A database failure reads as "no such user": the login then takes the fake-user path.
        """

    @abc.abstractmethod
    def list_users(self) -> list[StoredUser]:
        """Every complete account, in entry-ID order."""

    @abc.abstractmethod
    def add_user(self, user: StoredUser) -> int:
        """Insert and return the new entry ID; :class:`UserExistsError` for a taken name."""

    @abc.abstractmethod
    def modify_user(self, user: StoredUser) -> bool:
        """Overwrite every column of row ``user.entry_id``; False if there is no such row."""

    @abc.abstractmethod
    def remove_user(self, entry_id: int) -> bool:
        """Delete by entry ID; False if there was no such row."""

    @abc.abstractmethod
    def remove_user_by_name(self, name: str) -> bool:
        """Delete by exact name; False if there was no such row."""

    # ---------------------------------------------------------------- hosts
    @abc.abstractmethod
    def add_host(self, key_hash: bytes) -> int:
        """Store a new host key hash; its row ID is the new host ID (starting at 1).

        IDs come from one sequence, so routers sharing a database never hand out the same one.
        """

    @abc.abstractmethod
    def find_host(self, key_hash: bytes) -> int | None:
        """The host ID stored for a key hash, or None."""

    @abc.abstractmethod
    def iter_hosts(self) -> Iterator[StoredHost]:
        """Every host row in ID order (for copying a database; not used while serving)."""

    @abc.abstractmethod
    def touch_host(self, host_id: int, now: float, *, new: bool) -> bool:
        """Record that ``host_id`` was just issued (``new``) or presented again (it is used).

        ``now`` is wall-clock Unix seconds. Best effort: False on a database failure instead of
        an exception, because this bookkeeping must never cost a host its answer.
        """

    @abc.abstractmethod
    def expire_unused_hosts(self, issued_before: float) -> int:
        """Delete host IDs issued before ``issued_before`` and never presented again; how many.

        Issue 8: anonymous host-ID requests would otherwise grow the table without limit. IDs
        with no issue record (issued by the original router) never expire.
        :class:`DatabaseError` on failure, with nothing deleted.
        """

    @abc.abstractmethod
    def host_activity(self) -> list[HostActivity]:
        """Every issue record, in ID order (for copying a database; not used while serving)."""

    def __enter__(self) -> RouterStorage:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
