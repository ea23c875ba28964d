"""An attacker's HTTP client: request bytes written as given, answers read off the socket.

Nothing here normalises a target (``..``, ``%2F``, ``\\``), fills in a ``Host`` or
checks what the relay sends back, so the adversarial suite (tests/security/) can
send exactly what a hostile peer would and see exactly what the relay answers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .timing import seconds

__all__ = [
    "RawAnswer",
    "close_code",
    "exchange",
    "http_request",
    "masked_frame",
    "open_raw",
    "read_answer",
    "read_frame",
    "upgrade_request",
]


@dataclass(frozen=True)
class RawAnswer:
    """A response head (and, when it has a Content-Length, its body)."""

    status: int
    headers: dict[str, str]  # lower-cased names; a repeated name keeps its last value
    body: bytes


def _endpoint(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    return parts.hostname or "127.0.0.1", parts.port or (443 if secure else 80), secure


@contextlib.asynccontextmanager
async def open_raw(
    url: str, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TCP (or TLS, for wss/https URLs) connection to ``url``'s host, closed on exit."""
    host, port, secure = _endpoint(url)
    context = ssl_context if secure else None
    if secure and context is None:
        raise ValueError("a TLS URL needs ssl_context")
    async with asyncio.timeout(seconds(10)):
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def upgrade_request(target: str, host: str, headers: Mapping[str, str] | None = None) -> bytes:
    """A WebSocket opening handshake for ``target`` (sent as is), as RFC 6455 §4.1 has it."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_request(
    method: str, target: str, host: str, headers: Mapping[str, str] | None = None
) -> bytes:
    """A body-less HTTP/1.1 request for ``target`` (sent as is) that closes the connection."""
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {host}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_answer(reader: asyncio.StreamReader) -> RawAnswer:
    """Read one response head, and its body when a Content-Length announces one."""
    async with asyncio.timeout(seconds(20)):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if status != 101 and length else b""
    return RawAnswer(status, headers, body)


async def exchange(
    url: str, request: bytes, *, ssl_context: ssl.SSLContext | None = None
) -> RawAnswer:
    """Send ``request`` on a fresh connection to ``url``'s host and read the answer."""
    async with open_raw(url, ssl_context=ssl_context) as (reader, writer):
        writer.write(request)
        await writer.drain()
        return await read_answer(reader)


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked as RFC 6455 §5.3 requires (payload under 64 KiB)."""
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([0x80 | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    else:
        head += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next (unmasked, server) frame's opcode and payload; EOF raises IncompleteReadError."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(length)


async def close_code(reader: asyncio.StreamReader) -> int | None:
    """Read frames until a close frame and return its code; None when the socket just ends."""
    while True:
        try:
            opcode, payload = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
