"""The OpenAPI 3.1 document of ``/$mgmt/v1``, served at ``/openapi.json``.

The schemas of the stored resources (hybrid connections, rules, CA certificates) are
generated from their one declaration (``relay/store/schema.py``), which the records'
JSON codecs are generated from too; so are those of the read-only views the handlers
encode from live objects (listeners, streams, nodes, drains, jobs and their line
errors, device timelines, a hybrid connection's counters, the inspector's settings and
records: ``relay/mgmt/views.py``). The rest is a plain dict so that it reads like the
document it produces, and the helpers below only remove repetition (responses,
parameters, list envelopes). The test suite validates it (openapi-spec-validator) and runs
schemathesis against the relay with it.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Final

from hybridrelay.relay.config import WEBHOOK_EVENTS
from hybridrelay.relay.mgmt.views import (
    DEVICE_TIMELINE,
    DRAIN,
    HC_COUNTERS,
    HEADER_PAIRS,
    IMPORT_ERROR,
    INSPECTED_BODY,
    INSPECTED_REQUEST,
    INSPECTED_REQUEST_SUMMARY,
    INSPECTOR_SETTINGS,
    JOB,
    LISTENER,
    NODE,
    STREAM,
)
from hybridrelay.relay.store.certificates import CA_CERTIFICATE
from hybridrelay.relay.store.models import DEVICE, GRANTS, HYBRID_CONNECTION, RULE
from hybridrelay.relay.store.schema import TIME

__all__ = ["build_openapi", "openapi_json"]

Doc = dict[str, object]

_REF: Final = "#/components/schemas/"


def _ref(name: str) -> Doc:
    return {"$ref": _REF + name}


def _json_content(schema: Doc) -> Doc:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> Doc:
    return {"description": description, "content": _json_content(_ref("Error"))}


_ERRORS: Final[dict[str, Doc]] = {
    "400": _error("Invalid input; the message names the field (and a bad character)."),
    "401": _error("No token, or a malformed, unknown, badly signed or expired one."),
    "403": _error("A valid token without the Manage right (or a quota is exceeded)."),
    "404": _error("The resource does not exist."),
}


def _responses(ok: dict[str, Doc], *extra: str) -> Doc:
    more = {
        "409": _error("Exists already, owned by the config file, or changed concurrently."),
        "412": _error("If-Match names another etag."),
    }
    doc: Doc = {**ok, **_ERRORS}
    for code in extra:
        doc[code] = more[code]
    return doc


def _ok(description: str, schema: str, *, etag: bool = False, paged: bool = False) -> Doc:
    doc: Doc = {"description": description, "content": _json_content(_ref(schema))}
    if etag:
        doc["headers"] = {"ETag": {"schema": {"type": "string"}}}
    if paged:
        doc["headers"] = {
            "x-ms-continuation": {
                "description": "The continuationToken of the body; absent on the last page.",
                "schema": {"type": "string"},
            }
        }
    return doc


_NO_CONTENT: Final[Doc] = {"description": "Deleted."}


def _param(name: str, where: str, schema: Doc, description: str, *, required: bool) -> Doc:
    return {
        "name": name,
        "in": where,
        "required": required,
        "description": description,
        "schema": schema,
    }


_HC_NAME: Final = _param(
    "name",
    "path",
    {"type": "string", "minLength": 1},
    "Hybrid connection name; may contain '/' (sent as is: the server matches the rest of "
    "the path and splits off /rules... from its end). Case-insensitive.",
    required=True,
)
_RULE_NAME: Final = _param(
    "rule",
    "path",
    {"type": "string", "minLength": 1},
    "Rule name: letters, digits, '.', '_' and '-', starting alphanumeric. Case-insensitive.",
    required=True,
)
_DEVICE_ID: Final = _param(
    "deviceId",
    "path",
    {"type": "string", "minLength": 1},
    "Up to 128 ASCII letters, digits and - . + % _ # * ? ! ( ) , : = @ $ ' (percent-encode "
    "them in the URL). Case-sensitive.",
    required=True,
)
_IF_MATCH: Final = _param(
    "If-Match",
    "header",
    {"type": "string"},
    'An etag (bare, "quoted" or W/"weak") or * for any existing version.',
    required=False,
)
_PAGING: Final = (
    _param(
        "top",
        "query",
        {"type": "integer", "minimum": 1, "maximum": 1000},
        "Page size (hybrid connections: default 100; devices: default 1000).",
        required=False,
    ),
    _param(
        "continuationToken",
        "query",
        {"type": "string"},
        "Where the next page starts: the continuationToken of the previous page.",
        required=False,
    ),
    _param(
        "x-ms-continuation",
        "header",
        {"type": "string"},
        "The same token as a header (IoT Hub style); the query parameter wins.",
        required=False,
    ),
)


def _list_of(item: str) -> Doc:
    return {
        "type": "object",
        "required": ["value", "continuationToken", "nextLink"],
        "properties": {
            "value": {"type": "array", "items": _ref(item)},
            "continuationToken": {
                "type": ["string", "null"],
                "description": "Null on the last page; also sent as x-ms-continuation.",
            },
            "nextLink": {
                "type": ["string", "null"],
                "description": "Relative URL of the next page.",
            },
        },
    }


_TIME: Final[Doc] = TIME.openapi  # the hand-written schemas' times

_SCHEMAS: Final[dict[str, Doc]] = {
    "Event": {
        "type": "object",
        "description": "A lifecycle event (GET /events, webhooks).",
        "required": ["sequenceNumber", "properties", "body"],
        "properties": {
            "sequenceNumber": {"type": "integer", "minimum": 1},
            "properties": {
                "type": "object",
                "required": ["opType", "hubName", "operationTimestamp"],
                "properties": {
                    "opType": {"type": "string", "enum": list(WEBHOOK_EVENTS)},
                    "hubName": {
                        "type": "string",
                        "description": "Listener events: the hybrid connection; the others: "
                        "the relay's public host.",
                    },
                    "deviceId": {"type": "string"},
                    "operationTimestamp": {"type": "string", "format": "date-time"},
                    "listenerId": {"type": "string"},
                    "hybridConnection": {"type": "string"},
                    "ruleName": {"type": "string"},
                    "certificateName": {"type": "string"},
                    "jobId": {"type": "string"},
                },
            },
            "body": {
                "type": "object",
                "description": "The entity as GET answers it when the event was published "
                "(device key values null, rules without keys, certificates without their "
                "verification code; a deletion: the last device document seen, else "
                "deviceId or name); jobs: the job without its errors; listener events: "
                "hybridConnection and listenerId.",
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "trackingId"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "trackingId": {"type": "string"},
                },
            }
        },
    },
    **HYBRID_CONNECTION.components(),
    "HybridConnectionList": _list_of("HybridConnection"),
    **RULE.components(),
    "RuleList": _list_of("Rule"),
    "RegenerateInput": {
        "type": "object",
        "required": ["keyType"],
        "properties": {
            "keyType": {
                "type": "string",
                "enum": ["primary", "secondary", "PrimaryKey", "SecondaryKey"],
            },
            "key": {
                "type": "string",
                "minLength": 16,
                "description": "The new key; a random 256-bit key when omitted.",
            },
        },
    },
    "Authentication": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["sas", "selfSigned", "certificateAuthority"]},
            "symmetricKey": {
                "type": "object",
                "description": "Base64 of 16 to 64 bytes each; both generated when omitted.",
                "properties": {
                    "primaryKey": {"type": ["string", "null"]},
                    "secondaryKey": {"type": ["string", "null"]},
                },
            },
            "x509Thumbprint": {
                "type": "object",
                "description": "SHA-1 or SHA-256 hex thumbprints (selfSigned).",
                "properties": {
                    "primaryThumbprint": {"type": ["string", "null"]},
                    "secondaryThumbprint": {"type": ["string", "null"]},
                },
            },
        },
    },
    **GRANTS.components(),
    **DEVICE.components(),
    "DeviceList": _list_of("Device"),
    **IMPORT_ERROR.components(),
    **JOB.components(),
    "JobList": {
        "type": "object",
        "required": ["value"],
        "properties": {"value": {"type": "array", "items": _ref("Job")}},
    },
}

_JOB_ID: Final = _param("jobId", "path", {"type": "string"}, "The job's id.", required=True)
_NDJSON_OK: Final[Doc] = {
    "description": "JSON Lines, streamed.",
    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
}
_JOB_PATHS: Final[dict[str, Doc]] = {
    "/jobs": {
        "get": {
            "operationId": "listJobs",
            "summary": "The most recent export and import jobs (newest first, at most 100).",
            "responses": _responses({"200": _ok("The jobs.", "JobList")}),
        }
    },
    "/jobs/export": {
        "post": {
            "operationId": "exportDevices",
            "summary": "Start a job that writes every device document as JSON Lines.",
            "responses": _responses({"202": _ok("The job, enqueued.", "Job")}),
        }
    },
    "/jobs/import": {
        "post": {
            "operationId": "importDevices",
            "summary": "Start a job that applies JSON Lines of device documents, each with "
            "importMode create, update (create or replace; the default), updateIfMatchETag, "
            "delete or deleteIfMatchETag. Lines are at most 64 KiB, the body 256 MiB (413). "
            "A bad line is reported with its number and the batch goes on.",
            "requestBody": {
                "required": False,
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            },
            "responses": _responses({"202": _ok("The job, enqueued.", "Job")}),
        }
    },
    "/jobs/{jobId}": {
        "parameters": [_JOB_ID],
        "get": {
            "operationId": "getJob",
            "summary": "A job's status, counts and (import) first 1,000 line errors.",
            "responses": _responses({"200": _ok("The job.", "Job")}),
        },
    },
    "/jobs/{jobId}/output": {
        "parameters": [_JOB_ID],
        "get": {
            "operationId": "getJobOutput",
            "summary": "A completed export's device documents (404 before it completes).",
            "responses": _responses({"200": _NDJSON_OK}),
        },
    },
    "/jobs/{jobId}/errors": {
        "parameters": [_JOB_ID],
        "get": {
            "operationId": "getJobErrors",
            "summary": "Every line error of a completed import, as JSON Lines of ImportError.",
            "responses": _responses({"200": _NDJSON_OK}),
        },
    },
}


def _body(schema: str, *, required: bool = True) -> Doc:
    return {"required": required, "content": _json_content(_ref(schema))}


# --- CA certificates (mgmt/certificates.py) ---

_CERT_SCHEMAS: Final[dict[str, Doc]] = {
    **CA_CERTIFICATE.components(),
    "CaCertificateList": _list_of("CaCertificate"),
    "PemCertificate": {
        "type": "object",
        "required": ["certificate"],
        "properties": {"certificate": {"type": "string", "description": "One PEM certificate."}},
    },
}
_CERT_NAME: Final = _param(
    "name",
    "path",
    {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
    "The CA certificate's name.",
    required=True,
)
_CERT_OK: Final = _ok("The CA certificate.", "CaCertificate", etag=True)
_CERT_PATHS: Final[dict[str, Doc]] = {
    "/certificates": {
        "get": {
            "operationId": "listCertificates",
            "summary": "List the registered CA certificates.",
            "responses": _responses({"200": _ok("All of them.", "CaCertificateList")}),
        }
    },
    "/certificates/{name}": {
        "parameters": [_CERT_NAME],
        "get": {
            "operationId": "getCertificate",
            "summary": "Get a CA certificate.",
            "responses": _responses({"200": _CERT_OK}),
        },
        "put": {
            "operationId": "putCertificate",
            "summary": "Register (or replace) a CA certificate (BasicConstraints ca=true); it "
            "is unverified until proof of possession (the same certificate again keeps it).",
            "requestBody": _body("PemCertificate"),
            "responses": _responses({"200": _CERT_OK, "201": _CERT_OK}),
        },
        "delete": {
            "operationId": "deleteCertificate",
            "summary": "Delete a CA certificate; devices it signed are refused (401).",
            "responses": _responses({"204": _NO_CONTENT}),
        },
    },
    "/certificates/{name}/generateVerificationCode": {
        "parameters": [_CERT_NAME],
        "post": {
            "operationId": "generateVerificationCode",
            "summary": "A fresh verification code (in verificationCode).",
            "responses": _responses({"200": _CERT_OK}),
        },
    },
    "/certificates/{name}/verify": {
        "parameters": [_CERT_NAME],
        "post": {
            "operationId": "verifyCertificate",
            "summary": "Proof of possession: a certificate whose subject CN is the "
            "verification code, signed by the CA's key. Then devices it signs may connect.",
            "requestBody": _body("PemCertificate"),
            "responses": _responses({"200": _CERT_OK}, "412"),
        },
    },
}


def _rule_paths(prefix: str, scope_params: list[Doc], scope: str) -> dict[str, Doc]:
    one = [*scope_params, _RULE_NAME]
    return {
        f"{prefix}/rules": {
            "get": {
                "operationId": f"list{scope}Rules",
                "summary": f"List the {scope.lower() or 'namespace'} rules (without keys).",
                "parameters": scope_params,
                "responses": _responses({"200": _ok("The rules.", "RuleList")}),
            }
        },
        f"{prefix}/rules/{{rule}}": {
            "parameters": one,
            "get": {
                "operationId": f"get{scope}Rule",
                "summary": "Get a rule with its keys.",
                "responses": _responses({"200": _ok("The rule with keys.", "Rule")}),
            },
            "put": {
                "operationId": f"put{scope}Rule",
                "summary": "Create a rule (two fresh keys) or change its rights; 12 per scope.",
                "requestBody": _body("RuleInput"),
                "responses": _responses(
                    {
                        "200": _ok("Changed; with keys.", "Rule"),
                        "201": _ok("Created; with keys.", "Rule"),
                    },
                    "409",
                ),
            },
            "delete": {
                "operationId": f"delete{scope}Rule",
                "summary": "Delete a rule; tokens signed with its keys fail at once.",
                "responses": _responses({"204": _NO_CONTENT}, "409"),
            },
        },
        f"{prefix}/rules/{{rule}}/regenerate": {
            "parameters": one,
            "post": {
                "operationId": f"regenerate{scope}RuleKey",
                "summary": "Replace the primary or secondary key; old tokens fail at once.",
                "requestBody": _body("RegenerateInput"),
                "responses": _responses({"200": _ok("The rule with keys.", "Rule")}, "409"),
            },
        },
    }


# Lifecycle notifications (mgmt/events.py): a stream, so it is described here once.
_EVENTS_PATH: Final[Doc] = {
    "get": {
        "operationId": "streamEvents",
        "summary": "Lifecycle events: every change of a device, hybrid connection, rule or "
        "certificate (create, update, disable, enable, new keys, delete, ...), bulk jobs and "
        "listeners coming online or going offline (see Event.opType), as Server-Sent Events "
        "(Accept: text/event-stream: id = sequenceNumber, event = opType, data = the Event "
        "as JSON, a comment every 15 s) or, on a WebSocket upgrade, one JSON text message per "
        "Event. Last-Event-ID (or lastEventId) and since replay the kept events (the node's "
        "last [relay] event_history, 1,000 by default) before the live ones. Sequence "
        "numbers are the node's own. A subscriber too far behind gets a final error event "
        "and is disconnected.",
        "parameters": [
            _param(
                "lastEventId",
                "query",
                {"type": "integer", "minimum": 0},
                "Resume after this sequenceNumber (the Last-Event-ID header wins); 0 "
                "replays every kept event.",
                required=False,
            ),
            _param(
                "since",
                "query",
                {"type": "string", "format": "date-time"},
                "Replay the kept events that happened at or after this time (ISO 8601 with "
                "a zone); with Last-Event-ID, an event must pass both.",
                required=False,
            ),
        ],
        "responses": _responses(
            {
                "200": {
                    "description": "The event stream (never ends by itself).",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "101": {"description": "Switching to a WebSocket (one Event per text message)."},
                "406": _error("Neither Accept: text/event-stream nor a WebSocket upgrade."),
            }
        ),
    }
}


_HC_FILTER: Final = _param(
    "hybridConnection",
    "query",
    {"type": "string", "minLength": 1},
    "Only those of this hybrid connection (ignoring case).",
    required=False,
)
_LIVE_SCHEMAS: Final[dict[str, Doc]] = {
    **LISTENER.components(),
    "ListenerList": _list_of("Listener"),
    **STREAM.components(),
    "StreamList": _list_of("Stream"),
    "Stats": {
        "type": "object",
        "description": "This node's counters (the same as /metrics): listeners and streams "
        "now, connections and bytes since start (bytes of finished streams), refusals by "
        "HTTP status and action (with a reason in words) and by limit (docs/security.md).",
        "required": [
            "listeners",
            "activeStreams",
            "connections",
            "bytesSenderToListener",
            "bytesListenerToSender",
            "refusals",
            "limitRefusals",
            "topRefusedSources",
            "traffic",
        ],
        "properties": {
            "listeners": {"type": "integer"},
            "activeStreams": {"type": "integer"},
            "connections": {"type": "integer"},
            "bytesSenderToListener": {"type": "integer"},
            "bytesListenerToSender": {"type": "integer"},
            "refusals": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["status", "action", "reason", "count"],
                    "properties": {
                        "status": {"type": "string"},
                        "action": {"type": "string"},
                        "reason": {"type": "string"},
                        "count": {"type": "integer"},
                    },
                },
            },
            "topRefusedSources": {
                "type": "array",
                "maxItems": 10,
                "description": "The source addresses refused most on this node (404s aside), "
                "from a bounded table of 1000 addresses; a count may be high by at most error.",
                "items": {
                    "type": "object",
                    "required": ["address", "count", "error"],
                    "properties": {
                        "address": {"type": "string"},
                        "count": {"type": "integer"},
                        "error": {"type": "integer"},
                    },
                },
            },
            "traffic": {
                "type": "object",
                "description": "The last 15 minutes on this node, one point per interval "
                "(seconds): bytes each way per second (open streams included) and streams "
                "started per second, oldest first.",
                "required": ["interval", "points"],
                "properties": {
                    "interval": {"type": "number"},
                    "points": {
                        "type": "array",
                        "maxItems": 180,
                        "items": {
                            "type": "object",
                            "required": [
                                "time",
                                "bytesUpPerSecond",
                                "bytesDownPerSecond",
                                "connectsPerSecond",
                            ],
                            "properties": {
                                "time": {"type": "number", "description": "Unix seconds."},
                                "bytesUpPerSecond": {"type": "number"},
                                "bytesDownPerSecond": {"type": "number"},
                                "connectsPerSecond": {"type": "number"},
                            },
                        },
                    },
                },
            },
            "hybridConnection": {
                **_ref("HcCounters"),
                "description": "With ?hybridConnection=: that entity's numbers on this node "
                "(as GET /hybridconnections/{name}/metrics answers them).",
            },
            "limitRefusals": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["limit", "count"],
                    "properties": {"limit": {"type": "string"}, "count": {"type": "integer"}},
                },
            },
        },
    },
}
_NODE_SCHEMAS: Final[dict[str, Doc]] = {
    **NODE.components(),
    "NodeList": {
        "type": "object",
        "required": ["value", "self"],
        "properties": {
            "value": {"type": "array", "items": _ref("Node")},
            "self": {"type": "string", "description": "The id of the node that answered."},
        },
    },
    **DRAIN.components(),
}
_NODE_PATHS: Final[dict[str, Doc]] = {
    "/nodes": {
        "get": {
            "operationId": "listNodes",
            "summary": "The cluster's live nodes (the one answering first): listeners, streams "
            "and which hybrid connections' listeners each holds.",
            "responses": _responses(
                {
                    "200": _ok("All of them.", "NodeList"),
                    "503": _error("The cluster's shared state (Redis) cannot be reached."),
                }
            ),
        }
    },
    "/nodes/{nodeId}/drain": {
        "parameters": [
            _param("nodeId", "path", {"type": "string"}, "A node's id (GET /nodes).", required=True)
        ],
        "post": {
            "operationId": "drainNode",
            "summary": "Drain a node (audit-logged): it refuses new listeners and senders "
            "(503, /readyz 503), closes its control channels with 1001 so agents reconnect "
            "elsewhere, and lets open streams finish. It keeps running until stopped.",
            "responses": _responses(
                {
                    "202": _ok("Asked; the node drains.", "Drain"),
                    "503": _error("The cluster's shared state (Redis) cannot be reached."),
                }
            ),
        },
    },
    "/nodes/{nodeId}/undrain": {
        "parameters": [
            _param("nodeId", "path", {"type": "string"}, "A node's id (GET /nodes).", required=True)
        ],
        "post": {
            "operationId": "undrainNode",
            "summary": "Take a drain back (audit-logged): the node serves new listeners and "
            "senders again and /readyz answers 200. Agents it sent away stay where they "
            "reconnected. A node that is stopping (SIGTERM) stays closed.",
            "responses": _responses(
                {
                    "202": _ok("Asked; the node serves again.", "Drain"),
                    "503": _error("The cluster's shared state (Redis) cannot be reached."),
                }
            ),
        },
    },
}
_DEVICE_DETAIL_SCHEMAS: Final[dict[str, Doc]] = {
    **HC_COUNTERS.components(),
    **DEVICE_TIMELINE.components(),
}
_SEARCH_PARAMS: Final = (
    _param(
        "prefix",
        "query",
        {"type": "string", "maxLength": 128},
        "Only deviceIds that start with this (case-sensitive; an index range).",
        required=False,
    ),
    _param(
        "contains",
        "query",
        {"type": "string", "maxLength": 128},
        "Only deviceIds that contain this, ignoring case.",
        required=False,
    ),
    _param(
        "status",
        "query",
        {"type": "string", "enum": ["enabled", "disabled"]},
        "Only devices with this status.",
        required=False,
    ),
    _param(
        "connectionState",
        "query",
        {"type": "string", "enum": ["Connected", "Disconnected", "connected", "disconnected"]},
        "Only devices in this connection state.",
        required=False,
    ),
)
_DEVICE_DETAIL_PATHS: Final[dict[str, Doc]] = {
    "/devices/{deviceId}/timeline": {
        "parameters": [_DEVICE_ID],
        "get": {
            "operationId": "getDeviceTimeline",
            "summary": "The device's connects, disconnects (with reasons) and auth failures "
            "seen by this node, newest first, and its last activity against its expected "
            "check-in interval.",
            "responses": _responses({"200": _ok("The timeline.", "DeviceTimeline")}),
        },
    },
    "/devices/{deviceId}/regenerateKey": {
        "parameters": [_DEVICE_ID],
        "post": {
            "operationId": "regenerateDeviceKey",
            "summary": "Give a SAS device a new random primary or secondary key (its other "
            "key keeps working; tokens signed with the old one are refused from now on).",
            "requestBody": _body("RegenerateInput"),
            "responses": _responses({"200": _ok("The device.", "Device", etag=True)}, "409"),
        },
    },
    "/hybridconnections/{name}/metrics": {
        "parameters": [_HC_NAME],
        "get": {
            "operationId": "getHybridConnectionMetrics",
            "summary": "The hybrid connection's Azure-named counters on this node.",
            "responses": _responses({"200": _ok("The counters.", "HcCounters")}),
        },
    },
}
_LIVE_PATHS: Final[dict[str, Doc]] = {
    "/listeners": {
        "get": {
            "operationId": "listListeners",
            "summary": "Listeners connected to this node, with their open streams.",
            "parameters": [_HC_FILTER],
            "responses": _responses({"200": _ok("All of them, one page.", "ListenerList")}),
        }
    },
    "/streams": {
        "get": {
            "operationId": "listStreams",
            "summary": "WebSocket streams spliced on this node, oldest first.",
            "parameters": [_HC_FILTER],
            "responses": _responses({"200": _ok("All of them, one page.", "StreamList")}),
        }
    },
    "/streams/{streamId}": {
        "parameters": [
            _param(
                "streamId",
                "path",
                {"type": "string"},
                "A stream's id (GET /streams).",
                required=True,
            )
        ],
        "delete": {
            "operationId": "closeStream",
            "summary": "Close a live stream: both peers get close code 1008 with the reason "
            "(audit-logged).",
            "parameters": [
                _param(
                    "reason",
                    "query",
                    {"type": "string", "maxLength": 120},
                    "The close reason (default: closed by an operator).",
                    required=False,
                )
            ],
            "responses": _responses({"204": {"description": "Closing."}}),
        },
    },
    "/stats": {
        "get": {
            "operationId": "getStats",
            "summary": "This node's counters, refusals grouped by reason.",
            "parameters": [_HC_FILTER],
            "responses": _responses({"200": _ok("The counters.", "Stats")}),
        }
    },
}


# --- the HTTP inspector (mgmt/inspector.py) ---

_INSPECTOR_SCHEMAS: Final[dict[str, Doc]] = {
    **INSPECTOR_SETTINGS.components(),
    **INSPECTED_BODY.components(),
    **INSPECTED_REQUEST_SUMMARY.components(),
    "InspectedRequestList": _list_of("InspectedRequestSummary"),
    "InspectedRequest": {"allOf": [_ref("InspectedRequestSummary"), INSPECTED_REQUEST.document()]},
    "ReplayInput": {
        "type": "object",
        "description": "Edits; a field left out keeps the recorded value. Redacted headers "
        "are never replayed: the caller's token authorizes the replay.",
        "properties": {
            "method": {"type": "string", "minLength": 1, "maxLength": 32},
            "target": {
                "type": "string",
                "description": "Path and query, percent-encoded, addressing the same "
                "hybrid connection.",
            },
            "headers": {**HEADER_PAIRS, "maxItems": 200},
            "body": {"type": "string", "description": "The body as text (UTF-8)."},
            "bodyBase64": {"type": "string", "description": "The body, base64."},
        },
        "additionalProperties": False,
    },
    "ReplayResult": {
        "type": "object",
        "required": ["status", "replay"],
        "properties": {
            "status": {"type": ["integer", "null"], "description": "The replay's status."},
            "replay": {
                "oneOf": [_ref("InspectedRequest"), {"type": "null"}],
                "description": "The replay's record (null if the inspector was turned off).",
            },
        },
    },
}
_RECORD_ID: Final = _param(
    "recordId", "path", {"type": "string"}, "A recorded request's id.", required=True
)
_INSPECTOR: Final = "/hybridconnections/{name}/inspector"
_INSPECTOR_PATHS: Final[dict[str, Doc]] = {
    _INSPECTOR: {
        "parameters": [_HC_NAME],
        "get": {
            "operationId": "getInspector",
            "summary": "Whether this node's HTTP inspector records the hybrid connection.",
            "responses": _responses({"200": _ok("The settings.", "InspectorSettings")}),
        },
        "put": {
            "operationId": "putInspector",
            "summary": "Turn the HTTP inspector on or off for the hybrid connection (this "
            "node; off by default; audit-logged).",
            "requestBody": _body("InspectorSettingsInput"),
            "responses": _responses({"200": _ok("The settings.", "InspectorSettings")}),
        },
    },
    _INSPECTOR + "/requests": {
        "parameters": [_HC_NAME],
        "get": {
            "operationId": "listInspectedRequests",
            "summary": "The HTTP-mode requests recorded, newest first (one page).",
            "responses": _responses({"200": _ok("All of them.", "InspectedRequestList")}),
        },
    },
    _INSPECTOR + "/requests/{recordId}": {
        "parameters": [_HC_NAME, _RECORD_ID],
        "get": {
            "operationId": "getInspectedRequest",
            "summary": "One recorded request with its headers and capped bodies (redacted).",
            "responses": _responses({"200": _ok("The request.", "InspectedRequest")}),
        },
    },
    _INSPECTOR + "/requests/{recordId}/replay": {
        "parameters": [_HC_NAME, _RECORD_ID],
        "post": {
            "operationId": "replayInspectedRequest",
            "summary": "Send a recorded request again (optionally edited) through the hybrid "
            "connection, as a sender, authorized by the caller's token; audit-logged.",
            "requestBody": _body("ReplayInput", required=False),
            "responses": {
                **_responses({"200": _ok("Replayed.", "ReplayResult")}, "409"),
                "429": _error("As many replays as run at once are running."),
                "502": _error("The relay could not send the replay to itself."),
            },
        },
    },
}


def build_openapi() -> Doc:
    """The document; a deep copy each call, so callers may change it."""
    return copy.deepcopy(_document())


def _document() -> Doc:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hybridrelay management API",
            "version": "1",
            "description": (
                "Hybrid connections, SAS rules and device identities of one relay namespace. "
                "Every operation needs the Manage right: a SAS token of a namespace rule with "
                "Manage whose sr is the namespace (http://host/) or covers the request path, "
                "or a JWT whose manage grants match '$mgmt' (e.g. scope hc:manage:*), in the "
                "Authorization or ServiceBusAuthorization header. Lists page with top and "
                "continuationToken (or the x-ms-continuation header). Errors are "
                '{"error": {"code", "message", "trackingId"}}.'
            ),
        },
        "servers": [{"url": "/$mgmt/v1"}],
        "security": [{"sasToken": []}, {"serviceBusAuthorization": []}, {"bearer": []}],
        "paths": {
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document (no token needed).",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/hybridconnections": {
                "get": {
                    "operationId": "listHybridConnections",
                    "summary": "List hybrid connections in order of the lower-cased name.",
                    "parameters": list(_PAGING),
                    "responses": _responses(
                        {"200": _ok("One page.", "HybridConnectionList", paged=True)}
                    ),
                }
            },
            "/hybridconnections/{name}": {
                "parameters": [_HC_NAME],
                "get": {
                    "operationId": "getHybridConnection",
                    "summary": "Get a hybrid connection with its live listener count.",
                    "responses": _responses(
                        {"200": _ok("The hybrid connection.", "HybridConnection", etag=True)}
                    ),
                },
                "put": {
                    "operationId": "putHybridConnection",
                    "summary": "Create or replace a hybrid connection (its rules are kept).",
                    "parameters": [_IF_MATCH],
                    "requestBody": _body("HybridConnectionInput", required=False),
                    "responses": _responses(
                        {
                            "200": _ok("Replaced.", "HybridConnection", etag=True),
                            "201": _ok("Created.", "HybridConnection", etag=True),
                        },
                        "409",
                        "412",
                    ),
                },
                "patch": {
                    "operationId": "patchHybridConnection",
                    "summary": "Change some fields of a hybrid connection.",
                    "parameters": [_IF_MATCH],
                    "requestBody": _body("HybridConnectionInput"),
                    "responses": _responses(
                        {"200": _ok("Changed.", "HybridConnection", etag=True)}, "409", "412"
                    ),
                },
                "delete": {
                    "operationId": "deleteHybridConnection",
                    "summary": "Delete a hybrid connection and its rules; its listeners and "
                    "streams are closed with 1001.",
                    "parameters": [_IF_MATCH],
                    "responses": _responses({"204": _NO_CONTENT}, "409", "412"),
                },
            },
            **_rule_paths("/hybridconnections/{name}", [_HC_NAME], "HybridConnection"),
            **_rule_paths("", [], "Namespace"),
            "/devices": {
                "get": {
                    "operationId": "listDevices",
                    "summary": "List (or search) device identities in byte order of the "
                    "deviceId. A search examines at most device_search_scan devices per page: "
                    "a page may be short, even empty, and still have a continuationToken "
                    "(repeat the search terms with it; nextLink does).",
                    "parameters": [*_PAGING, *_SEARCH_PARAMS],
                    "responses": _responses({"200": _ok("One page.", "DeviceList", paged=True)}),
                }
            },
            "/devices/{deviceId}": {
                "parameters": [_DEVICE_ID],
                "get": {
                    "operationId": "getDevice",
                    "summary": "Get a device identity (with its keys).",
                    "responses": _responses({"200": _ok("The device.", "Device", etag=True)}),
                },
                "put": {
                    "operationId": "putDevice",
                    "summary": "Create (no If-Match) or replace (If-Match) a device identity.",
                    "parameters": [_IF_MATCH],
                    "requestBody": _body("DeviceInput", required=False),
                    "responses": _responses(
                        {
                            "200": _ok("Replaced.", "Device", etag=True),
                            "201": _ok("Created.", "Device", etag=True),
                        },
                        "409",
                        "412",
                    ),
                },
                "delete": {
                    "operationId": "deleteDevice",
                    "summary": "Delete a device identity (If-Match optional; * when absent).",
                    "parameters": [_IF_MATCH],
                    "responses": _responses({"204": _NO_CONTENT}, "412"),
                },
            },
            **_DEVICE_DETAIL_PATHS,
            **_INSPECTOR_PATHS,
            **_LIVE_PATHS,
            **_NODE_PATHS,
            "/events": _EVENTS_PATH,
            **_JOB_PATHS,
            **_CERT_PATHS,
        },
        "components": {
            "schemas": {
                **_SCHEMAS,
                **_CERT_SCHEMAS,
                **_LIVE_SCHEMAS,
                **_NODE_SCHEMAS,
                **_DEVICE_DETAIL_SCHEMAS,
                **_INSPECTOR_SCHEMAS,
            },
            "securitySchemes": {
                "sasToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "SharedAccessSignature sr=...&sig=...&se=...&skn=... "
                    "or Bearer <jwt>.",
                },
                "serviceBusAuthorization": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "ServiceBusAuthorization",
                },
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }


@functools.cache
def openapi_json() -> str:
    """The document as JSON text, built once."""
    return json.dumps(_document(), separators=(",", ":"))
