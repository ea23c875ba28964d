"""``/$dashboard/``: the operator dashboard's pages, login, and its door to ``/$mgmt/v1``.

Served on an origin of its own (``[relay] dashboard_listen``, loopback by default) by
:func:`dashboard_app`, never on the public origin unless the operator asks
(``dashboard_listen = "public"``): pages that listeners serve through HTTP mode come
from the public origin, and a page's script is same-origin with whatever else is
served there: it could read the CSRF token and call the API with an operator's
cookie. On the public port :func:`install` then only answers 404 under the prefix,
so nothing there is relayed to a listener either.

- ``GET /$dashboard/`` and ``/$dashboard/static/{file}``: the page and its files, from
  package data, under a strict Content-Security-Policy (no inline script or style, no
  other origin). Every URL the page uses is relative, so it works under a proxy's prefix.
- ``POST /$dashboard/login`` takes ``{"keyName", "key"}`` (a namespace SAS rule) or
  ``{"token"}`` (a JWT): the relay signs itself a SAS token for the namespace that lasts
  as long as the session (or keeps the JWT), checks it exactly as the management API
  would, and answers a session cookie (HttpOnly, SameSite=Strict, scoped to the
  dashboard's path) and a CSRF token. Failures count per address
  (``dashboard_login_failures`` a minute, then 429).
- ``GET /$dashboard/session`` says who is logged in (and the CSRF token, for a reload);
  ``POST /$dashboard/logout`` ends the session.
- ``/$dashboard/api/{path}`` is ``/$mgmt/v1/{path}`` called with the session's
  credential: the same handlers, checks and audit lines as the CLI's calls. Writes
  need the ``X-CSRF-Token`` header and the operator role (viewers read only).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict
from yarl import URL

from hybridrelay.errors import AuthError, RateLimitedError, ValidationError
from hybridrelay.logs import peer_text
from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.relay.admission import rate_limit_middleware
from hybridrelay.relay.config import RelayConfig
from hybridrelay.relay.dashboard.hosts import DashboardHosts
from hybridrelay.relay.dashboard.sessions import (
    COOKIE,
    LoginLimiter,
    Role,
    Session,
    SessionTable,
)
from hybridrelay.relay.mgmt.access import authorize_manage
from hybridrelay.relay.mgmt.audit import AUDIT
from hybridrelay.relay.mgmt.handlers import MGMT_PREFIX
from hybridrelay.relay.mgmt.json_body import parse_json_object, read_body
from hybridrelay.relay.middleware import ACTION_KEY, METRICS_KEY, error_middleware, error_response
from hybridrelay.relay.sources import REFUSED_SOURCES
from hybridrelay.relay.state import STATE

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "DASHBOARD",
    "DASHBOARD_PREFIX",
    "Dashboard",
    "dashboard_app",
    "dashboard_url",
    "install",
]

DASHBOARD_PREFIX: Final = "/$dashboard"
CSRF_HEADER: Final = "X-CSRF-Token"
_MAX_CREDENTIAL: Final = 8192  # a key name, key or JWT longer than this is not one

# No inline script or style, nothing from another origin, no framing.
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_STATIC_TYPES: Final = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}
_READS: Final = frozenset({"GET", "HEAD"})

audit = logging.getLogger(AUDIT)


@dataclass(eq=False, slots=True)
class Dashboard:
    sessions: SessionTable
    logins: LoginLimiter
    # The relay's application, whose router answers /$mgmt/v1 (the dashboard's own
    # application, on its own address, has no management routes of its own).
    relay_app: web.Application
    # The cookie is Secure when the request came over TLS, and on the public origin also
    # when public_url is https (a proxy in front terminates TLS).
    public_origin: bool
    # Calls still running per session (event streams last): a logout ends them. Expiry
    # needs no help: the session's credential expires with it and the API ends them then.
    running: dict[str, set[asyncio.Task[Any]]] = field(default_factory=dict)

    def end_calls(self, session_id: str) -> None:
        for task in self.running.pop(session_id, ()):
            task.cancel()


DASHBOARD: Final = web.AppKey("hybridrelay_dashboard", Dashboard)


def _static_files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, type) of every file the page may load; nothing else is served."""
    files: dict[str, tuple[bytes, str]] = {}
    for entry in (resources.files(__package__ or __name__) / "static").iterdir():
        name = entry.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if entry.is_file() and suffix in _STATIC_TYPES:
            files[name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return files


_STATIC: Final = _static_files()


def _secure(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else "-"


def _session_cookie(request: web.Request) -> str | None:
    """The session cookie's value; None when there is none, or more than one.

    A page on another port of the same host name (a listener's, served by the relay's
    public port) can set a cookie of this name from script for a path the dashboard's
    covers, e.g. ``Path=/``: the browser then sends both, and a server taking either
    could be handed the other page's session. Two values are no session at all; the
    answer (401) also expires a ``Path=/`` one (:func:`_clear_tossed`).
    """
    values = [
        value.strip()
        for header in request.headers.getall("Cookie", [])
        for name, sep, value in (part.partition("=") for part in header.split(";"))
        if sep and name.strip() == COOKIE
    ]
    return values[0] if len(values) == 1 else None


def _session(request: web.Request) -> Session | None:
    return request.app[DASHBOARD].sessions.get(_session_cookie(request))


def _session_doc(session: Session, request: web.Request) -> dict[str, object]:
    # The relay's public URL: the dashboard's own origin is not where senders go, so a page
    # that names a relay URL ("copy as curl") takes it from here.
    public = request.app[STATE].public_url
    return {
        "who": session.who,
        "role": session.role,
        "csrfToken": session.csrf,
        "expiresAt": int(session.expires_at),
        "relayUrl": public.replace("wss://", "https://", 1).replace("ws://", "http://", 1),
    }


# --- pages ------------------------------------------------------------------------------------


async def _redirect(request: web.Request) -> web.StreamResponse:
    # Relative, so that a proxy's prefix stays: /x/$dashboard -> /x/$dashboard/.
    # Answered, not raised: the error middleware turns raised HTTP errors into JSON.
    location = DASHBOARD_PREFIX.lstrip("/") + "/"
    return _secure(web.Response(status=302, headers={"Location": location}))


async def _index(request: web.Request) -> web.StreamResponse:
    body, content_type = _STATIC["index.html"]
    return _secure(web.Response(body=body, content_type=content_type))


async def _static(request: web.Request) -> web.StreamResponse:
    found = _STATIC.get(request.match_info["name"])
    if found is None or request.match_info["name"] == "index.html":
        return _secure(error_response(404, "EndpointNotFound", "no such dashboard file"))
    body, content_type = found
    response = web.Response(body=body, content_type=content_type)
    response.headers["Cache-Control"] = "no-cache"
    return _secure(response)


# --- login, session, logout -------------------------------------------------------------------


def _credential(doc: dict[str, object], request: web.Request) -> str:
    """The Authorization value a login document stands for. Raises ValidationError."""
    state = request.app[STATE]
    token = doc.get("token")
    if isinstance(token, str) and token.strip():
        text = token.strip()
        if len(text) > _MAX_CREDENTIAL:
            raise ValidationError("token", "is too long")
        return text if text.lower().startswith("bearer ") else f"Bearer {text}"
    key_name, key = doc.get("keyName"), doc.get("key")
    if not (isinstance(key_name, str) and isinstance(key, str) and key_name and key):
        raise ValidationError("keyName", "give keyName and key (a namespace rule), or token")
    if len(key_name) > _MAX_CREDENTIAL or len(key) > _MAX_CREDENTIAL:
        raise ValidationError("key", "is too long")
    expiry = int(state.now() + state.config.relay.dashboard_session_ttl) + 1
    return create_sas_token(state.public_url.rstrip("/") + "/", key_name, key, expiry)


def _as_api_request(
    request: web.Request, credential: str, rel_url: URL, method: str | None = None
) -> web.Request:
    headers = CIMultiDict(request.headers)
    for name in ("Cookie", "Authorization", "ServiceBusAuthorization", CSRF_HEADER):
        headers.popall(name, None)
    headers["Authorization"] = credential
    return request.clone(method=method or request.method, rel_url=rel_url, headers=headers)


async def _login(request: web.Request) -> web.StreamResponse:
    request[ACTION_KEY] = "dashboard"
    state = request.app[STATE]
    dashboard = request.app[DASHBOARD]
    relay = state.config.relay
    address = _peer(request)
    if dashboard.logins.blocked(address):
        raise RateLimitedError(
            "too many failed logins from this address; wait a minute",
            limit="dashboard_login_failures",
            retry_after=60,
        )
    if request.content_type != "application/json":
        # A form post from another site cannot send this type without a CORS preflight.
        return _secure(error_response(415, "UnsupportedMediaType", "send application/json"))
    body = await read_body(
        request,
        max_size=relay.dashboard_login_body_size,
        idle=relay.body_idle_timeout,
        limit="dashboard_login_body_size",
    )
    doc = parse_json_object(body, "body")
    credential = _credential(doc, request)
    probe = _as_api_request(request, credential, URL(MGMT_PREFIX + "/stats"), method="GET")
    try:
        manager = await authorize_manage(probe, state)
    except AuthError as exc:
        dashboard.logins.failed(address)
        audit.info(
            "dashboard_login",
            extra={"who": "-", "status": exc.http_status, "peer": peer_text(address)},
        )
        raise
    role: Role = "viewer" if manager.who in relay.dashboard_viewers else "operator"
    session = dashboard.sessions.create(
        credential=credential, who=manager.who, role=role, expires_at=manager.expires_at
    )
    if session is None:
        raise RateLimitedError(
            "the dashboard has as many sessions as it holds; try later",
            limit="max_dashboard_sessions",
            retry_after=60,
        )
    audit.info(
        "dashboard_login",
        extra={"who": manager.who, "role": role, "status": 200, "peer": peer_text(address)},
    )
    response = web.json_response(_session_doc(session, request))
    secure = request.secure or (dashboard.public_origin and state.public_url.startswith("https:"))
    _set_cookie(response, session.id, max(1, int(session.expires_at - state.now())), secure)
    _clear_tossed(response)
    return _secure(response)


def _set_cookie(response: web.StreamResponse, value: str, max_age: int, secure: bool) -> None:
    # No Path attribute: the browser scopes the cookie to the login URL's directory, the
    # dashboard's prefix whatever a proxy puts before it, so the cookie never travels
    # with relayed HTTP requests to listeners (aiohttp's set_cookie always writes a Path).
    cookie = f"{COOKIE}={value}; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    response.headers.add("Set-Cookie", cookie + ("; Secure" if secure else ""))


def _clear_tossed(response: web.StreamResponse) -> None:
    # Expire a cookie of the session's name set for Path=/ by another page of this host name
    # (see _session_cookie); the dashboard's own cookie has the dashboard's path.
    response.headers.add("Set-Cookie", f"{COOKIE}=; Path=/; Max-Age=0")


def _unauthorized() -> web.StreamResponse:
    response = error_response(401, "SessionRequired", "log in to the dashboard first")
    _clear_tossed(response)
    return _secure(response)


async def _whoami(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    if session is None:
        return _unauthorized()
    return _secure(web.json_response(_session_doc(session, request)))


def _csrf_refusal(request: web.Request, session: Session) -> web.StreamResponse | None:
    if session.csrf_matches(request.headers.get(CSRF_HEADER)):
        return None
    return _secure(error_response(403, "CsrfTokenInvalid", f"a write needs the {CSRF_HEADER}"))


async def _logout(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    if session is None:
        return _unauthorized()
    refusal = _csrf_refusal(request, session)
    if refusal is not None:
        return refusal
    request.app[DASHBOARD].sessions.drop(session.id)
    request.app[DASHBOARD].end_calls(session.id)
    audit.info("dashboard_logout", extra={"who": session.who, "peer": peer_text(_peer(request))})
    response = web.Response(status=204)
    _set_cookie(response, "", 0, request.secure)
    return _secure(response)


# --- the management API, with the session's credential ----------------------------------------


def _api_url(request: web.Request) -> URL | None:
    """``/$mgmt/v1/{tail}`` with the tail as sent (still percent-encoded) and the query."""
    raw = request.rel_url.raw_path
    start = raw.find("/api/")
    if start < 0:
        return None
    tail = raw[start + len("/api/") :]
    if not tail or any(seg in ("", ".", "..") for seg in URL("/" + tail).path.split("/")[1:]):
        return None
    url = URL(f"{MGMT_PREFIX}/{tail}", encoded=True)
    if request.rel_url.raw_query_string:
        url = url.with_query(request.rel_url.query)
    return url


async def _api(request: web.Request) -> web.StreamResponse:
    request[ACTION_KEY] = "dashboard"
    session = _session(request)
    if session is None:
        return _unauthorized()
    if request.method not in _READS:
        refusal = _csrf_refusal(request, session)
        if refusal is not None:
            return refusal
        if session.role != "operator":
            return _secure(error_response(403, "ReadOnlySession", "this login is read-only"))
    if request.headers.get("Upgrade"):
        # The page uses Server-Sent Events; a WebSocket riding on the cookie would be one
        # more way in (cross-site WebSocket hijacking) for nothing the page needs.
        return _secure(error_response(400, "UpgradeRefused", "no WebSocket through the dashboard"))
    url = _api_url(request)
    if url is None or not url.path.startswith(MGMT_PREFIX + "/"):
        return _secure(error_response(404, "EndpointNotFound", "no such management resource"))
    inner = _as_api_request(request, session.credential, url)
    # What aiohttp's own dispatch (Application._handle) does with a request it resolved:
    # the relay's application handles it, with its state, as if it had come to it.
    relay_app = request.app[DASHBOARD].relay_app
    match = await relay_app.router.resolve(inner)
    match.add_app(relay_app)
    match.freeze()
    inner._match_info = match
    running = request.app[DASHBOARD].running.setdefault(session.id, set())
    task = asyncio.current_task()
    if task is not None:
        running.add(task)
    try:
        response = await match.handler(inner)
    finally:
        if task is not None:
            running.discard(task)
        if not running and request.app[DASHBOARD].running.get(session.id) is running:
            del request.app[DASHBOARD].running[session.id]
    if response.prepared:
        return response  # an event stream, sent as it went (events carry no keys)
    if session.role != "operator" and not _redact_keys(response):
        # Not a JSON document whose keys can be blanked (an export job's JSON Lines
        # carry every device key): a viewer does not get it.
        return _secure(error_response(403, "ReadOnlySession", "this login cannot read this"))
    return _secure(response)


_KEY_FIELDS: Final = frozenset({"primaryKey", "secondaryKey"})


def _redacted(doc: object) -> object:
    if isinstance(doc, dict):
        return {k: None if k in _KEY_FIELDS else _redacted(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_redacted(item) for item in doc]
    return doc


def _redact_keys(response: web.StreamResponse) -> bool:
    """A viewer sees no key: with one it could log in as an operator (or act as a device).

    False when the answer is not one the keys can be blanked from (a file, a stream).
    """
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return _empty(response)
    body = response.body
    if not isinstance(body, bytes | bytearray):
        return not body
    if body:
        response.body = json.dumps(_redacted(json.loads(body))).encode()
    return True


def _empty(response: web.StreamResponse) -> bool:
    """A bodiless answer (204, 304) holds no key."""
    return isinstance(response, web.Response) and not response.body


async def _not_found(request: web.Request) -> web.StreamResponse:
    request[ACTION_KEY] = "dashboard"
    return _secure(error_response(404, "EndpointNotFound", "no such dashboard resource"))


def _dashboard_state(relay_app: web.Application, *, public_origin: bool) -> Dashboard:
    state = relay_app[STATE]
    relay = state.config.relay
    return Dashboard(
        sessions=SessionTable(
            ttl=relay.dashboard_session_ttl,
            max_sessions=relay.max_dashboard_sessions,
            now=state.now,
        ),
        logins=LoginLimiter(limit=relay.dashboard_login_failures, now=state.now),
        relay_app=relay_app,
        public_origin=public_origin,
    )


def _add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(DASHBOARD_PREFIX, _redirect)
    router.add_get(DASHBOARD_PREFIX + "/", _index)
    router.add_get(DASHBOARD_PREFIX + "/static/{name}", _static)
    router.add_post(DASHBOARD_PREFIX + "/login", _login)
    router.add_get(DASHBOARD_PREFIX + "/session", _whoami)
    router.add_post(DASHBOARD_PREFIX + "/logout", _logout)
    router.add_route("*", DASHBOARD_PREFIX + "/api/{tail:.+}", _api)
    # Anything else under the prefix is the dashboard's 404, never a relayed request.
    router.add_route("*", DASHBOARD_PREFIX + "/{tail:.*}", _not_found)


async def _elsewhere(request: web.Request) -> web.StreamResponse:
    # Where it is would tell the internet about the operator's network: the relay's start
    # log says it (dashboard_listening), to whoever runs it.
    request[ACTION_KEY] = "dashboard"
    return _secure(
        error_response(
            404,
            "DashboardElsewhere",
            "the dashboard is not served on this address: see [relay] dashboard_listen and "
            "the relay's dashboard_listening log line",
        )
    )


def install(app: web.Application) -> None:
    """Claim ``/$dashboard`` on the relay's public application (before its catch-all).

    With ``dashboard_listen = "public"`` the dashboard itself is served there; otherwise
    the prefix answers 404, so a dashboard cookie a browser sends to the public host
    (cookies do not keep to ports) never travels on to a listener.
    """
    if app[STATE].config.relay.dashboard_listen == "public":
        app[DASHBOARD] = _dashboard_state(app, public_origin=True)
        app.on_shutdown.append(_end_all_calls)
        _add_routes(app.router)
        return
    app.router.add_route("*", DASHBOARD_PREFIX, _elsewhere)
    app.router.add_route("*", DASHBOARD_PREFIX + "/{tail:.*}", _elsewhere)


def dashboard_app(relay_app: web.Application) -> web.Application:
    """The dashboard's own application, for ``dashboard_listen``'s address.

    It shares the relay's state, counters and error handling, and hands each API call
    to the relay application's router, so calls are handled exactly as on the public
    port; it answers nothing but ``/$dashboard`` (the cookie stays scoped to that path).
    """
    state = relay_app[STATE]
    relay = state.config.relay
    listen_host = relay.dashboard_listen[0] if isinstance(relay.dashboard_listen, tuple) else ""
    app = web.Application(
        middlewares=[
            _host_middleware(DashboardHosts.for_listen(listen_host, relay.dashboard_hosts)),
            error_middleware,
            rate_limit_middleware,
        ],
        client_max_size=state.config.relay.max_management_body_size,
    )
    app[STATE] = state
    app[METRICS_KEY] = relay_app[METRICS_KEY]
    app[REFUSED_SOURCES] = relay_app[REFUSED_SOURCES]
    app[DASHBOARD] = _dashboard_state(relay_app, public_origin=False)
    app.on_shutdown.append(_end_all_calls)
    _add_routes(app.router)
    app.router.add_get("/", _redirect)  # the bare address: to the page
    return app


def _host_middleware(hosts: DashboardHosts) -> Middleware:
    """Answer only the dashboard's own names (DNS rebinding, see dashboard/hosts.py)."""

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if hosts.allows(request.headers.get("Host")):
            return await handler(request)
        # Before anything else, and cheaply: one line, no JSON, no session or body read.
        request.app[METRICS_KEY].limit_hit("dashboard_hosts")
        return web.Response(
            status=421,
            text="this Host is not the dashboard's (see [relay] dashboard_hosts)\n",
            headers={"Cache-Control": "no-store", "Connection": "close"},
        )

    return check_host


async def _end_all_calls(app: web.Application) -> None:
    """At shutdown, end the calls still running (event streams), before the relay stops."""
    dashboard = app[DASHBOARD]
    for session_id in list(dashboard.running):
        dashboard.end_calls(session_id)


def dashboard_url(config: RelayConfig) -> str | None:
    """Where the dashboard is, once ``config`` is completed (bound ports); None when off."""
    relay = config.relay
    where = relay.dashboard_listen
    if where == "off":
        return None
    if where == "public":
        http = relay.public_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
        return f"{http.rstrip('/')}{DASHBOARD_PREFIX}/"
    host, port = where
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming it, not binding it
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{DASHBOARD_PREFIX}/"
