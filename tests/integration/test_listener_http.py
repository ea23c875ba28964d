"""HTTP mode on the listener side (HC §2.6, §3.2-3.3, §4).

Two set-ups:

- a *fake relay* (an aiohttp app written here) that takes the listener's control
  channel and its rendezvous dials, sends ``request`` messages exactly as HC §3.2
  describes (inline with and without a body, rendezvous-only with a fragmented
  body) and records every ``response`` frame, so the listener's framing, the 64 KiB
  rule and header/body adjacency are checked at the wire;
- the real relay (``relay`` fixture), with HTTP senders through it, end to end.

The HTTP target is a real local aiohttp app under ``/base``: ``/echo…`` (body back,
``X-Sha256``, what it saw), ``/status/N``, ``/big/N``, ``/stream/N`` (chunked),
``/slow/MS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpServer
from tests.harness.listeners import running_listener as running
from tests.harness.processes import ProcessGroup, listen_args
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

from hybridrelay.cli import main as cli_main
from hybridrelay.client import RelayHttpClient, http_url, relay_session, request
from hybridrelay.errors import ConnectionClosedError
from hybridrelay.listener import (
    AcceptRequest,
    HttpRequest,
    HttpResponse,
    HttpTarget,
    Listener,
    TcpTarget,
    parse_target,
)
from hybridrelay.listener.http_target import response_header_map
from hybridrelay.protocol.frames import Opcode, encode_frame_header
from hybridrelay.protocol.messages import RemoteEndpoint, Request, Response, decode, encode
from hybridrelay.protocol.sas import (
    SasTokenProvider,
    audience_for,
    create_sas_token,
    parse_sas_token,
    resource_covers,
    verify_signature,
)
from hybridrelay.wsclient import WsConnection

ROOT = "RootManageSharedAccessKey"
KIB = 1024
MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# --------------------------------------------------------------------------- the HTTP target


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    headers: list[tuple[str, str]] = [
        ("X-Sha256", sha(body)),
        ("X-Method", request.method),
        ("X-Target", request.raw_path),
        ("X-Got-Headers", ",".join(sorted({k.lower() for k in request.headers}))),
        ("X-Got-Host", request.headers.get("Host", "")),
        ("X-Got-Transfer-Encoding", request.headers.get("Transfer-Encoding", "")),
        ("X-Multi", "one"),
        ("X-Multi", "two"),
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2; Path=/"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Dropped", "listed in Connection"),
        ("Connection", "X-Dropped"),
    ]
    return web.Response(body=body, headers=CIMultiDict(headers))


async def _status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if code in (204, 304):
        return web.Response(status=code)
    return web.Response(status=code, text=f"status {code}", reason="Custom Reason")


async def _big(request: web.Request) -> web.Response:
    data = blob(int(request.match_info["n"]), seed=7)
    return web.Response(body=data, headers={"X-Sha256": sha(data)})


async def _stream(request: web.Request) -> web.StreamResponse:
    data = blob(int(request.match_info["n"]), seed=8)
    response = web.StreamResponse(headers={"X-Sha256": sha(data)})
    response.enable_chunked_encoding()
    await response.prepare(request)
    third = max(len(data) // 3, 1)
    for start in range(0, len(data), third):
        await response.write(data[start : start + third])
    await response.write_eof()
    return response


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.match_info["ms"]) / 1000)  # the behaviour under test
    return web.Response(text="slow done")


@pytest.fixture
async def target_url(aiohttp_server: AiohttpServer) -> str:
    app = web.Application(client_max_size=64 * MIB)
    app.router.add_route("*", "/base/echo{tail:.*}", _echo)
    app.router.add_route("*", "/base/status/{code}", _status)
    app.router.add_get("/base/big/{n}", _big)
    app.router.add_get("/base/stream/{n}", _stream)
    app.router.add_get("/base/slow/{ms}", _slow)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}/base"


# --------------------------------------------------------------------------- the fake relay


@dataclass
class Answer:
    response: Response
    raw_header: str
    body: bytes | None
    via: str  # "control" or "rendezvous"
    close_code: int | None = None


@dataclass
class FakeRelay:
    """Speaks the relay's half of HC §3.2-3.3/§4 to one listener; records what comes back."""

    url: str = ""
    control: web.WebSocketResponse | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    answers: dict[str, asyncio.Future[Answer]] = field(default_factory=dict)
    # Rendezvous-only requests: the full request and its body fragments, sent on dial.
    deferred: dict[str, tuple[Request, list[bytes] | None]] = field(default_factory=dict)
    dials: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    control_texts: list[str] = field(default_factory=list)

    def address(self, request_id: str) -> str:
        return f"{self.url}/$hc/echo?sb-hc-action=request&sb-hc-id={request_id}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        action = request.query.get("sb-hc-action")
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        writer = await ws.prepare(request)
        if action == "listen":
            self.control = ws
            self.connected.set()
            await self._read_control(ws)
        elif action == "request":
            await self._rendezvous(request, ws, writer)
        else:
            await ws.close(code=1008, message=b"unexpected action")
        return ws

    async def _read_control(self, ws: web.WebSocketResponse) -> None:
        pending: aiohttp.WSMessage | None = None
        while True:
            msg = pending or await ws.receive()
            pending = None
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                return
            if msg.type is WSMsgType.BINARY:
                self.violations.append(f"binary message without a header ({len(msg.data)} B)")
                continue
            self.control_texts.append(msg.data)
            message = decode(msg.data)
            if not isinstance(message, Response):
                continue  # renewToken
            body: bytes | None = None
            if message.body:
                following = await ws.receive()
                if following.type is not WSMsgType.BINARY:
                    self.violations.append(f"response {message.request_id}: body not adjacent")
                    pending = following
                else:
                    body = following.data
            self._resolve(message.request_id, Answer(message, msg.data, body, "control"))

    async def _rendezvous(
        self, request: web.Request, ws: web.WebSocketResponse, writer: object
    ) -> None:
        request_id = request.query["sb-hc-id"]
        self.dials[request_id] = self.dials.get(request_id, 0) + 1
        deferred = self.deferred.pop(request_id, None)
        if deferred is not None:
            full, fragments = deferred
            await ws.send_str(encode(full))
            if fragments is not None:
                await send_fragmented(request, writer, fragments)
        header = await ws.receive()
        if header.type is not WSMsgType.TEXT:
            self.violations.append(f"rendezvous {request_id}: expected a header, got {header.type}")
            return
        message = decode(header.data)
        assert isinstance(message, Response)
        body: bytes | None = None
        if message.body:
            following = await ws.receive()
            if following.type is not WSMsgType.BINARY:
                self.violations.append(f"rendezvous {request_id}: body missing")
            else:
                body = following.data
        answer = Answer(message, header.data, body, "rendezvous")
        closing = await ws.receive()  # the listener closes after the response (HC §4)
        answer.close_code = ws.close_code if closing.type is WSMsgType.CLOSE else None
        self._resolve(request_id, answer)

    def _resolve(self, request_id: str, answer: Answer) -> None:
        future = self.answers.get(request_id)
        if future is None or future.done():
            self.violations.append(f"unexpected or second response for {request_id}")
            return
        future.set_result(answer)

    async def send(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        *,
        headers: dict[str, str] | None = None,
        rendezvous: bool = False,
        fragment: int = 64 * KIB,
    ) -> asyncio.Future[Answer]:
        """Send one request; inline unless ``rendezvous`` (then the body goes fragmented)."""
        assert self.control is not None
        request_id = str(uuid.uuid4())
        full = Request(
            address=self.address(request_id),
            id=request_id,
            request_target=target,
            method=method,
            remote_endpoint=RemoteEndpoint(address="10.1.2.3", port=4567),
            request_headers=headers or {},
            body=body is not None,
        )
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.answers[request_id] = future
        if rendezvous:
            fragments = None
            if body is not None:
                fragments = [body[i : i + fragment] for i in range(0, len(body), fragment)]
            self.deferred[request_id] = (full, fragments)
            await self.control.send_str(encode(Request(address=full.address, id=request_id)))
        else:
            await self.control.send_str(encode(full))
            if body is not None:
                await self.control.send_bytes(body)
        return future


async def send_fragmented(request: web.Request, writer: object, fragments: list[bytes]) -> None:
    """One binary message in several frames; aiohttp's writer always sets FIN (style §1)."""
    transport = request.transport
    assert transport is not None
    drain = getattr(writer, "drain")  # noqa: B009 - aiohttp's AbstractStreamWriter.drain
    for index, chunk in enumerate(fragments):
        opcode = Opcode.BINARY if index == 0 else Opcode.CONTINUATION
        last = index == len(fragments) - 1
        transport.write(encode_frame_header(fin=last, opcode=opcode, length=len(chunk)) + chunk)
        await drain()


@pytest.fixture
async def fake_relay(aiohttp_server: AiohttpServer) -> FakeRelay:
    fake = FakeRelay()
    app = web.Application()
    app.router.add_get("/{tail:.*}", fake.handle)
    server = await aiohttp_server(app)
    fake.url = f"ws://127.0.0.1:{server.port}"
    return fake


def tokens() -> SasTokenProvider:
    return SasTokenProvider(ROOT, ROOT_KEY)


@contextlib.asynccontextmanager
async def fake_setup(
    fake: FakeRelay, http_handler: object, **options: object
) -> AsyncIterator[Listener]:
    listener = Listener(
        fake.url,
        "echo",
        token_provider=tokens(),
        http_handler=http_handler,  # type: ignore[arg-type] # tests pass odd handlers on purpose
        **options,  # type: ignore[arg-type] # Listener keywords
    )
    async with running(listener):
        async with asyncio.timeout(seconds(10)):
            await fake.connected.wait()
        yield listener
    assert not fake.violations, fake.violations


async def answer(future: asyncio.Future[Answer], timeout: float = 20) -> Answer:
    async with asyncio.timeout(seconds(timeout)):
        return await future


# --------------------------------------------------------------------------- fake relay tests


async def test_inline_request_inline_response_with_header_hygiene(
    fake_relay: FakeRelay, target_url: str
) -> None:
    body = blob(10 * KIB, seed=1)
    async with fake_setup(fake_relay, HttpTarget(target_url)) as listener:
        result = await answer(
            await fake_relay.send(
                "POST",
                "/echo/echo/x%20y?b=2&a=1&a=&%2B",
                body,
                headers={
                    "Content-Type": "application/x-test",
                    "X-Custom": "kept",
                    "Connection": "keep-alive, X-Hop",
                    "X-Hop": "named in Connection",
                    "Keep-Alive": "timeout=5",
                    "Proxy-Connection": "keep-alive",
                    "TE": "trailers",
                    "Trailer": "X-T",
                    "Transfer-Encoding": "chunked",
                    "Upgrade": "h2c",
                    "Host": "sender.example",
                    "Content-Length": "999999",
                },
            )
        )
    assert result.via == "control"
    assert isinstance(json.loads(result.raw_header)["response"]["statusCode"], int)
    response = result.response
    assert response.status_code == 200
    assert response.body is True
    assert result.body == body
    headers = {k.lower(): v for k, v in response.response_headers.items()}
    assert headers["x-sha256"] == sha(body)
    # The entity prefix is gone, the rest of the target is byte for byte.
    assert headers["x-target"] == "/base/echo/x%20y?b=2&a=1&a=&%2B"
    seen = set(headers["x-got-headers"].split(","))
    assert {"x-custom", "content-type"} <= seen
    assert not seen & {"connection", "keep-alive", "proxy-connection", "te", "trailer"}
    assert not seen & {"upgrade", "x-hop", "transfer-encoding"}
    assert headers["x-got-host"] == target_url.split("/")[2]  # aiohttp's own, not the sender's
    # Response side: connection-level headers dropped, repeats joined.
    for name in ("keep-alive", "proxy-connection", "connection", "x-dropped", "content-length"):
        assert name not in headers
    assert headers["x-multi"] == "one, two"
    assert headers["set-cookie"] == "a=1; Path=/, b=2; Path=/"
    assert listener.stats.requests == 1
    assert listener.stats.responses_inline == 1


async def test_inline_request_without_body(fake_relay: FakeRelay, target_url: str) -> None:
    async with fake_setup(fake_relay, HttpTarget(target_url)):
        result = await answer(await fake_relay.send("GET", "/echo/echo"))
    assert result.via == "control"
    assert result.response.status_code == 200
    assert result.response.body is False  # empty body: no binary message follows
    assert result.body is None
    headers = result.response.response_headers
    assert headers["X-Sha256"] == sha(b"")
    assert headers["X-Method"] == "GET"
    assert headers["X-Target"] == "/base/echo"


async def test_rendezvous_request_with_fragmented_1mib_body(
    fake_relay: FakeRelay, target_url: str
) -> None:
    body = blob(MIB, seed=2)
    async with fake_setup(fake_relay, HttpTarget(target_url)) as listener:
        future = await fake_relay.send("PUT", "/echo/echo/up", body, rendezvous=True)
        result = await answer(future)
    assert result.via == "rendezvous"
    assert result.response.status_code == 200
    assert result.response.response_headers["X-Sha256"] == sha(body)
    # Streamed through: the target saw a chunked upload, not one buffered blob.
    assert result.response.response_headers["X-Got-Transfer-Encoding"] == "chunked"
    assert result.body == body  # 1 MiB back: over 64 KiB, so on the same rendezvous socket
    assert result.close_code == 1000
    assert fake_relay.dials == {result.response.request_id: 1}
    assert listener.stats.responses_rendezvous == 1


async def test_rendezvous_request_without_body(fake_relay: FakeRelay, target_url: str) -> None:
    async with fake_setup(fake_relay, HttpTarget(target_url)):
        result = await answer(await fake_relay.send("GET", "/echo/status/418", rendezvous=True))
    # Small, but the request came over rendezvous: the answer goes back the same way.
    assert result.via == "rendezvous"
    assert result.response.status_code == 418
    assert result.response.status_description == "Custom Reason"
    assert result.body == b"status 418"


async def test_big_response_to_inline_request_goes_over_rendezvous(
    fake_relay: FakeRelay, target_url: str
) -> None:
    size = 5 * MIB
    async with fake_setup(fake_relay, HttpTarget(target_url)) as listener:
        result = await answer(await fake_relay.send("GET", f"/echo/big/{size}"))
    assert result.via == "rendezvous"
    assert result.response.body is True
    assert result.body is not None
    assert len(result.body) == size
    assert sha(result.body) == result.response.response_headers["X-Sha256"]
    assert result.close_code == 1000
    assert not any(result.response.request_id in text for text in fake_relay.control_texts)
    assert listener.stats.responses_rendezvous == 1
    assert listener.stats.responses_inline == 0


async def test_response_of_unknown_length_goes_over_rendezvous(
    fake_relay: FakeRelay, target_url: str
) -> None:
    async with fake_setup(fake_relay, HttpTarget(target_url)):
        result = await answer(await fake_relay.send("GET", "/echo/stream/300"))
    assert result.via == "rendezvous"
    assert result.body == blob(300, seed=8)


@pytest.mark.parametrize(
    ("method", "target", "status", "has_body"),
    [
        ("GET", "/echo/status/404", 404, True),
        ("DELETE", "/echo/status/204", 204, False),
        ("GET", "/echo/status/304", 304, False),
        ("HEAD", "/echo/big/100000", 200, False),
    ],
)
async def test_statuses_and_bodiless_responses(
    fake_relay: FakeRelay, target_url: str, method: str, target: str, status: int, has_body: bool
) -> None:
    async with fake_setup(fake_relay, HttpTarget(target_url)):
        result = await answer(await fake_relay.send(method, target))
    assert result.via == "control"
    assert result.response.status_code == status
    assert result.response.body is has_body
    assert (result.body is not None) is has_body


async def test_slow_request_does_not_block_the_control_loop(
    fake_relay: FakeRelay, target_url: str
) -> None:
    async with fake_setup(fake_relay, HttpTarget(target_url)):
        slow = await fake_relay.send("GET", f"/echo/slow/{int(seconds(1.5) * 1000)}")
        fast = await answer(await fake_relay.send("POST", "/echo/echo", b"quick"))
        assert fast.body == b"quick"
        assert not slow.done()
        assert (await answer(slow)).body == b"slow done"


async def test_no_http_handler_answers_501(fake_relay: FakeRelay) -> None:
    async def stream_handler(ws: WsConnection, request: AcceptRequest) -> None:
        await ws.close()

    listener = Listener(fake_relay.url, "echo", token_provider=tokens(), handler=stream_handler)
    async with running(listener):
        async with asyncio.timeout(seconds(10)):
            await fake_relay.connected.wait()
        inline = await answer(await fake_relay.send("POST", "/echo/x", b"body"))
        big = await answer(
            await fake_relay.send("POST", "/echo/x", blob(200 * KIB), rendezvous=True)
        )
    assert inline.via == "control"
    assert inline.response.status_code == 501
    assert inline.body is not None
    assert json.loads(inline.body)["error"]["code"] == "NotImplemented"
    assert big.via == "rendezvous"
    assert big.response.status_code == 501
    assert not fake_relay.violations


async def test_unreachable_target_gives_502(fake_relay: FakeRelay) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again: nothing listens there
    async with fake_setup(fake_relay, HttpTarget(f"http://127.0.0.1:{dead}")):
        result = await answer(await fake_relay.send("GET", "/echo/"))
    assert result.response.status_code == 502
    assert result.response.response_headers["Content-Type"] == "application/json"
    assert result.body is not None
    assert json.loads(result.body)["error"]["code"] == "TargetUnreachable"


async def test_target_timeout_gives_502(fake_relay: FakeRelay, target_url: str) -> None:
    async with fake_setup(fake_relay, HttpTarget(target_url, timeout=0.3)):
        result = await answer(await fake_relay.send("GET", "/echo/slow/5000"))
    assert result.response.status_code == 502
    assert result.body is not None
    assert json.loads(result.body)["error"]["code"] == "TargetTimeout"


async def test_concurrent_mix_keeps_headers_and_bodies_adjacent(
    fake_relay: FakeRelay, target_url: str
) -> None:
    rng = random.Random(42)
    plans: list[tuple[asyncio.Future[Answer], str, bytes | None]] = []
    async with fake_setup(fake_relay, HttpTarget(target_url)) as listener:
        for i in range(150):
            kind = i % 3
            if kind == 0:  # inline both ways
                body = rng.randbytes(rng.randrange(1, 60 * KIB))
                plans.append((await fake_relay.send("POST", "/echo/echo", body), "control", body))
            elif kind == 1:  # rendezvous request, response over 64 KiB
                body = rng.randbytes(rng.randrange(65 * KIB, 300 * KIB))
                future = await fake_relay.send(
                    "POST", "/echo/echo", body, rendezvous=True, fragment=rng.randrange(1, 70000)
                )
                plans.append((future, "rendezvous", body))
            else:  # inline request, big response
                plans.append((await fake_relay.send("GET", "/echo/big/100000"), "rendezvous", None))
        results = await asyncio.gather(*(answer(f, 60) for f, _, _ in plans))
    for (_, via, sent), result in zip(plans, results, strict=True):
        assert result.via == via
        assert result.body is not None
        assert sha(result.body) == result.response.response_headers["X-Sha256"]
        if sent is not None:
            assert result.body == sent
    assert listener.stats.responses_inline == 50
    assert listener.stats.responses_rendezvous == 100


async def test_app_handler_sees_request_and_streams_response(fake_relay: FakeRelay) -> None:
    seen: list[HttpRequest] = []
    bodies: list[bytes] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        bodies.append(await request.read())

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"part{i};".encode()

        return HttpResponse(201, [("X-A", "1"), ("x-a", "2")], chunks(), reason="Made")

    async with fake_setup(fake_relay, handler):
        result = await answer(
            await fake_relay.send(
                "PATCH", "/Echo/a%20b/c?x=1&y", b"payload", headers={"X-Req": "v"}
            )
        )
    (request,) = seen
    assert request.method == "PATCH"
    assert request.hc == "echo"
    # (a%20b, not a%2Fb: the agent refuses encoded separators since issue 11)
    assert request.target == "/Echo/a%20b/c?x=1&y"
    assert request.raw_path == "/a%20b/c"
    assert request.path == "/a b/c"
    assert request.query_string == "x=1&y"
    assert request.query.getall("x") == ["1"]
    assert request.query["y"] == ""
    assert request.headers["x-req"] == "v"
    assert request.remote == RemoteEndpoint(address="10.1.2.3", port=4567)
    assert request.body.length == len(b"payload")
    assert bodies == [b"payload"]
    assert result.via == "rendezvous"  # a streamed body has no known length
    assert result.response.status_code == 201
    assert result.response.status_description == "Made"
    assert result.response.response_headers == {"X-A": "1, 2"}
    assert result.body == b"part0;part1;part2;"


async def test_streamed_empty_body_still_sends_one_message(fake_relay: FakeRelay) -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        async def nothing() -> AsyncIterator[bytes]:
            for chunk in list[bytes]():
                yield chunk

        return HttpResponse(200, body=nothing())

    async with fake_setup(fake_relay, handler):
        result = await answer(await fake_relay.send("GET", "/echo/"))
    assert result.response.body is True
    assert result.body == b""


async def test_failing_handlers(fake_relay: FakeRelay) -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        if request.path == "/raise":
            raise RuntimeError("app bug")
        if request.path == "/wrong":
            return "not a response"  # type: ignore[return-value] # an untyped app's mistake
        if request.path == "/bad-status":
            return HttpResponse(42)
        await asyncio.Event().wait()  # never answers
        raise AssertionError

    async with fake_setup(fake_relay, handler, request_timeout=0.3) as listener:
        crashed = await answer(await fake_relay.send("GET", "/echo/raise"))
        wrong = await answer(await fake_relay.send("GET", "/echo/wrong"))
        bad = await answer(await fake_relay.send("GET", "/echo/bad-status"))
        silent = await fake_relay.send("GET", "/echo/hang")
        async with asyncio.timeout(seconds(10)):
            while listener.stats.request_failures < 1:
                await asyncio.sleep(0.01)  # polling a counter, not synchronising by delay
        assert not silent.done()  # nothing is sent once the deadline passed
    for result in (crashed, wrong, bad):
        assert result.response.status_code == 500
        assert result.body is not None
        assert json.loads(result.body)["error"]["code"] == "InternalServerError"


async def test_http_target_session_closed_when_listener_stops(
    fake_relay: FakeRelay, target_url: str
) -> None:
    target = HttpTarget(target_url)
    async with fake_setup(fake_relay, target):
        await answer(await fake_relay.send("GET", "/echo/echo"))
        session = target._session
        assert session is not None
        open_while_serving = not session.closed
    assert open_while_serving
    assert session.closed
    assert target._session is None


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize("name", ["hybridrelay.listener.http_target", "hybridrelay.client.http"])
def test_http_modules_declare_all(name: str) -> None:
    import importlib

    module = importlib.import_module(name)
    assert module.__all__
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


def test_parse_target_kinds() -> None:
    assert parse_target("tcp://127.0.0.1:9000") == TcpTarget("127.0.0.1", 9000)
    http = parse_target("http://127.0.0.1:8000/base/")
    assert isinstance(http, HttpTarget)
    assert http.base_url == "http://127.0.0.1:8000/base"
    assert isinstance(parse_target("https://svc.internal"), HttpTarget)
    for bad in ("sctp://x:1", "tcp://x", "http://", "http://x/?q=1", "tcp://x:notaport"):
        with pytest.raises(ValueError, match=r"\S"):
            parse_target(bad)


def test_listener_needs_some_handler() -> None:
    with pytest.raises(ValueError, match="target"):
        Listener("ws://x", "hc", token_provider=tokens())
    with pytest.raises(ValueError, match="at most one"):
        Listener(
            "ws://x",
            "hc",
            token_provider=tokens(),
            target=TcpTarget("h", 1),
            handler=lambda ws, req: asyncio.sleep(0),
        )


def test_response_header_map() -> None:
    assert response_header_map(
        [
            ("Content-Type", "text/plain"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
            ("X-Bad", "evil\r\nInjected: 1"),
            ("Connection", "close, X-Gone"),
            ("X-Gone", "1"),
        ]
    ) == {"Content-Type": "text/plain", "Set-Cookie": "a=1, b=2"}


@pytest.mark.parametrize(
    "targets",
    [
        ["ftp://x:1"],
        ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"],
        ["http://127.0.0.1:1", "http://127.0.0.1:2"],
    ],
)
def test_cli_rejects_bad_targets(targets: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["listen", "--relay", "ws://127.0.0.1:1", "--hc", "echo", "--key-name", "k"]
    argv += ["--key", "v"]
    for target in targets:
        argv += ["--target", target]
    assert cli_main(argv) == 2
    assert "--target" in capsys.readouterr().err


# --------------------------------------------------------------------------- client (HTTP sender)


@pytest.fixture
async def token_checking_server(aiohttp_server: AiohttpServer) -> tuple[str, list[dict[str, str]]]:
    """Stands in for the relay's HTTP endpoint: checks the token like the relay does."""
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        token = parse_sas_token(request.headers["ServiceBusAuthorization"])
        entity_and_suffix = request.path.lstrip("/")
        body = b""
        async for chunk in request.content.iter_any():
            body += chunk
        seen.append(
            {
                "path_qs": request.raw_path,
                "valid": str(verify_signature(token, ROOT_KEY)),
                "covers": str(
                    resource_covers(
                        token.resource, host=request.host, entity_path=entity_and_suffix
                    )
                ),
                "resource": token.resource,
                "chunked": request.headers.get("Transfer-Encoding", ""),
                "x": request.headers.get("X-App", ""),
            }
        )
        return web.Response(body=body, headers={"X-Sha256": sha(body)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}", seen


def test_http_url() -> None:
    assert http_url("ws://h:1", "a b/c", "/x?y=1") == "http://h:1/a%20b/c/x?y=1"
    assert http_url("wss://h/", "hc") == "https://h/hc"
    assert http_url("https://h:8443", "/hc/", "?q") == "https://h:8443/hc?q"
    with pytest.raises(ValueError, match="relay"):
        http_url("tcp://h:1", "hc")
    with pytest.raises(ValueError, match="path"):
        http_url("http://h", "hc", "x")


async def test_client_signs_and_streams(
    token_checking_server: tuple[str, list[dict[str, str]]],
) -> None:
    base, seen = token_checking_server

    async def gen() -> AsyncIterator[bytes]:
        for i in range(4):
            yield bytes([i]) * 100_000

    async with relay_session(base, key_name=ROOT, key=ROOT_KEY) as relay:
        async with relay.post("echo", "/a/b?z=1", data=gen(), headers={"X-App": "1"}) as resp:
            assert resp.status == 200
            body = await resp.read()
            assert sha(body) == resp.headers["X-Sha256"]
        async with relay.request("GET", "echo", "/other") as other:
            assert other.status == 200
    assert len(body) == 400_000
    first, second = seen
    assert first["path_qs"] == "/echo/a/b?z=1"
    assert first["valid"] == first["covers"] == "True"
    assert first["chunked"] == "chunked"
    assert first["x"] == "1"
    assert second["valid"] == second["covers"] == "True"
    assert first["resource"] == f"http://{base.split('//')[1]}/echo"


async def test_one_shot_request_awaited_and_as_context(
    token_checking_server: tuple[str, list[dict[str, str]]],
) -> None:
    base, seen = token_checking_server
    resp = await request("PUT", base, "echo", "/one", key_name=ROOT, key=ROOT_KEY, data=b"abc")
    assert resp.status == 200
    assert await resp.read() == b"abc"  # read before the private session closed
    async with aiohttp.ClientSession() as session:
        async with request(
            "POST", base, "echo", "/two", token_provider=tokens(), data="text", session=session
        ) as resp2:
            assert await resp2.text() == "text"
        assert not session.closed  # a caller's session is left open
    assert [s["valid"] for s in seen] == ["True", "True"]
    with pytest.raises(ValueError, match="key"):
        _ = request("GET", base, "echo", key_name=ROOT)


# --------------------------------------------------------------------------- through the real relay


def relay_client(relay: InProcessRelay) -> RelayHttpClient:
    return RelayHttpClient(relay.http_url, key_name=ROOT, key=ROOT_KEY)


@contextlib.asynccontextmanager
async def real_listener(relay: InProcessRelay, **options: object) -> AsyncIterator[Listener]:
    listener = Listener(relay.url, "echo", token_provider=tokens(), **options)  # type: ignore[arg-type] # Listener keywords
    async with running(listener):
        yield listener


async def test_e2e_500_concurrent_requests(relay: InProcessRelay, target_url: str) -> None:
    rng = random.Random(500)
    sizes = [
        rng.choice([0, 10, 1000, 30_000, 64 * KIB, 64 * KIB + 1, 100_000, 300_000])
        for _ in range(500)
    ]
    bodies = [rng.randbytes(size) for size in sizes]
    async with (
        real_listener(relay, http_handler=HttpTarget(target_url)) as listener,
        relay_client(relay) as client,
    ):

        async def one(i: int, body: bytes) -> None:
            async with client.post("echo", f"/echo/{i}?n={i}", data=body) as resp:
                got = await resp.read()
                assert resp.status == 200, got[:200]
                assert resp.headers["X-Sha256"] == sha(body)
                assert sha(got) == sha(body)
                assert resp.headers["X-Target"] == f"/base/echo/{i}?n={i}"
                assert "Via" in resp.headers

        async with asyncio.timeout(seconds(60)):
            await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    stats = listener.stats
    assert stats.requests == 500
    assert stats.request_failures == 0
    # Both paths were taken in both directions.
    assert 0 < stats.requests_rendezvous < 500
    assert stats.responses_inline > 0
    assert stats.responses_rendezvous > 0
    assert stats.responses_inline + stats.responses_rendezvous == 500


async def test_e2e_raw_aiohttp_sender_and_streamed_upload(
    relay: InProcessRelay, target_url: str
) -> None:
    data = blob(3 * MIB, seed=3)

    async def gen() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 256 * KIB):
            yield data[start : start + 256 * KIB]

    url = relay.http_url + "/echo/echo/raw?q=%2B"
    token = create_sas_token(
        audience_for(http_url(relay.http_url, "echo")), ROOT, ROOT_KEY, int(time.time()) + 3600
    )
    async with (
        real_listener(relay, http_handler=HttpTarget(target_url)),
        aiohttp.ClientSession() as session,
    ):
        headers = {"ServiceBusAuthorization": token, "X-App": "yes"}
        async with session.post(url, data=gen(), headers=headers) as resp:
            got = await resp.read()
            assert resp.status == 200
            assert got == data
            assert resp.headers["X-Target"] == "/base/echo/raw?q=%2B"
            assert "x-app" in resp.headers["X-Got-Headers"].split(",")
            assert "servicebusauthorization" not in resp.headers["X-Got-Headers"]
        async with session.get(relay.http_url + "/echo/big/5242880", headers=headers) as resp:
            got = await resp.read()
            assert resp.status == 200
            assert sha(got) == resp.headers["X-Sha256"]
        async with session.get(relay.http_url + "/echo/status/404", headers=headers) as resp:
            assert resp.status == 404
            assert await resp.text() == "status 404"


async def test_e2e_one_listener_serves_websocket_and_http(
    relay: InProcessRelay, target_url: str, echo_server: tuple[str, int]
) -> None:
    from hybridrelay.client import connect

    host, port = echo_server
    async with real_listener(
        relay, target=TcpTarget(host, port), http_handler=HttpTarget(target_url)
    ) as listener:
        async with connect(relay.url, "echo", key_name=ROOT, key=ROOT_KEY, stream_mode=True) as ws:
            await ws.write(b"over websocket")
            assert await ws.read() == b"over websocket"
        async with (
            relay_client(relay) as client,
            client.post("echo", "/echo", data=b"http") as resp,
        ):
            assert await resp.read() == b"http"
    assert listener.stats.accepted == 1
    assert listener.stats.requests == 1


async def test_e2e_listener_without_http_handler_answers_501(relay: InProcessRelay) -> None:
    async def stream_handler(ws: WsConnection, request: AcceptRequest) -> None:
        with contextlib.suppress(ConnectionClosedError):
            await ws.close()

    async with (
        real_listener(relay, handler=stream_handler),
        relay_client(relay) as client,
        client.get("echo", "/x") as resp,
    ):
        assert resp.status == 501
        assert (await resp.json())["error"]["code"] == "NotImplemented"


@pytest.mark.e2e
async def test_e2e_cli_listen_serves_tcp_and_http_targets(
    relay: InProcessRelay, target_url: str, echo_server: tuple[str, int]
) -> None:
    from hybridrelay.client import connect

    host, port = echo_server
    args = listen_args(relay.url, "echo", f"tcp://{host}:{port}", key_name=ROOT)
    args += ["--target", target_url]
    async with ProcessGroup() as procs:
        listener = await procs.start(*args, key=ROOT_KEY, name="listen")
        try:
            await listener.wait_for_line(r"event=control_channel_open")
            async with (
                relay_client(relay) as client,
                client.post("echo", "/echo/cli", data=b"hi") as resp,
            ):
                assert resp.status == 200
                assert await resp.read() == b"hi"
                assert resp.headers["X-Target"] == "/base/echo/cli"
            async with connect(
                relay.url, "echo", key_name=ROOT, key=ROOT_KEY, stream_mode=True
            ) as ws:
                await ws.write(b"tcp too")
                assert await ws.read() == b"tcp too"
        except BaseException:
            print(procs.log())  # noqa: T201 - the child's log, shown only for a failed test
            raise
        assert await listener.stop() == 0


async def test_control_channel_lost_answer_goes_over_rendezvous(fake_relay: FakeRelay) -> None:
    release = asyncio.Event()

    async def handler(request: HttpRequest) -> HttpResponse:
        await release.wait()
        return HttpResponse(200, body=b"late but delivered")

    async with fake_setup(fake_relay, handler) as listener:
        future = await fake_relay.send("GET", "/echo/")
        assert fake_relay.control is not None
        await fake_relay.control.close()
        release.set()
        result = await answer(future)
    assert result.via == "rendezvous"
    assert result.body == b"late but delivered"
    assert listener.stats.responses_rendezvous == 1


async def test_e2e_stop_drains_inflight_request(relay: InProcessRelay, target_url: str) -> None:
    listener = Listener(
        relay.url, "echo", token_provider=tokens(), http_handler=HttpTarget(target_url)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    async with asyncio.timeout(seconds(10)):
        await listener.connected.wait()
    async with relay_client(relay) as client:
        pending = asyncio.ensure_future(client.get("echo", "/slow/500"))
        async with asyncio.timeout(seconds(10)):
            while listener.stats.requests < 1:
                await asyncio.sleep(0.01)  # polling a counter, not synchronising by delay
        stop.set()  # the control channel closes; the answer still has a way out
        resp = await asyncio.wait_for(pending, seconds(10))
        assert resp.status == 200
        assert await resp.text() == "slow done"
        resp.release()
    async with asyncio.timeout(seconds(20)):
        await task
    assert listener.stats.responses_rendezvous == 1  # on the socket opened before closing


async def test_e2e_501_for_big_upload_without_http_handler(relay: InProcessRelay) -> None:
    async def stream_handler(ws: WsConnection, request: AcceptRequest) -> None:
        await ws.close()

    async with (
        real_listener(relay, handler=stream_handler) as listener,
        relay_client(relay) as client,
        client.post("echo", "/x", data=blob(512 * KIB)) as resp,
    ):
        assert resp.status == 501
        assert (await resp.json())["error"]["code"] == "NotImplemented"
    assert listener.stats.requests_rendezvous == 1
