"""Spoofed proxy headers: a sender must not choose the client address an on-prem target sees.

On-prem HTTP services often allow-list by the address their proxy reports: the last
``X-Forwarded-For`` element, the last ``Forwarded`` ``for=``, ``X-Real-IP``. A sender that
writes those headers itself used to reach the target with them unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from multidict import CIMultiDictProxy

from hybridrelay.listener import HttpTarget, Listener
from hybridrelay.listener.http_target import build_request
from hybridrelay.protocol.messages import RemoteEndpoint, Request
from hybridrelay.protocol.sas import SasTokenProvider
from tests.conftest import ROOT
from tests.harness.listeners import running_listener
from tests.harness.peers import RawListener, token_for
from tests.harness.raw_http import connect_raw, read_response, upgrade
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

TRUSTED = "10.9.9.9"  # the admin network the target lets in
SPOOFED = (
    ("X-Forwarded-For", TRUSTED),
    ("Forwarded", f"for={TRUSTED};proto=https"),
    ("X-Real-IP", TRUSTED),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "admin.internal"),
)


@contextlib.asynccontextmanager
async def allow_listing_target() -> AsyncIterator[tuple[str, list[CIMultiDictProxy[str]]]]:
    """An HTTP service that lets in only requests whose proxy-reported client is TRUSTED."""
    seen: list[CIMultiDictProxy[str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers)
        client = request.headers.get("X-Forwarded-For", "").rsplit(",", 1)[-1].strip()
        if client != TRUSTED:
            return web.Response(status=403, text=f"not for {client}")
        return web.Response(text="admin area")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def _last_forwarded_for(value: str) -> str:
    last = value.rsplit(",", 1)[-1]
    params = dict(p.strip().split("=", 1) for p in last.split(";"))
    return params["for"].strip('"')


async def test_an_ip_allow_listing_target_sees_the_real_peer_last(relay: InProcessRelay) -> None:
    """Sender spoofs X-Forwarded-For/Forwarded/X-Real-IP: the target sees 127.0.0.1 last, 403."""
    async with allow_listing_target() as (url, seen):
        target = HttpTarget(url)
        listener = Listener(
            relay.url, "hyco", token_provider=SasTokenProvider(ROOT, ROOT_KEY), http_handler=target
        )
        async with running_listener(listener):
            reader, writer = await connect_raw(relay.url)
            try:
                token = token_for(f"{relay.http_url}/hyco")
                lines = [
                    "GET /hyco/admin HTTP/1.1",
                    "Host: relay.example",
                    f"ServiceBusAuthorization: {token}",
                    *(f"{name}: {value}" for name, value in SPOOFED),
                ]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
                async with asyncio.timeout(seconds(10)):
                    answer = await read_response(reader)
            finally:
                writer.close()
                await writer.wait_closed()
    assert answer.status == 403, answer.body
    (headers,) = seen
    assert headers["X-Forwarded-For"] == f"{TRUSTED}, 127.0.0.1"
    assert _last_forwarded_for(headers["Forwarded"]) == "127.0.0.1"
    assert headers.getall("X-Real-IP") == ["127.0.0.1"]
    assert headers.getall("X-Forwarded-Proto") == ["http"]
    assert headers.getall("X-Forwarded-Host") == ["relay.example"]


async def test_websocket_senders_connect_headers_carry_the_real_peer_last(
    relay: InProcessRelay,
) -> None:
    """Sender spoofs proxy headers on its WebSocket handshake: connectHeaders end with its peer."""
    listener = await RawListener(relay.url, "anon", behaviour=None).start()
    writer = None
    try:
        sender = asyncio.ensure_future(
            upgrade(relay.url, "/$hc/anon?sb-hc-action=connect", SPOOFED)
        )
        async with asyncio.timeout(seconds(5)):
            accept = await listener.accepts.get()
        headers = {k.lower(): v for k, v in accept["connectHeaders"].items()}  # type: ignore[attr-defined]
        assert headers["x-forwarded-for"] == f"{TRUSTED}, 127.0.0.1"
        assert _last_forwarded_for(headers["forwarded"]) == "127.0.0.1"
        assert headers["x-real-ip"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        assert "sec-websocket-key" in headers  # hyco-ws needs it (HC §3.1)
        ws = await listener.dial(accept)
        async with asyncio.timeout(seconds(5)):
            _, writer, head = await sender
        assert (head.version, head.status) == ("HTTP/1.1", 101)
        ws.abort()
    finally:
        if writer is not None:
            writer.close()
        await listener.stop()


async def test_the_agent_appends_the_relays_remote_endpoint_a_relay_left_out() -> None:
    """A relay passes spoofed headers on untouched: the agent's target still sees the peer last."""
    async with allow_listing_target() as (url, seen):
        target = HttpTarget(url)
        try:
            message = Request(
                address="ws://relay/$hc/hyco?sb-hc-action=request",
                id="1",
                request_target="/hyco/admin",
                method="GET",
                remote_endpoint=RemoteEndpoint(address="203.0.113.7", port=5000),
                request_headers=dict(SPOOFED),
                body=False,
            )
            response = await target(build_request("hyco", message, None))
        finally:
            await target.aclose()
    assert response.status == 403
    (headers,) = seen
    assert headers["X-Forwarded-For"] == f"{TRUSTED}, 203.0.113.7"
    assert _last_forwarded_for(headers["Forwarded"]) == "203.0.113.7"
    assert headers.getall("X-Real-IP") == ["203.0.113.7"]
