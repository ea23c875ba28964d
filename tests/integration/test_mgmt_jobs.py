"""Bulk export and import jobs under /$mgmt/v1/jobs (issue 5) against in-process relays.

The relays use the SQLite default store under the test's data dir. The round trip
compares the documents without the fields the server generates: ``etag``,
``generationId``, ``statusUpdateTime``, ``connectionStateUpdatedTime`` and
``lastActivityTime``; everything else (deviceId, status, statusReason,
connectionState, authentication with its keys, grants) must be equal.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from tests.conftest import RelayFactory
from tests.harness.redis import unique_prefix
from tests.harness.relay import ROOT_KEY, InProcessRelay

from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.relay.mgmt.jobs import MAX_LINE_BYTES

ROOT = "RootManageSharedAccessKey"
SERVER_SET = frozenset(
    {"etag", "generationId", "statusUpdateTime", "connectionStateUpdatedTime", "lastActivityTime"}
)
DEVICES = 10_000


def manage_token() -> str:
    return create_sas_token("http://127.0.0.1/", ROOT, ROOT_KEY, int(time.time()) + 600)


@dataclass
class Jobs:
    session: aiohttp.ClientSession
    base: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": manage_token()}

    async def post(self, path: str, body: bytes | None = None) -> tuple[int, Any]:
        headers = {**self.headers, "Content-Type": "application/x-ndjson"}
        data = io.BytesIO(body) if body is not None else None
        async with self.session.post(self.base + path, data=data, headers=headers) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.base + path, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def lines(self, path: str) -> list[dict[str, Any]]:
        async with self.session.get(self.base + path, headers=self.headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == "application/x-ndjson"
            text = await resp.text()
        return [json.loads(line) for line in text.splitlines()]

    async def wait(self, job_id: str, seen: list[str] | None = None) -> dict[str, Any]:
        async with asyncio.timeout(60):
            while True:
                status, job = await self.get(f"/jobs/{job_id}")
                assert status == 200, job
                if seen is not None and (not seen or seen[-1] != job["status"]):
                    seen.append(job["status"])
                if job["status"] in ("completed", "failed"):
                    done: dict[str, Any] = job
                    return done
                await asyncio.sleep(0.02)  # polling the status endpoint

    async def run(self, path: str, body: bytes | None = None) -> dict[str, Any]:
        status, job = await self.post(path, body)
        assert status == 202, job
        done = await self.wait(job["jobId"])
        assert done["status"] == "completed", done
        return done

    async def all_devices(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            query = "?top=1000" + (f"&continuationToken={token}" if token else "")
            status, page = await self.get("/devices" + query.replace("+", "%2B"))
            assert status == 200, page
            found.update((d["deviceId"], d) for d in page["value"])
            token = page["continuationToken"]
            if token is None:
                return found


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store_toml(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Config text selecting each store: the relay's SQLite default, or Redis via [cluster]."""
    if request.param == "sqlite":
        return lambda: ""
    url: str = request.getfixturevalue("redis_url")
    return lambda: f'\n[cluster]\nredis_url = "{url}"\nprefix = "{unique_prefix()}"\n'


@pytest.fixture
async def relay(relay_factory: RelayFactory, store_toml: Callable[[], str]) -> InProcessRelay:
    """Every jobs test runs against both stores."""
    started: InProcessRelay = await relay_factory(extra=store_toml())
    return started


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def jobs_of(relay: InProcessRelay, session: aiohttp.ClientSession) -> Jobs:
    return Jobs(session, relay.http_url + "/$mgmt/v1")


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def _device(i: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"deviceId": f"dev-{i:05d}", "importMode": "create"}
    if i % 7 == 0:
        doc.update(status="disabled", statusReason=f"batch {i // 7}")
    if i % 3 == 0:
        doc["grants"] = {"listen": ["hc-ws"], "send": ["sensors/*"]}
    return doc


def _import_body() -> tuple[bytes, dict[int, str]]:
    """10,000 lines: 9,990 good creates and 10 bad lines (line number -> error code)."""
    bad: list[tuple[bytes, str]] = [
        (_line({"deviceId": "bad device", "importMode": "create"}), "ArgumentInvalid"),
        (b'{"deviceId": "dev-broken", "importMode": "create"\n', "ArgumentInvalid"),
        (_line({"deviceId": "dev-mode", "importMode": "upsert"}), "ArgumentInvalid"),
        (_line({"deviceId": "dev-00001", "importMode": "create"}), "Conflict"),
        (
            _line({"deviceId": "dev-00002", "importMode": "updateIfMatchETag", "etag": "stale"}),
            "PreconditionFailed",
        ),
        (_line({"deviceId": "dev-00003", "importMode": "deleteIfMatchETag"}), "ArgumentInvalid"),
        (_line({"deviceId": "dev-nobody", "importMode": "delete"}), "EndpointNotFound"),
        (
            _line({"deviceId": "dev-long", "statusReason": "x" * MAX_LINE_BYTES}),
            "PayloadTooLarge",
        ),
        (b"[1, 2]\n", "ArgumentInvalid"),
        (_line({"deviceId": "dev-sleepy", "status": "sleeping"}), "ArgumentInvalid"),
    ]
    good = iter(_line(_device(i)) for i in range(DEVICES - len(bad)))
    lines: list[bytes] = []
    expected: dict[int, str] = {}
    # Bad lines spread through the file, each after the devices it refers to exist.
    bad_at = {100 + 997 * k: item for k, item in enumerate(bad)}
    for number in range(1, DEVICES + 1):
        if number in bad_at:
            raw, code = bad_at[number]
            lines.append(raw)
            expected[number] = code
        else:
            lines.append(next(good))
    return b"".join(lines), expected


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in SERVER_SET}


# 10,000 devices imported, exported and re-imported on each store: ~40 s alone, and over the
# suite's 60 s default on a loaded 2-core machine, so this one gets more room to finish.
@pytest.mark.timeout(180)
async def test_import_export_round_trip(
    relay: InProcessRelay,
    relay_factory: RelayFactory,
    session: aiohttp.ClientSession,
    store_toml: Callable[[], str],
) -> None:
    jobs = jobs_of(relay, session)
    body, expected = _import_body()

    started = time.monotonic()
    status, job = await jobs.post("/jobs/import", body)
    assert status == 202, job
    assert job["type"] == "import"
    assert job["status"] == "enqueued"
    seen = ["enqueued"]
    done = await jobs.wait(job["jobId"], seen)
    import_seconds = time.monotonic() - started
    assert done["status"] == "completed", done
    assert seen in (["enqueued", "running", "completed"], ["enqueued", "completed"])
    assert seen[-1] == "completed"
    assert done["progress"] == 100
    assert done["succeeded"] == DEVICES - 10
    assert done["failed"] == done["errorCount"] == 10
    assert done["deviceCount"] == DEVICES
    reported = {e["line"]: e["errorCode"] for e in done["errors"]}
    assert reported == expected
    named = {e["line"]: e["deviceId"] for e in done["errors"]}
    assert named[min(expected)] == "bad device"  # deviceId reported when known
    assert all("message" in e for e in done["errors"])
    all_errors = await jobs.lines(f"/jobs/{job['jobId']}/errors")
    assert [e["line"] for e in all_errors] == sorted(expected)

    devices = await jobs.all_devices()
    assert len(devices) == DEVICES - 10
    assert devices["dev-00007"]["status"] == "disabled"
    assert devices["dev-00003"]["grants"]["listen"] == ["hc-ws"]

    # Export: JSON Lines with every device, each the document GET /devices/{id} answers.
    started = time.monotonic()
    exported = await jobs.run("/jobs/export")
    export_seconds = time.monotonic() - started
    assert exported["deviceCount"] == DEVICES - 10
    output = await jobs.lines(exported["outputUrl"].removeprefix("/$mgmt/v1"))
    assert {d["deviceId"]: d for d in output} == devices
    status, one = await jobs.get("/devices/dev-00042")
    assert status == 200
    assert one in output

    # Round trip into a second relay (lines without importMode: update = create or replace).
    # The first one stops first: the harness checks that no relay task outlives a relay.
    await relay.stop()
    second = jobs_of(await relay_factory(extra=store_toml()), session)
    text = b"".join(_line(d) for d in output)
    started = time.monotonic()
    reimported = await second.run("/jobs/import", text)
    reimport_seconds = time.monotonic() - started
    assert reimported["failed"] == 0
    assert reimported["succeeded"] == DEVICES - 10
    again = await second.lines(
        (await second.run("/jobs/export"))["outputUrl"].removeprefix("/$mgmt/v1")
    )
    assert sorted(map(_comparable, again), key=lambda d: d["deviceId"]) == sorted(
        map(_comparable, output), key=lambda d: d["deviceId"]
    )
    print(  # noqa: T201 - timings, shown with -s
        f"import {import_seconds:.2f}s, export {export_seconds:.2f}s, "
        f"re-import {reimport_seconds:.2f}s"
    )


async def test_import_modes(relay: InProcessRelay, session: aiohttp.ClientSession) -> None:
    jobs = jobs_of(relay, session)
    await jobs.run(
        "/jobs/import",
        b"".join(_line({"deviceId": f"m{i}", "importMode": "create"}) for i in range(5)),
    )
    devices = await jobs.all_devices()
    body = b"".join(
        [
            _line({"deviceId": "m0", "importMode": "update", "status": "disabled"}),
            _line({"deviceId": "m-new", "importMode": "update"}),
            _line(
                {
                    "deviceId": "m1",
                    "importMode": "updateIfMatchETag",
                    "etag": devices["m1"]["etag"],
                    "statusReason": "checked",
                }
            ),
            _line({"deviceId": "m2", "importMode": "delete", "etag": "ignored"}),
            _line({"deviceId": "m3", "importMode": "deleteIfMatchETag", "etag": "stale"}),
            b"\n",
            _line(
                {"deviceId": "m4", "importMode": "deleteIfMatchETag", "etag": devices["m4"]["etag"]}
            ),
            _line({"deviceId": "m-missing", "importMode": "updateIfMatchETag", "etag": "x"}),
        ]
    )
    done = await jobs.run("/jobs/import", body)
    assert (done["succeeded"], done["failed"]) == (5, 2)
    assert [(e["line"], e["deviceId"], e["errorCode"]) for e in done["errors"]] == [
        (5, "m3", "PreconditionFailed"),
        (8, "m-missing", "EndpointNotFound"),
    ]
    after = await jobs.all_devices()
    assert sorted(after) == ["m-new", "m0", "m1", "m3"]
    assert after["m0"]["status"] == "disabled"
    assert after["m1"]["statusReason"] == "checked"
    assert after["m0"]["generationId"] == devices["m0"]["generationId"]  # replaced, not re-created


async def test_job_listing_and_lookups(
    relay: InProcessRelay, session: aiohttp.ClientSession
) -> None:
    jobs = jobs_of(relay, session)
    first = await jobs.run("/jobs/export")
    second = await jobs.run("/jobs/import", b"")
    assert (second["succeeded"], second["failed"], second["deviceCount"]) == (0, 0, 0)
    status, listing = await jobs.get("/jobs")
    assert status == 200
    assert [j["jobId"] for j in listing["value"]] == [second["jobId"], first["jobId"]]
    assert await jobs.lines(f"/jobs/{first['jobId']}/output") == []
    assert (await jobs.get(f"/jobs/{second['jobId']}/output"))[0] == 404
    assert (await jobs.get(f"/jobs/{first['jobId']}/errors"))[0] == 404
    assert (await jobs.get("/jobs/nope"))[0] == 404
    status, refusal = await jobs.get("/jobs/export")
    assert status == 405, refusal


async def test_jobs_need_a_manage_token(
    relay: InProcessRelay, session: aiohttp.ClientSession
) -> None:
    base = relay.http_url + "/$mgmt/v1"
    for method, path in [
        ("GET", "/jobs"),
        ("POST", "/jobs/export"),
        ("POST", "/jobs/import"),
        ("GET", "/jobs/abc"),
        ("GET", "/jobs/abc/output"),
        ("GET", "/jobs/abc/errors"),
    ]:
        async with session.request(method, base + path, data=b'{"deviceId":"x"}\n') as resp:
            assert resp.status == 401, (method, path)
            body = await resp.json()
            assert body["error"]["code"] == "TokenMissingOrInvalid"
    jobs = jobs_of(relay, session)
    status, listing = await jobs.get("/jobs")
    assert (status, listing["value"]) == (200, [])
