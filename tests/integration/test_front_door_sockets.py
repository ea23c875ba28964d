"""The front door's accepted sockets: TCP options set once, not per connection (issue 16).

FrontDoorProtocol skips aiohttp's per-connection TCP_NODELAY and SO_KEEPALIVE system
calls; these tests read the options off the relay side of real accepted connections, so
a loop or platform that stops setting or inheriting them fails here.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from hybridrelay.relay.admission import FrontDoor, FrontDoorSite
from hybridrelay.relay.config import RelaySettings
from hybridrelay.relay.metrics import RelayMetrics


async def _socket_options(request: web.Request) -> web.Response:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        raise web.HTTPInternalServerError(text="no socket")
    nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    return web.Response(text=f"{int(bool(nodelay))} {int(bool(keepalive))}")


async def _serve(*, tcp_keepalive: bool = True) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/options", _socket_options)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, tcp_keepalive=tcp_keepalive)
    await runner.setup()
    door = FrontDoor(
        RelaySettings(), RelayMetrics(max_hc_labels=10), now=asyncio.get_running_loop().time
    )
    site = FrontDoorSite(runner, "127.0.0.1", 0, front_door=door)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


@pytest.fixture
async def server() -> AsyncIterator[int]:
    runner, port = await _serve()
    yield port
    await runner.cleanup()


async def _get_twice(port: int) -> list[bytes]:
    """Two requests on one keep-alive connection; the body of each answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        bodies = []
        for _ in range(2):
            writer.write(b"GET /options HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            bodies.append(await asyncio.wait_for(reader.readexactly(length), 5))
        return bodies
    finally:
        writer.close()
        await writer.wait_closed()


async def test_accepted_connections_have_nodelay_and_keepalive(server: int) -> None:
    # Both requests of the connection are served (its task started), on a socket with
    # TCP_NODELAY (the loop's) and SO_KEEPALIVE (inherited from the listening socket).
    assert await _get_twice(server) == [b"1 1", b"1 1"]


async def test_tcp_keepalive_off_is_honoured() -> None:
    runner, port = await _serve(tcp_keepalive=False)
    try:
        assert await _get_twice(port) == [b"1 0", b"1 0"]
    finally:
        await runner.cleanup()
