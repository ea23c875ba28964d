"""The dashboard's HTTP side (issue 14) against an in-process relay, without a browser.

Login, session cookie, CSRF, roles and the failed-login limit; the management API
resources the dashboard reads (/listeners, /streams, /stats) and the stream close
(1008, audit-logged). The pages themselves are driven in Chromium by
tests/browser/test_dashboard.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.conftest import RelayFactory
from tests.harness.peers import RawListener, send
from tests.harness.relay import ROOT_KEY, InProcessRelay, jwt_issuer_config, load, write_config
from tests.harness.timing import seconds
from yarl import URL

from hybridrelay.errors import ConfigError, ConnectionClosedError
from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.relay.mgmt.audit import AUDIT
from hybridrelay.relay.mgmt.openapi import build_openapi
from hybridrelay.relay.store.models import Device
from hybridrelay.relay.traffic import TRAFFIC, totals

ROOT = "RootManageSharedAccessKey"


class Browserish:
    """An HTTP client that keeps cookies like a browser (IP hosts included)."""

    def __init__(self, relay: InProcessRelay, session: aiohttp.ClientSession) -> None:
        self.base = relay.dashboard_url
        self.session = session
        self.csrf: str | None = None

    async def call(
        self, method: str, path: str, body: object = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        data = json.dumps(body) if body is not None else None
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers.update(headers or {})
        async with self.session.request(
            method, self.base + path, data=data, headers=all_headers
        ) as resp:
            text = await resp.text()
            is_json = resp.content_type == "application/json" and text
            return resp.status, json.loads(text) if is_json else text, resp

    async def login(self, key_name: str = ROOT, key: str = ROOT_KEY) -> tuple[int, Any]:
        status, doc, _ = await self.call("POST", "login", {"keyName": key_name, "key": key})
        if status == 200:
            self.csrf = doc["csrfToken"]
        return status, doc

    async def write(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        assert self.csrf is not None
        status, doc, _ = await self.call(method, path, body, headers={"X-CSRF-Token": self.csrf})
        return status, doc


@pytest.fixture
async def client(relay: InProcessRelay) -> AsyncIterator[Browserish]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield Browserish(relay, session)


def mgmt_token(relay: InProcessRelay) -> str:
    return create_sas_token(relay.http_url + "/", ROOT, ROOT_KEY, int(time.time()) + 600)


async def test_login_sets_a_strict_httponly_cookie_scoped_to_the_dashboard(
    client: Browserish,
) -> None:
    status, doc, resp = await client.call("POST", "login", {"keyName": ROOT, "key": ROOT_KEY})
    assert status == 200
    assert doc["who"] == f"sas:{ROOT}"
    assert doc["role"] == "operator"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    # No Path: the browser scopes it to /$dashboard, never the relayed paths at /.
    assert "Path" not in cookie
    assert ROOT_KEY not in cookie
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    status, stats, _ = await client.call("GET", "api/stats")
    assert status == 200
    assert stats["listeners"] == 0
    status, whoami, _ = await client.call("GET", "session")
    assert status == 200
    assert whoami["csrfToken"] == doc["csrfToken"]
    assert "credential" not in whoami


async def test_wrong_key_missing_cookie_and_missing_csrf_are_refused(client: Browserish) -> None:
    assert (await client.login(key="not-the-key"))[0] == 401
    assert (await client.login(key_name="no-such-rule"))[0] == 401
    # No session: the API, the session and logout answer 401.
    for method, path in (("GET", "api/stats"), ("GET", "session"), ("POST", "logout")):
        status, doc, _ = await client.call(method, path)
        assert status == 401, path
        assert doc["error"]["code"] == "SessionRequired"
    assert (await client.login())[0] == 200
    # A write without the CSRF header, or with another one, changes nothing.
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        status, doc, _ = await client.call(
            "PUT", "api/hybridconnections/made-here", {}, headers=headers
        )
        assert status == 403
        assert doc["error"]["code"] == "CsrfTokenInvalid"
    assert (await client.call("GET", "api/hybridconnections/made-here"))[0] == 404
    assert (await client.write("PUT", "api/hybridconnections/made-here", {}))[0] == 201
    # Logout needs the CSRF token too, then the cookie is worthless.
    assert (await client.call("POST", "logout"))[0] == 403
    assert (await client.write("POST", "logout"))[0] == 204
    assert (await client.call("GET", "api/stats"))[0] == 401


async def test_a_login_page_is_served_with_a_strict_policy(client: Browserish) -> None:
    status, _, resp = await client.call("GET", "")
    assert status == 200
    policy = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert resp.headers["X-Frame-Options"] == "DENY"
    for name in ("app.js", "app.css"):
        assert (await client.call("GET", "static/" + name))[0] == 200
    assert (await client.call("GET", "static/nope.js"))[0] == 404
    # Relative redirect from the bare prefix keeps a proxy's own prefix.
    async with client.session.get(client.base.rstrip("/"), allow_redirects=False) as redirect:
        assert redirect.status == 302
        assert redirect.headers["Location"] == "$dashboard/"


async def test_api_paths_cannot_leave_the_management_api(client: Browserish) -> None:
    assert (await client.login())[0] == 200
    for tail in ("%2e%2e/healthz", "%2E/stats", "devices//x"):
        url = URL(client.base + "api/" + tail, encoded=True)  # sent as is, not normalized
        async with client.session.get(url, allow_redirects=False) as resp:
            assert resp.status == 404, tail
    # No WebSocket rides on the session cookie (the page uses Server-Sent Events).
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    status, doc, _ = await client.call("GET", "api/events", headers=upgrade)
    assert status == 400
    assert doc["error"]["code"] == "UpgradeRefused"
    # Percent-encoded names reach the API as sent.
    status, doc, _ = await client.call("GET", "api/hybridconnections/nested%2Fpath")
    assert status == 200
    assert doc["name"] == "nested/path"


async def test_failed_logins_are_limited_per_address_and_counted(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(relay_extra="dashboard_login_failures = 3")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        client = Browserish(relay, session)
        for _ in range(3):
            assert (await client.login(key="wrong"))[0] == 401
        status, doc = await client.login()  # even the right key: the minute is not over
        assert status == 429
        assert doc["error"]["code"] == "TooManyRequests"
    limits = dict(relay.state.metrics.limit_refusals.counts())
    assert limits[("dashboard_login_failures",)] == 1


async def test_viewers_read_but_do_not_write(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(relay_extra=f'dashboard_viewers = ["sas:{ROOT}"]')
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        client = Browserish(relay, session)
        status, doc = await client.login()
        assert status == 200
        assert doc["role"] == "viewer"
        assert (await client.call("GET", "api/hybridconnections"))[0] == 200
        status, refusal = await client.write("PUT", "api/hybridconnections/nope", {})
        assert status == 403
        assert refusal["error"]["code"] == "ReadOnlySession"
        # Keys would make a viewer an operator (or a device): it never sees one.
        await relay.state.store.create_device(Device(device_id="keyed"))
        status, rule, _ = await client.call("GET", f"api/rules/{ROOT}")
        assert status == 200
        assert rule["name"] == ROOT
        assert (rule["primaryKey"], rule["secondaryKey"]) == (None, None)
        status, device, _ = await client.call("GET", "api/devices/keyed")
        assert status == 200
        assert device["authentication"]["symmetricKey"] == {
            "primaryKey": None,
            "secondaryKey": None,
        }
        status, page, _ = await client.call("GET", "api/devices")
        assert [d["authentication"]["symmetricKey"]["primaryKey"] for d in page["value"]] == [None]
        assert ROOT_KEY not in json.dumps(rule)


async def test_a_regenerated_key_ends_the_session(
    client: Browserish, relay: InProcessRelay
) -> None:
    assert (await client.login())[0] == 200
    created = await client.write("PUT", "api/rules/dash-admin", {"rights": ["Manage"]})
    assert created[0] == 201
    other = Browserish(relay, client.session)
    other.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with other.session:
        assert (await other.login("dash-admin", created[1]["primaryKey"]))[0] == 200
        assert (await other.call("GET", "api/stats"))[0] == 200
        regenerated = await client.write(
            "POST", "api/rules/dash-admin/regenerate", {"keyType": "primary"}
        )
        assert regenerated[0] == 200
        # The session's credential is checked by the API on every call.
        assert (await other.call("GET", "api/stats"))[0] == 401


async def test_listeners_streams_and_closing_one_with_1008(
    relay: InProcessRelay, caplog: pytest.LogCaptureFixture
) -> None:
    listener = await RawListener(relay.url, "echo", listener_id="dash-listener").start()
    headers = {"Authorization": mgmt_token(relay)}
    base = relay.http_url + "/$mgmt/v1"
    try:
        sender = await send(relay.url, "echo")
        await sender.send("hello")
        assert await sender.recv() == "hello"
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(base + "/listeners?hybridConnection=ECHO") as resp:
                listeners = (await resp.json())["value"]
            assert [(item["id"], item["activeStreams"]) for item in listeners] == [
                ("dash-listener", 1)
            ]
            assert listeners[0]["remoteAddress"].startswith("127.0.0.1:")
            async with http.get(base + "/streams") as resp:
                streams = (await resp.json())["value"]
            assert len(streams) == 1
            stream = streams[0]
            assert stream["hybridConnection"] == "echo"
            assert stream["listenerId"] == "dash-listener"
            assert stream["bytesSenderToListener"] > 0
            async with http.get(base + "/streams?hybridConnection=other") as resp:
                assert (await resp.json())["value"] == []

            caplog.set_level(logging.INFO, logger=AUDIT)
            async with http.delete(
                f"{base}/streams/{stream['id']}", params={"reason": "bye now"}
            ) as resp:
                assert resp.status == 204
            with pytest.raises(ConnectionClosedError) as closed:
                async with asyncio.timeout(seconds(5)):
                    await sender.recv()
            assert (closed.value.code, closed.value.reason) == (1008, "bye now")
            writes = [r for r in caplog.records if r.getMessage() == "mgmt_write"]
            assert [(r.who, r.method, r.status) for r in writes] == [  # type: ignore[attr-defined]
                (f"sas:{ROOT}", "DELETE", 204)
            ]
            async with http.delete(f"{base}/streams/{stream['id']}") as resp:
                assert resp.status == 404
            async with http.delete(f"{base}/streams/x", params={"reason": "\x00"}) as resp:
                assert resp.status == 400
            async with http.get(base + "/stats") as resp:
                stats = await resp.json()
            assert stats["connections"] == 1
            assert stats["listeners"] == 1
            async with http.get(base + "/stats?hybridConnection=ECHO") as resp:
                counters = (await resp.json())["hybridConnection"]
            assert counters["name"] == "echo"
            assert counters["ActiveListeners"] == 1
            assert counters["SenderConnections-Success"] == 1
            async with http.get(base + "/stats?hybridConnection=nope") as resp:
                assert resp.status == 404
            # Once both legs are closed the stream's bytes are counted for its entity.
            async with asyncio.timeout(seconds(5)):
                while counters["ActiveConnections"]:
                    await asyncio.sleep(0.02)  # polling the API, not synchronisation by delay
                    async with http.get(base + "/stats?hybridConnection=echo") as resp:
                        counters = (await resp.json())["hybridConnection"]
            assert counters["BytesTransferred"] == 2 * len("hello")
    finally:
        await listener.stop()


async def test_listeners_show_node_agent_and_ping_round_trip(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(ping_interval=0.2)
    # The agent's id form {agent_id}-{hc}-{i}, and a listener with an id of its own.
    agent = await RawListener(relay.url, "echo", listener_id="gw-17-echo-0").start()
    other = await RawListener(relay.url, "echo", listener_id="hand-made").start()
    url = relay.http_url + "/$mgmt/v1/listeners?hybridConnection=echo"
    try:
        async with aiohttp.ClientSession(headers={"Authorization": mgmt_token(relay)}) as http:
            async with http.get(url) as resp:
                first = {item["id"]: item for item in (await resp.json())["value"]}
            async with http.get(relay.http_url + "/$mgmt/v1/nodes") as resp:
                node = (await resp.json())["self"]
            assert {i: (v["agentId"], v["node"]) for i, v in first.items()} == {
                "gw-17-echo-0": ("gw-17", node),
                "hand-made": (None, node),
            }
            # Null until the first pong; then the round trip of the relay's keepalive ping.
            async with asyncio.timeout(seconds(5)):
                while True:
                    async with http.get(url) as resp:
                        listeners = (await resp.json())["value"]
                    rtts = [item["lastPingRoundTripMs"] for item in listeners]
                    if None not in rtts:
                        break
                    await asyncio.sleep(0.05)  # polling the API, not synchronisation by delay
            assert all(isinstance(rtt, float | int) and rtt >= 0 for rtt in rtts)
    finally:
        await agent.stop()
        await other.stop()


async def test_stats_traffic_counts_open_streams_bytes(relay: InProcessRelay) -> None:
    assert relay.app is not None
    history = relay.app[TRAFFIC]
    start = relay.state.now()
    history.sample(
        start, totals(relay.state.metrics, relay.splices)
    )  # a fresh baseline, whatever ran before
    listener = await RawListener(relay.url, "echo").start()
    try:
        sender = await send(relay.url, "echo")
        await sender.send("y" * 4000)
        assert await sender.recv() == "y" * 4000
        # Sampled while the stream is open: its bytes count before it finishes.
        history.sample(start + 4, totals(relay.state.metrics, relay.splices))
        async with (
            aiohttp.ClientSession(headers={"Authorization": mgmt_token(relay)}) as http,
            http.get(relay.http_url + "/$mgmt/v1/stats") as resp,
        ):
            traffic = (await resp.json())["traffic"]
        assert traffic["interval"] == 5
        # The relay's own sampler may have ticked in between: find the point made here.
        point = next(p for p in traffic["points"] if p["time"] == round(start + 4, 3))
        assert point["bytesUpPerSecond"] >= 1000  # 4000 bytes over at most 4 s
        assert point["bytesDownPerSecond"] >= 1000
        assert point["connectsPerSecond"] > 0
        await sender.close()
    finally:
        await listener.stop()


async def test_refusals_are_grouped_by_reason(relay: InProcessRelay) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(relay.http_url + "/$mgmt/v1/stats") as resp:
            assert resp.status == 401  # no token: itself a refusal
        async with http.get(
            relay.http_url + "/$mgmt/v1/stats", headers={"Authorization": mgmt_token(relay)}
        ) as resp:
            stats = await resp.json()
    assert {"status": "401", "action": "mgmt", "reason": "bad or expired token", "count": 1} in (
        stats["refusals"]
    )
    assert stats["topRefusedSources"] == [{"address": "127.0.0.1", "count": 1, "error": 0}]


def test_the_openapi_document_describes_the_live_resources() -> None:
    paths = build_openapi()["paths"]
    assert isinstance(paths, dict)
    assert set(paths["/streams/{streamId}"]) >= {"delete"}
    for path in ("/listeners", "/streams", "/stats"):
        assert "get" in paths[path]


async def test_sessions_beyond_the_cap_are_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(relay_extra="max_dashboard_sessions = 1")
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as first, aiohttp.ClientSession() as second:
        assert (await Browserish(relay, first).login())[0] == 200
        status, doc = await Browserish(relay, second).login()
        assert status == 429
        assert doc["error"]["code"] == "TooManyRequests"
    limits = dict(relay.state.metrics.limit_refusals.counts())
    assert limits[("max_dashboard_sessions",)] == 1


async def test_a_login_body_beyond_its_cap_is_refused_unread_and_counted(
    relay_factory: RelayFactory,
) -> None:
    # Anyone who reaches the dashboard's address may post a login: its body has a small cap
    # of its own, far below max_management_body_size.
    relay = await relay_factory(relay_extra="dashboard_login_body_size = 2048")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        client = Browserish(relay, session)
        status, doc, _ = await client.call("POST", "login", {"keyName": ROOT, "key": "k" * 4096})
        assert status == 413
        assert doc["error"]["code"] == "PayloadTooLarge"

        # Chunked, with no Content-Length to refuse up front: cut off while reading.
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"keyName": "' + ROOT.encode() + b'", "key": "'
            for _ in range(8):
                yield b"k" * 512
            yield b'"}'

        async with session.post(
            client.base + "login", data=chunks(), headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 413
        assert (await client.login())[0] == 200  # a login of normal size still passes
    limits = dict(relay.state.metrics.limit_refusals.counts())
    assert limits[("dashboard_login_body_size",)] == 2
    assert ("max_management_body_size",) not in limits


IDP = "https://idp.example"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def idp_token(ttl: int, **claims: object) -> str:
    now = int(time.time())
    payload = {"iss": IDP, "aud": "hybridrelay", "sub": "ops-robot", "exp": now + ttl, **claims}
    return jwt.encode(payload, RSA_KEY, algorithm="RS256")


async def test_a_manage_jwt_logs_in_until_it_expires_and_a_listen_jwt_does_not(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = await relay_factory(
        extra=jwt_issuer_config(tmp_path / "idp.pem", RSA_KEY, IDP),
        relay_extra='dashboard_viewers = ["jwt:ops-robot"]',
    )
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        client = Browserish(relay, session)
        for garbage in ("not-a-jwt", "Bearer a.b.c", "x" * 9000):
            status, doc, _ = await client.call("POST", "login", {"token": garbage})
            assert status in (400, 401), (garbage[:20], status, doc)
        bad_body = await client.call("POST", "login", {"keyName": 1, "key": None})
        assert bad_body[0] == 400
        listen_only = idp_token(600, scope="hc:listen:*")
        status, doc, _ = await client.call("POST", "login", {"token": listen_only})
        assert status == 403  # a valid token without manage: no session
        assert (await client.call("GET", "api/stats"))[0] == 401
        before = time.time()
        status, doc, _ = await client.call(
            "POST", "login", {"token": idp_token(120, scope="hc:manage:*")}
        )
        assert status == 200
        assert (doc["who"], doc["role"]) == ("jwt:ops-robot", "viewer")
        # The session ends with the token, before dashboard_session_ttl (1800 s).
        assert before + 100 <= doc["expiresAt"] <= before + 121
        assert (await client.call("GET", "api/hybridconnections"))[0] == 200
    # A form post (what another site could send without a preflight) is not a login.
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            relay.dashboard_url + "login", data={"keyName": ROOT, "key": ROOT_KEY}
        ) as resp,
    ):
        assert resp.status == 415
        assert "Set-Cookie" not in resp.headers


async def test_an_event_stream_through_the_dashboard_ends_at_logout(client: Browserish) -> None:
    assert (await client.login())[0] == 200
    async with client.session.get(
        client.base + "api/events", headers={"Accept": "text/event-stream"}
    ) as stream:
        assert stream.status == 200
        assert stream.content_type == "text/event-stream"
        # A change made through the dashboard arrives on its own stream.
        assert (await client.write("PUT", "api/hybridconnections/tail-me", {}))[0] == 201
        async with asyncio.timeout(seconds(5)):
            while b"createHybridConnection" not in await stream.content.readline():
                pass
        assert (await client.write("POST", "logout"))[0] == 204
        async with asyncio.timeout(seconds(5)):
            with contextlib.suppress(aiohttp.ClientPayloadError):
                while await stream.content.readline():
                    pass  # heartbeats at most, until the relay ends the stream
    assert not client.session.closed


async def test_a_viewer_cannot_read_keys_from_an_export_jobs_output(
    relay_factory: RelayFactory,
) -> None:
    # An operator's export (device keys included) lists under /jobs for every login;
    # its output is JSON Lines, which the viewer's JSON key blanking does not parse.
    relay = await relay_factory(relay_extra=f'dashboard_viewers = ["sas:{ROOT}"]')
    await relay.state.store.create_device(Device(device_id="keyed"))
    stored = await relay.state.store.get_device("keyed")
    assert stored is not None
    assert stored.authentication.symmetric_key is not None
    key = stored.authentication.symmetric_key.primary_key
    headers = {"Authorization": mgmt_token(relay)}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(relay.http_url + "/$mgmt/v1/jobs/export", headers=headers) as resp:
            assert resp.status == 202
            job_id = (await resp.json())["jobId"]
        deadline = time.monotonic() + seconds(10)
        while True:
            async with session.get(
                relay.http_url + f"/$mgmt/v1/jobs/{job_id}", headers=headers
            ) as resp:
                if (await resp.json())["status"] == "completed":
                    break
            assert time.monotonic() < deadline, "the export did not complete"
            await asyncio.sleep(0.05)
        client = Browserish(relay, session)
        assert (await client.login())[0] == 200
        status, body, _ = await client.call("GET", f"api/jobs/{job_id}/output")
        assert key not in str(body)
        assert status == 403


async def test_the_public_port_serves_no_dashboard_even_with_a_session(
    client: Browserish, relay: InProcessRelay
) -> None:
    assert urlsplit(relay.dashboard_url).port != urlsplit(relay.http_url).port
    status, session = await client.login()
    assert status == 200
    # The page learns where senders go from its session, not from its own origin.
    assert session["relayUrl"] == relay.http_url
    cookie = {"Cookie": "; ".join(f"{c.key}={c.value}" for c in client.session.cookie_jar)}
    async with aiohttp.ClientSession() as session:
        for method, path in (
            ("GET", "/$dashboard"),
            ("GET", "/$dashboard/"),
            ("GET", "/$dashboard/session"),
            ("GET", "/$dashboard/api/hybridconnections"),
            ("POST", "/$dashboard/login"),
            ("GET", "/$dashboard/static/app.js"),
        ):
            async with session.request(method, relay.http_url + path, headers=cookie) as resp:
                assert resp.status == 404, path
                doc = await resp.json()
                assert doc["error"]["code"] == "DashboardElsewhere", path
                assert relay.dashboard_url not in json.dumps(doc)  # the address stays private
    # The dashboard's own address serves nothing of the relay's.
    for path in ("hc-ws/x", "$mgmt/v1/stats", "metrics"):
        async with client.session.get(relay.dashboard_url.removesuffix("$dashboard/") + path) as r:
            assert r.status == 404, path


async def test_dashboard_listen_off_serves_none(relay_factory: RelayFactory) -> None:
    off = await relay_factory(relay_extra='dashboard_listen = "off"')
    assert off.dashboard_url == ""
    async with aiohttp.ClientSession() as session, session.get(off.http_url + "/$dashboard/") as r:
        assert r.status == 404


async def test_dashboard_listen_public_shares_the_public_origin_with_a_warning(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    shared = await relay_factory(relay_extra='dashboard_listen = "public"')
    assert shared.dashboard_url == shared.http_url + "/$dashboard/"
    assert "dashboard_shares_public_origin" in [r.getMessage() for r in caplog.records]
    async with aiohttp.ClientSession() as session, session.get(shared.dashboard_url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_a_dashboard_address_in_use_is_a_config_error_naming_the_key(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, relay_extra=f'dashboard_listen = "127.0.0.1:{port}"')
        relay = InProcessRelay(load(path))
        with pytest.raises(ConfigError) as info:
            await relay.start()
    assert info.value.key == "relay.dashboard_listen"
    assert f"cannot listen on 127.0.0.1:{port}" in info.value.reason
