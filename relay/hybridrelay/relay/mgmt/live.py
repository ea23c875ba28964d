"""What is live on this node, for the management API: listeners, streams and counters.

``GET /listeners`` and ``GET /streams`` list this node's control channels and spliced
WebSocket streams (``?hybridConnection=`` narrows them to one entity, compared ignoring
case like every entity name); ``DELETE /streams/{id}`` closes one stream with ``1008``
and the ``?reason=`` given (the audit line names who did it); ``GET /stats`` answers
the counters the relay also exports to Prometheus, refusals grouped by status and
action and by limit. The dashboard (``relay/dashboard``) reads these; so may anyone
with Manage. A cluster's other nodes answer for their own listeners and streams.
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from hybridrelay.errors import EntityNotFoundError, ValidationError
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.relay.listeners import ListenerRegistry
from hybridrelay.relay.metrics import HcStats, RelayMetrics
from hybridrelay.relay.mgmt.views import (
    LISTENER,
    STREAM,
    AzureCounters,
    ListenerRow,
)
from hybridrelay.relay.splice import Splice
from hybridrelay.relay.splices import SpliceRegistry

__all__ = [
    "CLOSE_CODE",
    "agent_id",
    "azure_counters",
    "close_stream",
    "list_listeners",
    "list_streams",
    "stats",
]

CLOSE_CODE: Final = CloseCode.POLICY_VIOLATION  #: what a sender sees when an operator cuts it
_DEFAULT_REASON: Final = "closed by an operator"
_MAX_REASON: Final = 120  # bytes: a close frame's reason is at most 123 (RFC 6455 §5.5)
_MAX_FILTER: Final = 260  # longer than any entity name

# Why a status was refused, in the words an operator searches for.
_REASONS: Final = {
    "400": "bad request",
    "401": "bad or expired token",
    "403": "forbidden or quota",
    "404": "no such entity or no listener",
    "408": "timeout",
    "409": "conflict",
    "410": "gone",
    "413": "too large",
    "429": "rate limit",
    "431": "headers too large",
    "502": "listener failed",
    "503": "unavailable",
    "504": "listener timeout",
}


def _entity_filter(request: web.Request) -> str | None:
    name = request.query.get("hybridConnection")
    if name is None:
        return None
    if not name or len(name) > _MAX_FILTER:
        raise ValidationError("hybridConnection", "must be a hybrid connection name")
    return name.casefold()


def agent_id(listener_id: str, hc_name: str) -> str | None:
    """The listener agent's id from a listener id of its ``{agent_id}-{hc}-{i}`` form.

    The agent (``listener/supervisor.py``) names every control channel that way; a
    hyco-ws listener or one of our ``Listener`` objects with an id of its own has none.
    """
    match = re.fullmatch(rf"(.+)-{re.escape(hc_name)}-\d+", listener_id, re.IGNORECASE)
    return match.group(1) if match else None


def _streams(splices: SpliceRegistry) -> list[Splice]:
    # Only splices that started (an id); order by age, oldest first, for a stable page.
    started = [s for s in splices if s.stream_id]
    return sorted(started, key=lambda s: (s.started_at, s.stream_id))


def list_listeners(
    request: web.Request, listeners: ListenerRegistry, splices: SpliceRegistry, node: str
) -> dict[str, object]:
    wanted = _entity_filter(request)
    streams: dict[tuple[str, str], int] = {}
    for splice in _streams(splices):
        key = ((splice.hc_name or "").casefold(), splice.listener_id)
        streams[key] = streams.get(key, 0) + 1
    channels = sorted(listeners, key=lambda c: (c.hc_name.casefold(), c.connected_at))
    value = [
        LISTENER.encode(
            ListenerRow(
                channel,
                active_streams=streams.get((channel.hc_name.casefold(), channel.listener_id), 0),
                node=node,
                agent_id=agent_id(channel.listener_id, channel.hc_name),
            )
        )
        for channel in channels
        if wanted is None or channel.hc_name.casefold() == wanted
    ]
    return {"value": value, "continuationToken": None, "nextLink": None}


def list_streams(request: web.Request, splices: SpliceRegistry) -> dict[str, object]:
    wanted = _entity_filter(request)
    value = [
        STREAM.encode(s)
        for s in _streams(splices)
        if wanted is None or (s.hc_name or "").casefold() == wanted
    ]
    return {"value": value, "continuationToken": None, "nextLink": None}


def close_stream(request: web.Request, splices: SpliceRegistry, stream_id: str) -> None:
    """Close the stream ``stream_id`` with 1008; raises EntityNotFoundError when none is open."""
    reason = request.query.get("reason", _DEFAULT_REASON).strip() or _DEFAULT_REASON
    if len(reason.encode()) > _MAX_REASON or not reason.isprintable():
        raise ValidationError("reason", f"must be printable and at most {_MAX_REASON} bytes")
    splice = next((s for s in splices if s.stream_id and s.stream_id == stream_id), None)
    if splice is None:
        raise EntityNotFoundError(f"no live stream {stream_id!r} on this node")
    splice.shutdown(CLOSE_CODE, reason)


def stats(
    m: RelayMetrics, listeners: ListenerRegistry, splices: SpliceRegistry
) -> dict[str, object]:
    directions = dict(m.bytes_relayed.counts())
    refusals = [
        {
            "status": status,
            "action": action,
            "reason": _REASONS.get(status, "other"),
            "count": int(count),
        }
        for (status, action), count in sorted(m.rejections.counts())
    ]
    limits = [{"limit": name, "count": int(count)} for (name,), count in m.limit_refusals.counts()]
    return {
        "listeners": len(listeners),
        "activeStreams": len(_streams(splices)),
        "connections": int(m.connections.value),
        "bytesSenderToListener": int(directions.get(("sender_to_listener",), 0)),
        "bytesListenerToSender": int(directions.get(("listener_to_sender",), 0)),
        "refusals": refusals,
        "limitRefusals": sorted(limits, key=lambda item: str(item["limit"])),
    }


def azure_counters(name: str, numbers: HcStats | None) -> AzureCounters:
    """One hybrid connection's numbers on this node, named as Azure Monitor names them.

    None (nothing counted yet, or the entity shares the ``_other`` metrics label beyond
    ``max_metrics_hc_labels``) reads as zeros. Refusals are split by who asked (a
    listener's ``listen``: ListenerConnections-*, everything else: SenderConnections-*)
    and by class: 4xx is the caller's error (bad token, no listener, quota), 5xx the
    relay's or the listener's. Written by ``HC_COUNTERS`` (mgmt/views.py).
    """
    n = numbers or HcStats()

    def count(by_status: dict[str, int], status_class: str) -> int:
        return sum(c for code, c in by_status.items() if code.startswith(status_class))

    listener_client = count(n.listener_rejections, "4")
    listener_server = count(n.listener_rejections, "5")
    return AzureCounters(
        name=name,
        counted=numbers is not None,
        active_listeners=n.listeners,
        active_connections=n.active_connections,
        listener_success=n.listener_connects,
        listener_client_errors=listener_client,
        listener_server_errors=listener_server,
        sender_success=n.connections + n.http_requests,
        sender_client_errors=count(n.rejections, "4") - listener_client,
        sender_server_errors=count(n.rejections, "5") - listener_server,
        bytes_transferred=n.bytes_up + n.bytes_down,
    )
