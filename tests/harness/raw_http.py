"""HTTP/1.1 as an attacker speaks it: raw bytes on a socket, answers read byte-exactly.

No HTTP library between the test and the relay: a request is whatever bytes the test
writes, and :func:`read_response` reads one response head and exactly the body its
framing announces, so a test can also check what comes *after* it (nothing, EOF, or
the next response on a keep-alive connection).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

__all__ = [
    "RawResponse",
    "limit_refusals",
    "metric_value",
    "open_raw",
    "read_response",
    "relay_address",
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


async def open_raw(
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
