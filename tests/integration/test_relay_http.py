"""HTTP request/response mode against a hand-driven listener (HC §2.6-2.10, §3.2-3.3, §4, §7).

The relay runs in-process; the listener is :class:`tests.harness.http_peers.HttpListener`,
a bare control channel on ``hybridrelay.wsclient`` whose every frame the test writes by
hand, so each case can break the protocol exactly where it means to. Senders are an
aiohttp ``ClientSession`` or, where aiohttp cannot say it, a raw socket. The relay's
``stop()`` (fixture teardown) asserts that no channel, rendezvous or task outlived a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from tests.harness.http_peers import HttpListener, ReceivedRequest, response_text
from tests.harness.peers import send, token_for
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds
from yarl import URL

from hybridrelay.errors import HandshakeError
from hybridrelay.protocol.messages import Request
from hybridrelay.relay.cluster.memory import MemoryClusterState
from hybridrelay.relay.control import ControlChannel

HC = "hyco"
T = TypeVar("T")

SLOW_HC = """
[[hybrid_connections]]
name = "slow"
request_timeout = 1
"""

MODE_HCS = """
[[hybrid_connections]]
name = "wsonly"
http = false

[[hybrid_connections]]
name = "httponly"
http = true
"""


# -- helpers -----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The relay's JSON error object ({"error": {"code", "message", ...}})."""
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.headers
        document = json.loads(self.body)
        error = document["error"]
        assert isinstance(error["code"], str)
        assert isinstance(error["message"], str)
        assert error["message"]
        return dict(error)


def auth(relay: InProcessRelay, hc: str = HC) -> dict[str, str]:
    """A Send token for the bare entity URL (it covers any suffix)."""
    return {"ServiceBusAuthorization": token_for(f"{relay.http_url}/{hc}")}


async def fetch(
    session: aiohttp.ClientSession, method: str, url: str | URL, **kwargs: Any
) -> Reply:
    async with session.request(method, url, **kwargs) as resp:
        body = await resp.read()
        return Reply(resp.status, resp.reason or "", resp.headers, body)


def spawn(coro: Awaitable[T]) -> asyncio.Task[T]:
    async def run() -> T:
        return await coro

    return asyncio.create_task(run())


async def bounded(task: Awaitable[T], timeout: float = 10.0) -> T:
    return await asyncio.wait_for(task, seconds(timeout))


def relay_port(relay: InProcessRelay) -> int:
    port = urlsplit(relay.url).port
    assert port is not None
    return port


async def raw_http(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are; read the answer until the relay closes (send Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(seconds(timeout)):
            answer = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1]), answer


def relay_events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "hybridrelay.relay" and r.msg == event]


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
async def listener(relay: InProcessRelay) -> AsyncIterator[HttpListener]:
    peer = await HttpListener(relay.url, HC).start()
    yield peer
    await peer.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds(20))) as s:
        yield s


# -- relay-made answers ------------------------------------------------------------------


async def test_no_listener_is_502_with_json_error(
    relay: InProcessRelay, session: aiohttp.ClientSession
) -> None:
    reply = await bounded(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=auth(relay)))
    assert reply.status == 502
    assert reply.error()["code"] == "BadGateway"
    assert "Via" not in reply.headers  # Via marks listener answers only (HC §2.9)


async def test_unknown_entity_is_404(relay: InProcessRelay, session: aiohttp.ClientSession) -> None:
    reply = await bounded(
        fetch(session, "GET", f"{relay.http_url}/no-such-hc/x", headers=auth(relay, "no-such-hc"))
    )
    assert reply.status == 404
    assert reply.error()["code"] == "EndpointNotFound"


async def test_hc_path_without_upgrade_is_400(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    url = URL(f"{relay.http_url}/$hc/{HC}?sb-hc-action=connect", encoded=True)
    reply = await bounded(fetch(session, "GET", url, headers=auth(relay)))
    assert reply.status == 400
    assert reply.error()["message"] == "This endpoint is only for web-socket requests."
    assert listener.requests.empty()


@pytest.mark.parametrize("target", ["/hyco", "127.0.0.1:80"], ids=["origin-form", "authority"])
async def test_connect_method_is_405(
    relay: InProcessRelay, listener: HttpListener, target: str
) -> None:
    token = auth(relay)["ServiceBusAuthorization"]
    request = (
        f"CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"ServiceBusAuthorization: {token}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, answer = await raw_http(relay_port(relay), request)
    assert status == 405, answer.decode("latin1")
    assert listener.requests.empty()


async def test_header_block_over_32_kib_is_431(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    # Each line stays under aiohttp's 8 KiB field limit; together they pass 32 KiB.
    headers = {f"X-Big-{i}": "a" * 7000 for i in range(5)} | auth(relay)
    reply = await bounded(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=headers))
    assert reply.status == 431
    assert reply.error()["code"] == "RequestHeaderFieldsTooLarge"
    assert listener.requests.empty()


async def test_silent_listener_is_504_at_the_hc_request_timeout(
    relay_factory: Any, session: aiohttp.ClientSession
) -> None:
    relay: InProcessRelay = await relay_factory(extra=SLOW_HC)
    peer = await HttpListener(relay.url, "slow").start()
    try:
        started = time.monotonic()
        sender = spawn(
            fetch(session, "GET", f"{relay.http_url}/slow/x", headers=auth(relay, "slow"))
        )
        request = await peer.next_request()
        reply = await bounded(sender)
        took = time.monotonic() - started
        assert reply.status == 504
        assert reply.error()["code"] == "GatewayTimeout"
        assert 0.9 <= took < 1.0 + seconds(2), took  # request_timeout = 1, not the 60 s default
        # A late answer is for nobody now: ignored, and the channel stays in service.
        await peer.respond(request.id, 200, body=b"too late")
        sender = spawn(
            fetch(session, "GET", f"{relay.http_url}/slow/y", headers=auth(relay, "slow"))
        )
        second = await peer.next_request()
        await peer.respond(second.id, 200, body=b"in time")
        reply = await bounded(sender)
        assert (reply.status, reply.body) == (200, b"in time")
    finally:
        await peer.stop()


# -- control-channel responses -----------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        '{"response": {"requestId": "%s", "statusCode": 200, "body": tru',
        '{"response": {"requestId": "%s", "statusCode": 200}}',
        '{"response": {"requestId": "%s", "statusCode": "abc", "body": false}}',
        '{"response": {"requestId": "%s", "statusCode": 200, "body": "yes"}}',
    ],
    ids=["not-json", "no-body-field", "bad-status", "body-not-bool"],
)
async def test_malformed_response_closes_channel_1002_and_sender_gets_502_fast(
    relay: InProcessRelay,
    listener: HttpListener,
    session: aiohttp.ClientSession,
    template: str,
) -> None:
    sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=auth(relay)))
    request = await listener.next_request()
    started = time.monotonic()
    await listener.send_text(template % request.id)
    code, _reason = await listener.wait_control_closed(5)
    assert code == 1002
    reply = await bounded(sender, 5)
    assert time.monotonic() - started < seconds(3)
    assert reply.status == 502
    assert reply.error()["code"] == "BadGateway"


async def test_unknown_request_id_is_ignored_and_its_body_swallowed(
    relay: InProcessRelay,
    listener: HttpListener,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hybridrelay.relay")
    sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=auth(relay)))
    request = await listener.next_request()
    await listener.respond("no-such-request", 200, body=b"garbage")
    await listener.respond(request.id, 200, body=b"real")
    reply = await bounded(sender)
    assert (reply.status, reply.body) == (200, b"real")
    assert relay_events(caplog, "response_for_unknown_request")
    # The unknown response's body went with it, not down as an orphan message.
    assert not relay_events(caplog, "unexpected_binary_message")
    assert listener.control_closed is not None
    assert not listener.control_closed.done()


async def test_body_without_header_is_ignored_with_a_warning(
    relay: InProcessRelay,
    listener: HttpListener,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hybridrelay.relay")
    sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=auth(relay)))
    request = await listener.next_request()
    await listener.send_binary(b"orphan body")
    await listener.respond(request.id, 200, body=b"answer")
    reply = await bounded(sender)
    assert (reply.status, reply.body) == (200, b"answer")
    warnings = relay_events(caplog, "unexpected_binary_message")
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert listener.control_closed is not None
    assert not listener.control_closed.done()


async def test_status_code_as_string_is_accepted(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=auth(relay)))
    request = await listener.next_request()
    await listener.respond(request.id, "201", body=b"made")
    reply = await bounded(sender)
    assert (reply.status, reply.reason, reply.body) == (201, "Created", b"made")


async def test_stray_empty_binary_after_bodyless_response_is_ignored(
    relay: InProcessRelay,
    listener: HttpListener,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hybridrelay.relay")
    url = f"{relay.http_url}/{HC}/x"
    sender = spawn(fetch(session, "GET", url, headers=auth(relay)))
    request = await listener.next_request()
    await listener.respond(request.id, 204)  # body: false ...
    await listener.send_binary(b"")  # ... and hyco-https's stray empty binary frame (HC §4)
    reply = await bounded(sender)
    assert (reply.status, reply.body) == (204, b"")
    # The channel is still in sync: the next response gets its own body.
    sender = spawn(fetch(session, "GET", url, headers=auth(relay)))
    request = await listener.next_request()
    await listener.respond(request.id, 200, body=b"next")
    reply = await bounded(sender)
    assert (reply.status, reply.body) == (200, b"next")
    assert not relay_events(caplog, "unexpected_binary_message")
    assert listener.control_closed is not None
    assert not listener.control_closed.done()


async def test_response_headers_description_and_via(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=auth(relay)))
    request = await listener.next_request()
    await listener.respond(
        request.id,
        299,
        description="Fine Thanks",
        headers={
            "x-custom": "v",
            "content-type": "text/plain",
            "via": "1.0 upstream",
            "connection": "x-private",
            "x-private": "hop",
            "keep-alive": "timeout=1",
            "content-length": "999",
        },
        body=b"hello",
    )
    reply = await bounded(sender)
    assert (reply.status, reply.reason, reply.body) == (299, "Fine Thanks", b"hello")
    assert reply.headers["x-custom"] == "v"
    assert reply.headers["Content-Type"] == "text/plain"
    via = reply.headers.getall("Via")
    assert len(via) == 1
    assert via[0].startswith("1.0 upstream, 1.1 ")
    assert "x-private" not in reply.headers
    assert "Keep-Alive" not in reply.headers


# -- rendezvous sockets ------------------------------------------------------------------


async def _fragments_then_wait(gate: asyncio.Event) -> AsyncGenerator[bytes, None]:
    yield b"a" * 1000
    yield b"b" * 1000  # the first frame goes out once the second one is known
    await gate.wait()
    yield b"never sent"


@pytest.mark.parametrize("where", ["rendezvous", "control"])
async def test_listener_gone_mid_response_breaks_the_http_response(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession, where: str
) -> None:
    gate = asyncio.Event()
    writers: list[asyncio.Task[None]] = []

    async def listener_side() -> None:
        request = await listener.next_request()
        if where == "rendezvous":
            ws = await listener.dial(request)
            await ws.send(response_text(request.id, 200, body=True))
            writers.append(asyncio.create_task(ws.send_fragments(_fragments_then_wait(gate))))
        else:
            await listener.send_text(response_text(request.id, 200, body=True))

    driver = spawn(listener_side())
    try:
        if where == "control":
            # A control-channel response is handed over with its body (HC §4: adjacent),
            # so a listener vanishing between the two yields a clean 502, not a cut 200.
            async def vanish() -> None:
                await bounded(driver)
                assert listener.control is not None
                listener.control.abort()

            vanisher = spawn(vanish())
            async with asyncio.timeout(seconds(10)):
                async with session.get(f"{relay.http_url}/{HC}/x", headers=auth(relay)) as resp:
                    assert resp.status == 502
            await bounded(vanisher)
            return
        async with asyncio.timeout(seconds(10)):
            async with session.get(f"{relay.http_url}/{HC}/x", headers=auth(relay)) as resp:
                assert resp.status == 200
                assert await resp.content.readexactly(1000) == b"a" * 1000
                listener.rendezvous[0].abort()
                with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
                    await resp.read()
        await bounded(driver)
    finally:
        gate.set()
        for task in writers:
            task.cancel()
        await asyncio.wait({driver, *writers})


async def test_response_on_control_channel_for_a_rendezvous_only_request(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    payload = bytes(range(256)) * 400  # 100 KiB: over the inline limit
    sender = spawn(
        fetch(session, "POST", f"{relay.http_url}/{HC}/up", data=payload, headers=auth(relay))
    )
    announced = await listener.next_request()
    assert set(announced.message) == {"address", "id"}  # rendezvous-only form (HC §3.2)
    full = await listener.fetch(announced)
    assert full.message["id"] == announced.id
    assert full.message["method"] == "POST"
    assert full.message["body"] is True
    assert full.message["requestTarget"] == f"/{HC}/up"
    assert full.body == payload
    await listener.respond(announced.id, 200, body=b"stored")  # on the control channel
    reply = await bounded(sender)
    assert (reply.status, reply.body) == (200, b"stored")
    assert "Via" in reply.headers
    assert full.ws is not None
    await bounded(full.ws.wait_closed(), 5)  # the relay ends the single-use socket
    assert full.ws.close_code == 1000


async def test_responses_in_any_order_across_concurrent_requests(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    first = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/first", headers=auth(relay)))
    second = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/second", headers=auth(relay)))
    got = [await listener.next_request(), await listener.next_request()]
    by_target = {r.target: r for r in got}
    await listener.respond(by_target[f"/{HC}/second"].id, 202, body=b"answer two")
    reply_two = await bounded(second)
    assert (reply_two.status, reply_two.body) == (202, b"answer two")
    assert not first.done()
    await listener.respond(by_target[f"/{HC}/first"].id, 200, body=b"answer one")
    reply_one = await bounded(first)
    assert (reply_one.status, reply_one.body) == (200, b"answer one")


# -- what the listener is given ----------------------------------------------------------


async def test_inline_request_shape(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    url = URL(f"{relay.http_url}/{HC}/p/q?a=1&a=2&sb-hc-id=1&%2B", encoded=True)
    sender = spawn(fetch(session, "GET", url, headers=auth(relay) | {"X-App": "1"}))
    request = await listener.next_request()
    message = request.message
    assert message["method"] == "GET"
    assert message["requestTarget"] == f"/{HC}/p/q?a=1&a=2&%2B"
    assert "body" in message
    assert message["body"] is False  # explicit, so NET/JAVA see the inline form (HC §3.2)
    assert request.body is None
    assert message["address"].startswith(f"{relay.url}/$hc/{HC}?")
    assert "sb-hc-action=request" in message["address"]
    assert message["id"]
    assert message["remoteEndpoint"]["address"] == "127.0.0.1"
    assert isinstance(message["remoteEndpoint"]["port"], int)
    assert message["requestHeaders"]["X-App"] == "1"
    assert "ServiceBusAuthorization" not in message["requestHeaders"]
    await listener.respond(request.id, 200)
    assert (await bounded(sender)).status == 200

    sender = spawn(
        fetch(
            session,
            "POST",
            f"{relay.http_url}/{HC}/post",
            data=b"small body",
            headers=auth(relay) | {"Content-Type": "text/plain"},
        )
    )
    request = await listener.next_request()
    assert request.message["method"] == "POST"
    assert request.message["body"] is True
    assert request.body == b"small body"  # the next binary message on the control channel
    assert request.message["requestHeaders"]["Content-Type"] == "text/plain"
    await listener.respond(request.id, 200, body=request.body)
    assert (await bounded(sender)).body == b"small body"


async def test_repeated_request_headers_are_joined(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    headers: CIMultiDict[str] = CIMultiDict(auth(relay))
    headers.add("X-Multi", "requestValue1")
    headers.add("X-Multi", "requestValue2")
    sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=headers))
    request = await listener.next_request()
    assert request.headers["X-Multi"] == "requestValue1, requestValue2"
    await listener.respond(request.id, 200)
    assert (await bounded(sender)).status == 200


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "trailer",
    "proxy-connection",
    "x-hop",  # named in Connection
}


async def test_hop_by_hop_headers_are_not_forwarded(
    relay: InProcessRelay, listener: HttpListener
) -> None:
    token = auth(relay)["ServiceBusAuthorization"]
    common = (
        f"Host: 127.0.0.1:{relay_port(relay)}\r\nServiceBusAuthorization: {token}\r\n"
        "Connection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        "Upgrade: foo/1\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n"
    )
    # A chunked POST: the relay cannot tell its length, so it is rendezvous-only.
    chunked = (
        f"POST /{HC}/c HTTP/1.1\r\n{common}Transfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    ).encode()
    sender = spawn(raw_http(relay_port(relay), chunked))
    full = await listener.fetch(await listener.next_request())
    assert full.body == b"hello world"
    forwarded = {name.lower() for name in full.headers}
    assert not forwarded & _HOP_BY_HOP, full.headers
    assert full.headers["X-Kept"] == "yes"
    await listener.respond(full.id, 200, body=b"ok", ws=full.ws)
    status, _ = await bounded(sender)
    assert status == 200

    sized = (f"PUT /{HC}/s HTTP/1.1\r\n{common}Content-Length: 5\r\n\r\nhello").encode()
    sender = spawn(raw_http(relay_port(relay), sized))
    request = await listener.next_request()
    assert request.inline
    assert request.body == b"hello"
    forwarded = {name.lower() for name in request.headers}
    assert not forwarded & _HOP_BY_HOP, request.headers
    await listener.respond(request.id, 200)
    status, _ = await bounded(sender)
    assert status == 200


@pytest.mark.parametrize("carrier", ["header", "query"])
async def test_authorization_passes_through_when_the_token_came_elsewhere(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession, carrier: str
) -> None:
    token = auth(relay)["ServiceBusAuthorization"]
    headers = {"Authorization": "Bearer app-level-credential"}
    url: str | URL = f"{relay.http_url}/{HC}/x?keep=1"
    if carrier == "header":
        headers["ServiceBusAuthorization"] = token
    else:
        url = URL(
            f"{relay.http_url}/{HC}/x?sb-hc-token={quote(token, safe='')}&keep=1", encoded=True
        )
    sender = spawn(fetch(session, "GET", url, headers=headers))
    request = await listener.next_request()
    assert request.headers["Authorization"] == "Bearer app-level-credential"
    assert "ServiceBusAuthorization" not in request.headers
    assert request.target == f"/{HC}/x?keep=1"
    await listener.respond(request.id, 200)
    assert (await bounded(sender)).status == 200


async def test_authorization_carrying_the_token_is_consumed(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": auth(relay)["ServiceBusAuthorization"]}
    sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=headers))
    request = await listener.next_request()
    assert "Authorization" not in request.headers
    await listener.respond(request.id, 200, body=b"ok")
    assert (await bounded(sender)).body == b"ok"


async def test_missing_token_is_401(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    reply = await bounded(fetch(session, "GET", f"{relay.http_url}/{HC}/x"))
    assert reply.status == 401
    assert reply.error()["code"] == "TokenMissingOrInvalid"
    assert listener.requests.empty()


async def test_anonymous_hc_needs_no_token(
    relay: InProcessRelay, session: aiohttp.ClientSession
) -> None:
    peer = await HttpListener(relay.url, "anon").start()
    try:
        headers = {"Authorization": "Basic dXNlcjpwYXNz"}
        sender = spawn(fetch(session, "GET", f"{relay.http_url}/anon/x", headers=headers))
        request = await peer.next_request()
        # Sender auth is off, so Authorization is the app's and passes untouched (HC §2.7).
        assert request.headers["Authorization"] == "Basic dXNlcjpwYXNz"
        await peer.respond(request.id, 200, body=b"anon ok")
        reply = await bounded(sender)
        assert (reply.status, reply.body) == (200, b"anon ok")
    finally:
        await peer.stop()


async def test_http_false_hc_refuses_http(
    relay_factory: Any, session: aiohttp.ClientSession
) -> None:
    relay: InProcessRelay = await relay_factory(extra=MODE_HCS)
    peer = await HttpListener(relay.url, "wsonly").start()
    try:
        reply = await bounded(
            fetch(session, "GET", f"{relay.http_url}/wsonly/x", headers=auth(relay, "wsonly"))
        )
        assert reply.status == 404
        assert reply.error()["code"] == "EndpointNotFound"
        assert peer.requests.empty()
    finally:
        await peer.stop()


async def test_http_true_hc_refuses_websocket_senders(
    relay_factory: Any, session: aiohttp.ClientSession
) -> None:
    relay: InProcessRelay = await relay_factory(extra=MODE_HCS)
    peer = await HttpListener(relay.url, "httponly").start()
    try:
        with pytest.raises(HandshakeError) as refused:
            await bounded(send(relay.url, "httponly"))
        assert refused.value.status == 404
        assert not peer.others  # no accept reached the (hyco-https-like) listener
        # HTTP still works there.
        sender = spawn(
            fetch(session, "GET", f"{relay.http_url}/httponly/x", headers=auth(relay, "httponly"))
        )
        request = await peer.next_request()
        await peer.respond(request.id, 200, body=b"http ok")
        assert (await bounded(sender)).body == b"http ok"
    finally:
        await peer.stop()


# -- more of the rendezvous and timing rules ---------------------------------------------


async def test_large_fragmented_response_over_rendezvous_streams_and_closes_1000(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    payload = bytes(i % 251 for i in range(300 * 1024))
    pieces = [payload[i : i + 16384] for i in range(0, len(payload), 16384)] + [b""]
    sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/big", headers=auth(relay)))
    request = await listener.next_request()
    assert request.inline  # the request came inline; only the response uses the rendezvous
    ws = await listener.dial(request)
    await ws.send(response_text(request.id, 200, headers={"x-n": "300k"}, body=True))
    await ws.send_fragments(pieces)  # BIN FIN=0, CONT ..., CONT FIN=1 len 0, as hyco-https
    reply = await bounded(sender)
    assert reply.status == 200
    assert reply.headers["x-n"] == "300k"
    assert reply.body == payload
    await bounded(ws.wait_closed(), 5)
    assert ws.close_code == 1000  # single use (HC §4)


async def test_request_address_is_refused_once_the_exchange_is_over(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=auth(relay)))
    request = await listener.next_request()
    await listener.respond(request.id, 200, body=b"done")
    assert (await bounded(sender)).body == b"done"
    with pytest.raises(HandshakeError) as stale:
        await bounded(listener.dial(request))
    assert stale.value.status == 403
    without_key = "&".join(
        part for part in request.address.split("&") if not part.startswith("sb-hc-rdv=")
    )
    with pytest.raises(HandshakeError) as bad:
        await bounded(listener.dial(ReceivedRequest({"address": without_key, "id": "x"})))
    assert bad.value.status == 400


async def test_response_body_idle_past_the_request_timeout_breaks_the_response(
    relay_factory: Any, session: aiohttp.ClientSession
) -> None:
    relay: InProcessRelay = await relay_factory(extra=SLOW_HC)
    peer = await HttpListener(relay.url, "slow").start()
    gate = asyncio.Event()
    writers: list[asyncio.Task[None]] = []

    async def listener_side() -> None:
        request = await peer.next_request()
        ws = await peer.dial(request)
        await ws.send(response_text(request.id, 200, body=True))
        writers.append(asyncio.create_task(ws.send_fragments(_fragments_then_wait(gate))))

    driver = spawn(listener_side())
    try:
        async with asyncio.timeout(seconds(10)):
            async with session.get(f"{relay.http_url}/slow/x", headers=auth(relay, "slow")) as resp:
                assert resp.status == 200
                assert await resp.content.readexactly(1000) == b"a" * 1000
                started = time.monotonic()
                with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
                    await resp.read()
                took = time.monotonic() - started
        # The listener went quiet mid-body: cut at the HC's 1 s idle limit, not 60 s.
        assert took < 1.0 + seconds(2), took
        await bounded(driver)
    finally:
        gate.set()
        for task in writers:
            task.cancel()
        await asyncio.wait({driver, *writers})
        await peer.stop()


async def test_sender_gone_before_the_response_leaves_nothing_behind(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=auth(relay)))
    request = await listener.next_request()
    sender.cancel()  # closes the sender's connection
    await asyncio.wait({sender})
    # A late answer is harmless; the relay's stop() then checks nothing is left pending.
    await listener.respond(request.id, 200, body=b"late")
    other = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/y", headers=auth(relay)))
    second = await listener.next_request()
    await listener.respond(second.id, 200, body=b"fine")
    assert (await bounded(other)).body == b"fine"


async def test_only_the_listener_that_got_the_request_may_answer(
    relay: InProcessRelay, session: aiohttp.ClientSession
) -> None:
    first = await HttpListener(relay.url, HC).start()
    second = await HttpListener(relay.url, HC).start()
    waits: list[asyncio.Task[ReceivedRequest]] = []
    try:
        sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=auth(relay)))
        waits = [
            asyncio.create_task(first.next_request()),
            asyncio.create_task(second.next_request()),
        ]
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        owner, other = (first, second) if waits[0] in done else (second, first)
        request = done.pop().result()
        await other.respond(request.id, 200, body=b"forged")  # knows the id, never got it
        await owner.respond(request.id, 200, body=b"real")
        reply = await bounded(sender)
        assert (reply.status, reply.body) == (200, b"real")
    finally:
        for task in waits:
            task.cancel()
        if waits:
            await asyncio.wait(waits)
        await first.stop()
        await second.stop()


async def test_nested_entities_route_by_longest_match(
    relay: InProcessRelay, session: aiohttp.ClientSession
) -> None:
    outer = await HttpListener(relay.url, "nested").start()
    inner = await HttpListener(relay.url, "nested/path").start()
    try:
        for target, peer, entity in [
            ("/nested/path/deeper?q=1", inner, "nested/path"),
            ("/nested/pathology", outer, "nested"),
            ("/nested/other", outer, "nested"),
        ]:
            sender = spawn(
                fetch(session, "GET", f"{relay.http_url}{target}", headers=auth(relay, entity))
            )
            request = await peer.next_request()
            assert request.target == target
            await peer.respond(request.id, 200, body=entity.encode())
            assert (await bounded(sender)).body == entity.encode()
        assert outer.requests.empty()
        assert inner.requests.empty()
    finally:
        await outer.stop()
        await inner.stop()


@pytest.mark.parametrize(
    ("signed_for", "target", "status"),
    [
        ("hyco/sub", "/hyco/sub", 200),
        ("hyco/sub", "/hyco/sub/x", 200),
        ("hyco/sub", "/hyco/subway", 403),
        ("hyco/sub", "/hyco/other", 403),
        ("other", "/hyco/x", 403),
    ],
)
async def test_sender_token_scope_covers_entity_and_suffix(
    relay: InProcessRelay,
    listener: HttpListener,
    session: aiohttp.ClientSession,
    signed_for: str,
    target: str,
    status: int,
) -> None:
    headers = {"ServiceBusAuthorization": token_for(f"{relay.http_url}/{signed_for}")}
    sender = spawn(fetch(session, "GET", f"{relay.http_url}{target}", headers=headers))
    if status == 200:
        request = await listener.next_request()
        await listener.respond(request.id, 200)
    reply = await bounded(sender)
    assert reply.status == status, reply.body
    if status != 200:
        assert reply.error()["code"] == "Forbidden"
        assert listener.requests.empty()


_RECEIVED_BY = re.compile(r"1\.1 (\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d+)?")


@pytest.mark.parametrize("host", ["[::1]:{port}", "a b"], ids=["ipv6", "space"])
async def test_via_received_by_is_well_formed_whatever_the_host_header(
    relay: InProcessRelay, listener: HttpListener, host: str
) -> None:
    token = auth(relay)["ServiceBusAuthorization"]
    request_bytes = (
        f"GET /{HC}/x HTTP/1.1\r\nHost: {host.format(port=relay_port(relay))}\r\n"
        f"ServiceBusAuthorization: {token}\r\nConnection: close\r\n\r\n"
    ).encode()
    sender = spawn(raw_http(relay_port(relay), request_bytes))
    request = await listener.next_request()
    await listener.respond(request.id, 200, body=b"x")
    status, answer = await bounded(sender)
    assert status == 200
    vias = [
        line.split(b":", 1)[1].strip().decode("latin1")
        for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if line.lower().startswith(b"via:")
    ]
    assert len(vias) == 1, answer
    # RFC 9110 §7.6.3: received-by is one host[:port] or pseudonym token.
    assert _RECEIVED_BY.fullmatch(vias[0]), vias[0]


async def test_relay_invents_no_content_type(
    relay: InProcessRelay, listener: HttpListener, session: aiohttp.ClientSession
) -> None:
    sender = spawn(fetch(session, "GET", f"{relay.http_url}/{HC}/x", headers=auth(relay)))
    request = await listener.next_request()
    await listener.respond(request.id, 200, headers={"x-only": "this"}, body=b"untyped")
    reply = await bounded(sender)
    assert (reply.status, reply.body) == (200, b"untyped")
    # The listener sent no Content-Type; the relay must not label the body for it.
    assert "Content-Type" not in reply.headers, reply.headers


# -- the control channel's writes ------------------------------------------------------


async def test_messages_of_one_loop_turn_arrive_in_order_with_their_bodies(
    relay: InProcessRelay, listener: HttpListener
) -> None:
    # The relay writes the messages of one loop turn together (ControlChannel._cork):
    # each body must still follow its own request (HC §4), in the order delivered.
    cluster = relay.state.cluster
    handle = await cluster.pick(HC)
    assert handle is not None
    sent = [(f"turn-{i}", f"body {i}".encode() * (i + 1)) for i in range(6)]
    for request_id, body in sent:  # no await here suspends: all in one loop turn
        message = Request(
            address=f"{relay.url}/$hc/{HC}?sb-hc-action=request&sb-hc-id={request_id}",
            id=request_id,
            request_target=f"/{HC}/x",
            method="POST",
            request_headers={},
            body=True,
        )
        await cluster.deliver(handle, message, body)
    got = [await listener.next_request() for _ in sent]
    assert [(r.id, r.body) for r in got] == sent


async def test_a_message_delivered_just_before_a_close_arrives_before_it(
    relay: InProcessRelay, listener: HttpListener
) -> None:
    cluster = relay.state.cluster
    assert isinstance(cluster, MemoryClusterState)  # the in-process relay's
    handle = await cluster.pick(HC)
    assert handle is not None
    channel = cluster.find(HC, handle.listener_id)
    assert isinstance(channel, ControlChannel)
    message = Request(
        address=f"{relay.url}/$hc/{HC}?sb-hc-action=request&sb-hc-id=last",
        id="last",
        request_target=f"/{HC}/x",
        method="GET",
        request_headers={},
        body=False,
    )
    await cluster.deliver(handle, message)
    await channel.close(1001, "going away")
    assert (await listener.next_request()).id == "last"
    assert (await listener.wait_control_closed())[0] == 1001
