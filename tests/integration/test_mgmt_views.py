"""What the handlers send for each read-only view is what the OpenAPI document says (issue 13).

Listener, Stream, Node, Drain, HcCounters, Job, ImportError, DeviceTimeline,
InspectorSettings and the
inspector's records (InspectedRequestSummary, InspectedRequest, InspectedBody) are
declared once
(``relay/mgmt/views.py``) for both the handler's JSON and the document's component;
here a relay with a real listener, a spliced stream, an export and an import job and
the HTTP inspector answers them, and each answer is validated against its component
(JSON Schema 2020-12, as OpenAPI 3.1 writes it, ``$ref`` resolved in the document). A
key the component does not name, a required one missing or a value of another type
fails.
"""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import aiohttp
from jsonschema import Draft202012Validator  # type: ignore[import-untyped] # openapi-spec-validator brings it
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from tests.harness.device_certs import device_sas_token
from tests.harness.listeners import running_listener
from tests.harness.peers import RawListener, listen_url, send
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds
from tests.integration.test_device_auth import handshake_status, host_of

from hybridrelay.listener import HttpRequest, HttpResponse, Listener
from hybridrelay.protocol.sas import SasTokenProvider, create_sas_token
from hybridrelay.relay.mgmt.openapi import build_openapi
from hybridrelay.wsclient import ws_connect

_DOC = build_openapi()
_REGISTRY: Registry[Any] = Registry().with_resource("urn:api", DRAFT202012.create_resource(_DOC))


def _properties(name: str) -> set[str]:
    """The keys component ``name`` names (with those of the schemas its allOf joins)."""
    schema: dict[str, Any] = _DOC["components"]["schemas"][name]  # type: ignore[index]
    parts = schema.get("allOf", [schema])
    names: set[str] = set()
    for part in parts:
        if "$ref" in part:
            names |= _properties(part["$ref"].rpartition("/")[2])
        else:
            names |= set(part["properties"])
    return names


def assert_is(name: str, value: object) -> None:
    """``value`` is a valid ``name`` and names no key the component leaves out."""
    validator = Draft202012Validator(
        {"$ref": f"urn:api#/components/schemas/{name}"}, registry=_REGISTRY
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(value)]
    assert not errors, f"{name}: {errors}"
    assert isinstance(value, dict)
    assert set(value) <= _properties(name), f"{name}: {sorted(value)}"


def _token() -> str:
    return create_sas_token(
        "http://127.0.0.1/", "RootManageSharedAccessKey", ROOT_KEY, int(time.time()) + 600
    )


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, body: object = None, data: bytes = b""
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"json": body} if body is not None else {"data": io.BytesIO(data)}
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json()


async def _finished(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with asyncio.timeout(seconds(30)):
        while True:
            status, job = await _call(http, "GET", url)
            assert status == 200, job
            if job["status"] in ("completed", "failed"):
                return dict(job)
            await asyncio.sleep(0.02)  # polling the status endpoint


async def test_live_views_match_their_components(relay: InProcessRelay) -> None:
    base = relay.http_url + "/$mgmt/v1"
    listener = await RawListener(relay.url, "echo", listener_id="gw-1-echo-0").start()
    try:
        sender = await send(relay.url, "echo")
        await sender.send("hello")
        assert await sender.recv() == "hello"
        async with aiohttp.ClientSession(headers={"Authorization": _token()}) as http:
            status, listeners = await _call(http, "GET", base + "/listeners")
            assert status == 200
            assert_is("ListenerList", listeners)
            [one] = listeners["value"]
            assert_is("Listener", one)
            assert (one["id"], one["agentId"], one["activeStreams"]) == ("gw-1-echo-0", "gw-1", 1)

            status, streams = await _call(http, "GET", base + "/streams")
            assert status == 200
            assert_is("StreamList", streams)
            [stream] = streams["value"]
            assert_is("Stream", stream)
            assert stream["bytesSenderToListener"] == len("hello")

            status, nodes = await _call(http, "GET", base + "/nodes")
            assert status == 200
            assert_is("NodeList", nodes)
            [node] = nodes["value"]
            assert_is("Node", node)
            assert node["hybridConnections"] == [{"name": "echo", "listeners": 1}]
            for item in node["hybridConnections"]:
                assert set(item) == {"name", "listeners"}

            status, counters = await _call(http, "GET", base + "/hybridconnections/echo/metrics")
            assert status == 200
            assert_is("HcCounters", counters)
            assert (counters["ActiveListeners"], counters["listenersAllNodes"]) == (1, 1)
            status, stats = await _call(http, "GET", base + "/stats?hybridConnection=echo")
            assert status == 200
            assert_is("Stats", stats)
            assert_is("HcCounters", stats["hybridConnection"])
            assert "listenersAllNodes" not in stats["hybridConnection"]

            status, undrained = await _call(http, "POST", base + "/nodes/local/undrain")
            assert (status, undrained) == (202, {"id": "local", "draining": False})
            assert_is("Drain", undrained)
        await sender.close()
    finally:
        await listener.stop()


async def test_job_and_inspector_views_match_their_components(relay: InProcessRelay) -> None:
    base = relay.http_url + "/$mgmt/v1"
    async with aiohttp.ClientSession(headers={"Authorization": _token()}) as http:
        status, job = await _call(http, "POST", base + "/jobs/export")
        assert status == 202
        assert_is("Job", job)
        exported = await _finished(http, f"{base}/jobs/{job['jobId']}")
        assert_is("Job", exported)
        assert exported["outputUrl"] == f"/$mgmt/v1/jobs/{job['jobId']}/output"
        assert "errors" not in exported  # an import job's fields only

        lines = b'{"deviceId": "d1"}\nnot json\n'
        status, job = await _call(http, "POST", base + "/jobs/import", data=lines)
        assert status == 202
        assert_is("Job", job)
        imported = await _finished(http, f"{base}/jobs/{job['jobId']}")
        assert_is("Job", imported)
        assert (imported["succeeded"], imported["failed"], imported["errorCount"]) == (1, 1, 1)
        assert imported["outputUrl"] is None
        for error in imported["errors"]:
            assert_is("ImportError", error)

        status, jobs = await _call(http, "GET", base + "/jobs")
        assert status == 200
        assert_is("JobList", jobs)
        assert [j["jobId"] for j in jobs["value"]] == [imported["jobId"], exported["jobId"]]

        inspector = base + "/hybridconnections/echo/inspector"
        status, settings = await _call(http, "GET", inspector)
        assert status == 200
        assert_is("InspectorSettings", settings)
        assert settings["enabled"] is False
        status, settings = await _call(http, "PUT", inspector, {"enabled": True})
        assert status == 200
        assert_is("InspectorSettings", settings)
        assert (settings["hybridConnection"], settings["enabled"]) == ("echo", True)


async def _answer(request: HttpRequest) -> HttpResponse:
    body = await request.read()
    return HttpResponse(200, [("Content-Type", "application/octet-stream")], body[::-1])


async def test_inspected_request_views_match_their_components(relay: InProcessRelay) -> None:
    base = relay.http_url + "/$mgmt/v1"
    inspector = base + "/hybridconnections/echo/inspector"
    token = _token()
    app = Listener(
        relay.url,
        "echo",
        token_provider=SasTokenProvider("RootManageSharedAccessKey", ROOT_KEY, ttl=3600),
        http_handler=_answer,
    )
    async with (
        running_listener(app),
        aiohttp.ClientSession(headers={"Authorization": token}) as http,
    ):
        assert (await _call(http, "PUT", inspector, {"enabled": True}))[0] == 200
        sent = {"ServiceBusAuthorization": token}
        for body in (b"\xff\xfe not UTF-8", b"text"):
            async with http.post(relay.http_url + "/echo/x?a=1", data=body, headers=sent) as resp:
                assert resp.status == 200
        status, listed = await _call(http, "GET", inspector + "/requests")
        assert status == 200
        assert_is("InspectedRequestList", listed)
        assert len(listed["value"]) == 2
        records = []
        for summary in listed["value"]:
            assert_is("InspectedRequestSummary", summary)
            status, record = await _call(http, "GET", f"{inspector}/requests/{summary['id']}")
            assert status == 200
            assert_is("InspectedRequest", record)
            assert {k: record[k] for k in summary} == summary
            for part in ("requestBody", "responseBody"):
                assert_is("InspectedBody", record[part])
            records.append(record)
        # Newest first: the first sent, whose body is not UTF-8, is listed last.
        assert [r["requestBody"]["text"] for r in records] == ["text", None]
        first = records[-1]["id"]
        status, replayed = await _call(http, "POST", f"{inspector}/requests/{first}/replay")
        assert status == 200
        assert_is("ReplayResult", replayed)
        assert_is("InspectedRequest", replayed["replay"])


async def test_device_timeline_matches_its_component(relay: InProcessRelay) -> None:
    base = relay.http_url + "/$mgmt/v1"
    async with aiohttp.ClientSession(headers={"Authorization": _token()}) as http:
        body = {"grants": {"listen": ["echo"]}, "checkInIntervalSeconds": 3600}
        assert (await _call(http, "PUT", base + "/devices/gw-1", body))[0] == 201
        assert (await _call(http, "PUT", base + "/devices/plain", {}))[0] == 201
        wrong = "bm90LXRoZS1kZXZpY2Uta2V5LTAxMjM0NTY3ODlhYmM="
        refused = ws_connect(
            listen_url(relay.url, "echo"),
            headers={"ServiceBusAuthorization": device_sas_token(host_of(relay), "gw-1", wrong)},
        )
        assert await handshake_status(refused) == 401
        status, timeline = await _call(http, "GET", base + "/devices/gw-1/timeline")
        assert status == 200
        assert_is("DeviceTimeline", timeline)
        [entry] = timeline["value"]
        assert (entry["kind"], entry["status"], entry["closeCode"]) == ("authFailed", 401, None)
        assert timeline["checkInIntervalSeconds"] == 3600
        status, timeline = await _call(http, "GET", base + "/devices/plain/timeline")
        assert status == 200
        assert_is("DeviceTimeline", timeline)
        assert (timeline["checkIn"], timeline["nextCheckInDue"]) == ("unscheduled", None)
        assert timeline["checkInIntervalSeconds"] is None
