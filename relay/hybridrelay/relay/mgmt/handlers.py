"""``/$mgmt/v1`` REST handlers: hybrid connections, rules and devices (issue 5).

Resource paths are a contract (issue 5); bodies are JSON with camelCase fields,
spelled by the codecs in ``store/models.py``. Every call is authorized first
(:func:`~hybridrelay.relay.mgmt.access.authorize_manage`), every write is audited
(:mod:`~hybridrelay.relay.mgmt.audit`), and every error is a HybridRelayError that
``middleware.py`` answers as ``{"error": {"code", "message", "trackingId"}}``.

Decisions worth knowing (the OpenAPI document says the same):

- Hybrid connection names may contain ``/``, so ``/hybridconnections/{name...}``
  is matched as a tail and the sub-resources are split off its end: ``.../rules``,
  ``.../rules/{rule}`` and ``.../rules/{rule}/regenerate`` (rule names contain no
  ``/``). To keep that unambiguous the API refuses to create a hybrid connection
  with a path segment ``rules`` (400). ``.../metrics`` is the entity's counters
  (``GET`` only), so no entity whose last segment is ``metrics`` can be made here.
- Lists answer ``{"value": [...], "continuationToken": ..., "nextLink": ...}`` and
  also send the token in ``x-ms-continuation`` (the IoT Hub header). The next page
  is asked for with ``?continuationToken=`` or that header; ``?top=`` sets the page
  size (1 to 1,000; 100 for hybrid connections and 1,000 for devices by default).
  Rules are at most 12 per scope and come in one page.
- ``PUT`` on a hybrid connection creates (201) or replaces (200) it; fields left
  out take their defaults. ``PATCH`` changes only the fields given. Both honour
  ``If-Match``. ``DELETE`` answers 204; config-owned entities and rules are 409.
- ``PUT`` on a device without ``If-Match`` creates it (201; 409 when it exists),
  with ``If-Match`` replaces it (200; 412 when the etag differs, ``*`` forces).
  ``DELETE`` takes ``If-Match`` too; without one it deletes unconditionally.
- ``GET /devices`` searches with ``prefix``, ``contains``, ``status`` and
  ``connectionState`` (``store/device_query.py``: a page examines at most
  ``device_search_scan`` devices, so it may be short and still have a token);
  ``POST /devices/{id}/regenerateKey`` replaces one SAS key; ``GET
  /devices/{id}/timeline`` is this node's record of the device (``device_timeline.py``).
  A deviceId never contains ``/``, so ``/devices/{id}/{action}`` is unambiguous.
- Keys appear in rule GET-one/PUT/regenerate answers and in device documents
  (the admin needs them), never in rule lists and never in a log line.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import quote

from aiohttp import web

from hybridrelay.errors import (
    ConflictError,
    EntityNotFoundError,
    PreconditionFailedError,
    ValidationError,
)
from hybridrelay.relay.auth import TOKENS
from hybridrelay.relay.device_timeline import TIMELINES, check_in
from hybridrelay.relay.listeners import LISTENERS
from hybridrelay.relay.mgmt.access import Manager
from hybridrelay.relay.mgmt.audit import audit_write
from hybridrelay.relay.mgmt.certificates import certificate_routes
from hybridrelay.relay.mgmt.events import handle_events
from hybridrelay.relay.mgmt.inspector import RESERVED_SEGMENT as INSPECTOR_SEGMENT, inspector_routes
from hybridrelay.relay.mgmt.jobs import job_routes
from hybridrelay.relay.mgmt.json_body import parse_json_object, read_body
from hybridrelay.relay.mgmt.live import (
    azure_counters,
    close_stream,
    list_listeners,
    list_streams,
    stats,
)
from hybridrelay.relay.mgmt.openapi import openapi_json
from hybridrelay.relay.mgmt.serving import method_not_allowed, serve_managed
from hybridrelay.relay.mgmt.views import DEVICE_TIMELINE, DRAIN, HC_COUNTERS, DeviceTimelineRow
from hybridrelay.relay.middleware import ACTION_KEY
from hybridrelay.relay.nodes import node_json
from hybridrelay.relay.sources import REFUSED_SOURCES
from hybridrelay.relay.splices import SPLICES
from hybridrelay.relay.state import STATE, RelayState
from hybridrelay.relay.store.device_query import parse_device_query
from hybridrelay.relay.store.models import (
    HYBRID_CONNECTION,
    MAX_PAGE,
    Device,
    HybridConnection,
    KeyKind,
    Page,
    Rule,
    rights_from_json,
    validate_device_id,
)
from hybridrelay.relay.traffic import INTERVAL, TRAFFIC

__all__ = ["MGMT_PREFIX", "add_routes"]

MGMT_PREFIX: Final = "/$mgmt/v1"
CONTINUATION_HEADER: Final = "x-ms-continuation"
_DEFAULT_HC_PAGE: Final = 100
_DEFAULT_DEVICE_PAGE: Final = MAX_PAGE
_MAX_ETAG: Final = 256
# JSON numbers beyond these cannot be a valid value of any field; refusing them at the
# decode boundary keeps float() overflows and the like out of the codecs.
_KEY_TYPES: Final[dict[str, KeyKind]] = {
    "primary": "primary",
    "primarykey": "primary",
    "secondary": "secondary",
    "secondarykey": "secondary",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    """One authorized call: what an operation needs."""

    request: web.Request
    state: RelayState
    manager: Manager


Operation = Callable[[_Call], Awaitable[web.StreamResponse]]


# --- the one entry point: method table -> auth -> operation -> audit ----------------------


async def _serve(request: web.Request, operations: Mapping[str, Operation]) -> web.StreamResponse:
    state = request.app[STATE]

    async def call(manager: Manager) -> _Call:
        return _Call(request=request, state=state, manager=manager)

    return await serve_managed(request, operations, call)


def _route(
    operations: Mapping[str, Operation],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _serve(request, operations)

    return handler


# --- request parsing ------------------------------------------------------------------------


async def _body(request: web.Request) -> dict[str, object]:
    """The request's JSON object; an empty body is ``{}``. Raises ValidationError."""
    relay = request.app[STATE].config.relay
    raw = await read_body(
        request, max_size=relay.max_management_body_size, idle=relay.body_idle_timeout
    )
    if not raw.strip():
        return {}
    return parse_json_object(raw, "body")


def _if_match(request: web.Request) -> str | None:
    value = request.headers.get("If-Match")
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > _MAX_ETAG or not all(31 < ord(c) < 127 for c in value):
        raise ValidationError("If-Match", "must be an etag or *")
    return value


def _top(request: web.Request, default: int) -> int:
    text = request.query.get("top")
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 4 and 1 <= int(text) <= MAX_PAGE):
        raise ValidationError("top", f"must be an integer between 1 and {MAX_PAGE}")
    return int(text)


def _continuation(request: web.Request) -> str | None:
    token = request.query.get("continuationToken") or request.headers.get(CONTINUATION_HEADER)
    return token or None


# --- responses ------------------------------------------------------------------------------


def _json(
    doc: object, *, status: int = 200, etag: str | None = None, weak: bool = False
) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if etag:
        headers["ETag"] = f'W/"{etag}"' if weak else f'"{etag}"'
    return web.json_response(doc, status=status, headers=headers)


def _no_content() -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "no-store"})


def _list(
    collection: str,
    items: list[dict[str, object]],
    continuation: str | None,
    top: int,
    terms: str = "",
) -> web.Response:
    next_link = None
    if continuation is not None:
        token = quote(continuation, safe="")
        next_link = f"{MGMT_PREFIX}/{collection}?top={top}&continuationToken={token}{terms}"
    response = _json({"value": items, "continuationToken": continuation, "nextLink": next_link})
    if continuation is not None:
        response.headers[CONTINUATION_HEADER] = continuation
    return response


# --- hybrid connections -----------------------------------------------------------------------


def _check_api_name(name: str) -> None:
    if any(segment.lower() == "rules" for segment in name.split("/")):
        raise ValidationError(
            "name", "a path segment 'rules' is reserved by the management API's URLs"
        )
    if any(segment.lower() == INSPECTOR_SEGMENT for segment in name.split("/")[1:]):
        raise ValidationError(
            "name", "a path segment 'inspector' after the first is reserved by the API's URLs"
        )


async def _hc_metrics(call: _Call, name: str) -> web.StreamResponse:
    hc = await _existing_hc(call.state, name)
    counters = azure_counters(hc.name, call.state.metrics.hc_numbers(hc.name))
    # Listeners on every node (the cap counts them all); the counters are this node's.
    everywhere = await call.state.cluster.listener_count(hc.name)
    return _json(HC_COUNTERS.encode(replace(counters, listeners_all_nodes=everywhere)))


async def _hc_json(state: RelayState, hc: HybridConnection) -> dict[str, object]:
    doc = hc.to_json()
    doc["listenerCount"] = await state.cluster.listener_count(hc.name)
    return doc


async def _existing_hc(state: RelayState, name: str) -> HybridConnection:
    hc = await state.store.get(name)
    if hc is None:
        raise EntityNotFoundError(f"hybrid connection {name!r} does not exist")
    return hc


async def _list_hcs(call: _Call) -> web.StreamResponse:
    top = _top(call.request, _DEFAULT_HC_PAGE)
    page: Page[HybridConnection] = await call.state.store.list_hybrid_connections(
        limit=top, continuation=_continuation(call.request)
    )
    items = list(await asyncio.gather(*(_hc_json(call.state, hc) for hc in page.items)))
    return _list("hybridconnections", items, page.continuation, top)


async def _get_hc(call: _Call, name: str) -> web.StreamResponse:
    hc = await _existing_hc(call.state, name)
    return _json(await _hc_json(call.state, hc), etag=hc.etag)


async def _put_hc(call: _Call, name: str) -> web.StreamResponse:
    doc = await _body(call.request)
    doc.setdefault("maxListeners", call.state.config.relay.max_listeners_per_hc)
    hc = HybridConnection.from_json(doc, name=name)
    _check_api_name(hc.name)
    stored, created = await call.state.store.put_hybrid_connection(
        hc, if_match=_if_match(call.request)
    )
    return _json(
        await _hc_json(call.state, stored), status=201 if created else 200, etag=stored.etag
    )


_HC_SETTABLE: Final = frozenset(HYBRID_CONNECTION.settable())


async def _patch_hc(call: _Call, name: str) -> web.StreamResponse:
    patch = await _body(call.request)
    current = await _existing_hc(call.state, name)
    merged = current.to_json()
    merged.update({k: v for k, v in patch.items() if k in _HC_SETTABLE})
    hc = HybridConnection.from_json(merged, name=current.name)
    asked = _if_match(call.request)
    try:
        stored, _ = await call.state.store.put_hybrid_connection(
            hc, if_match=asked if asked is not None else current.etag
        )
    except PreconditionFailedError as exc:
        if asked is not None:
            raise
        # The caller gave no etag; the entity changed between our read and write.
        raise ConflictError(f"hybrid connection {name!r} changed concurrently; retry") from exc
    return _json(await _hc_json(call.state, stored), etag=stored.etag)


async def _delete_hc(call: _Call, name: str) -> web.StreamResponse:
    await call.state.store.delete_hybrid_connection(name, if_match=_if_match(call.request))
    # reactions.py closes its listeners (1001) and its open streams on every node.
    return _no_content()


# --- rules (scope None: the namespace) ------------------------------------------------------


async def _find_rule(state: RelayState, scope: str | None, name: str) -> Rule:
    wanted = name.lower()
    for rule in await state.store.list_rules(scope):
        if rule.name.lower() == wanted:
            return rule
    raise EntityNotFoundError(f"rule {name!r} does not exist")


async def _list_rules(call: _Call, scope: str | None) -> web.StreamResponse:
    rules = await call.state.store.list_rules(scope)
    return _json(
        {
            "value": [r.to_json(include_keys=False) for r in rules],
            "continuationToken": None,
            "nextLink": None,
        }
    )


async def _get_rule(call: _Call, scope: str | None, name: str) -> web.StreamResponse:
    return _json((await _find_rule(call.state, scope, name)).to_json(include_keys=True))


async def _put_rule(call: _Call, scope: str | None, name: str) -> web.StreamResponse:
    doc = await _body(call.request)
    rights = rights_from_json("rights", doc.get("rights"))
    rule, created = await call.state.store.put_rule(scope, name, rights)
    # The change event clears the token cache too (reactions.py); clearing it here as
    # well makes "at once" hold on this node whatever the store's event latency.
    call.request.app[TOKENS].clear()
    return _json(rule.to_json(include_keys=True), status=201 if created else 200)


async def _delete_rule(call: _Call, scope: str | None, name: str) -> web.StreamResponse:
    await call.state.store.delete_rule(scope, name)
    call.request.app[TOKENS].clear()
    return _no_content()


async def _regenerate(call: _Call, scope: str | None, name: str) -> web.StreamResponse:
    doc = await _body(call.request)
    key_type = doc.get("keyType")
    which = _KEY_TYPES.get(key_type.lower()) if isinstance(key_type, str) else None
    if which is None:
        raise ValidationError("keyType", "must be primary or secondary")
    key = doc.get("key")
    if key is not None and not isinstance(key, str):
        raise ValidationError("key", "must be a string")
    rule = await call.state.store.regenerate_key(scope, name, which, key=key)
    call.request.app[TOKENS].clear()
    return _json(rule.to_json(include_keys=True))


def _rule_operations(scope: str | None, rule: str) -> dict[str, Operation]:
    return {
        "GET": functools.partial(_get_rule, scope=scope, name=rule),
        "PUT": functools.partial(_put_rule, scope=scope, name=rule),
        "DELETE": functools.partial(_delete_rule, scope=scope, name=rule),
    }


def _split_hc_tail(tail: str) -> tuple[str, str, str | None]:
    """Split ``{name}[/rules[/{rule}[/regenerate]]]`` into (name, what, rule).

    ``what`` is ``""`` (the hybrid connection), ``"rules"``, ``"rule"`` or
    ``"regenerate"``. A rule name never contains '/', so the last segments decide.
    """
    segments = tail.split("/")
    if len(segments) >= 2 and segments[-1] == "metrics":
        return "/".join(segments[:-1]), "metrics", None
    if len(segments) >= 4 and segments[-3] == "rules" and segments[-1] == "regenerate":
        return "/".join(segments[:-3]), "regenerate", segments[-2]
    if len(segments) >= 3 and segments[-2] == "rules":
        return "/".join(segments[:-2]), "rule", segments[-1]
    if len(segments) >= 2 and segments[-1] == "rules":
        return "/".join(segments[:-1]), "rules", None
    return tail, "", None


async def _hybrid_connection_tail(request: web.Request) -> web.StreamResponse:
    name, what, rule = _split_hc_tail(request.match_info["tail"])
    operations: dict[str, Operation]
    if what == "metrics":
        operations = {"GET": functools.partial(_hc_metrics, name=name)}
    elif what == "regenerate" and rule is not None:
        operations = {"POST": functools.partial(_regenerate, scope=name, name=rule)}
    elif what == "rule" and rule is not None:
        operations = _rule_operations(name, rule)
    elif what == "rules":
        operations = {"GET": functools.partial(_list_rules, scope=name)}
    else:
        operations = {
            "GET": functools.partial(_get_hc, name=name),
            "PUT": functools.partial(_put_hc, name=name),
            "PATCH": functools.partial(_patch_hc, name=name),
            "DELETE": functools.partial(_delete_hc, name=name),
        }
    return await _serve(request, operations)


async def _namespace_rule(request: web.Request) -> web.StreamResponse:
    return await _serve(request, _rule_operations(None, request.match_info["rule"]))


async def _namespace_regenerate(request: web.Request) -> web.StreamResponse:
    operations: dict[str, Operation] = {
        "POST": functools.partial(_regenerate, scope=None, name=request.match_info["rule"])
    }
    return await _serve(request, operations)


# --- devices --------------------------------------------------------------------------------


def _device_json(device: Device) -> web.Response:
    return _json(device.to_json(), etag=device.etag, weak=True)


_SEARCH_PARAMS: Final = ("prefix", "contains", "status", "connectionState")


async def _list_devices(call: _Call) -> web.StreamResponse:
    top = _top(call.request, _DEFAULT_DEVICE_PAGE)
    asked = call.request.query
    query = parse_device_query(
        prefix=asked.get("prefix"),
        contains=asked.get("contains"),
        status=asked.get("status"),
        connection_state=asked.get("connectionState"),
    )
    page = await call.state.store.list_devices(
        limit=top,
        continuation=_continuation(call.request),
        query=query,
        scan_limit=call.state.config.relay.device_search_scan,
    )
    # The token holds a position only: the next page repeats the search's terms.
    terms = "".join(
        f"&{name}={quote(asked[name], safe='')}" for name in _SEARCH_PARAMS if asked.get(name)
    )
    return _list("devices", [d.to_json() for d in page.items], page.continuation, top, terms)


async def _existing_device(state: RelayState, device_id: str) -> Device:
    device = await state.store.get_device(validate_device_id(device_id))
    if device is None:
        raise EntityNotFoundError(f"device {device_id!r} does not exist")
    return device


async def _regenerate_device_key(call: _Call, device_id: str) -> web.StreamResponse:
    doc = await _body(call.request)
    key_type = doc.get("keyType")
    which = _KEY_TYPES.get(key_type.lower()) if isinstance(key_type, str) else None
    if which is None:
        raise ValidationError("keyType", "must be primary or secondary")
    current = await _existing_device(call.state, device_id)
    auth = current.authentication
    if auth.type != "sas" or auth.symmetric_key is None:
        raise ValidationError("authentication", "the device has no SAS keys to regenerate")
    given = doc.get("key")
    if given is not None and not isinstance(given, str):
        raise ValidationError("key", "must be a string")
    # The same strength the registry gives a new device (32 random bytes, base64); a
    # given key is checked like any device key (SymmetricKey: base64 of 16 to 64 bytes).
    fresh = given if given is not None else base64.b64encode(secrets.token_bytes(32)).decode()
    keys = auth.symmetric_key
    keys = (
        replace(keys, primary_key=fresh)
        if which == "primary"
        else replace(keys, secondary_key=fresh)
    )
    updated = replace(current, authentication=replace(auth, symmetric_key=keys))
    try:
        stored = await call.state.store.replace_device(updated, if_match=current.etag)
    except PreconditionFailedError as exc:
        raise ConflictError(f"device {device_id!r} changed concurrently; retry") from exc
    return _device_json(stored)


async def _device_timeline(call: _Call, device_id: str) -> web.StreamResponse:
    device = await _existing_device(call.state, device_id)
    verdict, due = check_in(device.last_activity_time, device.check_in_interval, call.state.now())
    entries = call.request.app[TIMELINES].entries(device.device_id)
    return _json(DEVICE_TIMELINE.encode(DeviceTimelineRow(device, verdict, due, entries)))


async def _device_action(request: web.Request) -> web.StreamResponse:
    device_id, action = request.match_info["device"], request.match_info["action"]
    operations: dict[str, Operation]
    if action == "timeline":
        operations = {"GET": functools.partial(_device_timeline, device_id=device_id)}
    elif action == "regenerateKey":
        operations = {"POST": functools.partial(_regenerate_device_key, device_id=device_id)}
    else:  # a deviceId never contains '/': nothing else lives under a device
        return await _unknown(request)
    return await _serve(request, operations)


async def _get_device(call: _Call, device_id: str) -> web.StreamResponse:
    device = await call.state.store.get_device(validate_device_id(device_id))
    if device is None:
        raise EntityNotFoundError(f"device {device_id!r} does not exist")
    return _device_json(device)


async def _put_device(call: _Call, device_id: str) -> web.StreamResponse:
    device = Device.from_json(await _body(call.request), device_id=validate_device_id(device_id))
    if_match = _if_match(call.request)
    if if_match is None:
        created = await call.state.store.create_device(device)
        return _json(created.to_json(), status=201, etag=created.etag, weak=True)
    return _device_json(await call.state.store.replace_device(device, if_match=if_match))


async def _delete_device(call: _Call, device_id: str) -> web.StreamResponse:
    validate_device_id(device_id)
    if_match = _if_match(call.request)
    await call.state.store.delete_device(device_id, if_match="*" if if_match is None else if_match)
    return _no_content()


async def _device(request: web.Request) -> web.StreamResponse:
    device_id = request.match_info["device"]  # validated by each operation (400 names the char)
    operations: dict[str, Operation] = {
        "GET": functools.partial(_get_device, device_id=device_id),
        "PUT": functools.partial(_put_device, device_id=device_id),
        "DELETE": functools.partial(_delete_device, device_id=device_id),
    }
    return await _serve(request, operations)


# --- live state of this node (mgmt/live.py) ---------------------------------------------------


async def _listeners(call: _Call) -> web.StreamResponse:
    app = call.request.app
    return _json(
        list_listeners(call.request, app[LISTENERS], app[SPLICES], call.state.cluster.node_id)
    )


async def _streams(call: _Call) -> web.StreamResponse:
    return _json(list_streams(call.request, call.request.app[SPLICES]))


async def _stats(call: _Call) -> web.StreamResponse:
    app = call.request.app
    doc = stats(call.state.metrics, app[LISTENERS], app[SPLICES])
    sources = call.request.app.get(REFUSED_SOURCES)
    doc["topRefusedSources"] = [
        {"address": s.address, "count": s.count, "error": s.error}
        for s in (sources.top(10) if sources is not None else [])
    ]
    history = call.request.app.get(TRAFFIC)
    doc["traffic"] = {
        "interval": INTERVAL,
        "points": [p.to_json() for p in history.points()] if history is not None else [],
    }
    name = call.request.query.get("hybridConnection")
    if name is not None:
        hc = await _existing_hc(call.state, name)
        counters = azure_counters(hc.name, call.state.metrics.hc_numbers(hc.name))
        doc["hybridConnection"] = HC_COUNTERS.encode(counters)
    return _json(doc)


async def _close_stream(call: _Call, stream_id: str) -> web.StreamResponse:
    close_stream(call.request, call.request.app[SPLICES], stream_id)
    return _no_content()


async def _stream(request: web.Request) -> web.StreamResponse:
    operations: dict[str, Operation] = {
        "DELETE": functools.partial(_close_stream, stream_id=request.match_info["stream"])
    }
    return await _serve(request, operations)


# --- the cluster's nodes (relay/nodes.py) ----------------------------------------------------


async def _nodes(call: _Call) -> web.StreamResponse:
    nodes = await call.state.cluster.nodes()
    return _json({"value": [node_json(node) for node in nodes], "self": call.state.cluster.node_id})


async def _drain_node(call: _Call, node_id: str) -> web.StreamResponse:
    if not await call.state.cluster.request_drain(node_id):
        raise EntityNotFoundError(f"no live node {node_id!r}")
    return _json(DRAIN.encode((node_id, True)), status=202)


async def _undrain_node(call: _Call, node_id: str) -> web.StreamResponse:
    if not await call.state.cluster.request_drain(node_id, drain=False):
        raise EntityNotFoundError(f"no live node {node_id!r}")
    return _json(DRAIN.encode((node_id, False)), status=202)


async def _node_drain(request: web.Request) -> web.StreamResponse:
    node_id = request.match_info["node"]
    return await _serve(request, {"POST": functools.partial(_drain_node, node_id=node_id)})


async def _node_undrain(request: web.Request) -> web.StreamResponse:
    node_id = request.match_info["node"]
    return await _serve(request, {"POST": functools.partial(_undrain_node, node_id=node_id)})


# --- the rest -------------------------------------------------------------------------------


async def _openapi(request: web.Request) -> web.StreamResponse:
    # Public, like /metrics: it describes the API and holds nothing secret.
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(request, ("GET", "HEAD"))
    return web.Response(
        text=openapi_json(), content_type="application/json", headers={"Cache-Control": "no-cache"}
    )


async def _unknown(request: web.Request) -> web.StreamResponse:
    request[ACTION_KEY] = "mgmt"
    audit_write(request, who=None, status=404, error=EntityNotFoundError.error_code)
    raise EntityNotFoundError(f"no management resource at {request.path}")


def _collection(operation: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    return _route({"GET": operation})


def add_routes(router: web.UrlDispatcher) -> None:
    """Register ``/$mgmt/v1``; must come before the relay's catch-all route."""
    routes: Iterable[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = (
        ("/openapi.json", _openapi),
        ("/hybridconnections", _collection(_list_hcs)),
        *inspector_routes(),  # .../{name}/inspector...: the HTTP inspector (mgmt/inspector.py)
        ("/hybridconnections/{tail:.+}", _hybrid_connection_tail),
        ("/rules", _collection(functools.partial(_list_rules, scope=None))),
        ("/rules/{rule}", _namespace_rule),
        ("/rules/{rule}/regenerate", _namespace_regenerate),
        ("/devices", _collection(_list_devices)),
        ("/devices/{device}/{action}", _device_action),  # timeline, regenerateKey
        ("/devices/{device:.+}", _device),
        ("/listeners", _collection(_listeners)),
        ("/streams", _collection(_streams)),
        ("/streams/{stream}", _stream),
        ("/stats", _collection(_stats)),
        ("/nodes", _collection(_nodes)),
        ("/nodes/{node}/drain", _node_drain),
        ("/nodes/{node}/undrain", _node_undrain),
        ("/events", handle_events),  # lifecycle notifications (mgmt/events.py)
        *job_routes(),  # /jobs...: bulk export and import (mgmt/jobs.py)
        *certificate_routes(),  # /certificates...: CA certificates (mgmt/certificates.py)
    )
    for path, handler in routes:
        router.add_route("*", MGMT_PREFIX + path, handler)
    # Anything else under /$mgmt is a JSON 404, never a relayed HTTP request.
    router.add_route("*", "/$mgmt{tail:.*}", _unknown)
