"""The declared views write exactly what the hand-written encoders they replaced wrote.

Each ``old_*`` below is the handler's dict literal as it was before the view was
declared (issue 13, step 4); the declaration must give the same keys, in the same
order, with the same values (times without a fraction when it is zero, milliseconds
rounded to the microsecond, an export job without an import's counts).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hybridrelay.errors import ConflictError, ValidationError
from hybridrelay.relay.cluster.base import NodeSummary
from hybridrelay.relay.device_timeline import TimelineEntry, check_in
from hybridrelay.relay.inspector import CapturedBody, Record
from hybridrelay.relay.metrics import HcStats
from hybridrelay.relay.mgmt.jobs import Job
from hybridrelay.relay.mgmt.live import azure_counters
from hybridrelay.relay.mgmt.views import (
    DEVICE_TIMELINE,
    DRAIN,
    HC_COUNTERS,
    IMPORT_ERROR,
    INSPECTED_REQUEST_SUMMARY,
    INSPECTOR_SETTINGS,
    LISTENER,
    NODE,
    STREAM,
    DeviceTimelineRow,
    ImportErrorRow,
    InspectorSettingsRow,
    ListenerRow,
    inspected_request,
)
from hybridrelay.relay.nodes import node_json
from hybridrelay.relay.store.models import Device
from hybridrelay.relay.store.schema import format_time

WHOLE = 1_700_000_000.0  # no fraction: isoformat writes none
FRACTION = 1_700_000_000.123456


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _same(got: Mapping[str, object], want: Mapping[str, object]) -> None:
    assert json.dumps(got) == json.dumps(want)  # keys in order, values and types alike


@pytest.mark.parametrize(("at", "rtt"), [(WHOLE, None), (FRACTION, 0.0123456789), (WHOLE, 0.0)])
def test_listener(at: float, rtt: float | None) -> None:
    channel: Any = SimpleNamespace(
        hc_name="Echo",
        listener_id="gw-1-echo-0",
        remote_address="127.0.0.1:5000",
        connected_at=at,
        last_ping_rtt=rtt,
    )
    old = {
        "hybridConnection": channel.hc_name,
        "id": channel.listener_id,
        "remoteAddress": channel.remote_address,
        "connectedAt": _iso(channel.connected_at),
        "activeStreams": 2,
        "node": "local",
        "agentId": "gw-1",
        "lastPingRoundTripMs": None
        if channel.last_ping_rtt is None
        else round(channel.last_ping_rtt * 1000, 3),
    }
    _same(
        LISTENER.encode(ListenerRow(channel, active_streams=2, node="local", agent_id="gw-1")), old
    )


@pytest.mark.parametrize("at", [WHOLE, FRACTION])
def test_stream(at: float) -> None:
    splice: Any = SimpleNamespace(
        stream_id="s1",
        hc_name="echo",
        listener_id="l1",
        sender_address="127.0.0.1:6000",
        started_at=at,
        sender=SimpleNamespace(bytes_in=5),
        listener=SimpleNamespace(bytes_in=7),
    )
    old = {
        "id": splice.stream_id,
        "hybridConnection": splice.hc_name,
        "listenerId": splice.listener_id,
        "senderAddress": splice.sender_address,
        "startedAt": _iso(splice.started_at),
        "bytesSenderToListener": splice.sender.bytes_in,
        "bytesListenerToSender": splice.listener.bytes_in,
    }
    _same(STREAM.encode(splice), old)


@pytest.mark.parametrize("held", [(), (("echo", 3), ("other", 1))])
def test_node(held: tuple[tuple[str, int], ...]) -> None:
    node = NodeSummary(
        node_id="n1",
        address="https://relay.example/",
        listeners=4,
        streams=1,
        pending=0,
        draining=True,
        started_at=WHOLE,
        seen_at=FRACTION,
        hybrid_connections=held,
    )
    old = node.to_json()  # the cluster's wire format, with the API's times
    old["startedAt"] = _iso(node.started_at)
    old["seenAt"] = _iso(node.seen_at)
    _same(node_json(node), old)
    _same(NODE.encode(node), old)


def test_drain() -> None:
    _same(DRAIN.encode(("n1", True)), {"id": "n1", "draining": True})
    _same(DRAIN.encode(("n1", False)), {"id": "n1", "draining": False})


def _old_job(job: Job) -> dict[str, object]:
    prefix = "/$mgmt/v1"
    doc: dict[str, object] = {
        "jobId": job.job_id,
        "type": job.type,
        "status": job.status,
        "progress": job.progress,
        "startTime": format_time(job.start_time),
        "endTime": format_time(job.end_time),
        "deviceCount": job.device_count,
        "failureReason": job.failure_reason,
        "outputUrl": f"{prefix}/jobs/{job.job_id}/output" if job.type == "export" else None,
    }
    if job.type == "import":
        doc.update(
            succeeded=job.succeeded,
            failed=job.failed,
            errorCount=job.failed,
            errors=list(job.errors),
            errorsUrl=f"{prefix}/jobs/{job.job_id}/errors",
        )
    return doc


@pytest.mark.parametrize("kind", ["export", "import"])
def test_job(kind: Any, tmp_path: Path) -> None:
    job = Job(job_id="j1", type=kind, directory=tmp_path, who="sas:root", start_time=WHOLE)
    _same(job.to_json(), _old_job(job))
    job.status, job.progress, job.end_time = "failed", 100, FRACTION
    job.failure_reason, job.device_count, job.succeeded, job.failed = "boom", 3, 2, 1
    job.errors.append({"line": 2, "deviceId": None})
    doc = job.to_json()
    _same(doc, _old_job(job))
    if kind == "import":
        assert doc["errors"] == job.errors
        assert doc["errors"] is not job.errors  # a copy: the job's task appends to its own


def test_inspector_settings() -> None:
    row = InspectorSettingsRow(
        hybrid_connection="echo", enabled=True, capacity=100, body_limit=4096, recorded=3
    )
    old = {"hybridConnection": "echo", "enabled": True, "capacity": 100, "bodyLimit": 4096}
    _same(INSPECTOR_SETTINGS.encode(row), {**old, "recorded": 3})


def _old_body(body: CapturedBody) -> dict[str, object]:
    try:
        text: str | None = body.data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "size": body.size,
        "captured": len(body.data),
        "complete": body.complete,
        "text": text,
        "base64": base64.b64encode(body.data).decode("ascii"),
    }


def _old_iso_ms(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _old_summary(r: Record) -> dict[str, object]:
    return {
        "id": r.id,
        "method": r.method,
        "target": r.target,
        "status": r.status,
        "receivedAt": _old_iso_ms(r.received_at),
        "answeredAt": _old_iso_ms(r.answered_at),
        "duration": round(r.duration, 6),
        "requestBodySize": r.request_body.size,
        "responseBodySize": r.response_body.size,
        "error": r.error,
        "replayOf": r.replay_of,
    }


def _old_record(r: Record) -> dict[str, object]:
    doc = _old_summary(r)
    doc["hybridConnection"] = r.hybrid_connection
    doc["requestHeaders"] = [[name, value] for name, value in r.request_headers]
    doc["requestBody"] = _old_body(r.request_body)
    doc["responseHeaders"] = [[name, value] for name, value in r.response_headers]
    doc["responseBody"] = _old_body(r.response_body)
    return doc


@pytest.mark.parametrize(
    ("status", "answered", "request_body", "replay_of"),
    [
        (201, WHOLE + 0.25, CapturedBody(data=b"text", size=4), None),
        (None, WHOLE, CapturedBody(data=b"\xff\xfe", size=None, complete=False), "r0"),
        (200, FRACTION, CapturedBody(), None),
    ],
)
def test_inspected_request(
    status: int | None, answered: float, request_body: CapturedBody, replay_of: str | None
) -> None:
    record = Record(
        id="r1",
        hybrid_connection="echo",
        method="POST",
        target="/echo/x?sig=[redacted]",
        request_headers=(("Authorization", "[redacted]"), ("X-A", "1")),
        request_body=request_body,
        status=status,
        response_headers=(),
        response_body=CapturedBody(data=b"{}", size=2),
        received_at=WHOLE,
        answered_at=answered,
        error=None if status else "listener went away",
        replay_of=replay_of,
    )
    _same(INSPECTED_REQUEST_SUMMARY.encode(record), _old_summary(record))
    _same(inspected_request(record), _old_record(record))


def _old_entry(e: TimelineEntry) -> dict[str, object]:
    return {
        "time": format_time(e.at),
        "kind": e.kind,
        "hybridConnection": e.hybrid_connection,
        "role": e.role,
        "reason": e.reason,
        "status": e.status,
        "closeCode": e.code,
    }


@pytest.mark.parametrize(
    ("interval", "active", "state"),
    [(None, None, "disconnected"), (3600, WHOLE, "connected"), (60, FRACTION, "disconnected")],
)
def test_device_timeline(interval: int | None, active: float | None, state: Any) -> None:
    device = Device(
        device_id="gw-1",
        check_in_interval=interval,
        last_activity_time=active,
        connection_state=state,
    )
    verdict, due = check_in(device.last_activity_time, device.check_in_interval, FRACTION + 30)
    entries = [
        TimelineEntry(
            at=FRACTION,
            kind="disconnected",
            hybrid_connection="echo",
            role="listener",
            reason="bye",
            code=1001,
        ),
        TimelineEntry(
            at=WHOLE,
            kind="authFailed",
            hybrid_connection="echo",
            role="sender",
            reason="bad key",
            status=401,
        ),
    ]
    old = {
        "deviceId": device.device_id,
        "connectionState": device.connection_state.capitalize(),
        "lastActivityTime": format_time(device.last_activity_time),
        "checkInIntervalSeconds": device.check_in_interval,
        "checkIn": verdict,
        "nextCheckInDue": format_time(due) if due is not None else None,
        "value": [_old_entry(e) for e in entries],
    }
    _same(DEVICE_TIMELINE.encode(DeviceTimelineRow(device, verdict, due, entries)), old)


@pytest.mark.parametrize(
    ("device_id", "error"),
    [(None, ValidationError("deviceId", "required")), ("d1", ConflictError("exists"))],
)
def test_import_error(device_id: str | None, error: Any) -> None:
    old = {
        "line": 7,
        "deviceId": device_id,
        "errorCode": error.error_code,
        "errorStatus": error.http_status,
        "message": str(error),
    }
    _same(IMPORT_ERROR.encode(ImportErrorRow(7, device_id, error)), old)


def _old_counters(name: str, numbers: HcStats | None) -> dict[str, object]:
    n = numbers or HcStats()

    def count(by_status: dict[str, int], status_class: str) -> int:
        return sum(c for code, c in by_status.items() if code.startswith(status_class))

    listener_client = count(n.listener_rejections, "4")
    listener_server = count(n.listener_rejections, "5")
    return {
        "name": name,
        "counted": numbers is not None,
        "ActiveListeners": n.listeners,
        "ActiveConnections": n.active_connections,
        "ListenerConnections-Success": n.listener_connects,
        "ListenerConnections-ClientError": listener_client,
        "ListenerConnections-ServerError": listener_server,
        "SenderConnections-Success": n.connections + n.http_requests,
        "SenderConnections-ClientError": count(n.rejections, "4") - listener_client,
        "SenderConnections-ServerError": count(n.rejections, "5") - listener_server,
        "BytesTransferred": n.bytes_up + n.bytes_down,
    }


def test_hc_counters() -> None:
    numbers = HcStats()
    numbers.listeners, numbers.listener_connects, numbers.connections = 2, 3, 4
    numbers.http_requests, numbers.bytes_up, numbers.bytes_down = 5, 6, 7
    numbers.listener_rejections.update({"401": 1, "503": 2})
    numbers.rejections.update({"401": 3, "404": 4, "503": 5, "502": 1})
    for given in (None, HcStats(), numbers):
        old = _old_counters("echo", given)
        _same(HC_COUNTERS.encode(azure_counters("echo", given)), old)
    everywhere = replace(azure_counters("echo", numbers), listeners_all_nodes=9)
    want = {**_old_counters("echo", numbers), "listenersAllNodes": 9}
    _same(HC_COUNTERS.encode(everywhere), want)
