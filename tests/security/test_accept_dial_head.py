"""A listener's accept dial served from its parsed head (issue 16), attacked over sockets.

The front door offers the first upgrade head of a connection to
``hc_endpoints.accept_upgrade``, which splices a rendezvous dial that would succeed
without making it a request. Everything else must reach the request path and be
answered exactly as before: these tests send raw heads (split, pipelined, malformed,
oversize, slow, with a wrong key or path) and check both the answer and which path
served it (the request path's ``_accept`` counts its calls here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from hybridrelay.relay import hc_endpoints
from hybridrelay.wsclient import WsConnection
from tests.conftest import RelayFactory
from tests.harness.metrics import metric_value
from tests.harness.peers import RawListener, send
from tests.harness.raw_http import (
    RawResponse,
    connect_raw,
    http_request,
    read_head,
    read_response,
    relay_address,
    upgrade_request,
)
from tests.harness.raw_ws import masked_frame, read_frame
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds

Accept = Callable[[web.Request, Any, Any], Awaitable[web.StreamResponse]]


@pytest.fixture
def request_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The targets of the accept dials the request path (``_accept``) served."""
    served: list[str] = []
    original: Accept = hc_endpoints._accept

    async def counted(request: web.Request, state: Any, addr: Any) -> web.StreamResponse:
        served.append(request.raw_path)
        return await original(request, state, addr)

    monkeypatch.setattr(hc_endpoints, "_accept", counted)
    return served


@dataclass
class Rendezvous:
    """A sender waiting on "echo" and the accept its raw listener got."""

    relay: InProcessRelay
    listener: RawListener
    sender: asyncio.Task[WsConnection]
    address: str

    @property
    def target(self) -> str:
        parts = urlsplit(self.address)
        return f"{parts.path}?{parts.query}"

    @property
    def host(self) -> str:
        host, port = relay_address(self.relay.url)
        return f"{host}:{port}"

    def head(self, target: str | None = None, headers: dict[str, str] | None = None) -> bytes:
        return upgrade_request(target or self.target, self.host, headers)

    async def sender_ws(self) -> WsConnection:
        return await asyncio.wait_for(self.sender, seconds(10))


@pytest.fixture
async def rendezvous(relay: InProcessRelay) -> AsyncIterator[Rendezvous]:
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    sender = asyncio.create_task(send(relay.url, "echo"))
    try:
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(10))
        yield Rendezvous(relay, listener, sender, str(accept["address"]))
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            (await sender).abort()
        await listener.stop()


@contextlib.asynccontextmanager
async def dial(
    relay: InProcessRelay, *parts: bytes
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection to the relay that sent ``parts``, each written and drained alone."""
    reader, writer = await connect_raw(relay.url)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def spliced(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: WsConnection
) -> None:
    """Bytes flow both ways between the raw listener leg and the sender."""
    writer.write(masked_frame(0x2, b"to the sender"))
    await writer.drain()
    assert await asyncio.wait_for(ws.recv(), seconds(10)) == b"to the sender"
    await ws.send(b"to the listener")
    frame = await asyncio.wait_for(read_frame(reader), seconds(10))
    assert (frame.opcode, frame.payload) == (0x2, b"to the listener")


def refusal(response: RawResponse) -> tuple[int, str]:
    """The request path's answer: status and JSON error code, with its tracking id."""
    tracking_id = response.header("TrackingId")
    assert tracking_id
    assert f"TrackingId:{tracking_id}" in response.reason
    error = json.loads(response.body)["error"]
    assert error["trackingId"] == tracking_id
    return response.status, str(error["code"])


# -- taken from the head -----------------------------------------------------------------


async def test_an_accept_dial_is_spliced_from_its_head(
    rendezvous: Rendezvous, request_path: list[str]
) -> None:
    async with dial(rendezvous.relay, rendezvous.head()) as (reader, writer):
        assert (await read_head(reader)).status == 101
        await spliced(reader, writer, await rendezvous.sender_ws())
    assert request_path == []


async def test_a_head_split_across_writes_is_spliced(
    rendezvous: Rendezvous, request_path: list[str]
) -> None:
    head = rendezvous.head()
    parts = [head[:1], head[1:9], head[9:40], head[40:-3], head[-3:-1], head[-1:]]
    async with dial(rendezvous.relay, *parts) as (reader, writer):
        assert (await read_head(reader)).status == 101
        await spliced(reader, writer, await rendezvous.sender_ws())
    assert request_path == []


async def test_frames_sent_with_the_head_reach_the_sender(
    rendezvous: Rendezvous, request_path: list[str]
) -> None:
    early = masked_frame(0x2, b"early") + masked_frame(0x1, b"second")
    async with dial(rendezvous.relay, rendezvous.head() + early) as (reader, writer):
        assert (await read_head(reader)).status == 101
        ws = await rendezvous.sender_ws()
        assert await asyncio.wait_for(ws.recv(), seconds(10)) == b"early"
        assert await asyncio.wait_for(ws.recv(), seconds(10)) == "second"
        await spliced(reader, writer, ws)
    assert request_path == []


# -- left to the request path, answered as before ------------------------------------------


async def test_an_unknown_key_is_refused_by_the_request_path(
    rendezvous: Rendezvous, request_path: list[str]
) -> None:
    before = await metric_value(
        rendezvous.relay.http_url, "hybridrelay_rejections_total", status="403", action="accept"
    )
    forged = rendezvous.target.replace("sb-hc-rdv=", "sb-hc-rdv=x")
    async with dial(rendezvous.relay, rendezvous.head(forged)) as (reader, _):
        assert refusal(await read_response(reader)) == (403, "RendezvousInvalid")
    after = await metric_value(
        rendezvous.relay.http_url, "hybridrelay_rejections_total", status="403", action="accept"
    )
    assert after == before + 1
    assert request_path == [forged.partition("?")[0] + "?" + forged.partition("?")[2]]
    assert not rendezvous.sender.done()
    # The real dial is still taken from its head.
    async with dial(rendezvous.relay, rendezvous.head()) as (reader, writer):
        assert (await read_head(reader)).status == 101
        await spliced(reader, writer, await rendezvous.sender_ws())
    assert len(request_path) == 1


async def test_the_key_on_another_path_is_refused_and_the_rendezvous_kept(
    rendezvous: Rendezvous, request_path: list[str]
) -> None:
    other = rendezvous.target.replace("/$hc/echo?", "/$hc/echoes?")
    async with dial(rendezvous.relay, rendezvous.head(other)) as (reader, _):
        assert refusal(await read_response(reader)) == (403, "RendezvousInvalid")
    assert request_path == [other]
    async with dial(rendezvous.relay, rendezvous.head()) as (reader, writer):
        assert (await read_head(reader)).status == 101
        await spliced(reader, writer, await rendezvous.sender_ws())
    assert request_path == [other]


async def test_a_bad_handshake_fails_the_sender_as_before(
    rendezvous: Rendezvous, request_path: list[str]
) -> None:
    head = rendezvous.head(headers={"Sec-WebSocket-Version": "12"}).replace(
        b"Sec-WebSocket-Version: 13\r\n", b""
    )
    async with dial(rendezvous.relay, head) as (reader, _):
        assert refusal(await read_response(reader)) == (400, "BadRequest")
    assert request_path == [rendezvous.target]
    with pytest.raises(Exception, match="502"):
        await rendezvous.sender_ws()


async def test_a_rejection_is_delivered_by_the_request_path(
    rendezvous: Rendezvous, request_path: list[str]
) -> None:
    target = f"{rendezvous.target}&sb-hc-statusCode=418&sb-hc-statusDescription=no"
    async with dial(rendezvous.relay, rendezvous.head(target)) as (reader, _):
        assert (await read_response(reader)).status == 410
    assert request_path == [target]
    with pytest.raises(Exception, match="418"):
        await rendezvous.sender_ws()


async def test_an_expect_header_goes_to_the_request_path(
    rendezvous: Rendezvous, request_path: list[str]
) -> None:
    """aiohttp answers Expect before any handler: such a head is never taken early."""
    head = rendezvous.head(headers={"Expect": "100-continue"})
    async with dial(rendezvous.relay, head) as (reader, writer):
        assert (await read_head(reader)).status == 100
        assert (await read_head(reader)).status == 101
        await spliced(reader, writer, await rendezvous.sender_ws())
    assert request_path == [rendezvous.target]


async def test_an_http_1_0_dial_goes_to_the_request_path(
    rendezvous: Rendezvous, request_path: list[str]
) -> None:
    head = rendezvous.head().replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    async with dial(rendezvous.relay, head) as (reader, _):
        await read_head(reader)
    assert request_path == [rendezvous.target]


async def test_a_dial_after_another_request_on_the_connection_goes_to_the_request_path(
    rendezvous: Rendezvous, request_path: list[str]
) -> None:
    """Only a connection's first head is offered: a pipelined one after a request is not."""
    first = http_request("GET", "/healthz", rendezvous.host).replace(b"Connection: close\r\n", b"")
    async with dial(rendezvous.relay, first + rendezvous.head()) as (reader, writer):
        assert (await read_response(reader)).status == 200
        assert (await read_head(reader)).status == 101
        await spliced(reader, writer, await rendezvous.sender_ws())
    assert request_path == [rendezvous.target]


async def test_an_oversize_head_is_refused_by_the_parser_and_the_rendezvous_kept(
    rendezvous: Rendezvous, request_path: list[str]
) -> None:
    head = rendezvous.head(headers={"X-Big": "a" * 9000})
    async with dial(rendezvous.relay, head) as (reader, _):
        assert (await read_response(reader)).status == 400
    assert request_path == []
    async with dial(rendezvous.relay, rendezvous.head()) as (reader, writer):
        assert (await read_head(reader)).status == 101
        await spliced(reader, writer, await rendezvous.sender_ws())
    assert request_path == []


@pytest.mark.parametrize(
    "head",
    [
        b"GET /$hc/echo?sb-hc-action=accept HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /$hc/echo?sb-hc-action=accept HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /$hc/echo?sb-hc-action=accept HTTP/2.0\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n",
        b"GET /$hc/echo?sb-hc-action=accept\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["no colon", "two lengths", "HTTP/2.0", "NUL in target"],
)
async def test_malformed_heads_are_answered_as_before(
    relay: InProcessRelay, request_path: list[str], head: bytes
) -> None:
    async with dial(relay, head) as (reader, _):
        response = await read_response(reader)
    assert response.status in (400, 505)
    assert request_path == []


async def test_a_slow_accept_head_gets_408_and_the_rendezvous_is_kept(
    relay_factory: RelayFactory, request_path: list[str]
) -> None:
    relay = await relay_factory(relay_extra="handshake_timeout = 1")
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    sender = asyncio.create_task(send(relay.url, "echo"))
    try:
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(10))
        rendezvous = Rendezvous(relay, listener, sender, str(accept["address"]))
        head = rendezvous.head()
        async with dial(relay, head[: len(head) // 2]) as (reader, _):
            assert (await read_response(reader)).status == 408
        assert not sender.done()
        async with dial(relay, head) as (reader, writer):
            assert (await read_head(reader)).status == 101
            await spliced(reader, writer, await rendezvous.sender_ws())
        assert request_path == []
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            (await sender).abort()
        await listener.stop()
