"""``/$mgmt/v1/hybridconnections/{name}/inspector``: the HTTP inspector's API (issue 14).

- ``GET .../inspector``: whether it is on for the entity, and its bounds.
- ``PUT .../inspector`` ``{"enabled": true|false}``: turn it on (at most
  ``max_inspected_hcs`` entities per node: 403) or off (what it recorded is forgotten).
- ``GET .../inspector/requests``: the recorded requests, newest first (summaries).
- ``GET .../inspector/requests/{id}``: one, with its (redacted) headers and capped bodies.
- ``POST .../inspector/requests/{id}/replay``: send it again; an optional body edits it
  (``method``, ``target``, ``headers`` as ``[[name, value], ...]``, ``body`` text or
  ``bodyBase64``). The relay sends it to itself, over HTTP, exactly as a sender would:
  the normal HTTP-mode path picks a listener and the inspector records the answer (its
  ``replayOf`` names the original). Redacted headers are not replayed: the caller's own
  token (the one that authorized this call, in ``ServiceBusAuthorization``) authorizes
  the replay as a sender, so a token without Send on the entity gets the relay's 401 or
  403 back as the replay's status. A body the inspector did not keep whole (cut at
  ``inspector_body_size``, or streamed) must be given (409 otherwise). At most
  :data:`MAX_REPLAYS` run at once (429). Each replay is audit-logged twice: the API's
  ``mgmt_write`` line and an ``inspector_replay`` line naming the record and the status.

The inspector is per node, like ``/listeners`` and ``/streams``: a cluster's other nodes
record the requests they answer, and an inspector turned on here is on here only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from yarl import URL

from hybridrelay.errors import (
    BadGatewayError,
    ConflictError,
    EntityNotFoundError,
    RateLimitedError,
    ValidationError,
)
from hybridrelay.logs import peer_text
from hybridrelay.relay.inspector import (
    HEADER_BLOCK_LIMIT,
    INSPECTOR,
    REDACTED,
    REPLAY_HEADER,
    Inspector,
    Record,
)
from hybridrelay.relay.mgmt.access import Manager, request_token
from hybridrelay.relay.mgmt.audit import AUDIT
from hybridrelay.relay.mgmt.json_body import parse_json_object, read_body
from hybridrelay.relay.mgmt.serving import serve_managed
from hybridrelay.relay.mgmt.views import (
    INSPECTED_REQUEST_SUMMARY,
    INSPECTOR_SETTINGS,
    InspectorSettingsRow,
    inspected_request,
)
from hybridrelay.relay.state import STATE, RelayState
from hybridrelay.relay.store.models import ChangeEvent, HybridConnection

__all__ = ["MAX_REPLAYS", "REPLAY_CLIENT", "RESERVED_SEGMENT", "inspector_routes", "install"]

MAX_REPLAYS: Final = 4
# A path segment the API's URLs give a meaning (after the entity's name).
RESERVED_SEGMENT: Final = "inspector"
_MAX_TARGET: Final = 8192  # aiohttp's own request line limit
# How long a replay waits for its record once its answer is complete: the relay's
# handler records it as it returns, a moment after the last byte went out.
_RECORD_WAIT: Final = 5.0
# Never replayed: connection-level fields, what the client recomputes, and credentials
# (the caller's token authorizes the replay).
_NOT_REPLAYED: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
        "authorization",
        "proxy-authorization",
        "servicebusauthorization",
        "sb-hc-token",
        "cookie",
        REPLAY_HEADER.lower(),
        "x-inspector-truncated",
    }
)
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)

audit = logging.getLogger(AUDIT)


@dataclass(eq=False, slots=True)
class ReplayClient:
    """The HTTP client replays go out with, and how many run now."""

    session: aiohttp.ClientSession | None = None
    running: int = 0


REPLAY_CLIENT: Final = web.AppKey("hybridrelay_inspector_replays", ReplayClient)


def install(app: web.Application) -> None:
    """The inspector's rings (``INSPECTOR``), the replays' client (closed at shutdown), and
    the store watch that forgets a deleted hybrid connection's ring."""
    relay = app[STATE].config.relay
    app[INSPECTOR] = Inspector(
        capacity=relay.inspector_requests,
        body_limit=relay.inspector_body_size,
        max_rings=relay.max_inspected_hcs,
    )
    app[REPLAY_CLIENT] = ReplayClient()
    app.cleanup_ctx.append(_client_ctx)


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    client = app[REPLAY_CLIENT]
    inspector = app[INSPECTOR]

    def on_change(event: ChangeEvent) -> None:
        # A deleted entity's ring would hold a max_inspected_hcs slot nobody could free
        # (its inspector URL is a 404 now): it goes with the entity.
        if event.kind == "hybridConnection" and event.op == "deleted":
            inspector.disable(event.name)

    unsubscribe = app[STATE].store.subscribe(on_change)
    try:
        yield
    finally:
        unsubscribe()
        if client.session is not None:
            await client.session.close()


def _session(app: web.Application) -> aiohttp.ClientSession:
    # Made on first use: most relays never replay anything.
    client = app[REPLAY_CLIENT]
    if client.session is None or client.session.closed:
        client.session = aiohttp.ClientSession(
            auto_decompress=False,  # the record shows the listener's bytes, not ours
            cookie_jar=aiohttp.DummyCookieJar(),
        )
    return client.session


# --- the one entry point: method table -> auth -> operation -> audit ----------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    request: web.Request
    state: RelayState
    manager: Manager
    inspector: Inspector
    hc: HybridConnection


Operation = Callable[[_Call], Awaitable[web.StreamResponse]]


async def _serve(request: web.Request, operations: Mapping[str, Operation]) -> web.StreamResponse:
    state = request.app[STATE]

    async def call(manager: Manager) -> _Call:
        name = request.match_info["name"]
        hc = await state.store.get(name)
        if hc is None:
            raise EntityNotFoundError(f"hybrid connection {name!r} does not exist")
        return _Call(
            request=request, state=state, manager=manager, inspector=request.app[INSPECTOR], hc=hc
        )

    return await serve_managed(request, operations, call)


def _json(doc: object) -> web.Response:
    return web.json_response(doc, headers={"Cache-Control": "no-store"})


async def _body(request: web.Request) -> dict[str, object]:
    relay = request.app[STATE].config.relay
    raw = await read_body(
        request, max_size=relay.max_management_body_size, idle=relay.body_idle_timeout
    )
    return parse_json_object(raw, "body") if raw.strip() else {}


# --- settings -------------------------------------------------------------------------------


def _settings(call: _Call) -> dict[str, object]:
    return INSPECTOR_SETTINGS.encode(
        InspectorSettingsRow(
            hybrid_connection=call.hc.name,
            enabled=call.inspector.enabled(call.hc.name),
            capacity=call.inspector.capacity,
            body_limit=call.inspector.body_limit,
            recorded=len(call.inspector.recorded(call.hc.name)),
        )
    )


async def _get_settings(call: _Call) -> web.StreamResponse:
    return _json(_settings(call))


async def _put_settings(call: _Call) -> web.StreamResponse:
    doc = await _body(call.request)
    enabled = doc.get("enabled")
    if not isinstance(enabled, bool):
        raise ValidationError("enabled", "must be true or false")
    if enabled:
        call.inspector.enable(call.hc.name)
    else:
        call.inspector.disable(call.hc.name)
    audit.info(
        "inspector_switched",
        extra={"who": call.manager.who, "hc": call.hc.name, "enabled": enabled},
    )
    return _json(_settings(call))


# --- records ----------------------------------------------------------------------------------


async def _list(call: _Call) -> web.StreamResponse:
    value = [INSPECTED_REQUEST_SUMMARY.encode(r) for r in call.inspector.recorded(call.hc.name)]
    return _json({"value": value, "continuationToken": None, "nextLink": None})


def _record(call: _Call) -> Record:
    record_id = call.request.match_info["record"]
    record = call.inspector.find(call.hc.name, record_id)
    if record is None:
        raise EntityNotFoundError(f"no inspected request {record_id!r} (kept: the latest ones)")
    return record


async def _get(call: _Call) -> web.StreamResponse:
    return _json(inspected_request(_record(call)))


# --- replay -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Replay:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    edited: bool


def _method(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 32:
        raise ValidationError("method", "must be an HTTP method")
    if not set(value) <= _TOKEN_CHARS or value.upper() == "CONNECT":
        raise ValidationError("method", "must be an HTTP method (not CONNECT)")
    return value


def _target(value: object, hc: HybridConnection) -> str:
    if not isinstance(value, str) or not value.startswith("/") or len(value) > _MAX_TARGET:
        raise ValidationError("target", "must be a path (and query) starting with /")
    if not all(32 < ord(c) < 127 for c in value):
        raise ValidationError("target", "must be printable ASCII without spaces (percent-encode)")
    path = unquote(value.partition("?")[0])[1:].casefold()
    name = hc.name.casefold()
    if not (path == name or path.startswith(name + "/")):
        raise ValidationError("target", f"must address the hybrid connection {hc.name!r}")
    return value


def _without_token(target: str) -> str:
    """The target without ``sb-hc-token`` (redacted anyway): the caller's token is sent."""
    path, mark, query = target.partition("?")
    if not mark:
        return target
    kept = [p for p in query.split("&") if p.partition("=")[0].lower() != "sb-hc-token"]
    return path + ("?" + "&".join(kept) if kept else "")


def _headers(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, list) or len(value) > 200:
        raise ValidationError("headers", "must be a list of [name, value] pairs (at most 200)")
    out: list[tuple[str, str]] = []
    size = 0
    for pair in value:
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise ValidationError("headers", "must be a list of [name, value] pairs")
        name, text = pair
        if not name or not set(name) <= _TOKEN_CHARS:
            raise ValidationError("headers", "a header name must be an HTTP token")
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in text):
            raise ValidationError("headers", f"the value of {name} has a control character")
        size += len(name) + len(text)
        if size > HEADER_BLOCK_LIMIT * 2:
            raise ValidationError("headers", "the header block is too large")
        out.append((name, text))
    return out


def _replayable(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in _NOT_REPLAYED and REDACTED not in value
    ]


def _edited_body(doc: Mapping[str, object]) -> bytes | None:
    text, encoded = doc.get("body"), doc.get("bodyBase64")
    if text is not None and encoded is not None:
        raise ValidationError("body", "give body or bodyBase64, not both")
    if text is not None:
        if not isinstance(text, str):
            raise ValidationError("body", "must be a string")
        return text.encode("utf-8", "surrogatepass")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise ValidationError("bodyBase64", "must be a base64 string")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationError("bodyBase64", "must be a base64 string") from exc
    return None


def _plan(record: Record, doc: Mapping[str, object], hc: HybridConnection) -> _Replay:
    known = {"method", "target", "headers", "body", "bodyBase64"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValidationError(unknown[0], "is not a replay field")
    method = _method(doc["method"]) if "method" in doc else record.method
    target = _target(doc["target"], hc) if "target" in doc else record.target
    headers = _headers(doc["headers"]) if "headers" in doc else list(record.request_headers)
    body = _edited_body(doc)
    if body is None:
        if not record.request_body.complete:
            raise ConflictError(
                "the inspector did not keep this request's whole body; give body or bodyBase64"
            )
        body = record.request_body.data
    return _Replay(
        method=method,
        target=_without_token(target),
        headers=_replayable(headers),
        body=body,
        edited=bool(doc),
    )


def _own_tls(state: RelayState, base: str) -> ssl.SSLContext | None:
    """For https to itself: the system's trust plus the relay's own certificate.

    The relay is its own peer here, so its certificate (the leaf, even one from a
    private CA the relay has no root of) is a trust anchor; the host name is still
    checked. Loaded per replay, so a reloaded certificate is the one trusted.
    """
    cert = state.config.relay.tls_cert
    if not base.startswith("https://") or cert is None:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(cert))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _relay_base(state: RelayState) -> str:
    """Where this process takes HTTP requests: its own port (rendezvous_url) or public_url."""
    url = state.rendezvous_url.rstrip("/")
    for old, new in (("wss://", "https://"), ("ws://", "http://"), ("sb://", "https://")):
        if url.startswith(old):
            return new + url[len(old) :]
    return url


async def _replay(call: _Call) -> web.StreamResponse:
    record = _record(call)
    plan = _plan(record, await _body(call.request), call.hc)
    client = call.request.app[REPLAY_CLIENT]
    if client.running >= MAX_REPLAYS:
        raise RateLimitedError(
            f"{MAX_REPLAYS} replays are running; try again when one is done",
            limit="inspector_replays",
            retry_after=1,
        )
    # identify() refused a call without a token; the dashboard's calls carry the session's.
    token = request_token(call.request) or ""
    headers = [*plan.headers, ("ServiceBusAuthorization", token)]
    nonce, recorded = call.inspector.expect_replay(record)
    headers.append((REPLAY_HEADER, nonce))
    timeout = (call.hc.request_timeout or call.state.config.relay.request_timeout) + 10.0
    base = _relay_base(call.state)
    url = URL(base + plan.target, encoded=True)
    tls = _own_tls(call.state, base)
    client.running += 1
    status: int | None = None
    try:
        try:
            async with (
                asyncio.timeout(timeout),
                _session(call.request.app).request(
                    plan.method,
                    url,
                    headers=headers,
                    data=plan.body if plan.body or plan.method not in ("GET", "HEAD") else None,
                    allow_redirects=False,
                    ssl=tls if tls is not None else True,
                    # Only the recorded headers (and the token): none of the client's own.
                    skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                ) as answer,
            ):
                status = answer.status
                # Read to the end: the relay records the exchange once its answer is complete.
                async for _ in answer.content.iter_chunked(64 * 1024):
                    pass
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BadGatewayError(f"the replay could not be sent to the relay: {exc!r}") from exc
        replayed: Record | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_RECORD_WAIT):
                replayed = await recorded  # None when the inspector was turned off meanwhile
    finally:
        client.running -= 1
        call.inspector.replay_over(nonce)
        audit.info(
            "inspector_replay",
            extra={
                "who": call.manager.who,
                "hc": call.hc.name,
                "record": record.id,
                "edited": plan.edited,
                "status": status if status is not None else "-",
                "peer": peer_text(
                    call.request.transport.get_extra_info("peername")
                    if call.request.transport
                    else None
                ),
            },
        )
    replay = inspected_request(replayed) if replayed else None
    return _json({"status": status, "replay": replay})


def inspector_routes() -> list[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]]:
    """``(path under /$mgmt/v1, handler)`` pairs; before ``/hybridconnections/{tail}``."""

    def route(
        operations: Mapping[str, Operation],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await _serve(request, operations)

        return handler

    base = "/hybridconnections/{name:.+}/" + RESERVED_SEGMENT
    return [
        (base + "/requests/{record}/replay", route({"POST": _replay})),
        (base + "/requests/{record}", route({"GET": _get})),
        (base + "/requests", route({"GET": _list})),
        (base, route({"GET": _get_settings, "PUT": _put_settings})),
    ]
