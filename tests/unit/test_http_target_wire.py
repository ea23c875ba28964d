"""HttpTarget's keep-alive pool against a raw TCP service: exact bytes, odd but legal
answers, and broken ones (a broken target is a 502 or a broken body, never a hang)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from hybridrelay.listener.http_target import HttpRequest, HttpResponse, HttpTarget, RequestBody

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await answer(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def request(method: str = "GET", path: str = "/x", body: bytes = b"") -> HttpRequest:
    return HttpRequest(
        id="r1",
        hc="web",
        method=method,
        target=f"/web{path}",
        raw_path=path,
        path=path,
        query_string="",
        headers=CIMultiDictProxy(CIMultiDict()),
        remote=None,
        body=RequestBody(body),
    )


async def body_of(response: HttpResponse) -> bytes:
    if isinstance(response.body, bytes):
        return response.body
    out = bytearray()
    async for chunk in response.body:  # type: ignore[union-attr]
        out += chunk
    return bytes(out)


async def call(url: str, req: HttpRequest) -> tuple[HttpResponse, bytes]:
    target = HttpTarget(url, timeout=3.0)
    try:
        async with asyncio.timeout(10):
            response = await target(req)
            return response, await body_of(response)
    finally:
        await target.aclose()


@pytest.mark.parametrize(
    ("raw", "status", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, b"hello"),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            201,
            b"ok",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            200,
            b"hello world",
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", 200, b"until the end"),
        (b"HTTP/1.0 200 OK\r\n\r\nten-style", 200, b"ten-style"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 204, b""),
        (b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", 304, b""),
    ],
)
async def test_legal_answers(serve, raw: bytes, status: int, body: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(raw)
        await writer.drain()

    response, got = await call(await serve(answer), request())
    assert response.status == status
    assert got == body


async def test_head_with_a_content_length_has_no_body_and_the_connection_is_reused(serve) -> None:
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append(await read_head(reader))
            if heads[-1].startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
            await writer.drain()

    url = await serve(answer)
    target = HttpTarget(url, timeout=3.0)
    try:
        async with asyncio.timeout(10):
            first = await target(request("HEAD"))
            assert first.status == 200
            assert await body_of(first) == b""
            second = await target(request("GET"))
            assert await body_of(second) == b"abc"
    finally:
        await target.aclose()
    assert len(heads) == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 two hundred\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then closes
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"",  # closes without a word
    ],
)
async def test_broken_answers_are_502_not_a_hang(serve, raw: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(raw)
        await writer.drain()

    response, _ = await call(await serve(answer), request())
    assert response.status == 502


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # then closes
        b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"x" * 1000,  # then closes
    ],
)
async def test_broken_streamed_bodies_fail_the_stream(serve, raw: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(raw)
        await writer.drain()

    url = await serve(answer)
    target = HttpTarget(url, timeout=3.0)
    try:
        async with asyncio.timeout(10):
            response = await target(request())
            if response.status == 502:
                return  # refused before any byte of body: as good
            with pytest.raises(Exception):  # noqa: B017, PT011 - any error, never a clean end
                await body_of(response)
    finally:
        await target.aclose()


async def test_request_bytes_on_the_wire(serve) -> None:
    seen: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        seen.set_result(head + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    response, _ = await call(await serve(answer), request("POST", "/a%20b?q=1", b"payload"))
    assert response.status == 200
    wire = await seen
    assert wire.startswith(b"POST /a%20b HTTP/1.1\r\n") or wire.startswith(b"POST /a%20b?")
    assert wire.endswith(b"\r\n\r\npayload")


async def test_a_head_over_64_kib_in_pieces_is_502(serve) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(20):  # 20 x 4 KiB header lines, one write each: no end of head
            writer.write(b"X-Pad: " + b"a" * 4096 + b"\r\n")
            await writer.drain()
        await reader.read()  # hold the connection open: only the bound can end this

    response, _ = await call(await serve(answer), request())
    assert response.status == 502


async def test_a_switch_of_protocols_nobody_asked_for_is_502(serve) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    response, _ = await call(await serve(answer), request())
    assert response.status == 502


CHUNKED_WITH_TRAILER = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nT: 1\r\n\r\n"
)


@pytest.mark.parametrize(
    ("first", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", True),
        (CHUNKED_WITH_TRAILER, True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        # Bytes after a whole answer: whatever they are, this connection is not trusted again.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", False),
    ],
)
async def test_a_connection_is_reused_only_when_the_target_allows(
    serve, first: bytes, reused: bool
) -> None:
    connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        plain = connections > 1  # the first connection answers oddly, any later one plainly
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc" if plain else first)
            await writer.drain()

    url = await serve(answer)
    target = HttpTarget(url, timeout=3.0)
    try:
        async with asyncio.timeout(10):
            await body_of(await target(request()))
            second = await body_of(await target(request()))
    finally:
        await target.aclose()
    assert (connections == 1) is reused
    if not reused:
        assert second == b"abc"
