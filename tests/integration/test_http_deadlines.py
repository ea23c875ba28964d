"""HTTP mode through the relay and our listener in front of a real app: deadlines, failures."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

from hybridrelay.listener import HttpTarget, Listener
from hybridrelay.protocol.sas import SasTokenProvider, audience_for, create_sas_token

ROOT = "RootManageSharedAccessKey"
SLOW_HC = '\n[[hybrid_connections]]\nname = "slowhc"\nrequest_timeout = 1\n'


@pytest.fixture
async def app_url(aiohttp_server: AiohttpServer) -> str:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.match_info["s"]))  # the app under test is slow on purpose
        return web.Response(text="finally")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        while True:  # until the listener drops the connection
            await response.write(b"x" * 65536)
            await asyncio.sleep(0.01)

    app = web.Application()
    app.router.add_get("/slow/{s}", slow)
    app.router.add_get("/endless", endless)
    server = await aiohttp_server(app)
    return str(server.make_url(""))


def _headers(relay: InProcessRelay, hc: str) -> dict[str, str]:
    url = f"{relay.http_url}/{hc}"
    return {
        "ServiceBusAuthorization": create_sas_token(
            audience_for(url), ROOT, ROOT_KEY, int(time.time()) + 600
        )
    }


async def _read_to_end(resp: aiohttp.ClientResponse) -> None:
    while await resp.content.read(65536):
        pass


async def _start(listener: Listener) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    await asyncio.wait_for(listener.connected.wait(), seconds(10))
    return stop, task


@pytest.fixture
async def slow_relay(relay_factory) -> InProcessRelay:
    relay: InProcessRelay = await relay_factory(extra=SLOW_HC)
    return relay


async def test_slow_app_gives_504_at_the_configured_deadline(
    slow_relay: InProcessRelay, app_url: str
) -> None:
    listener = Listener(
        slow_relay.url,
        "slowhc",
        token_provider=SasTokenProvider(ROOT, ROOT_KEY),
        http_handler=HttpTarget(app_url),
        drain_timeout=0.5,
    )
    stop, task = await _start(listener)
    try:
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            url = f"{slow_relay.http_url}/slowhc/slow/3"
            async with session.get(url, headers=_headers(slow_relay, "slowhc")) as resp:
                body = await resp.json()
            took = time.monotonic() - started
        assert resp.status == 504
        assert body["error"]["code"] == "GatewayTimeout"
        assert 0.9 <= took < seconds(2.5), took
    finally:
        stop.set()
        await asyncio.wait_for(task, seconds(10))


async def test_no_listener_gives_502(relay: InProcessRelay) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{relay.http_url}/echo/anything"
        async with session.get(url, headers=_headers(relay, "echo")) as resp:
            body = await resp.json()
    assert resp.status == 502
    assert body["error"]["code"] == "BadGateway"
    assert "Via" not in resp.headers


async def test_listener_going_away_mid_response_breaks_it(
    relay: InProcessRelay, app_url: str
) -> None:
    listener = Listener(
        relay.url,
        "echo",
        token_provider=SasTokenProvider(ROOT, ROOT_KEY),
        http_handler=HttpTarget(app_url),
        drain_timeout=0.2,
    )
    stop, task = await _start(listener)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{relay.http_url}/echo/endless"
            async with asyncio.timeout(seconds(15)):
                async with session.get(url, headers=_headers(relay, "echo")) as resp:
                    assert resp.status == 200
                    assert len(await resp.content.readexactly(65536)) == 65536
                    stop.set()  # the listener drains for 0.2 s, then cuts its streams
                    with pytest.raises(
                        (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)
                    ):
                        await _read_to_end(resp)
    finally:
        stop.set()
        await asyncio.wait_for(task, seconds(10))
