"""What a local client sends before its tunnel opens stays within the documented bound.

The forwarder accepts a local connection, then opens its relayed stream (up to
``open_timeout``, as long as a slow or hostile relay takes); meanwhile the client's
bytes wait in its :class:`SocketBridge`, which promises to hold at most ``chunk_size``
bytes before it stops reading the socket. Reads of a whole ``chunk_size`` on top of a
nearly full hold made that almost twice as much (2 MiB a connection at the 1 MiB
default): the last read before the hold is full is now only as large as the room left.
A real client over a real TCP socket, the default chunk size.
"""

from __future__ import annotations

import asyncio
import os

from hybridrelay.socket_bridge import DEFAULT_CHUNK_SIZE, SocketBridge
from tests.harness.timing import seconds


class MeasuredBridge(SocketBridge):
    """Says when it stopped reading before run(), and the most it held."""

    def __init__(self, accepted: asyncio.Queue[SocketBridge]) -> None:
        super().__init__(on_connect=accepted.put_nowait)
        self.most_held = 0
        self.stopped_reading = asyncio.Event()

    def buffer_updated(self, nbytes: int) -> None:
        super().buffer_updated(nbytes)
        self.most_held = max(self.most_held, self._held_size)
        if self.transport is not None and not self.transport.is_reading():
            self.stopped_reading.set()


async def test_a_client_cannot_make_a_pending_tunnel_hold_more_than_chunk_size() -> None:
    loop = asyncio.get_running_loop()
    bridges: list[MeasuredBridge] = []
    accepted: asyncio.Queue[SocketBridge] = asyncio.Queue()

    def factory() -> SocketBridge:
        bridges.append(MeasuredBridge(accepted))
        return bridges[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        # Many writes of odd sizes, so reads land at every offset of the hold.
        for _ in range(64):
            writer.write(os.urandom(DEFAULT_CHUNK_SIZE // 8 + 4099))
        async with asyncio.timeout(seconds(10)):
            await accepted.get()
            await bridges[0].stopped_reading.wait()
        assert 0 < bridges[0].most_held <= DEFAULT_CHUNK_SIZE
    finally:
        writer.transport.abort()
        for bridge in bridges:
            bridge.abort()
        server.close()
        await server.wait_closed()
