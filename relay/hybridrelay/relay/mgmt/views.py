"""The management API's read-only views, each declared once for its JSON and its OpenAPI schema.

What ``GET /listeners``, ``/streams``, ``/nodes``, ``/jobs``, ``/devices/{id}/timeline``,
``/hybridconnections/{name}/metrics`` and ``.../inspector`` answer is not a stored
record but a live object's fields (a control channel, a splice, a node's summary, a
job, an inspected request) or a few values put together for the answer. Each is
declared here with the store's :class:`~hybridrelay.relay.store.schema.Schema`
machinery, encode-only: the handler writes ``VIEW.encode(obj)`` and
``relay/mgmt/openapi.py`` takes ``VIEW.components()``, so the document names exactly
the keys and types the handler sends (issue 13, step 4). The envelopes (``value``,
``continuationToken``, ``self``) stay in the handlers and the document's ``_list_of``.

A view whose values are not all attributes of one object has a small row type here
(:class:`ListenerRow`, :class:`DeviceTimelineRow`, :class:`AzureCounters`, ...) that
the handler fills in; a timeline entry is declared next to its class
(``relay/device_timeline.py``).

The live views write times with :func:`iso_seconds` (``datetime.isoformat``: no
fraction when it is zero), the inspector's records with milliseconds, as they always
have; the stored records, jobs and timelines write six digits (``format_time``). All
are ISO 8601 UTC, which is what the document promises.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, get_args

from hybridrelay.relay.device_timeline import TIMELINE_ENTRY, CheckIn
from hybridrelay.relay.store.models import DEVICE
from hybridrelay.relay.store.schema import (
    BOOLEAN,
    DATE_TIME,
    INTEGER,
    STRING,
    TIME,
    Codec,
    Field,
    Schema,
    array_of,
    encode_only,
    enum_codec,
    ref,
)

if TYPE_CHECKING:
    from hybridrelay.errors import HybridRelayError
    from hybridrelay.relay.control import ControlChannel
    from hybridrelay.relay.device_timeline import TimelineEntry
    from hybridrelay.relay.store.models import Device

__all__ = [
    "DEVICE_TIMELINE",
    "DRAIN",
    "HC_COUNTERS",
    "HEADER_PAIRS",
    "IMPORT_ERROR",
    "INSPECTED_BODY",
    "INSPECTED_REQUEST",
    "INSPECTED_REQUEST_SUMMARY",
    "INSPECTOR_SETTINGS",
    "JOB",
    "JOB_STATUSES",
    "JOB_TYPES",
    "LISTENER",
    "MAX_REPORTED_ERRORS",
    "NODE",
    "STREAM",
    "AzureCounters",
    "DeviceTimelineRow",
    "ImportErrorRow",
    "InspectorSettingsRow",
    "ListenerRow",
    "inspected_request",
    "iso_seconds",
]


def iso_seconds(seconds: float) -> str:
    """Unix seconds as ISO 8601 UTC text, as the live views have always written them."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


# A live object's time: always there (never "never"), written by iso_seconds.
_INSTANT: Final[Codec[float]] = Codec(encode_only, iso_seconds, TIME.openapi)


def _milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 3)


# Seconds kept, milliseconds written (to the microsecond).
_MILLISECONDS: Final[Codec[float]] = Codec(encode_only, _milliseconds, {"type": "number"})


# --- live state of this node (mgmt/live.py) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class ListenerRow:
    """A control channel with what the listener list adds to it."""

    channel: ControlChannel
    active_streams: int  # its spliced streams open now
    node: str  # the node id holding it
    agent_id: str | None  # from the channel's id (mgmt/live.py: agent_id)


LISTENER: Final = Schema(
    "Listener",
    where="listener",
    description="A listener's control channel connected to this node.",
    fields=(
        Field("hybridConnection", "channel.hc_name", STRING, always=True),
        Field(
            "id",
            "channel.listener_id",
            STRING,
            always=True,
            description="The listener's id (its tracking id).",
        ),
        Field(
            "remoteAddress",
            "channel.remote_address",
            STRING,
            always=True,
            description="address:port as seen here.",
        ),
        Field("connectedAt", "channel.connected_at", _INSTANT, always=True),
        Field("activeStreams", "active_streams", INTEGER, always=True, minimum=0),
        Field(
            "node",
            "node",
            STRING,
            always=True,
            description="The relay node holding it (node id).",
        ),
        Field(
            "agentId",
            "agent_id",
            STRING,
            nullable=True,
            always=True,
            description="The listener agent's agent_id, read from an id of the agent's "
            "{agent_id}-{hc}-{i} form; null for other listeners.",
        ),
        Field(
            "lastPingRoundTripMs",
            "channel.last_ping_rtt",
            _MILLISECONDS,
            nullable=True,
            always=True,
            minimum=0,
            description="Milliseconds from the relay's last answered keepalive ping to its "
            "pong; null until the first pong.",
        ),
    ),
)

# A started Splice (relay/splice.py).
STREAM: Final = Schema(
    "Stream",
    where="stream",
    description="A spliced WebSocket stream (sender <-> listener) open on this node.",
    fields=(
        Field("id", "stream_id", STRING, always=True),
        Field("hybridConnection", "hc_name", STRING, always=True),
        Field("listenerId", "listener_id", STRING, always=True),
        Field("senderAddress", "sender_address", STRING, always=True),
        Field("startedAt", "started_at", _INSTANT, always=True),
        Field("bytesSenderToListener", "sender.bytes_in", INTEGER, always=True, minimum=0),
        Field("bytesListenerToSender", "listener.bytes_in", INTEGER, always=True, minimum=0),
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AzureCounters:
    """A hybrid connection's numbers on this node (mgmt/live.py: azure_counters)."""

    name: str
    counted: bool
    active_listeners: int
    active_connections: int
    listener_success: int
    listener_client_errors: int
    listener_server_errors: int
    sender_success: int
    sender_client_errors: int
    sender_server_errors: int
    bytes_transferred: int
    listeners_all_nodes: int | None = None  # GET .../metrics asks the cluster


def _all_nodes_asked(counters: AzureCounters) -> bool:
    return counters.listeners_all_nodes is not None


HC_COUNTERS: Final = Schema(
    "HcCounters",
    where="counters",
    description="A hybrid connection's numbers on this node, named as Azure Monitor names "
    "them. ListenerConnections-*: control channels opened, and listen requests refused by "
    "4xx (the caller's error) and 5xx (the relay's); SenderConnections-*: relayed "
    "connections and HTTP requests answered, and the other refusals, likewise split; "
    "BytesTransferred: of finished streams. counted is false when nothing was counted yet "
    "or the entity is beyond max_metrics_hc_labels.",
    fields=(
        Field("name", "name", STRING, always=True),
        Field("counted", "counted", BOOLEAN, always=True),
        *(
            Field(name, attr, INTEGER, always=True)
            for name, attr in (
                ("ActiveListeners", "active_listeners"),
                ("ActiveConnections", "active_connections"),
                ("ListenerConnections-Success", "listener_success"),
                ("ListenerConnections-ClientError", "listener_client_errors"),
                ("ListenerConnections-ServerError", "listener_server_errors"),
                ("SenderConnections-Success", "sender_success"),
                ("SenderConnections-ClientError", "sender_client_errors"),
                ("SenderConnections-ServerError", "sender_server_errors"),
                ("BytesTransferred", "bytes_transferred"),
            )
        ),
        Field(
            "listenersAllNodes",
            "listeners_all_nodes",
            INTEGER,
            when=_all_nodes_asked,
            description="Listeners on every node (GET /metrics only).",
        ),
    ),
)


# --- the cluster's nodes (relay/nodes.py) -----------------------------------------------

# One (hybrid connection, listeners held) pair of a NodeSummary.
_NODE_HC: Final = Schema(
    "NodeHybridConnection",
    where="hybridConnections",
    fields=(
        Field("name", "0", STRING, always=True),
        Field("listeners", "1", INTEGER, always=True, minimum=1),
    ),
)

# A NodeSummary (relay/cluster/base.py); its own to_json is the cluster's wire format
# (times as numbers), this is the API's.
NODE: Final = Schema(
    "Node",
    where="node",
    description="A relay node, as its last heartbeat described it (this node: now). "
    "Without a cluster the one node is 'local'.",
    fields=(
        Field("id", "node_id", STRING, always=True, description="The node id ([cluster] node_id)."),
        Field("address", "address", STRING, always=True, description="Its public URL."),
        Field(
            "listeners",
            "listeners",
            INTEGER,
            always=True,
            minimum=0,
            description="Control channels.",
        ),
        Field(
            "streams", "streams", INTEGER, always=True, minimum=0, description="Spliced streams."
        ),
        Field("pendingRendezvous", "pending", INTEGER, always=True, minimum=0),
        Field("draining", "draining", BOOLEAN, always=True),
        Field("startedAt", "started_at", _INSTANT, always=True),
        Field("seenAt", "seen_at", _INSTANT, always=True),
        Field(
            "hybridConnections",
            "hybrid_connections",
            array_of(_NODE_HC),
            always=True,
            description="Listeners it holds per hybrid connection, the most first (100 at most).",
        ),
    ),
)

# A drain asked of a node: (node id, draining).
DRAIN: Final = Schema(
    "Drain",
    where="drain",
    fields=(
        Field("id", "0", STRING, always=True),
        Field(
            "draining",
            "1",
            BOOLEAN,
            always=True,
            description="What the node was asked to be.",
        ),
    ),
)


# --- a device's timeline (relay/device_timeline.py) -------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceTimelineRow:
    """A device with this node's timeline of it and its check-in verdict."""

    device: Device
    check_in: CheckIn
    due: float | None  # when the next check-in is due; None: no schedule or never active
    entries: list[TimelineEntry]  # newest first


def _capitalized(state: str) -> str:
    return state.capitalize()


DEVICE_TIMELINE: Final = Schema(
    "DeviceTimeline",
    where="timeline",
    fields=(
        Field("deviceId", "device.device_id", STRING, always=True),
        Field(
            "connectionState",
            "device.connection_state",
            Codec(
                encode_only, _capitalized, {"type": "string", "enum": ["Connected", "Disconnected"]}
            ),
            always=True,
        ),
        Field("lastActivityTime", "device.last_activity_time", TIME, always=True),
        # The device's own field, as its document declares it.
        replace(
            DEVICE.field("checkInIntervalSeconds"),
            attr="device.check_in_interval",
            always=True,
        ),
        Field(
            "checkIn",
            "check_in",
            enum_codec(get_args(CheckIn), "must be a check-in verdict"),
            always=True,
            description="Last activity against checkInIntervalSeconds: onSchedule until one "
            "interval after it, then overdue; never (never active) and unscheduled (no "
            "interval) otherwise.",
        ),
        Field("nextCheckInDue", "due", DATE_TIME, nullable=True, always=True),
        Field(
            "value",
            "entries",
            array_of(TIMELINE_ENTRY),
            always=True,
            description="Newest first; at most device_timeline_entries, this node's.",
        ),
    ),
)


# --- bulk jobs (mgmt/jobs.py) -----------------------------------------------------------

JOB_TYPES: Final = ("export", "import")
JOB_STATUSES: Final = ("enqueued", "running", "completed", "failed")
MAX_REPORTED_ERRORS: Final = 1000  # errors listed in the job; all are in its errors file


@dataclass(frozen=True, slots=True)
class ImportErrorRow:
    """An import line refused: its number, its deviceId when it has one, and why."""

    line: int
    device_id: str | None
    error: HybridRelayError


IMPORT_ERROR: Final = Schema(
    "ImportError",
    where="error",
    fields=(
        Field("line", "line", INTEGER, always=True, minimum=1, description="1-based line number."),
        Field(
            "deviceId",
            "device_id",
            STRING,
            nullable=True,
            always=True,
            description="Null when unknown.",
        ),
        Field("errorCode", "error.error_code", STRING, always=True),
        Field("errorStatus", "error.http_status", INTEGER, always=True),
        Field("message", "error", Codec(encode_only, str, {"type": "string"}), always=True),
    ),
)


def _is_import(job: object) -> bool:
    return getattr(job, "type", None) == "import"


_ERRORS: Final[Codec[list[dict[str, object]]]] = Codec(
    encode_only,
    list,  # a copy: the job's task appends to its own
    {"type": "array", "maxItems": MAX_REPORTED_ERRORS, "items": ref("ImportError")},
)
_IMPORT_ONLY: Final = "Import jobs only."

# A Job (mgmt/jobs.py); an import job adds its counts and errors.
JOB: Final = Schema(
    "Job",
    where="job",
    fields=(
        Field("jobId", "job_id", STRING, always=True),
        Field("type", "type", enum_codec(JOB_TYPES, "must be export or import"), always=True),
        Field("status", "status", enum_codec(JOB_STATUSES, "must be a job status"), always=True),
        Field("progress", "progress", INTEGER, always=True, minimum=0, maximum=100),
        Field("startTime", "start_time", TIME, always=True),
        Field("endTime", "end_time", TIME, always=True),
        Field(
            "deviceCount",
            "device_count",
            INTEGER,
            description="Export: devices written; import: non-blank lines read.",
        ),
        Field("failureReason", "failure_reason", STRING, nullable=True),
        Field("outputUrl", "output_url", STRING, nullable=True, description="Export jobs only."),
        Field("succeeded", "succeeded", INTEGER, when=_is_import, description=_IMPORT_ONLY),
        Field("failed", "failed", INTEGER, when=_is_import, description=_IMPORT_ONLY),
        Field("errorCount", "failed", INTEGER, when=_is_import, description=_IMPORT_ONLY),
        Field(
            "errors",
            "errors",
            _ERRORS,
            when=_is_import,
            description="Import jobs only: the first 1,000 line errors.",
        ),
        Field("errorsUrl", "errors_url", STRING, when=_is_import, description=_IMPORT_ONLY),
    ),
)


# --- the HTTP inspector (mgmt/inspector.py) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class InspectorSettingsRow:
    """The inspector's settings for one hybrid connection, as GET and PUT answer them."""

    hybrid_connection: str
    enabled: bool
    capacity: int
    body_limit: int
    recorded: int


INSPECTOR_SETTINGS: Final = Schema(
    "InspectorSettings",
    where="body",
    description="Whether this node's HTTP inspector records the hybrid connection's "
    "HTTP-mode requests, and its bounds (inspector_requests, inspector_body_size).",
    fields=(
        Field("hybridConnection", "hybrid_connection", STRING, always=True, settable=False),
        Field(
            "enabled",
            "enabled",
            BOOLEAN,
            always=True,
            input_openapi={
                "description": "true: record (403 when max_inspected_hcs are on already); "
                "false: stop and forget what was recorded."
            },
        ),
        Field(
            "capacity",
            "capacity",
            INTEGER,
            always=True,
            settable=False,
            description="Requests kept (the oldest goes).",
        ),
        Field(
            "bodyLimit",
            "body_limit",
            INTEGER,
            always=True,
            settable=False,
            description="Bytes kept of each body.",
        ),
        Field(
            "recorded",
            "recorded",
            INTEGER,
            always=True,
            settable=False,
            description="Requests kept now.",
        ),
    ),
    input_name="InspectorSettingsInput",
)


# --- inspected requests (relay/inspector.py: Record, CapturedBody) ----------------------


def _iso_milliseconds(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _header_pairs(pairs: tuple[tuple[str, str], ...]) -> list[list[str]]:
    return [[name, value] for name, value in pairs]


HEADER_PAIRS: Final[dict[str, object]] = {
    "type": "array",
    "items": {
        "type": "array",
        "items": {"type": "string"},
        "minItems": 2,
        "maxItems": 2,
        "description": "[name, value]",
    },
}
_RECORD_TIME: Final[Codec[float]] = Codec(encode_only, _iso_milliseconds, TIME.openapi)
_HEADERS: Final[Codec[tuple[tuple[str, str], ...]]] = Codec(
    encode_only, _header_pairs, HEADER_PAIRS
)

# A CapturedBody: three of its fields are read from its (redacted) bytes.
INSPECTED_BODY: Final = Schema(
    "InspectedBody",
    where="body",
    description="The first bytes of a body, with SAS signatures (sig=...) redacted.",
    fields=(
        Field(
            "size",
            "size",
            INTEGER,
            nullable=True,
            always=True,
            description="The whole body's bytes; null when unknown (streamed).",
        ),
        Field(
            "captured",
            "data",
            Codec(encode_only, len, {"type": "integer"}),
            always=True,
            description="Bytes kept.",
        ),
        Field(
            "complete",
            "complete",
            BOOLEAN,
            always=True,
            description="The whole body was kept.",
        ),
        Field(
            "text",
            "data",
            Codec(encode_only, _utf8, {"type": "string"}),
            nullable=True,
            always=True,
            description="The kept bytes as UTF-8.",
        ),
        Field(
            "base64",
            "data",
            Codec(
                encode_only, lambda data: base64.b64encode(data).decode("ascii"), {"type": "string"}
            ),
            always=True,
            description="The kept bytes.",
        ),
    ),
)
_BODY: Final[Codec[object]] = Codec(encode_only, INSPECTED_BODY.encode, ref("InspectedBody"))

# A Record as GET .../inspector/requests lists it.
INSPECTED_REQUEST_SUMMARY: Final = Schema(
    "InspectedRequestSummary",
    where="record",
    description="An HTTP-mode request this node answered while the inspector was on.",
    fields=(
        Field("id", "id", STRING, always=True),
        Field("method", "method", STRING, always=True),
        Field(
            "target",
            "target",
            STRING,
            always=True,
            description="Path and query as sent (sb-hc-token and sig= redacted).",
        ),
        Field(
            "status",
            "status",
            INTEGER,
            nullable=True,
            always=True,
            description="The status the sender got; null when it went away first.",
        ),
        Field("receivedAt", "received_at", _RECORD_TIME, always=True),
        Field(
            "answeredAt",
            "answered_at",
            _RECORD_TIME,
            always=True,
            description="When the answer was complete.",
        ),
        Field(
            "duration",
            "duration",
            Codec(encode_only, lambda seconds: round(seconds, 6), {"type": "number"}),
            always=True,
            description="Seconds.",
        ),
        Field("requestBodySize", "request_body.size", INTEGER, nullable=True, always=True),
        Field("responseBodySize", "response_body.size", INTEGER, nullable=True, always=True),
        Field(
            "error",
            "error",
            STRING,
            nullable=True,
            always=True,
            description="The relay's refusal or failure when no listener answered.",
        ),
        Field(
            "replayOf",
            "replay_of",
            STRING,
            nullable=True,
            always=True,
            description="The id of the request this one replayed.",
        ),
    ),
)

# What GET .../inspector/requests/{id} adds to the summary (the document's allOf).
INSPECTED_REQUEST: Final = Schema(
    "InspectedRequest",
    where="record",
    fields=(
        Field("hybridConnection", "hybrid_connection", STRING, always=True),
        Field(
            "requestHeaders",
            "request_headers",
            _HEADERS,
            always=True,
            description="As the sender sent them; Authorization, ServiceBusAuthorization, "
            "Cookie and the like are [redacted].",
        ),
        Field("requestBody", "request_body", _BODY, always=True),
        Field(
            "responseHeaders",
            "response_headers",
            _HEADERS,
            always=True,
            description="As the sender got them (Set-Cookie [redacted]).",
        ),
        Field("responseBody", "response_body", _BODY, always=True),
    ),
)


def inspected_request(record: object) -> dict[str, object]:
    """A Record with its headers and bodies: the summary's fields, then the rest."""
    return {**INSPECTED_REQUEST_SUMMARY.encode(record), **INSPECTED_REQUEST.encode(record)}
