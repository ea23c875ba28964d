"""Lifecycle notifications (issue 5): GET /$mgmt/v1/events (SSE and WebSocket) and webhooks.

Every wait is bounded by ``seconds()``; events are awaited, never slept for. Webhook
targets are a local aiohttp app on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.conftest import RelayFactory
from tests.harness.peers import RawListener
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

from hybridrelay.errors import ConfigError
from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.relay.config import WEBHOOK_EVENTS, load_relay_config
from hybridrelay.relay.mgmt.events import (
    JOB_OP_TYPES,
    LISTENER_OP_TYPES,
    STORE_OP_TYPES,
    EventHub,
)

ROOT = "RootManageSharedAccessKey"
SSE_HEADERS = {"Accept": "text/event-stream"}


def namespace_token() -> str:
    return create_sas_token("http://127.0.0.1/", ROOT, ROOT_KEY, int(time.time()) + 600)


def auth(**extra: str) -> dict[str, str]:
    return {"Authorization": namespace_token(), **extra}


@dataclass
class SseEvent:
    id: int
    event: str
    data: dict[str, Any]


@dataclass
class SseStream:
    """Reads an SSE response in a task; the parsed events arrive in ``events``."""

    response: aiohttp.ClientResponse
    events: asyncio.Queue[SseEvent] = field(default_factory=asyncio.Queue)
    comments: int = 0
    task: asyncio.Task[None] | None = None

    def start(self) -> SseStream:
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        fields: dict[str, str] = {}
        while line := await self.response.content.readline():
            text = line.decode().rstrip("\n")
            if not text:
                if "data" in fields:
                    await self.events.put(
                        SseEvent(
                            int(fields.get("id", "0")),
                            fields.get("event", "message"),
                            json.loads(fields["data"]),
                        )
                    )
                fields = {}
            elif text.startswith(":"):
                self.comments += 1
            else:
                name, _, value = text.partition(":")
                fields[name] = value.removeprefix(" ")

    async def next(self) -> SseEvent:
        return await asyncio.wait_for(self.events.get(), seconds(10))

    async def take(self, count: int) -> list[SseEvent]:
        return [await self.next() for _ in range(count)]

    async def close(self) -> None:
        self.response.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def subscribe(
    session: aiohttp.ClientSession, relay: InProcessRelay, last_event_id: int | None = None
) -> SseStream:
    headers = auth(**SSE_HEADERS)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    response = await session.get(relay.http_url + "/$mgmt/v1/events", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return SseStream(response).start()


async def mgmt(
    session: aiohttp.ClientSession, relay: InProcessRelay, method: str, path: str
) -> int:
    async with session.request(
        method, relay.http_url + "/$mgmt/v1" + path, headers=auth(), json={}
    ) as resp:
        await resp.read()
        return resp.status


@dataclass
class Hook:
    """A webhook target on 127.0.0.1 that fails the first ``failures`` POSTs with 500."""

    failures: int = 1
    posts: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)
    received: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        doc = await request.json()
        self.posts.append((doc, request.headers.get("X-Hook-Secret")))
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=500)
        await self.received.put(doc)
        return web.Response(status=204)

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.received.get(), seconds(10))


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    target = Hook()
    app = web.Application()
    app.router.add_post("/hook", target.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    target.url = f"http://127.0.0.1:{port}/hook"
    yield target
    await runner.cleanup()


def webhook_config(url: str, *extra: str) -> str:
    lines = [
        "[[webhooks]]",
        f'url = "{url}"',
        'secret_header = "X-Hook-Secret"',
        'secret = "hook-secret"',
        "retry_base_delay = 0.01",
        "retry_max_delay = 0.05",
        *extra,
    ]
    return "\n" + "\n".join(lines) + "\n"


async def test_lifecycle_events_stream_and_webhook(
    relay_factory: RelayFactory, hook: Hook, session: aiohttp.ClientSession
) -> None:
    relay = await relay_factory(extra=webhook_config(hook.url))
    stream = await subscribe(session, relay)
    try:
        assert await mgmt(session, relay, "PUT", "/devices/dev-A") == 201
        assert await mgmt(session, relay, "DELETE", "/devices/dev-A") == 204
        listener = await RawListener(relay.url, "hc-ws", listener_id="listener-1").start()
        await listener.stop()

        events = await stream.take(4)
    finally:
        await stream.close()

    assert [e.event for e in events] == [
        "createDeviceIdentity",
        "deleteDeviceIdentity",
        "listenerOnline",
        "listenerOffline",
    ]
    ids = [e.id for e in events]
    assert ids == [ids[0] + i for i in range(4)]
    for event in events:
        assert event.data["sequenceNumber"] == event.id
        assert event.data["properties"]["opType"] == event.event
        stamp = event.data["properties"]["operationTimestamp"]
        assert stamp.endswith("Z")
        assert "T" in stamp

    create, delete, online, offline = (e.data for e in events)
    for doc in (create, delete):
        assert doc["properties"]["hubName"] == "127.0.0.1"
        assert doc["properties"]["deviceId"] == "dev-A"
        assert doc["body"]["deviceId"] == "dev-A"
        assert doc["body"]["generationId"]
        # Key values never travel in events.
        assert doc["body"]["authentication"]["symmetricKey"] == {
            "primaryKey": None,
            "secondaryKey": None,
        }
    for doc in (online, offline):
        assert doc["properties"]["hubName"] == "hc-ws"
        assert doc["properties"]["listenerId"] == "listener-1"
        assert "deviceId" not in doc["properties"]
        assert doc["body"] == {"hybridConnection": "hc-ws", "listenerId": "listener-1"}

    # The webhook gets the same events in the same order; the first POST failed (500)
    # and was retried.
    delivered = [await hook.next() for _ in range(4)]
    assert delivered == [e.data for e in events]
    assert len(hook.posts) == 5
    assert hook.posts[0][0] == hook.posts[1][0] == events[0].data
    assert {secret for _, secret in hook.posts} == {"hook-secret"}


async def test_last_event_id_resumes(relay: InProcessRelay, session: aiohttp.ClientSession) -> None:
    first = await subscribe(session, relay)
    try:
        for name in ("r-1", "r-2", "r-3"):
            assert await mgmt(session, relay, "PUT", f"/devices/{name}") == 201
        seen = await first.take(3)
    finally:
        await first.close()
    assert [e.data["properties"]["deviceId"] for e in seen] == ["r-1", "r-2", "r-3"]

    resumed = await subscribe(session, relay, last_event_id=seen[0].id)
    try:
        replayed = await resumed.take(2)
        assert [e.id for e in replayed] == [seen[1].id, seen[2].id]
        assert [e.data for e in replayed] == [e.data for e in seen[1:]]
        # Live events follow the replay.
        assert await mgmt(session, relay, "DELETE", "/devices/r-1") == 204
        live = await resumed.next()
        assert live.id == seen[2].id + 1
        assert live.event == "deleteDeviceIdentity"
    finally:
        await resumed.close()

    # An id ahead of the node's sequence (it restarted): everything kept is replayed.
    ahead = await subscribe(session, relay, last_event_id=10**9)
    try:
        assert [e.id for e in await ahead.take(4)] == [*(e.id for e in seen), live.id]
    finally:
        await ahead.close()


async def test_websocket_variant(relay: InProcessRelay, session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(relay.http_url + "/$mgmt/v1/events", headers=auth()) as ws:
        assert await mgmt(session, relay, "PUT", "/devices/ws-dev") == 201
        message = await ws.receive_json(timeout=seconds(10))
        assert message["properties"]["opType"] == "createDeviceIdentity"
        assert message["properties"]["deviceId"] == "ws-dev"
        assert message["body"]["deviceId"] == "ws-dev"


async def test_refusals(relay: InProcessRelay, session: aiohttp.ClientSession) -> None:
    url = relay.http_url + "/$mgmt/v1/events"
    async with session.get(url, headers=SSE_HEADERS) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"]
    async with session.get(url, headers=auth()) as resp:
        assert resp.status == 406  # a plain HTTP client would wait for ever
    async with session.get(url, headers=auth(**SSE_HEADERS, **{"Last-Event-ID": "x"})) as resp:
        assert resp.status == 400
    async with session.post(url, headers=auth(**SSE_HEADERS)) as resp:
        assert resp.status == 405


async def test_slow_subscriber_is_dropped_with_an_error() -> None:
    hub = EventHub(queue_size=2)
    slow = hub.subscribe()
    fast = hub.subscribe()
    for i in range(3):
        hub.publish("listenerOnline", {"opType": "listenerOnline"}, {"i": i})
        got = await fast.get()  # keeps up
        assert not hasattr(got, "error")
    closed = await slow.get()
    assert getattr(closed, "error", None) == "SubscriberTooSlow"
    # The slow one is gone; the hub keeps publishing to the others.
    hub.publish("listenerOffline", {"opType": "listenerOffline"}, {})
    assert getattr(await fast.get(), "sequence", None) == 4


async def test_webhook_gives_up_after_max_attempts(
    relay_factory: RelayFactory, hook: Hook, session: aiohttp.ClientSession, caplog: Any
) -> None:
    relay = await relay_factory(
        extra=webhook_config(hook.url, "max_attempts = 3", 'events = ["deleteDeviceIdentity"]')
    )
    hook.failures = 3  # the delete fails three times: given up
    stream = await subscribe(session, relay)
    try:
        assert await mgmt(session, relay, "PUT", "/devices/gone") == 201
        assert await mgmt(session, relay, "DELETE", "/devices/gone") == 204
        assert await mgmt(session, relay, "PUT", "/devices/gone") == 201
        assert await mgmt(session, relay, "DELETE", "/devices/gone") == 204
        await stream.take(4)
    finally:
        await stream.close()
    # Only deletions pass the filter; the first one was given up after 3 attempts.
    second = await hook.next()
    assert second["properties"]["opType"] == "deleteDeviceIdentity"
    assert len(hook.posts) == 4
    assert hook.posts[0][0] == hook.posts[2][0] != second
    assert any(r.message == "webhook_gave_up" for r in caplog.records)


def test_webhook_config_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    base = f'[[rules]]\nname = "r"\nkey = "{ROOT_KEY}"\nrights = ["Manage"]\n'
    cases = {
        'url = "ftp://127.0.0.1/x"': "url",
        'url = "http://127.0.0.1/x"\nevents = ["nope"]': "events",
        'url = "http://127.0.0.1/x"\nsecret = "s"': "secret_header",
        'url = "http://127.0.0.1/x"\nbogus = 1': "bogus",
    }
    for body, key in cases.items():
        path.write_text(base + "[[webhooks]]\n" + body + "\n", "utf-8")
        with pytest.raises(ConfigError, match=key):
            load_relay_config(path, {})
    path.write_text(
        base + '[[webhooks]]\nurl = "http://127.0.0.1/x"\nevents = ["listenerOnline"]\n', "utf-8"
    )
    (webhook,) = load_relay_config(path, {}).webhooks
    assert webhook.events == ("listenerOnline",)
    assert webhook.max_attempts == 5


def test_webhook_filter_names_every_event_the_hub_publishes() -> None:
    published = {*STORE_OP_TYPES.values(), *LISTENER_OP_TYPES, *JOB_OP_TYPES.values()}
    assert set(WEBHOOK_EVENTS) == published
    assert len(WEBHOOK_EVENTS) == len(published)


async def test_import_job_events_and_since(
    relay: InProcessRelay, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from hybridrelay.client.admin import AdminClient

    source = tmp_path / "devices.jsonl"
    source.write_text('{"deviceId": "job-1"}\n{"deviceId": "job-2"}\n', "utf-8")
    async with AdminClient(relay.http_url, ROOT, ROOT_KEY) as admin:
        job = await admin.wait_job(str((await admin.start_import(source))["jobId"]))
        assert job["status"] == "completed"
        # Replayed from a time before it all; the import's events are kept in order.
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(seconds(10)):
            async for event in admin.events(since="2000-01-01T00:00:00Z"):
                events.append(event)
                if event["properties"]["opType"] == "completeJob":
                    break
    assert [e["properties"]["opType"] for e in events] == [
        "startJob",
        "createDeviceIdentity",
        "createDeviceIdentity",
        "completeJob",
    ]
    start, done = events[0], events[-1]
    assert start["properties"]["jobId"] == done["properties"]["jobId"] == job["jobId"]
    assert start["body"]["status"] == "running"
    assert done["body"]["succeeded"] == 2
    assert "errors" not in done["body"]

    # since is at or after a time: one after the last event replays nothing of it.
    later = done["properties"]["operationTimestamp"]
    stream = await subscribe_since(session, relay, "2999-01-01T00:00:00Z")
    try:
        assert await mgmt(session, relay, "PUT", "/devices/after") == 201
        live = await stream.next()
        assert live.data["properties"]["deviceId"] == "after"
        assert live.data["properties"]["operationTimestamp"] >= later
    finally:
        await stream.close()
    headers = auth(**SSE_HEADERS)
    async with session.get(
        relay.http_url + "/$mgmt/v1/events?since=yesterday", headers=headers
    ) as resp:
        assert resp.status == 400


async def subscribe_since(
    session: aiohttp.ClientSession, relay: InProcessRelay, since: str
) -> SseStream:
    response = await session.get(
        relay.http_url + "/$mgmt/v1/events",
        params={"since": since},
        headers=auth(**SSE_HEADERS),
    )
    assert response.status == 200, await response.text()
    return SseStream(response).start()
