"""HTTP/1.1 and WebSocket as an attacker speaks them: raw bytes out, answers read byte-exactly.

No HTTP library between the test and the relay: nothing normalises a target (``..``,
``%2F``, ``\\``), fills in a ``Host`` or checks what the relay sends back, so the
adversarial suite (tests/security/) sends exactly what a hostile peer would.
:func:`read_response` reads one response head and exactly the body its framing
announces, so a test can also check what comes *after* it (nothing, EOF, or the next
response on a keep-alive connection).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from .timing import seconds

__all__ = [
    "RawResponse",
    "close_code",
    "connect_raw",
    "exchange",
    "http_request",
    "limit_refusals",
    "masked_frame",
    "metric_value",
    "open_raw",
    "read_answer",
    "read_frame",
    "read_response",
    "relay_address",
    "upgrade_request",
]

_HEAD_LIMIT = 64 * 1024


@dataclass
class RawResponse:
    status: int
    reason: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names (last wins)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def relay_address(url: str) -> tuple[str, int]:
    """(host, port) of a ``ws://`` / ``http://`` relay URL."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


async def connect_raw(
    url: str, *, source: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the relay, from ``source`` (e.g. ``127.0.0.2``) when given."""
    host, port = relay_address(url)
    local = (source, 0) if source is not None else None
    return await asyncio.open_connection(host, port, local_addr=local, limit=_HEAD_LIMIT)


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> RawResponse:
    """One response: its head, then exactly the body its framing says (none for HEAD).

    Raises:
        asyncio.IncompleteReadError: the connection ended before a whole response.
        ValueError: the head is not HTTP/1.x.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    match = re.fullmatch(r"(HTTP/1\.[01]) (\d{3})(?: (.*))?", lines[0])
    if match is None:
        raise ValueError(f"not an HTTP/1.x status line: {lines[0]!r}")
    response = RawResponse(
        status=int(match.group(2)), reason=match.group(3) or "", version=match.group(1)
    )
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"not a header line: {line!r}")
        response.headers[name.strip().lower()] = value.strip()
    no_body = head_request or response.status in (204, 304) or 100 <= response.status < 200
    if no_body:
        return response
    if "chunked" in (response.header("Transfer-Encoding") or "").lower():
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(chunk[:-2])
        response.body = b"".join(chunks)
    elif (length := response.header("Content-Length")) is not None:
        response.body = await reader.readexactly(int(length))
    else:
        response.body = await reader.read()  # delimited by the connection's end
    return response


async def metric_value(url: str, name: str, **labels: str) -> float:
    """The value of one sample of the relay's ``/metrics`` (0 when absent)."""
    http_url = url.replace("ws://", "http://").replace("wss://", "https://")
    async with aiohttp.ClientSession() as session, session.get(http_url + "/metrics") as resp:
        text = await resp.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, rest = sample.partition("{")
        if metric != name:
            continue
        found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if found == wanted:
            return float(value)
    return 0.0


async def limit_refusals(url: str, limit: str) -> float:
    """``hybridrelay_limit_refusals_total{limit=...}`` of the relay at ``url``."""
    return await metric_value(url, "hybridrelay_limit_refusals_total", limit=limit)


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


async def read_answer(reader: asyncio.StreamReader) -> RawResponse:
    """One response head, and its body only when a Content-Length announces one.

    Unlike :func:`read_response` it leaves a chunked body (an event stream) unread.
    """
    async with asyncio.timeout(seconds(20)):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, reason = [*status_line.split(" ", 2), ""][:3]
        response = RawResponse(status=int(status), reason=reason, version=version)
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                response.headers[name.strip().lower()] = value.strip()
        length = int(response.headers.get("content-length", "0"))
        if response.status != 101 and length:
            response.body = await reader.readexactly(length)
    return response


async def exchange(
    url: str, request: bytes, *, ssl_context: ssl.SSLContext | None = None
) -> RawResponse:
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
