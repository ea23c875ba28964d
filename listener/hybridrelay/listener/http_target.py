"""HTTP mode for listeners: relayed requests in, :class:`HttpResponse` answers out.

The listener turns each ``request`` message (HC §3.2) and its body into an
:class:`HttpRequest`, awaits an :data:`HttpHandler` and sends the returned
:class:`HttpResponse` back as a ``response`` message plus body (HC §3.3, §4).
:class:`HttpTarget` is the handler that forwards every request to a local HTTP
service through one pooled ``aiohttp.ClientSession``.

Header hygiene, both ways (HC §2.10, §3.3): the RFC 9110 §7.6.1 connection-level
headers (``Connection``, ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade``, ``Close``, plus every name listed in
``Connection``) and ``Host`` and ``Content-Length`` are neither handed to the
target nor put into ``responseHeaders``. ``responseHeaders`` is a string to string
map, so repeated response headers are joined with ", " as NET does. For
``Set-Cookie`` that is lossy (cookie values may contain commas); the protocol has
no way to carry several values.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy
from yarl import URL

from hybridrelay.errors import BadGatewayError
from hybridrelay.protocol.codes import INLINE_BODY_LIMIT
from hybridrelay.protocol.messages import RemoteEndpoint, Request

__all__ = [
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "HttpTarget",
    "RequestBody",
    "build_request",
    "close_body",
    "error_response",
    "forwardable_request_headers",
    "response_header_map",
]

HeadersLike: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]]
ResponseBody: TypeAlias = bytes | bytearray | memoryview | AsyncIterable[bytes]

# Never forwarded in either direction (HC §2.10 and §3.3; RFC 9110 §7.6.1).
_CONNECTION_LEVEL: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "close",
        "host",
        "content-length",
    }
)
# Headers aiohttp would add on its own; the sender's own values (if any) pass through.
_NO_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_READ_CHUNK: Final = 64 * 1024


def _dropped_names(pairs: Iterable[tuple[str, str]]) -> set[str]:
    dropped = set(_CONNECTION_LEVEL)
    for name, value in pairs:
        if name.lower() == "connection":
            dropped.update(token.strip().lower() for token in value.split(",") if token.strip())
    return dropped


def _pairs(headers: HeadersLike) -> list[tuple[str, str]]:
    if isinstance(headers, Mapping):
        return list(headers.items())  # a multidict's items() keeps repeated names
    return list(headers)


def forwardable_request_headers(headers: Mapping[str, str] | None) -> CIMultiDict[str]:
    """The relayed ``requestHeaders`` minus connection-level headers, case-insensitive.

    Args:
        headers: ``request.requestHeaders`` as decoded (None when absent).

    Returns:
        A new multidict; names keep the sender's spelling.
    """
    pairs = _pairs(headers or {})
    dropped = _dropped_names(pairs)
    return CIMultiDict((name, value) for name, value in pairs if name.lower() not in dropped)


def response_header_map(headers: HeadersLike) -> dict[str, str]:
    """Turn response headers into ``responseHeaders`` (HC §3.3).

    Connection-level headers go, repeated names are joined with ", " under the first
    spelling seen (lossy for ``Set-Cookie``, as in NET), and headers whose name or
    value could split an HTTP header line are dropped.

    Args:
        headers: A mapping, a multidict or (name, value) pairs.

    Returns:
        The string to string map to send.
    """
    pairs = _pairs(headers)
    dropped = _dropped_names(pairs)
    out: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for name, value in pairs:
        lname = name.lower()
        if lname in dropped or not _safe_header(name, value):
            continue
        if lname in spelling:
            key = spelling[lname]
            out[key] = f"{out[key]}, {value}"
        else:
            spelling[lname] = name
            out[name] = value
    return out


def _safe_header(name: object, value: object) -> bool:
    if not isinstance(name, str) or not isinstance(value, str) or not name:
        return False
    return not any(c in name for c in ":\r\n\x00 \t") and not any(c in value for c in "\r\n\x00")


class RequestBody:
    """The body of a relayed request: an async iterator of byte chunks, readable once.

    Attributes:
        length: The size in bytes when known up front (requests that came inline on the
            control channel), None for bodies streamed over a rendezvous socket.
    """

    __slots__ = ("_consumed", "_source", "length")

    def __init__(self, source: bytes | AsyncIterator[bytes] | None) -> None:
        self._consumed = False
        if source is None or isinstance(source, bytes):
            data = source or b""
            self.length: int | None = len(data)

            async def once() -> AsyncIterator[bytes]:
                if data:
                    yield data

            self._source: AsyncIterator[bytes] = once()
        else:
            self.length = None
            self._source = source

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        self._consumed = True
        return await anext(self._source)

    async def read(self, limit: int | None = None) -> bytes:
        """Read the whole (remaining) body.

        Args:
            limit: Raise ValueError once more than this many bytes arrived (None: no cap).

        Returns:
            The bytes not yet consumed through iteration.
        """
        out = bytearray()
        async for chunk in self:
            out += chunk
            if limit is not None and len(out) > limit:
                raise ValueError(f"request body is over {limit} bytes")
        return bytes(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequest:
    """One relayed HTTP request, as an app handler sees it.

    Attributes:
        id: The relay's request id (``request.id``).
        hc: The hybrid connection it came through.
        method: The HTTP method.
        target: ``requestTarget`` exactly as relayed: path and query, including the
            entity name (HC §3.2).
        raw_path: The path after the entity name, still percent-encoded ("/" at least).
        path: ``raw_path`` percent-decoded.
        query_string: The query without "?", as sent (relay parameters removed).
        headers: The sender's headers without connection-level ones, case-insensitive.
        remote: The sender's address and port, when the relay tells.
        body: The body as an async iterator of bytes; see also :meth:`read`.
    """

    id: str
    hc: str
    method: str
    target: str
    raw_path: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    remote: RemoteEndpoint | None
    body: RequestBody

    @property
    def query(self) -> MultiDictProxy[str]:
        """The query string parsed into a multidict (blank values kept)."""
        return MultiDictProxy(MultiDict(parse_qsl(self.query_string, keep_blank_values=True)))

    async def read(self, limit: int | None = None) -> bytes:
        """Read the whole body; see :meth:`RequestBody.read`."""
        return await self.body.read(limit)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """The answer to an :class:`HttpRequest`.

    Attributes:
        status: The HTTP status (not 101; DOC reserves 502/504 for the relay, but a
            gateway such as :class:`HttpTarget` uses 502 for a failed target).
        headers: A mapping, multidict or (name, value) pairs; see
            :func:`response_header_map` for what is dropped and joined.
        body: bytes, or an async iterable of byte chunks streamed to the sender. Bytes
            of at most 64 KiB answer an inline request on the control channel; anything
            else goes over a rendezvous socket (HC §4). Iterables with an ``aclose``
            method are closed once sent or abandoned.
        reason: The reason phrase, or None for the standard one.
    """

    status: int = 200
    headers: HeadersLike = field(default_factory=dict)
    body: ResponseBody = b""
    reason: str | None = None


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def close_body(body: object) -> None:
    """Close a response body iterator that has an ``aclose`` method (no-op otherwise)."""
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


def error_response(status: int, code: str, message: str) -> HttpResponse:
    """A JSON error in the relay's style: ``{"error":{"code":…,"message":…}}`` (HC §4)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return HttpResponse(status, {"Content-Type": "application/json"}, body)


def _strip_entity(path: str, hc: str) -> str:
    # HC §3.2: requestTarget starts with the entity name; the relay matched it
    # case-insensitively after percent-decoding (HC §2.1), so compare the same way.
    entity = [segment.casefold() for segment in hc.strip("/").split("/")]
    segments = path.split("/")  # origin-form: segments[0] == ""
    head = segments[1 : 1 + len(entity)]
    if [unquote(segment).casefold() for segment in head] != entity:
        return path or "/"
    return "/" + "/".join(segments[1 + len(entity) :])


def build_request(
    hc: str, request: Request, body: bytes | AsyncIterator[bytes] | None
) -> HttpRequest:
    """Make the app-facing request from an inline-form ``request`` message.

    Args:
        hc: The hybrid connection name.
        request: The inline form (``method`` and ``requestTarget`` present).
        body: The body bytes (inline), an iterator over the body message's frames
            (rendezvous), or None when ``body`` was false.

    Returns:
        The request; ``raw_path`` has the entity prefix removed.
    """
    target = request.request_target or "/"
    path, _, query = target.partition("?")
    raw_path = _strip_entity(path, hc)
    return HttpRequest(
        id=request.id,
        hc=hc,
        method=request.method or "GET",
        target=target,
        raw_path=raw_path,
        path=unquote(raw_path),
        query_string=query,
        headers=CIMultiDictProxy(forwardable_request_headers(request.request_headers)),
        remote=request.remote_endpoint,
        body=RequestBody(body),
    )


class _TargetBody:
    """Streams a target response's body, then returns its connection to the pool.

    A class rather than an async generator: a generator closed before its first
    ``__anext__`` never runs its ``finally``, and the connection would leak.
    """

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    def __aiter__(self) -> _TargetBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._response.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._response.close()
            raise BadGatewayError(f"target response failed: {exc!r}") from exc
        if not chunk:
            self._response.release()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if not self._response.closed:
            # Unread data left: the connection cannot be reused.
            self._response.close()


class HttpTarget:
    """Forward relayed requests to a local HTTP service; an :data:`HttpHandler`.

    The target URL is ``base_url`` + the request's path after the entity name + its
    query, byte for byte. Redirects are not followed and bodies are not decompressed,
    so the sender sees what the service sent. Cookies are not kept between requests
    (senders must not see each other's cookies).

    Args:
        base_url: ``http://host:port[/base]`` or ``https://…``.
        timeout: Longest wait for the response head and between body reads (None: no
            limit; the relay answers the sender 504 after 60 s anyway, HC §4).
        connect_timeout: Bound on connecting to the service.
        limit: Most connections open to the service at once.
        ssl_context: TLS settings for an https target (default: system trust store).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | None = 60.0,
        connect_timeout: float = 10.0,
        limit: int = 100,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("HTTP target must be http://host[:port][/base] or https://…")
        if parts.query or parts.fragment:
            raise ValueError("HTTP target must not have a query or fragment")
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=timeout
        )
        self._limit = limit
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    def __str__(self) -> str:
        return self.base_url

    def __repr__(self) -> str:
        return f"HttpTarget({self.base_url!r})"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl),
                timeout=self._timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=_NO_AUTO_HEADERS,
            )
        return self._session

    def url_for(self, request: HttpRequest) -> URL:
        """The service URL a request goes to (already encoded; never re-quoted)."""
        query = f"?{request.query_string}" if request.query_string else ""
        return URL(f"{self.base_url}{request.raw_path}{query}", encoded=True)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        """Forward one request; a failing service becomes a 502 with a JSON error body."""
        session = self._get_session()
        # A body streamed from a rendezvous socket goes on chunked; a known one as bytes.
        data: bytes | RequestBody | None = (
            request.body if request.body.length is None else (await request.read()) or None
        )
        try:
            response = await session.request(
                request.method,
                self.url_for(request),
                headers=request.headers,
                data=data,
                allow_redirects=False,
            )
        except TimeoutError:
            return error_response(502, "TargetTimeout", f"{self} did not answer in time")
        except aiohttp.ClientError as exc:
            return error_response(502, "TargetUnreachable", f"{self}: {type(exc).__name__}")
        body: ResponseBody
        if request.method == "HEAD" or response.status in (204, 304) or response.status < 200:
            response.release()
            body = b""
        elif response.content_length is not None and response.content_length <= INLINE_BODY_LIMIT:
            # Small and of known size: read it, so the answer can go inline (HC §4).
            try:
                body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                response.close()
                return error_response(502, "TargetError", f"{self}: {type(exc).__name__}")
        else:
            body = _TargetBody(response)
        return HttpResponse(response.status, list(response.headers.items()), body, response.reason)

    async def aclose(self) -> None:
        """Close the pooled connections; a later request opens a new pool."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
