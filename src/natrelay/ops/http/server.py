"""The HTTP surface of one process: aiohttp on the servers' own event loop.

Routes: ``/healthz`` (always open), ``/metrics``, ``/status``, the dashboard ``/`` with its
``/api/overview`` and ``/api/disconnect``, and ``/login``/``/logout`` when authentication is on.
Every handler only reads counters the servers already keep, in time proportional to what it
returns, so a scrape never holds up forwarding or pairing for long. Unexpected errors become a
plain 500 with one log line; request bodies are capped before they are read.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable

from aiohttp import BasicAuth, web

from natrelay.ops.http import auth as authmod
from natrelay.ops.http.auth import Authenticator, Gate
from natrelay.ops.http.dashboard import PAGE_SIZE, login_html, overview, page_html
from natrelay.ops.http.listen import listen
from natrelay.ops.http.metrics import CONTENT_TYPE, exposition, make_registry
from natrelay.ops.http.options import HttpConfigError, HttpOptions
from natrelay.ops.http.rates import SAMPLE_INTERVAL, RateWindows
from natrelay.ops.http.source import Source
from natrelay.ops.http.status import build_status

log = logging.getLogger("natrelay.http")

MAX_BODY = 16 * 1024
OPEN_PATHS = frozenset({"/healthz", "/login"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    """Serves the sources given (more can be added while running) until :meth:`close`."""

    def __init__(self, options: HttpOptions, *, version: str, title: str,
                 sources: list[Source] | None = None, authenticator: Authenticator | None = None) -> None:
        if options.needs_auth and authenticator is None:
            where = "--http-auth is on" if options.auth else f"--http {options.host or '*'} is not loopback"
            raise HttpConfigError(f"{where}, so logins are required, but there is no account database: "
                                  "give --http-users ROUTER_DB (a router.db3 with administrators)")
        self.options = options
        self.version = version
        self.title = title
        self.sources: list[Source] = list(sources or [])
        self.gate = Gate(authenticator) if options.needs_auth and authenticator is not None else None
        self._open_csrf = secrets.token_urlsafe(24)
        self._registry = make_registry(lambda: self.sources, version)
        self._started_wall = time.time()
        self._started = time.monotonic()
        self._rates = RateWindows(0, self._started)
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.TimerHandle | None = None
        self.url = ""

    def add_source(self, source: Source) -> None:
        self.sources.append(source)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> str:
        """Listen; returns the URL. Raises OSError (port in use) or HttpConfigError (TLS files)."""
        ssl_context: ssl.SSLContext | None = None
        if self.options.cert is not None and self.options.key is not None:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                ssl_context.load_cert_chain(self.options.cert, self.options.key)
            except (OSError, ssl.SSLError) as exc:
                raise HttpConfigError(f"--http-cert/--http-key: cannot load {self.options.cert} and "
                                      f"{self.options.key}: {exc}") from None
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        app.router.add_get("/", self._dashboard)
        app.router.add_get("/api/overview", self._overview)
        app.router.add_post("/api/disconnect", self._disconnect)
        app.router.add_get("/login", self._login_form)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        runner = await listen(app, self.options.host, self.options.port, ssl_context)
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        if shown in ("0.0.0.0", "[::]"):
            shown = "127.0.0.1"
        self.url = f"{'https' if ssl_context else 'http'}://{shown}:{port}/"
        self._sampler = asyncio.get_running_loop().call_later(SAMPLE_INTERVAL, self._sample)
        if self.gate is not None and not self.options.tls and not self.options.loopback:
            log.warning("HTTP on %s without TLS: passwords cross the network in clear text; "
                        "give --http-cert and --http-key", self.url)
        log.info("HTTP on %s (metrics, status, dashboard%s)", self.url,
                 ", login required" if self.gate is not None else "")
        return self.url

    def _sample(self) -> None:
        self._rates.sample(self._bytes(), time.monotonic())
        self._sampler = asyncio.get_running_loop().call_later(SAMPLE_INTERVAL, self._sample)

    def _bytes(self) -> int:
        return sum(s.totals().bytes_relayed for s in self.sources)

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # ------------------------------------------------------------ access
    def _user(self, request: web.Request) -> tuple[str | None, str]:
        """(user, CSRF token) of an authorized request; user None means "not authorized"."""
        gate = self.gate
        if gate is None:
            return "", self._open_csrf
        now = time.monotonic()
        token = request.cookies.get(authmod.COOKIE)
        if token:
            session = gate.sessions.get(token, now)
            if session is not None:
                return session.user, session.csrf
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                basic = BasicAuth.decode(header)
            except ValueError:
                return None, ""
            ip = request.remote or "?"
            if gate.throttled(ip, now):
                return None, ""
            if gate.basic(basic.login, basic.password, ip, now):
                return basic.login, gate.basic_csrf(basic.login)
        return None, ""

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path not in OPEN_PATHS:
                user, csrf = self._user(request)
                if user is None:
                    if request.method == "GET" and request.path == "/":
                        raise web.HTTPFound("/login")
                    return web.json_response({"ok": False, "error": "authentication required"}, status=401,
                                             headers={"WWW-Authenticate": 'Basic realm="natrelay"'})
                request["user"] = user
                request["csrf"] = csrf
            response = await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            return web.Response(status=500, text="internal error\n")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    # ------------------------------------------------------------ handlers
    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=exposition(self._registry), headers={"Content-Type": CONTENT_TYPE})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        status = build_status(self.sources, version=self.version, started_wall=self._started_wall,
                              uptime=now - self._started, rates=self._rates, now=now)
        return web.json_response(status)

    async def _dashboard(self, request: web.Request) -> web.StreamResponse:
        user = request["user"] or None
        return web.Response(text=page_html(self.title, request["csrf"], user), content_type="text/html")

    async def _overview(self, request: web.Request) -> web.StreamResponse:
        page = _int(request.query.get("page"), 1)
        per_page = _int(request.query.get("per_page"), PAGE_SIZE)
        return web.json_response(overview(self.sources, page, per_page))

    async def _disconnect(self, request: web.Request) -> web.StreamResponse:
        sent = request.headers.get("X-CSRF-Token", "")
        json_body = request.content_type == "application/json"
        if not sent or not hmac.compare_digest(sent, request["csrf"]) or not json_body:
            log.warning("HTTP disconnect from %s refused: missing or wrong CSRF token", request.remote)
            return web.json_response({"ok": False, "error": "missing or wrong CSRF token"}, status=403)
        try:
            body = json.loads(await request.read())
        except (ValueError, web.HTTPRequestEntityTooLarge):
            return web.json_response({"ok": False, "error": "bad request"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"ok": False, "error": "bad request"}, status=400)
        family, kind, ident = str(body.get("family", "")), body.get("kind"), str(body.get("id", ""))
        source = next((s for s in self.sources if s.family == family), None)
        if source is None or kind not in ("session", "host"):
            return web.json_response({"ok": False, "error": f"no server {family!r} here"}, status=404)
        error = source.disconnect_session(ident) if kind == "session" else source.disconnect_host(ident)
        if error is not None:
            return web.json_response({"ok": False, "error": error}, status=404)
        log.info("HTTP: %s %s %s disconnected by %s from %s", family, kind, ident, request["user"] or "-",
                 request.remote)
        return web.json_response({"ok": True})

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        if self.gate is None:
            raise web.HTTPFound("/")
        return web.Response(text=login_html(), content_type="text/html")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        gate = self.gate
        if gate is None:
            raise web.HTTPFound("/")
        now = time.monotonic()
        ip = request.remote or "?"
        if gate.throttled(ip, now):
            log.warning("HTTP login from %s refused: too many failed logins", ip)
            return web.Response(text=login_html("Too many failed logins; wait a minute."), status=429,
                                content_type="text/html")
        form = await request.post()
        user, password = str(form.get("user", "")), str(form.get("password", ""))
        if not gate.login(user, password, ip, now):
            return web.Response(text=login_html("Wrong user name or password."), status=401,
                                content_type="text/html")
        token, _ = gate.sessions.create(user, now)
        log.info("HTTP login of %r from %s", user, ip)
        response = web.HTTPFound("/")
        response.set_cookie(authmod.COOKIE, token, httponly=True, samesite="Strict", secure=self.options.tls,
                            path="/", max_age=int(authmod.SESSION_TTL))
        raise response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        token = request.cookies.get(authmod.COOKIE)
        if self.gate is not None and token:
            self.gate.sessions.drop(token)
        response = web.HTTPFound("/login" if self.gate is not None else "/")
        response.del_cookie(authmod.COOKIE, path="/")
        raise response


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default
