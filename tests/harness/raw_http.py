"""HTTP/1.1 as an attacker speaks it: raw request bytes out, responses read byte-exactly.

No HTTP library between the test and the relay: nothing normalises a target (``..``,
``%2F``, ``\\``), fills in a ``Host`` or checks what the relay sends back, so the
adversarial suite (tests/security/) sends exactly what a hostile peer would.
:func:`read_response` reads one response head and exactly the body its framing
announces (none for HEAD, 1xx, 204 and 304; chunked, Content-Length or up to the
connection's end otherwise), so a test can also check what comes *after* it (nothing,
EOF, or the next response on a keep-alive connection).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .timing import seconds

__all__ = [
    "Headers",
    "RawResponse",
    "connect_raw",
    "exchange",
    "http_request",
    "open_raw",
    "read_head",
    "read_response",
    "relay_address",
    "upgrade",
    "upgrade_request",
]

# Header fields to send, in order: a mapping, or (name, value) pairs (names may repeat).
Headers = Mapping[str, str] | Iterable[tuple[str, str]]

_ANSWER_TIMEOUT = 20.0  # a relay that never answers fails the test by name, not by hanging


@dataclass
class RawResponse:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # as sent, in order
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), None when there is none."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


# -------------------------------------------------------------------------------- connections


def relay_address(url: str) -> tuple[str, int]:
    """(host, port) of a ``ws://``, ``wss://``, ``http://`` or ``https://`` URL."""
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    return parts.hostname or "127.0.0.1", parts.port or (443 if secure else 80)


async def connect_raw(
    url: str, *, source: str | None = None, ssl_context: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``url``'s host, from ``source`` (e.g. ``127.0.0.2``) when given.

    TLS only with ``ssl_context``: without one it is plain TCP whatever the scheme (to a
    wss:// relay, a peer that never says ClientHello).
    """
    host, port = relay_address(url)
    local = (source, 0) if source is not None else None
    async with asyncio.timeout(seconds(10)):
        return await asyncio.open_connection(host, port, local_addr=local, ssl=ssl_context)


@contextlib.asynccontextmanager
async def open_raw(
    url: str, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """:func:`connect_raw` for the length of a ``with`` block."""
    reader, writer = await connect_raw(url, ssl_context=ssl_context)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


# ----------------------------------------------------------------------------------- requests


def _request_head(lines: list[str], headers: Headers | None) -> bytes:
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    lines += [f"{name}: {value}" for name, value in pairs]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_request(method: str, target: str, host: str, headers: Headers | None = None) -> bytes:
    """An HTTP/1.1 request head for ``target`` (sent as is) that closes the connection.

    A body, if any, is sent after it, its Content-Length among ``headers``.
    """
    return _request_head(
        [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"], headers
    )


def upgrade_request(
    target: str, host: str, headers: Headers | None = None, *, key: str | None = None
) -> bytes:
    """A WebSocket opening handshake for ``target`` (sent as is), as RFC 6455 §4.1 has it.

    ``key`` is the Sec-WebSocket-Key (a fresh random one by default).
    """
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    return _request_head(lines, headers)


# ---------------------------------------------------------------------------------- responses


async def read_head(reader: asyncio.StreamReader) -> RawResponse:
    """One response head, its body left unread (an event stream's, say).

    Raises:
        asyncio.IncompleteReadError: the connection ended before a whole head.
        ValueError: the head is not HTTP/1.x.
    """
    async with asyncio.timeout(seconds(_ANSWER_TIMEOUT)):
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
        response.headers.append((name.strip(), value.strip()))
    return response


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> RawResponse:
    """One response: its head, then exactly the body its framing says (none for HEAD).

    Framing is judged strictly: Content-Length and chunked together (a desynchronising
    answer) or a chunk not ended by CRLF fail an assertion.

    Raises:
        asyncio.IncompleteReadError: the connection ended before a whole response.
        ValueError: the head is not HTTP/1.x.
    """
    response = await read_head(reader)
    status = response.status
    if head_request or status in (204, 304) or 100 <= status < 200:
        return response
    length = response.header("Content-Length")
    async with asyncio.timeout(seconds(_ANSWER_TIMEOUT)):
        if "chunked" in (response.header("Transfer-Encoding") or "").lower():
            assert length is None, "Content-Length and chunked together: a desynchronising answer"
            body = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                body += await reader.readexactly(size)
                assert await reader.readexactly(2) == b"\r\n", "a chunk not ended by CRLF"
                if size == 0:
                    break
            response.body = bytes(body)
        elif length is not None:
            response.body = await reader.readexactly(int(length))
        else:
            response.body = await reader.read()  # delimited by the connection's end
    return response


async def exchange(
    url: str, request: bytes, *, ssl_context: ssl.SSLContext | None = None
) -> RawResponse:
    """Send ``request`` on a fresh connection to ``url``'s host and read the response."""
    async with open_raw(url, ssl_context=ssl_context) as (reader, writer):
        writer.write(request)
        await writer.drain()
        return await read_response(reader)


async def upgrade(
    url: str, target: str, headers: Headers | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, RawResponse]:
    """Send a WebSocket opening handshake for ``target`` (sent byte for byte) on a fresh
    connection to ``url``'s host and read the answer's head; the connection stays open."""
    reader, writer = await connect_raw(url)
    host, port = relay_address(url)
    writer.write(upgrade_request(target, f"{host}:{port}", headers))
    await writer.drain()
    return reader, writer, await read_head(reader)
