"""The HTTP inspector's API (issue 14) against an in-process relay and a real listener.

Recording off by default and on per hybrid connection, secrets redacted, the ring and
body bounds, replay and edit-and-replay going through the normal HTTP-mode path to a
real listener (whose answer is recorded), the replay audit line, and the dashboard's
viewer role reading but not replaying. The page is driven in Chromium by
tests/browser/test_dashboard.py.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import pytest
from tests.conftest import RelayFactory
from tests.harness.listeners import running_listener as running
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.tls import TlsFiles

from hybridrelay.listener import HttpRequest, HttpResponse, Listener
from hybridrelay.protocol.sas import SasTokenProvider, create_sas_token
from hybridrelay.relay.mgmt.audit import AUDIT

ROOT = "RootManageSharedAccessKey"


def namespace_token(relay: InProcessRelay) -> str:
    return create_sas_token(relay.http_url + "/", ROOT, ROOT_KEY, int(time.time()) + 600)


class Api:
    """The management API with the root key; and plain senders."""

    def __init__(self, relay: InProcessRelay, session: aiohttp.ClientSession) -> None:
        self.relay = relay
        self.session = session
        self.token = namespace_token(relay)

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        async with self.session.request(
            method,
            f"{self.relay.http_url}/$mgmt/v1/{path}",
            data=json.dumps(body) if body is not None else None,
            headers={"Authorization": self.token},
        ) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None

    async def inspect(self, hc: str, enabled: bool = True) -> dict[str, Any]:
        status, doc = await self.call(
            "PUT", f"hybridconnections/{hc}/inspector", {"enabled": enabled}
        )
        assert status == 200, doc
        assert doc["enabled"] is enabled
        return cast(dict[str, Any], doc)

    async def recorded(self, hc: str = "echo") -> list[dict[str, Any]]:
        status, doc = await self.call("GET", f"hybridconnections/{hc}/inspector/requests")
        assert status == 200, doc
        return cast(list[dict[str, Any]], doc["value"])

    async def record(self, record_id: str, hc: str = "echo") -> dict[str, Any]:
        status, doc = await self.call(
            "GET", f"hybridconnections/{hc}/inspector/requests/{record_id}"
        )
        assert status == 200, doc
        return cast(dict[str, Any], doc)

    async def send(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        all_headers = {"ServiceBusAuthorization": self.token, **(headers or {})}
        async with self.session.request(
            method, self.relay.http_url + target, data=body or None, headers=all_headers
        ) as resp:
            return resp.status, await resp.read()


@pytest.fixture
async def api(relay: InProcessRelay) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield Api(relay, session)


class App:
    """The listener's app: answers 201 with what it saw, and remembers every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[HttpRequest, bytes]] = []

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        body = await request.read()
        self.seen.append((request, body))
        answer = json.dumps({"method": request.method, "path": request.path, "n": len(self.seen)})
        return HttpResponse(
            201,
            [("Content-Type", "application/json"), ("Set-Cookie", "session=listener-secret")],
            answer.encode(),
        )


def listener(relay: InProcessRelay, app: App, hc: str = "echo") -> Listener:
    return Listener(
        relay.url, hc, token_provider=SasTokenProvider(ROOT, ROOT_KEY, ttl=3600), http_handler=app
    )


async def test_off_by_default_then_records_with_secrets_redacted(
    relay: InProcessRelay, api: Api
) -> None:
    app = App()
    async with running(listener(relay, app)):
        status, doc = await api.call("GET", "hybridconnections/echo/inspector")
        assert (status, doc["enabled"], doc["recorded"]) == (200, False, 0)
        assert (await api.send("GET", "/echo/before"))[0] == 201
        assert await api.recorded() == []

        await api.inspect("echo")
        query_token = namespace_token(relay)
        signature = query_token.split("sig=")[1].split("&")[0]  # as the token spells it
        status, answer = await api.send(
            "POST",
            "/echo/orders/7?x=1&sb-hc-token=" + quote(query_token, safe=""),
            b'{"note": "link?sig=abcdef123&se=1"}',
            headers={
                "Cookie": "sid=browser-secret",
                "Authorization": "Bearer abc.def.ghi",
                "X-Link": "https://x/?sv=1&sig=zzz999&se=2",
                "X-Plain": "kept",
                "Content-Type": "application/json",
            },
        )
        assert status == 201
        (summary,) = await api.recorded()
        record = await api.record(summary["id"])

    assert record["method"] == "POST"
    assert record["status"] == 201
    assert record["hybridConnection"] == "echo"
    assert record["target"].startswith("/echo/orders/7?x=1&sb-hc-token=[redacted]")
    assert record["error"] is None
    assert record["replayOf"] is None
    assert record["receivedAt"] <= record["answeredAt"]
    assert record["duration"] >= 0
    request_headers = {name.lower(): value for name, value in record["requestHeaders"]}
    assert request_headers["cookie"] == "[redacted]"
    assert request_headers["authorization"] == "[redacted]"
    assert request_headers["servicebusauthorization"] == "[redacted]"
    assert request_headers["x-link"] == "https://x/?sv=1&sig=[redacted]&se=2"
    assert request_headers["x-plain"] == "kept"
    assert record["requestBody"]["text"] == '{"note": "link?sig=[redacted]&se=1"}'
    assert record["requestBody"]["complete"] is True
    response_headers = {name.lower(): value for name, value in record["responseHeaders"]}
    assert response_headers["set-cookie"] == "[redacted]"
    assert json.loads(record["responseBody"]["text"]) == json.loads(answer)
    assert record["responseBody"]["size"] == len(answer)
    text = json.dumps(record)
    quoted = quote(signature, safe="")
    for secret in (signature, quoted, "browser-secret", "listener-secret", "abc.def.ghi", "zzz999"):
        assert secret not in text, secret


async def test_the_ring_keeps_the_newest_and_bodies_are_capped(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(
        relay_extra="inspector_requests = 3\ninspector_body_size = 8\nmax_inspected_hcs = 1"
    )
    app = App()
    async with (
        aiohttp.ClientSession() as session,
        running(listener(relay, app)),
    ):
        api = Api(relay, session)
        settings = await api.inspect("echo")
        assert (settings["capacity"], settings["bodyLimit"]) == (3, 8)
        # One hybrid connection at a time here: the next one is refused, not recorded.
        status, doc = await api.call("PUT", "hybridconnections/other/inspector", {"enabled": True})
        assert (status, doc["error"]["code"]) == (403, "QuotaExceeded")
        for i in range(10):
            assert (await api.send("PUT", f"/echo/n/{i}", b"0123456789abcdef"))[0] == 201
        recorded = await api.recorded()
        assert [r["target"] for r in recorded] == ["/echo/n/9", "/echo/n/8", "/echo/n/7"]
        assert all(r["requestBodySize"] == 16 for r in recorded)
        newest = await api.record(recorded[0]["id"])
        assert newest["requestBody"]["text"] == "01234567"
        assert newest["requestBody"]["complete"] is False
        assert newest["responseBody"]["captured"] == 8
        assert newest["responseBody"]["complete"] is False

        # A body not kept whole is not replayed as if it were: give one.
        path = f"hybridconnections/echo/inspector/requests/{newest['id']}/replay"
        status, doc = await api.call("POST", path)
        assert (status, doc["error"]["code"]) == (409, "Conflict")
        status, doc = await api.call("POST", path, {"body": "whole body"})
        assert (status, doc["status"]) == (200, 201)
        assert app.seen[-1][1] == b"whole body"
        assert len(await api.recorded()) == 3  # still bounded: the replay pushed one out

        # Off: forgotten, and nothing more is kept.
        await api.inspect("echo", enabled=False)
        assert await api.recorded() == []
        assert (await api.send("GET", "/echo/after"))[0] == 201
        assert await api.recorded() == []
        status, _ = await api.call(
            "GET", f"hybridconnections/echo/inspector/requests/{newest['id']}"
        )
        assert status == 404


async def test_replay_goes_through_the_listener_and_is_recorded(
    relay: InProcessRelay, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    app = App()
    async with running(listener(relay, app)):
        await api.inspect("echo")
        status, _ = await api.send(
            "PATCH", "/echo/items/1?y=2", b"original", headers={"X-Trace": "t1", "Cookie": "c=1"}
        )
        assert status == 201
        (original,) = await api.recorded()
        path = f"hybridconnections/echo/inspector/requests/{original['id']}/replay"

        status, replayed = await api.call("POST", path)
        assert status == 200, replayed
        assert replayed["status"] == 201
        replay = replayed["replay"]
        assert replay["replayOf"] == original["id"]
        assert (replay["method"], replay["target"], replay["status"]) == (
            "PATCH",
            "/echo/items/1?y=2",
            201,
        )
        assert json.loads(replay["responseBody"]["text"])["n"] == 2  # the listener's answer

        # The listener got it again, as a sender would send it: same method, target, body
        # and headers, but no redacted one (the operator's token authorized it instead).
        (first, first_body), (again, again_body) = app.seen
        assert (again.method, again.target, again_body) == (first.method, first.target, first_body)
        assert again.headers["X-Trace"] == "t1"
        assert "Cookie" not in again.headers

        # Edit and replay.
        status, edited = await api.call(
            "POST",
            path,
            {
                "method": "POST",
                "target": "/echo/items/2",
                "headers": [["X-Trace", "t2"], ["Authorization", "[redacted]"]],
                "body": "edited",
            },
        )
        assert status == 200, edited
        assert edited["replay"]["method"] == "POST"
        assert edited["replay"]["target"] == "/echo/items/2"
        request, body = app.seen[-1]
        assert (request.method, request.path, body) == ("POST", "/items/2", b"edited")
        assert request.headers["X-Trace"] == "t2"
        assert "Authorization" not in request.headers
        recorded = await api.recorded()
        assert [r["replayOf"] for r in recorded] == [original["id"], original["id"], None]

        # An edit may not leave the hybrid connection.
        status, doc = await api.call("POST", path, {"target": "/other/x"})
        assert (status, doc["error"]["code"]) == (400, "ArgumentInvalid")
        assert len(app.seen) == 3

    lines = [r for r in caplog.records if r.getMessage() == "inspector_replay"]
    assert [(r.hc, r.record, r.edited, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("echo", original["id"], False, 201),
        ("echo", original["id"], True, 201),
    ]
    assert all(r.who == f"sas:{ROOT}" for r in lines)  # type: ignore[attr-defined]


async def test_a_failed_request_is_recorded_with_the_relays_refusal(
    relay: InProcessRelay, api: Api
) -> None:
    await api.inspect("echo")
    status, _ = await api.send("GET", "/echo/nobody-listens")  # no listener: 502
    assert status == 502
    (record,) = await api.recorded()
    assert record["status"] == 502
    assert record["error"]
    # Another entity's requests are not kept, here or there.
    assert (await api.send("POST", "/other/x", b"not kept"))[0] == 502
    assert [r["id"] for r in await api.recorded()] == [record["id"]]
    assert await api.recorded("other") == []


async def test_dashboard_viewer_sees_but_does_not_replay(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(relay_extra=f'dashboard_viewers = ["sas:{ROOT}"]')
    app = App()
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
        aiohttp.ClientSession() as session,
        running(listener(relay, app)),
    ):
        api = Api(relay, session)
        await api.inspect("echo")
        assert (await api.send("GET", "/echo/seen"))[0] == 201
        (record,) = await api.recorded()

        base = relay.dashboard_url
        async with browser.post(base + "login", json={"keyName": ROOT, "key": ROOT_KEY}) as resp:
            login = await resp.json()
        assert login["role"] == "viewer"
        csrf = {"X-CSRF-Token": login["csrfToken"]}
        inspector = base + "api/hybridconnections/echo/inspector"
        async with browser.get(inspector + "/requests/" + record["id"]) as resp:
            assert resp.status == 200
            assert (await resp.json())["target"] == "/echo/seen"
        async with browser.post(
            inspector + f"/requests/{record['id']}/replay", headers=csrf
        ) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "ReadOnlySession"
        async with browser.put(inspector, json={"enabled": False}, headers=csrf) as resp:
            assert resp.status == 403
    assert len(app.seen) == 1  # nothing was replayed


async def test_unknown_entities_and_records_are_404_and_names_are_reserved(
    relay: InProcessRelay, api: Api
) -> None:
    status, doc = await api.call("GET", "hybridconnections/nope/inspector")
    assert (status, doc["error"]["code"]) == (404, "EndpointNotFound")
    status, _ = await api.call("POST", "hybridconnections/echo/inspector/requests/none/replay")
    assert status == 404
    status, doc = await api.call("PUT", "hybridconnections/echo/inspector", {"enabled": "yes"})
    assert status == 400
    status, doc = await api.call("PUT", "hybridconnections/a/inspector/b", {})
    assert status == 400  # a name whose URLs would be the inspector's
    # Nested names work: the inspector's segment is matched from the end.
    assert (await api.inspect("nested/path"))["hybridConnection"] == "nested/path"


async def test_streamed_bodies_are_counted_and_capped(relay: InProcessRelay, api: Api) -> None:
    big = bytes(range(256)) * 400  # 100 KiB: over 64 KiB, so both ways go by rendezvous

    async def app(request: HttpRequest) -> HttpResponse:
        await request.read()

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(big), 10_000):
                yield big[start : start + 10_000]

        return HttpResponse(200, [("Content-Type", "application/octet-stream")], chunks())

    async with running(
        Listener(
            relay.url,
            "echo",
            token_provider=SasTokenProvider(ROOT, ROOT_KEY, ttl=3600),
            http_handler=app,
        )
    ):
        await api.inspect("echo")
        status, answer = await api.send("POST", "/echo/upload", big)
        assert (status, answer) == (200, big)
        (summary,) = await api.recorded()
        record = await api.record(summary["id"])
    limit = relay.state.config.relay.inspector_body_size
    # The request body went to the listener as it arrived: counted by its length, not kept.
    assert record["requestBody"] == {
        "size": len(big),
        "captured": 0,
        "complete": False,
        "text": "",
        "base64": "",
    }
    assert record["responseBody"]["size"] == len(big)
    assert record["responseBody"]["captured"] == limit
    assert record["responseBody"]["complete"] is False
    assert record["responseBody"]["text"] is None  # not UTF-8: base64 only


async def test_a_deleted_hybrid_connection_frees_its_inspector_slot(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(relay_extra="max_inspected_hcs = 1")
    async with aiohttp.ClientSession() as session:
        api = Api(relay, session)
        assert (await api.call("PUT", "hybridconnections/made-here", {}))[0] == 201
        await api.inspect("made-here")
        assert (await api.call("DELETE", "hybridconnections/made-here"))[0] == 204
        # The store's change event reached the inspector: the one slot is free again.
        await api.inspect("echo")


async def test_replay_over_tls_trusts_the_relays_own_certificate(
    relay_factory: RelayFactory, tls_files: TlsFiles
) -> None:
    # The relay does not know the CA that signed its certificate: it trusts its own.
    relay = await relay_factory(tls=tls_files)
    client_tls = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    app = App()
    listener = Listener(
        relay.url,
        "echo",
        token_provider=SasTokenProvider(ROOT, ROOT_KEY, ttl=3600),
        http_handler=app,
        ssl_context=client_tls,
    )
    connector = aiohttp.TCPConnector(ssl=client_tls)
    async with aiohttp.ClientSession(connector=connector) as session, running(listener):
        api = Api(relay, session)
        await api.inspect("echo")
        assert (await api.send("GET", "/echo/secure"))[0] == 201
        (original,) = await api.recorded()
        path = f"hybridconnections/echo/inspector/requests/{original['id']}/replay"
        status, replayed = await api.call("POST", path)
    assert status == 200, replayed
    assert replayed["status"] == 201
    assert replayed["replay"]["replayOf"] == original["id"]
    assert len(app.seen) == 2
