"""Senders that misbehave towards the listener agent through the relay (found by tests/fuzz).

A peer's misbehaviour is refused cheaply and logged as a warning at most; a peer going
away is an info line. Neither may produce a traceback in the agent's log (a log-filling
lever against the on-premises side) or leave a sender waiting out a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest

from hybridrelay.listener import HttpRequest, HttpResponse, Listener, TcpTarget
from hybridrelay.protocol.sas import SasTokenProvider
from tests.conftest import RelayFactory, make_token
from tests.harness.hostile_server import HostileServer, ServerPeer
from tests.harness.listeners import running_listener
from tests.harness.raw_http import connect_raw, relay_address
from tests.harness.relay import ROOT_KEY
from tests.harness.timing import seconds

ROOT = "RootManageSharedAccessKey"


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("hybridrelay") and (r.levelno >= logging.ERROR or r.exc_info)
    ]


@pytest.fixture
async def echo_target() -> AsyncIterator[TcpTarget]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield TcpTarget("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


async def test_non_token_subprotocol_offer_is_refused_with_400(
    echo_target: TcpTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay passes on an accept offering ``Sec-WebSocket-Protocol: a b`` (not a token): the
    agent rejects it with 400 at once and logs no traceback. (Our relay refuses such a sender
    itself; this is the agent's own defence against a relay that does not.)"""
    dials: asyncio.Queue[str] = asyncio.Queue()
    dialled = asyncio.Event()

    async def relay(peer: ServerPeer) -> None:
        if "sb-hc-action=listen" not in peer.target:
            await dials.put(peer.target)  # the agent's rendezvous (or reject) dial
            dialled.set()
            return
        if dialled.is_set():
            await peer.reader.read()  # a reconnect after the test: just hold it
            return
        address = f"{server.url}/$hc/echo?sb-hc-action=accept&sb-hc-id=1&sb-hc-rdv=key"
        headers = {
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Protocol": "a b",
        }
        await peer.send_text(
            json.dumps({"accept": {"address": address, "id": "1", "connectHeaders": headers}})
        )
        # Keep the control channel open until the agent has answered, then drop it (a
        # hostile relay owes no close handshake: the agent must not wait for one).
        await dialled.wait()

    server = HostileServer(relay)
    async with server.running():
        listener = Listener(
            server.url, "echo", token_provider=SasTokenProvider(ROOT, ROOT_KEY), target=echo_target
        )
        async with running_listener(listener):
            async with asyncio.timeout(seconds(10)):
                dial = await dials.get()
    # Before the fix: the agent dialled to accept, choked on "a b" (ValueError traceback)
    # and the sender waited out the rendezvous timeout.
    assert "statusCode=400" in dial or "sb-hc-statusCode=400" in dial, dial
    assert listener.stats.rejected == 1
    assert not _tracebacks(caplog)


async def test_sender_vanishing_mid_body_is_an_info_line_in_the_agent(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A sender starts a 1 MB HTTP-mode POST (streamed over rendezvous) and vanishes mid-body:
    the agent counts the request as failed and logs no traceback."""
    relay = await relay_factory()
    reading = asyncio.Event()

    async def handler(request: HttpRequest) -> HttpResponse:
        reading.set()
        return HttpResponse(200, body=await request.read())

    listener = Listener(
        relay.url, "echo", token_provider=SasTokenProvider(ROOT, ROOT_KEY), http_handler=handler
    )
    async with running_listener(listener):
        host, port = relay_address(relay.url)
        url = f"http://{host}:{port}/echo"
        _, writer = await connect_raw(relay.url)
        writer.write(
            f"POST /echo/upload HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 1000000\r\n"
            f"ServiceBusAuthorization: {make_token(url)}\r\n\r\n".encode()
            + b"x" * 200_000
        )
        async with asyncio.timeout(seconds(10)):
            await reading.wait()
        writer.transport.abort()
        async with asyncio.timeout(seconds(10)):
            while not listener.stats.request_failures:  # polling a counter, bounded
                await asyncio.sleep(0.01)
    assert not _tracebacks(caplog)
