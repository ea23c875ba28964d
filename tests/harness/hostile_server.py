"""A hostile WebSocket server: a relay (or the peer behind one) that speaks bytes.

:class:`HostileServer` answers every opening handshake with a hand-built 101 and then
hands the connection to the test's behaviour, which writes whatever frames it likes
(:mod:`tests.harness.raw_ws` packs them). The listener agent and hybridrelay's clients
are attacked with it: an attacker running a relay does not use our libraries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from .raw_ws import TEXT, unmasked_frame
from .timing import seconds

__all__ = ["HostileServer", "ServerPeer"]


@dataclass(eq=False)
class ServerPeer:
    """One connection to a :class:`HostileServer`, after the server's 101."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    request_head: bytes

    @property
    def target(self) -> str:
        return self.request_head.split(b" ", 2)[1].decode("utf-8", "replace")

    async def send_text(self, text: str) -> None:
        self.writer.write(unmasked_frame(TEXT, text.encode()))
        await self.writer.drain()


Behaviour = Callable[[ServerPeer], Awaitable[None]]


@dataclass
class HostileServer:
    """A raw WebSocket server: answers every handshake with 101, then runs ``behaviour``.

    It plays a hostile relay (a listener's control channel and rendezvous) or the hostile
    peer behind one. ``arrivals`` counts TCP connections, handshake or not.
    """

    behaviour: Behaviour
    host: str = "127.0.0.1"
    ssl: ssl_module.SSLContext | None = None
    arrivals: int = 0
    peers: list[ServerPeer] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl else 'ws'}://{self.host}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.arrivals += 1
        self.arrived.set()
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = ""
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-key":
                    key = value.strip()
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + _accept(key).encode()
                + b"\r\n\r\n"
            )
            await writer.drain()
            peer = ServerPeer(reader, writer, head)
            self.peers.append(peer)
            await self.behaviour(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HostileServer]:
        self._server = await asyncio.start_server(self._handle, self.host, 0, ssl=self.ssl)
        try:
            yield self
        finally:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            async with asyncio.timeout(seconds(10)):
                await self._server.wait_closed()


def _accept(key: str) -> str:
    digest = hashlib.sha1(
        (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode(), usedforsecurity=False
    ).digest()
    return base64.b64encode(digest).decode()
