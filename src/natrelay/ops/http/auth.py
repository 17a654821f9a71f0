"""Who may use the HTTP surface: the router's administrators, by their stored SRP verifier.

The password typed into the login form (or sent with HTTP Basic) is turned into a verifier with
the account's own salt and group and compared in constant time with the one in ``router.db3``;
no password or new secret is stored anywhere. Only enabled accounts with the ADMIN session right
may log in. A login sets a random session cookie (HttpOnly, SameSite=Strict, Secure under TLS)
with its own CSRF token, which every state-changing request must echo in ``X-CSRF-Token``.

Checking a password costs one modular exponentiation (about 20 ms for the default 4096-bit
group), so unknown names cost the same as known ones, successful Basic credentials are
remembered for a few minutes (Prometheus scrapes every 15 s), and a source address with too many
recent failures is refused without a check.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from natrelay.aspia import srp
from natrelay.aspia.crypto import strip_leading_zeros
from natrelay.aspia.router.db import RouterDatabase
from natrelay.aspia.router.sessions import SessionKind
from natrelay.aspia.router.storage.base import RouterStorage

log = logging.getLogger("natrelay.http")

COOKIE = "natrelay_session"
SESSION_TTL = 8 * 3600.0
MAX_SESSIONS = 256
BASIC_CACHE_TTL = 300.0
MAX_BASIC_CACHE = 64
FAILURE_WINDOW = 60.0
MAX_FAILURES_PER_WINDOW = 10
MAX_CREDENTIAL = 1024
_DUMMY_SALT = b"\x01" * 64


class Authenticator(Protocol):
    def check(self, user: str, password: str) -> bool:
        """Whether ``password`` is right for the administrator ``user``."""
        ...


class RouterAccounts:
    """Administrators of a router's storage (``router.db3`` or PostgreSQL)."""

    def __init__(self, db: RouterStorage) -> None:
        self.db = db

    def check(self, user: str, password: str) -> bool:
        stored = self.db.find_user(user) if user else None
        secret = password.encode("utf-8", "surrogatepass")
        usable = (stored is not None and stored.enabled and bool(stored.sessions & SessionKind.ADMIN)
                  and stored.group in srp.GROUPS)
        if stored is None or not usable:
            # The same work as a real check, so timing does not tell which names exist.
            srp.make_verifier(srp.GROUPS[srp.NEW_USER_GROUP], _DUMMY_SALT, user or "-", secret)
            return False
        computed = srp.make_verifier(srp.GROUPS[stored.group], stored.salt, user, secret)
        return hmac.compare_digest(computed, strip_leading_zeros(stored.verifier))


@dataclass(slots=True)
class WebSession:
    user: str
    csrf: str
    expires: float


class Sessions:
    """Logged-in browsers by cookie value; bounded, expiring, in memory (a restart logs everyone out)."""

    def __init__(self, ttl: float = SESSION_TTL, cap: int = MAX_SESSIONS) -> None:
        self.ttl = ttl
        self.cap = cap
        self._by_token: OrderedDict[str, WebSession] = OrderedDict()

    def create(self, user: str, now: float) -> tuple[str, WebSession]:
        token = secrets.token_urlsafe(32)
        session = WebSession(user, secrets.token_urlsafe(24), now + self.ttl)
        self._by_token[token] = session
        while len(self._by_token) > self.cap:
            self._by_token.popitem(last=False)
        return token, session

    def get(self, token: str, now: float) -> WebSession | None:
        session = self._by_token.get(token)
        if session is None:
            return None
        if session.expires <= now:
            del self._by_token[token]
            return None
        return session

    def drop(self, token: str) -> None:
        self._by_token.pop(token, None)


class Gate:
    """Password checks with a memory: Basic credentials cached, failing addresses slowed down."""

    def __init__(self, accounts: Authenticator) -> None:
        self.accounts = accounts
        self.sessions = Sessions()
        self._basic: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._failures: dict[str, list[float]] = {}
        self._basic_secret = secrets.token_bytes(32)

    def throttled(self, ip: str, now: float) -> bool:
        recent = [t for t in self._failures.get(ip, ()) if t > now - FAILURE_WINDOW]
        if recent:
            self._failures[ip] = recent
        else:
            self._failures.pop(ip, None)
        return len(recent) >= MAX_FAILURES_PER_WINDOW

    def login(self, user: str, password: str, ip: str, now: float) -> bool:
        """Check a password; a failure is logged (one line, no trace) and counted for ``ip``."""
        if len(user) > MAX_CREDENTIAL or len(password) > MAX_CREDENTIAL:
            ok = False
        else:
            try:
                ok = self.accounts.check(user, password)
            except Exception as exc:  # a broken database must not become a 500 with a trace
                log.error("HTTP login of %r from %s could not be checked: %s", user, ip, exc)
                ok = False
        if not ok:
            log.warning("HTTP login refused for user %r from %s: wrong user name or password", user[:64], ip)
            if len(self._failures) > 4096:
                self._failures.clear()
            self._failures.setdefault(ip, []).append(now)
        return ok

    def basic(self, user: str, password: str, ip: str, now: float) -> bool:
        digest = hashlib.sha256(self._basic_secret + user.encode() + b"\0" + password.encode()).digest()
        cached = self._basic.get(digest)
        if cached is not None and cached[1] > now:
            return True
        if not self.login(user, password, ip, now):
            return False
        self._basic[digest] = (user, now + BASIC_CACHE_TTL)
        while len(self._basic) > MAX_BASIC_CACHE:
            self._basic.popitem(last=False)
        return True

    def basic_csrf(self, user: str) -> str:
        """The CSRF token of a Basic-authenticated user (stable, unguessable without our secret)."""
        return hmac.new(self._basic_secret, b"csrf\0" + user.encode(), hashlib.sha256).hexdigest()


def open_accounts(path: Path) -> tuple[RouterAccounts, RouterDatabase]:
    """The administrators of the router database at ``path`` (``--http-users``); the caller closes it.

    Raises :class:`~natrelay.aspia.router.db.DatabaseError` naming the file.
    """
    db = RouterDatabase.open(path)
    return RouterAccounts(db), db
