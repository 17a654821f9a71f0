"""One accepted router connection: admission, handshake and login, then the session's messages.

The server (:mod:`natrelay.aspia.router.server`) owns the shared state; a
:class:`RouterConnection` decides what happens to *its* connection up to an open router session,
then hands each decrypted message to the server's core. It authenticates, applies the white lists,
and explains failed handshakes in the log in the terms an operator can act on (wrong router key,
wrong password), since the peer is never told why (spec §4.9).

SRP logins are expensive (an unknown user name costs about a second of CPU in the 8192-bit fake
group), and they run on the event loop, so password logins in progress are capped in total and
per source address, and a login beyond the cap is refused at its first SRP step, before any
expensive arithmetic. The cap counts only SRP logins: anonymous relay and host handshakes are
cheap, and idle connections that never start a login must not lock relays and hosts out. Fake
verifiers are cached per name (by the server), so repeating a probe costs no extra verifier
computation.

Every connection also passes the flood guard (:mod:`natrelay.aspia.router.guard`): new
connections per minute per address, connections and unauthenticated connections in total and
per address (a full unauthenticated total evicts the biggest holder's oldest connection for a
newcomer: the guard hands it back, :meth:`RouterConnection.evict` resets it), bytes before
authentication, a short deadline to authenticate and a shorter one
for a started password login (half-open logins from a few addresses used to lock every password
login out for a minute). Refusals are counted by reason and logged at debug level, rate-limited.

Relays may register only from loopback unless RelayWhiteList lists addresses or the operator
sets RelayAllowAnyAddress (the original's behaviour): a relay receives every pairing's sealed
secrets, so "anyone with the public key" is not a safe default.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from natrelay.aspia.channel import Channel
from natrelay.aspia.connection import ChannelProtocol
from natrelay.aspia.errors import AspiaProtocolError, DecryptionError, ErrorCode
from natrelay.aspia.handshake import HANDSHAKE_TIMEOUT
from natrelay.aspia.handshake_server import ServerConfig, ServerHandshake, UserRecord
from natrelay.aspia.router import guard as flood
from natrelay.aspia.router.sessions import SessionKind
from natrelay.ops.aspia_config import RouterConfig
from natrelay.ops.aspia_settings import address_allowed

if TYPE_CHECKING:
    from natrelay.aspia.router.server import RouterServer

log = logging.getLogger("natrelay.aspia.router")

ANONYMOUS_SESSIONS = SessionKind.HOST | SessionKind.RELAY


def relay_allowed(config: RouterConfig, ip: str, local_ip: str = "") -> bool:
    """RelayWhiteList if set; else any address if RelayAllowAnyAddress; else this machine only.

    "This machine" is loopback (all of 127.0.0.0/8 and ::1: a relay bound to 127.0.0.2 is local)
    and a connection whose source is the very address it arrived at (``local_ip``): a relay on
    the router's machine that connects to the machine's public address, as ``natrelay serve
    --host`` sets it up. TCP's handshake keeps others from using that source. A relay elsewhere
    needs the white list.
    """
    if config.relay_white_list:
        return address_allowed(config.relay_white_list, ip)
    if config.relay_any_address:
        return True
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback or (bool(local_ip) and ip == local_ip)


def local_ip(transport: asyncio.BaseTransport) -> str:
    """The address the connection arrived at, in :func:`peer_ip`'s form."""
    return peer_ip(transport, "sockname")


def peer_ip(transport: asyncio.BaseTransport, which: str = "peername") -> str:
    """The peer's IP as the original prints it: dotted IPv4 also for v4-mapped IPv6 (§6.2 step 4)."""
    peer = transport.get_extra_info(which)
    if not peer:
        return ""
    try:
        addr = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return str(peer[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class RouterConnection(ChannelProtocol):
    """One accepted connection: handshake, then a router session."""

    def __init__(self, server: RouterServer) -> None:
        self.server = server
        self.ip = ""
        self.local_ip = ""
        self.session_id: int | None = None
        self.is_relay = False
        self.admitted = False
        self.pending = False
        self.bytes_before_auth = 0
        self.in_login = False
        self.login_deadline: float | None = None
        self.login_refused = False
        self.attempted_user: str | None = None
        self.handshake: ServerHandshake | None = None
        super().__init__(self._make_channel, server.timers)

    def _lookup(self, name: str) -> UserRecord | None:
        # Called at SrpIdentify, just before the expensive part of an SRP login.
        self.attempted_user = name
        if not self.in_login:
            guard = self.server.guard
            refusal = guard.begin_login(self.ip, self)
            if refusal is not None:
                self.login_refused = True
                # Error level, not debug: a legitimate user may be the one refused, and the
                # operator must see why; rate-limited, and the guard's counter has every one.
                skipped = guard.log.allow("login refused", self.loop.time())
                if skipped is not None:
                    more = f" ({skipped} more not logged)" if skipped else ""
                    log.error("Refused login of %r from %s: too many password logins in progress (%s)%s",
                              name, self.ip, flood.describe(refusal, guard.limits), more)
                raise AspiaProtocolError("too many logins in progress", ErrorCode.ACCESS_DENIED)
            self.in_login = True
            self.login_deadline = guard.login_deadline(self.loop.time())
        return self.server.lookup_user(name)

    def _make_channel(self, now: float) -> Channel:
        opts = self.server.options
        config = ServerConfig(private_key=opts.config.private_key, seed_key=opts.config.seed_key,
                              anonymous_sessions=int(ANONYMOUS_SESSIONS), users=self._lookup,
                              timeout=self.server.guard.limits.pending_timeout or HANDSHAKE_TIMEOUT)
        self.handshake = ServerHandshake(config, now)
        return Channel(self.handshake, now=now, keepalive=True)

    def on_connected(self) -> bool:
        assert self.transport is not None
        self.ip = peer_ip(self.transport)
        self.local_ip = local_ip(self.transport)
        decision = self.server.guard.admit(self, self.ip, self.loop.time())
        refusal = decision.refused
        if refusal is None:
            self.admitted = self.pending = True
            with contextlib.suppress(OSError):
                sock = self.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if isinstance(decision.evicted, RouterConnection):
                decision.evicted.evict()
            return True
        self.login_refused = True  # nothing to explain later: the refusal is logged here
        self.server.refusal(refusal, self.ip)
        self.abort(f"refused: {refusal}")
        return False

    def evict(self) -> None:
        """The guard gave this pending connection's slot to a newcomer (already counted): reset it."""
        self.pending = False
        if self.closing:
            return
        self.login_refused = True  # nothing to explain later: the eviction is logged here
        self.server.refusal(flood.EVICTED, self.ip)
        self.abort(f"refused: {flood.EVICTED}")

    def _end_handshake(self) -> None:
        if self.pending:
            self.pending = False
            self.server.guard.authenticated(self)
        if self.in_login:
            self.in_login = False
            self.login_deadline = None
            self.server.guard.end_login(self.ip)

    def extra_deadline(self) -> float | None:
        return self.login_deadline

    def on_extra_timer(self, now: float) -> None:
        # A login that stalls after its user name holds a scarce slot: end it early.
        if self.login_deadline is not None and not self.closing:
            self.login_refused = True
            self.server.refusal(flood.LOGIN_DEADLINE, self.ip, counted=False)
            self.abort(f"refused: {flood.LOGIN_DEADLINE}")

    def on_established(self) -> None:
        self._end_handshake()
        result = self.channel.result
        assert result is not None
        self.server.stats.handshakes_done += 1
        if self.attempted_user is not None:
            self.server.stats.logins_done += 1
        try:
            kind = SessionKind(result.session_type)
        except ValueError:
            # Only possible for an account whose stored session mask has bits the router does not serve.
            log.error("Refused session type %d from %s (user %r): not a router session type",
                      result.session_type, self.ip, result.user_name)
            self.abort("not a router session type")
            return
        config = self.server.options.config
        if kind is SessionKind.RELAY and not relay_allowed(config, self.ip, self.local_ip):
            log.error("Refused relay session from %s: relays may register only from this machine unless "
                      "RelayWhiteList lists the address (or RelayAllowAnyAddress is true)", self.ip)
            self.abort("relay address not allowed")
            return
        white_list = self.server.white_list(kind)
        if not address_allowed(white_list, self.ip):
            self.server.stats.refused_by("white_list")
            log.error("Refused %s session from %s: the address is not in %sWhiteList", kind.name.lower(),
                      self.ip, kind.name.capitalize())
            self.abort("not in the white list")
            return
        session = self.server.core.open_session(kind, self.ip, result.user_name, result.peer_version,
                                                result.peer_info, self.server.wall_time())
        self.session_id = session.session_id
        self.is_relay = kind is SessionKind.RELAY
        self.server.connections[session.session_id] = self
        user = f", user {result.user_name!r}" if result.user_name else ""
        log.info("New %s session %d from %s%s (version %s)", kind.name.lower(), session.session_id,
                 self.ip, user, result.peer_version)

    def data_received(self, data: bytes) -> None:
        if self.pending:
            self.bytes_before_auth += len(data)
            if self.server.guard.too_many_bytes(self.bytes_before_auth):
                self.login_refused = True
                self.server.refusal(flood.BYTES_BEFORE_AUTH, self.ip)
                self.abort(f"refused: {flood.BYTES_BEFORE_AUTH}")
                return
        link = self.link
        ignored = link.ignored_messages if link is not None else 0
        super().data_received(data)
        if link is not None and link.ignored_messages != ignored and self.session_id is not None:
            # The original logs and ignores messages on channel IDs other than 0 (spec §2.3).
            log.info("Session %d: unhandled incoming message from another channel", self.session_id)

    def on_messages(self, messages: list[bytes]) -> None:
        if self.session_id is None:
            return
        for message in messages:
            self.server.apply(self.server.core.handle(self.session_id, message, self.server.wall_time()))

    def on_closed(self, reason: str) -> None:
        self._end_handshake()
        if self.admitted:
            self.admitted = False
            self.server.guard.release(self, self.ip)
        if self.session_id is not None:
            self.server.connections.pop(self.session_id, None)
            session = self.server.core.sessions.get(self.session_id)
            if session is not None:
                log.info("%s session %d (%s) ended: %s", session.kind.name.capitalize(), self.session_id,
                         self.ip, reason)
            self.server.core.close_session(self.session_id)
            self.session_id = None
        elif self.link is not None and not self.link.established and not self.login_refused:
            self._explain_failed_handshake(reason)

    def _explain_failed_handshake(self, reason: str) -> None:
        # Every failure is counted (the counters are exact); only the log line is rate-limited,
        # so a flood of connections that time out does not become a flood of lines.
        handshake = self.handshake
        error = self.link.error if self.link is not None else None
        # Keys were installed and the peer then walked away (or sent what our key cannot open).
        key_refused = handshake is not None and handshake.cipher is not None and (
            error is None or isinstance(error, DecryptionError))
        stats = self.server.stats
        if self.attempted_user is not None and key_refused:
            # The SRP client gives up when it cannot open our challenge: that is what a wrong
            # password and an unknown user look like, and the log must not say which of them.
            stats.login_failures["wrong_password"] += 1
            stats.handshake_failures["wrong_password"] += 1
        elif self.attempted_user is None and key_refused:
            stats.handshake_failures["wrong_router_key"] += 1
        else:
            label = reason.split(":", 1)[0].strip().lower().replace(" ", "_") or "other"
            stats.handshake_failures[label[:32]] += 1
        skipped = self.server.guard.log.allow("handshake failed", self.loop.time())
        if skipped is None:
            return
        if skipped:
            log.error("%d more failed handshakes were not logged", skipped)
        if self.attempted_user is not None and key_refused:
            log.error("Login failed for user %r from %s: wrong user name or password", self.attempted_user,
                      self.ip)
        elif self.attempted_user is None and key_refused:
            log.error(
                "Handshake from %s failed after the router's challenge: the relay or host there most "
                "likely uses the wrong router public key (its RouterPublicKey must equal router.pub: %s)",
                self.ip, self.server.options.public_key_hex or "see router.pub")
        else:
            log.error("Handshake from %s failed: %s", self.ip, reason)
