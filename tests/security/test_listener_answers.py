"""Hostile HTTP-mode listeners: an answer the relay cannot pass on as HTTP is a clean 502.

A listener's ``response`` (HC §3.3) becomes the status line and headers of the sender's
HTTP response. A 1xx or 101 status, a status beyond 599, a header name that is no token,
or a value with CR, LF, NUL or another control character used to reach the sender as it
was, or to break its connection (a 500 whose Content-Length disagreed with its chunked
body, or no answer at all). The sender must get a well-formed 502 instead and its
keep-alive connection must stay usable; the control channel stays open, a rendezvous
socket that carried the answer is closed with 1002.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from hybridrelay.errors import ConnectionClosedError
from tests.harness.http_peers import HttpListener
from tests.harness.peers import token_for
from tests.harness.raw_http import connect_raw, read_response
from tests.harness.raw_ws import RawWs, unmasked_frame
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds

HC = "hyco"

BAD_ANSWERS = {
    "status-101": (101, {}),
    "status-100": (100, {}),
    "status-199": (199, {}),
    "status-600": (600, {}),
    "status-999": (999, {}),
    "name-empty": (200, {"": "x"}),
    "name-colon": (200, {":": "x"}),
    "name-leading-space": (200, {" X-A": "x"}),
    "name-trailing-space": (200, {"X-A ": "x"}),
    "name-lone-surrogate": (200, {"X-\ud800": "x"}),
    "name-not-a-token": (200, {"X(a)": "x"}),
    "value-crlf": (200, {"X-Split": "a\r\nX-Injected: 1"}),
    "value-lf": (200, {"X-Split": "a\nb"}),
    "value-nul": (200, {"X-Nul": "a\x00b"}),
    "value-esc": (200, {"X-Esc": "\x1b[31mred"}),
    "value-del": (200, {"X-Del": "a\x7f"}),
}


@pytest.fixture
async def listener(relay: InProcessRelay) -> AsyncIterator[HttpListener]:
    peer = await HttpListener(relay.url, HC).start()
    yield peer
    await peer.stop()


def _request(relay: InProcessRelay, path: str) -> bytes:
    token = token_for(f"{relay.http_url}/{HC}")
    return (
        f"GET /{HC}/{path} HTTP/1.1\r\nHost: relay\r\nServiceBusAuthorization: {token}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("where", ["control", "rendezvous"])
@pytest.mark.parametrize("case", list(BAD_ANSWERS))
async def test_an_answer_that_is_not_valid_http_is_a_502_and_keep_alive_survives(
    relay: InProcessRelay, listener: HttpListener, case: str, where: str
) -> None:
    """Listener answers with a 1xx/600+ status or a bad header: sender gets a 502, then more."""
    status, headers = BAD_ANSWERS[case]
    reader, writer = await connect_raw(relay.url)
    try:
        writer.write(_request(relay, "first"))
        request = await listener.next_request()
        rendezvous = await listener.dial(request) if where == "rendezvous" else None
        await listener.respond(request.id, status, headers=headers, body=b"body", ws=rendezvous)

        async with asyncio.timeout(seconds(5)):
            answer = await read_response(reader)
        assert answer.status == 502
        assert json.loads(answer.body)["error"]["code"] == "BadGateway"
        assert answer.header("X-Injected") is None
        if rendezvous is not None:
            with pytest.raises(ConnectionClosedError) as closed:
                async with asyncio.timeout(seconds(5)):
                    await rendezvous.recv()
            assert closed.value.code == 1002

        # The same connection carries the next exchange; the control channel is still up.
        writer.write(_request(relay, "second"))
        second = await listener.next_request()
        assert second.target == f"/{HC}/second"
        await listener.respond(second.id, 200, headers={"X-Ok": "yes"}, body=b"next")
        async with asyncio.timeout(seconds(5)):
            answer = await read_response(reader)
        assert (answer.status, answer.header("X-Ok"), answer.body) == (200, "yes", b"next")
        assert listener.control_closed is not None
        assert not listener.control_closed.done()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_broken_frame_on_a_request_rendezvous_is_the_senders_502_at_once(
    relay: InProcessRelay, listener: HttpListener
) -> None:
    """Listener breaks RFC 6455 on the request's rendezvous before answering: 502 now, not 504."""
    reader, writer = await connect_raw(relay.url)
    try:
        writer.write(_request(relay, "first"))
        request = await listener.next_request()
        rendezvous = await RawWs.open(request.address)
        try:
            assert rendezvous.status == 101
            await rendezvous.send(unmasked_frame(0x1, b'{"response":{}}'))
            async with asyncio.timeout(seconds(5)):
                answer = await read_response(reader)
                assert await rendezvous.recv_close() == 1002
        finally:
            rendezvous.close()
        assert answer.status == 502
    finally:
        writer.close()
        await writer.wait_closed()
