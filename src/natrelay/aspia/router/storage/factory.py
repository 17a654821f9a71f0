"""Choosing the backend from the ``Database`` setting (router.json) or ``--database``.

Empty means the default: ``router.db3`` in the data directory. A ``postgresql://`` (or
``postgres://``) URL means PostgreSQL; anything else is the path of an SQLite database.
"""

from __future__ import annotations

from pathlib import Path

from natrelay.aspia.router.db import RouterDatabase
from natrelay.aspia.router.storage.base import RouterStorage
from natrelay.aspia.router.storage.postgres import PostgresStorage, is_postgres_url


def sqlite_path(database: str, default: Path) -> Path | None:
    """The SQLite file a setting names, or None when it names a PostgreSQL database."""
    if is_postgres_url(database):
        return None
    return Path(database) if database else default


def open_storage(database: str, default: Path) -> RouterStorage:
    """Open (and for PostgreSQL, migrate) the database a setting names; DatabaseError if not."""
    path = sqlite_path(database, default)
    if path is None:
        return PostgresStorage.open(database)
    return RouterDatabase.open(path)
