"""Hostile peers that speak bytes: raw WebSocket senders and servers, raw HTTP clients.

The adversarial suite (tests/security/) attacks over real sockets without our libraries:
an attacker does not use them. These helpers only frame and unframe; every decision
about what to send is the test's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hybridrelay.protocol.frames import Opcode, apply_mask, encode_frame_header

from .timing import seconds

__all__ = [
    "HostileServer",
    "HttpAnswer",
    "ServerPeer",
    "host_port",
    "masked_frame",
    "raw_ws_connect",
    "read_frame",
    "read_http_answer",
    "unmasked_frame",
]


def host_port(url: str) -> tuple[str, int]:
    """The host and port of a ws:// or http:// URL with an explicit port."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame (RFC 6455 §5.3: masked)."""
    mask = os.urandom(4)
    header = encode_frame_header(fin=fin, opcode=opcode, length=len(payload), mask=mask)
    return header + apply_mask(payload, mask)


def unmasked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A server frame (unmasked)."""
    return encode_frame_header(fin=fin, opcode=opcode, length=len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """One frame: (fin, opcode, payload), unmasking a masked one."""
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(length)
    if mask is not None:
        payload = apply_mask(payload, mask)
    return bool(b0 & 0x80), b0 & 0x0F, payload


async def raw_ws_connect(
    host: str, port: int, target: str, headers: Sequence[tuple[str, str]] = ()
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Send a WebSocket opening handshake for ``target`` (sent byte for byte) and read the
    answer's head. Returns reader, writer and the head (status line and headers)."""
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


@dataclass
class HttpAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


async def read_http_answer(
    reader: asyncio.StreamReader, *, head_request: bool = False
) -> HttpAnswer:
    """One HTTP/1.1 response, framed strictly (Content-Length or chunked, nothing else)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    answer = HttpAnswer(status, headers, b"")
    if head_request or status in (204, 304) or 100 <= status < 200:
        return answer
    length = answer.header("Content-Length")
    if answer.header("Transfer-Encoding") == "chunked":
        assert length is None, "Content-Length and chunked together: a desynchronising answer"
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
            if size == 0:
                break
        answer.body = bytes(body)
    elif length is not None:
        answer.body = await reader.readexactly(int(length))
    else:
        answer.body = await reader.read()  # until the connection closes
    return answer


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
        self.writer.write(unmasked_frame(Opcode.TEXT, text.encode()))
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
