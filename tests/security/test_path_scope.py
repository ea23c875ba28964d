"""Path scope escape: dot segments and encoded separators past a token's ``sr`` (issue 11).

A token scoped to ``hc1/public`` must never reach ``hc1/private``: not through ``..``,
``%2F``, ``%2E`` or a backslash in the entity path or the HTTP-mode suffix, and not
through a listener agent that forwards the path to an on-prem service under its base
path. The relay refuses such targets with 400 before any scope check; the agent
refuses them too (a compromised or buggy relay must not walk it out of its base path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from aiohttp import WSMsgType, web
from pytest_aiohttp import AiohttpServer

from hybridrelay.listener import HttpTarget, Listener
from hybridrelay.protocol.messages import RemoteEndpoint, Request, Response, decode, encode
from hybridrelay.protocol.sas import SasTokenProvider
from tests.conftest import RelayFactory, make_token
from tests.harness.listeners import running_listener
from tests.harness.peers import RawListener
from tests.harness.raw_http import exchange, http_request, open_raw, read_head, upgrade_request
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

HC1 = """
[[hybrid_connections]]
name = "hc1"
"""

# Every way of spelling "up one segment" or "another separator" that some layer between
# the relay and an on-prem service may decode or normalise.
ESCAPES = [
    "public/../private",
    "public/./../private",
    "public/%2E%2E/private",
    "public/%2e%2e/private",
    "public/.%2E/private",
    "public/%252E%252E/private",
    "public%2F..%2Fprivate",
    "public%2f..%2fprivate",
    "public/..%5Cprivate",
    "public/..%5cprivate",
    "public/..\\private",
    "public/%2E/x",
    "public/.",
    "public/..",
]


def host_of(relay: InProcessRelay) -> str:
    return urlsplit(relay.url).netloc


def public_token(relay: InProcessRelay) -> str:
    """A Send/Listen token whose sr is ``http://host/hc1/public``: that sub-path only."""
    return make_token(f"http://{host_of(relay)}/hc1/public")


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> InProcessRelay:
    return await relay_factory(extra=HC1)


@contextlib.asynccontextmanager
async def echo_listener(relay: InProcessRelay) -> AsyncIterator[RawListener]:
    listener = await RawListener(relay.url, "hc1").start()
    try:
        yield listener
    finally:
        await listener.stop()


@pytest.mark.parametrize("escape", ESCAPES)
async def test_websocket_connect_escaping_the_token_scope_is_400(
    relay: InProcessRelay, escape: str
) -> None:
    """Sender upgrades on /$hc/hc1/{escape} with a token for hc1/public: relay answers 400."""
    async with echo_listener(relay) as listener:
        target = f"/$hc/hc1/{escape}?sb-hc-action=connect"
        headers = {"ServiceBusAuthorization": public_token(relay)}
        answer = await exchange(relay.url, upgrade_request(target, host_of(relay), headers))
        assert answer.status == 400, (escape, answer)
        assert listener.accepts.empty()
        # The token itself is good for what it names.
        async with open_raw(relay.url) as (reader, writer):
            writer.write(upgrade_request("/$hc/hc1/public/x", host_of(relay), headers))
            assert (await read_head(reader)).status == 101


@pytest.mark.parametrize("escape", ESCAPES)
async def test_websocket_listen_with_dot_or_encoded_separators_is_400(
    relay: InProcessRelay, escape: str
) -> None:
    """Listener upgrades on /$hc/hc1/{escape} with a root token: relay answers 400."""
    target = f"/$hc/hc1/{escape}?sb-hc-action=listen"
    headers = {"ServiceBusAuthorization": make_token(f"http://{host_of(relay)}/")}
    answer = await exchange(relay.url, upgrade_request(target, host_of(relay), headers))
    assert answer.status == 400, (escape, answer)
    assert not relay.listeners


# --- HTTP mode, through a listener agent to an on-prem service under /api ---------------


@pytest.fixture
async def service(aiohttp_server: AiohttpServer) -> tuple[str, list[str]]:
    """An on-prem HTTP service that records every request target it gets."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(text=f"service saw {request.raw_path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}/api", seen


@pytest.mark.parametrize("escape", ESCAPES)
async def test_http_mode_suffix_escaping_the_token_scope_is_400(
    relay: InProcessRelay, service: tuple[str, list[str]], escape: str
) -> None:
    """Sender sends GET /hc1/{escape} with a token for hc1/public: 400, the service sees nothing."""
    base, seen = service
    agent = Listener(
        relay.url,
        "hc1",
        token_provider=SasTokenProvider("RootManageSharedAccessKey", ROOT_KEY),
        http_handler=HttpTarget(base),
    )
    async with running_listener(agent):
        headers = {"ServiceBusAuthorization": public_token(relay)}
        answer = await exchange(
            relay.http_url, http_request("GET", f"/hc1/{escape}", host_of(relay), headers)
        )
        assert answer.status == 400, (escape, answer, seen)
        assert seen == []
        # The same token, inside its scope, reaches the service.
        ok = await exchange(
            relay.http_url, http_request("GET", "/hc1/public/x", host_of(relay), headers)
        )
        assert ok.status == 200, ok
        assert seen == ["/api/public/x"]


# --- the agent on its own: a compromised relay sends it an escaping requestTarget --------


@pytest.mark.parametrize(
    "target",
    ["/hc1/../etc/passwd", "/hc1/public/%2e%2e/private", "/hc1/x%2F..%2F..%2Fy", "/hc1/..%5Cx"],
)
async def test_agent_refuses_an_escaping_request_target_from_the_relay(
    aiohttp_server: AiohttpServer, service: tuple[str, list[str]], target: str
) -> None:
    """A relay sends the agent a request for {target}: the agent answers 400, forwards nothing."""
    base, seen = service
    connected = asyncio.Event()
    answers: asyncio.Queue[Response] = asyncio.Queue()
    control: list[web.WebSocketResponse] = []

    async def fake_relay(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        control.append(ws)
        connected.set()
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                message = decode(msg.data)
                if isinstance(message, Response):
                    await answers.put(message)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", fake_relay)
    server = await aiohttp_server(app)
    agent = Listener(
        f"ws://127.0.0.1:{server.port}",
        "hc1",
        token_provider=SasTokenProvider("RootManageSharedAccessKey", ROOT_KEY),
        http_handler=HttpTarget(base),
    )
    async with running_listener(agent):
        async with asyncio.timeout(seconds(10)):
            await connected.wait()
        request_id = str(uuid.uuid4())
        await control[0].send_str(
            encode(
                Request(
                    address=f"ws://127.0.0.1:{server.port}/$hc/hc1?sb-hc-action=request",
                    id=request_id,
                    request_target=target,
                    method="GET",
                    remote_endpoint=RemoteEndpoint(address="10.0.0.1", port=1),
                    request_headers={},
                    body=False,
                )
            )
        )
        async with asyncio.timeout(seconds(10)):
            response = await answers.get()
        assert response.request_id == request_id
        assert response.status_code == 400, json.loads(encode(response))
        assert seen == []
