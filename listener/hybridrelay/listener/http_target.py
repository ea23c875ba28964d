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

import asyncio
import collections
import json
import re
import ssl
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Set as AbstractSet,
)
from dataclasses import dataclass, field
from typing import Final, TypeAlias, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy
from yarl import URL

from hybridrelay.errors import BadGatewayError
from hybridrelay.protocol.codes import INLINE_BODY_LIMIT
from hybridrelay.protocol.http_response import is_field_value, is_token
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
    "sender_address_headers",
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


def _dropped_names(pairs: Iterable[tuple[str, str]]) -> AbstractSet[str]:
    named: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return _CONNECTION_LEVEL | named if named else _CONNECTION_LEVEL


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


_UNSAFE_VALUE: Final = re.compile("[\r\n\x00]")


def _safe_header(name: object, value: object) -> bool:
    # The relay refuses a whole response over one bad header (502); drop the header here.
    return is_token(name) and is_field_value(value)


class RequestBody:
    """The body of a relayed request: an async iterator of byte chunks, readable once.

    Attributes:
        length: The size in bytes when known up front (requests that came inline on the
            control channel), None for bodies streamed over a rendezvous socket.
    """

    __slots__ = ("_data", "_source", "length")

    def __init__(self, source: bytes | AsyncIterator[bytes] | None) -> None:
        # A body that came inline is held as bytes (no generator per request).
        self._data: bytes = b""
        self._source: AsyncIterator[bytes] | None = None
        if source is None or isinstance(source, bytes):
            self._data = source or b""
            self.length: int | None = len(self._data)
        else:
            self.length = None
            self._source = source

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        if self._source is None:
            data, self._data = self._data, b""
            if not data:
                raise StopAsyncIteration
            return data
        return await anext(self._source)

    async def read(self, limit: int | None = None) -> bytes:
        """Read the whole (remaining) body.

        Args:
            limit: Raise ValueError once more than this many bytes arrived (None: no cap).

        Returns:
            The bytes not yet consumed through iteration.
        """
        if self._source is None:
            data, self._data = self._data, b""
            if limit is not None and len(data) > limit:
                raise ValueError(f"request body is over {limit} bytes")
            return data
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


def _last_forwarded_for(value: str) -> str:
    """The ``for=`` node of the last element of a ``Forwarded`` value (RFC 7239), unquoted."""
    for pair in value.rsplit(",", 1)[-1].split(";"):
        name, _, node = pair.partition("=")
        if name.strip().lower() == "for":
            return node.strip().strip('"').removeprefix("[").removesuffix("]")
    return ""


def sender_address_headers(request: HttpRequest) -> CIMultiDictProxy[str] | CIMultiDict[str]:
    """The request's headers with the sender's address, as the relay reported it, last.

    A target behind the agent trusts the last ``X-Forwarded-For`` / ``Forwarded`` element
    and ``X-Real-IP`` as the proxy's own observation. hybridrelay's relay appends the
    sender's address itself; a relay that does not (or a sender's own copies) must not
    decide what the target sees, so the agent appends ``remoteEndpoint``'s address where
    it is not last already and sets ``X-Real-IP`` to it.

    Args:
        request: A relayed request.

    Returns:
        ``request.headers`` itself when nothing needs changing (or the relay gave no
        address), else a corrected copy.
    """
    remote = request.remote
    if remote is None:
        return request.headers
    address = remote.address
    chain = ", ".join(request.headers.getall("X-Forwarded-For", ()))
    forwarded = ", ".join(request.headers.getall("Forwarded", ()))
    xff_ok = chain.rsplit(",", 1)[-1].strip() == address
    forwarded_ok = _last_forwarded_for(forwarded) == address
    if xff_ok and forwarded_ok and request.headers.getall("X-Real-IP", ()) == [address]:
        return request.headers
    headers = CIMultiDict(request.headers)
    if not xff_ok:
        headers["X-Forwarded-For"] = f"{chain}, {address}" if chain else address
    if not forwarded_ok:
        node = f'"[{address}]"' if ":" in address else address
        headers["Forwarded"] = f"{forwarded}, for={node}" if forwarded else f"for={node}"
    headers["X-Real-IP"] = address
    return headers


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
        # http:// targets: the usual request (a body of known size, plain target and
        # headers) goes over _Pool's own connections, at about a third of aiohttp's cost
        # per request; the rest (https, streamed uploads, anything aiohttp would quote,
        # refuse or rewrite) through aiohttp. Each keeps at most ``limit`` connections.
        self._pool: _Pool | None = None
        url = URL(self.base_url)
        if parts.scheme == "http" and url.raw_host and url.raw_host.isascii():
            host = url.raw_host
            netloc = f"[{host}]" if ":" in host else host
            if not url.is_default_port():
                netloc += f":{url.port}"
            self._pool = _Pool(
                host,
                url.port or 80,
                host_header=netloc,
                base_path=url.raw_path.rstrip("/"),
                limit=limit,
                connect_timeout=connect_timeout,
                read_timeout=timeout,
            )

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
        session = self._get_session()  # opened with the first request, whichever path
        headers = sender_address_headers(request)
        pool = self._pool
        if pool is not None and request.body.length is not None:
            head = pool.request_head(request, headers)
            if head is not None:
                return await self._lean(pool, request, head)
        # A body streamed from a rendezvous socket goes on chunked; a known one as bytes.
        data: bytes | RequestBody | None = (
            request.body if request.body.length is None else (await request.read()) or None
        )
        try:
            response = await session.request(
                request.method,
                self.url_for(request),
                headers=headers,
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

    async def _lean(self, pool: _Pool, request: HttpRequest, head: bytearray) -> HttpResponse:
        data = await request.read()
        try:
            return await pool.send(head, data, request.method)
        except TimeoutError:
            return error_response(502, "TargetTimeout", f"{self} did not answer in time")
        except (OSError, _TargetProtocolError) as exc:
            return error_response(502, "TargetUnreachable", f"{self}: {type(exc).__name__}")

    async def aclose(self) -> None:
        """Close the pooled connections; a later request opens a new pool."""
        if self._pool is not None:
            self._pool.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()


# -- the plain HTTP/1.1 client behind HttpTarget, for http:// targets ------------------------

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS_LINE: Final = re.compile(r"HTTP/1\.([01]) ([0-9]{3})(?: (.*))?")
# aiohttp sends no Content-Length for an empty body with these methods, "0" otherwise.
_NO_LENGTH_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_MAX_HEAD: Final = 64 * 1024
_READ_HIGH: Final = 256 * 1024  # buffered response bytes before reading from the socket pauses


class _TargetProtocolError(Exception):
    """The target's answer is not HTTP/1.1 as this client reads it."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the target; bytes arrive in ``buffer``."""

    __slots__ = ("buffer", "closed", "generation", "paused", "transport", "waiter")

    def __init__(self, generation: int) -> None:
        self.generation = generation  # the pool's, when this connection was opened
        self.buffer = bytearray()
        self.closed = False  # EOF or lost: nothing more will arrive
        self.paused = False
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _READ_HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def consumed(self) -> None:
        """The reader took bytes out of ``buffer``: resume reading below half the mark."""
        if self.paused and len(self.buffer) <= _READ_HIGH // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    async def more(self, limit_s: float | None) -> None:
        """Wait for more bytes (or the end); TimeoutError after ``limit_s`` seconds.

        One timer per wait (aiohttp's sock_read), cheaper than asyncio.timeout().
        """
        if self.closed:
            raise _TargetProtocolError("the target closed the connection")
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = None if limit_s is None else loop.call_later(limit_s, _expire, waiter)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Pool:
    """HTTP/1.1 keep-alive connections to one target, at most ``limit`` at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        host_header: str,
        base_path: str,
        limit: int,
        connect_timeout: float,
        read_timeout: float | None,
    ) -> None:
        self._host = host
        self._port = port
        self._base = base_path
        self._host_line = f"Host: {host_header}\r\n".encode("ascii")
        self._limit = limit
        self._connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[_Connection] = []
        self._open = 0
        self._generation = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def request_head(
        self, request: HttpRequest, headers: CIMultiDictProxy[str] | CIMultiDict[str]
    ) -> bytearray | None:
        """The request line and headers as aiohttp would send them, or None when this
        request is not a plain one (then aiohttp, which quotes or refuses, sends it)."""
        target = self._base + request.raw_path
        if request.query_string:
            target += "?" + request.query_string
        method = request.method
        if (
            not (target.isascii() and target.isprintable())
            or " " in target
            or "#" in target
            or not target.startswith("/")
            or _TOKEN.fullmatch(method) is None
        ):
            return None
        head = bytearray(f"{method} {target} HTTP/1.1\r\n".encode("ascii"))
        head += self._host_line
        for name, value in headers.items():
            if _TOKEN.fullmatch(name) is None or _UNSAFE_VALUE.search(value) is not None:
                return None
            head += f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
        return head

    async def send(self, head: bytearray, body: bytes, method: str) -> HttpResponse:
        if body:
            head += b"Content-Length: %d\r\n" % len(body)
        elif method not in _NO_LENGTH_METHODS:
            head += b"Content-Length: 0\r\n"
        head += b"\r\n"
        conn, reused = await self._acquire()
        try:
            assert conn.transport is not None  # noqa: S101 - set when connected
            conn.transport.write(head + body if len(body) < 16384 else head)
            if len(body) >= 16384:
                conn.transport.write(body)
            try:
                return await self._response(conn, method)
            except _TargetProtocolError:
                if not (reused and not conn.buffer and method in _IDEMPOTENT):
                    raise
            # An idle connection the target had closed just then: once more, on a new one.
            self._discard(conn)
            conn, reused = await self._acquire(fresh=True)
            assert conn.transport is not None  # noqa: S101 - set when connected
            conn.transport.write(head + body)
            return await self._response(conn, method)
        except BaseException:
            self._discard(conn)
            raise

    async def _acquire(self, *, fresh: bool = False) -> tuple[_Connection, bool]:
        while not fresh and self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
            self._discard(conn)
        while self._open >= self._limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif not waiter.cancelled():
                    self._wake_one()  # it was our turn: pass it on
                raise
            if not fresh and self._idle:
                return await self._acquire()
        self._open += 1
        conn = _Connection(self._generation)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.get_running_loop().create_connection(
                    lambda: conn, self._host, self._port
                )
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        return conn, False

    def release(self, conn: _Connection) -> None:
        """The exchange on ``conn`` is over and it may carry the next one."""
        if conn.closed or conn.buffer or conn.generation != self._generation:
            self._discard(conn)
            return
        self._idle.append(conn)
        self._wake_one()

    def _discard(self, conn: _Connection) -> None:
        if conn.transport is not None and not conn.transport.is_closing():
            conn.abort()
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.transport is not None:
            conn.transport = None
            self._open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close the idle connections; busy ones close when their exchange ends."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    async def _response(self, conn: _Connection, method: str) -> HttpResponse:
        while True:
            end = conn.buffer.find(b"\r\n\r\n")
            while end < 0:
                if len(conn.buffer) > _MAX_HEAD:
                    raise _TargetProtocolError("response head over 64 KiB")
                await conn.more(self.read_timeout)
                end = conn.buffer.find(b"\r\n\r\n")
            if end > _MAX_HEAD:
                raise _TargetProtocolError("response head over 64 KiB")
            head = bytes(conn.buffer[:end]).decode("utf-8", "surrogateescape")
            del conn.buffer[: end + 4]
            conn.consumed()
            lines = head.split("\r\n")
            match = _STATUS_LINE.fullmatch(lines[0])
            if match is None:
                raise _TargetProtocolError("bad status line")
            status = int(match.group(2))
            if 100 <= status < 200 and status != 101:
                continue  # interim responses (100 Continue, 103 Early Hints) are skipped
            break
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked = False
        keep_alive = match.group(1) == "1"
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or _TOKEN.fullmatch(name) is None:
                raise _TargetProtocolError("bad header line")
            value = value.strip(" \t")
            headers.append((name, value))
            lname = name.lower()
            if lname == "content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise _TargetProtocolError("bad Content-Length")
                length = int(value)
            elif lname == "transfer-encoding":
                chunked = value.lower().rsplit(",", 1)[-1].strip() == "chunked"
                if not chunked:
                    keep_alive = False  # the body ends when the connection does
            elif lname == "connection":
                tokens = {t.strip().lower() for t in value.split(",")}
                if "close" in tokens:
                    keep_alive = False
                elif "keep-alive" in tokens and match.group(1) == "0":
                    keep_alive = True
        reason = match.group(3) or ""
        if method == "HEAD" or status in (204, 304) or status < 200:
            if not keep_alive or status == 101:
                self._discard(conn)
            else:
                self.release(conn)
            return HttpResponse(status, headers, b"", reason)
        if chunked:
            length = None
        elif length is None:
            keep_alive = False  # read until the target closes
        if length is not None and length <= INLINE_BODY_LIMIT:
            # Small and of known size: read it, so the answer can go inline (HC §4).
            while len(conn.buffer) < length:
                if conn.closed:
                    raise _TargetProtocolError("the target closed the connection mid-body")
                await conn.more(self.read_timeout)
            body = bytes(conn.buffer[:length])
            del conn.buffer[:length]
            if keep_alive:
                self.release(conn)
            else:
                self._discard(conn)
            return HttpResponse(status, headers, body, reason)
        stream = _PoolBody(self, conn, length=length, chunked=chunked, keep_alive=keep_alive)
        return HttpResponse(status, headers, stream, reason)


class _PoolBody:
    """Streams a response body off a pool connection (length, chunked, or until close),
    then hands the connection back. A class for the reason :class:`_TargetBody` is."""

    __slots__ = ("_chunked", "_conn", "_done", "_keep_alive", "_pool", "_remaining")

    def __init__(
        self,
        pool: _Pool,
        conn: _Connection,
        *,
        length: int | None,
        chunked: bool,
        keep_alive: bool,
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._remaining = length  # of this chunk (chunked) or of the body; None: until close
        self._chunked = chunked
        self._keep_alive = keep_alive
        self._done = False

    def __aiter__(self) -> _PoolBody:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await (self._next_chunked() if self._chunked else self._next_plain())
        except (TimeoutError, _TargetProtocolError) as exc:
            self._finish(reuse=False)
            raise BadGatewayError(f"target response failed: {exc!r}") from exc
        if not chunk:
            self._finish(reuse=self._keep_alive)
            raise StopAsyncIteration
        return chunk

    async def _take(self, limit: int | None) -> bytes:
        """Up to ``limit`` buffered bytes (waiting for some); b"" at the connection's end."""
        conn = self._conn
        while not conn.buffer:
            if conn.closed:
                return b""
            await conn.more(self._pool.read_timeout)
        if limit is None or limit >= len(conn.buffer):
            data = bytes(conn.buffer)
            conn.buffer.clear()
        else:
            data = bytes(conn.buffer[:limit])
            del conn.buffer[:limit]
        conn.consumed()
        return data

    async def _next_plain(self) -> bytes:
        if self._remaining == 0:
            return b""
        data = await self._take(self._remaining)
        if self._remaining is not None:
            if not data:
                raise _TargetProtocolError("the target closed the connection mid-body")
            self._remaining -= len(data)
        return data

    async def _line(self) -> str:
        conn = self._conn
        while (end := conn.buffer.find(b"\r\n")) < 0:
            if len(conn.buffer) > _MAX_HEAD or conn.closed:
                raise _TargetProtocolError("bad chunked body")
            await conn.more(self._pool.read_timeout)
        line = bytes(conn.buffer[:end]).decode("latin-1")
        del conn.buffer[: end + 2]
        return line

    async def _next_chunked(self) -> bytes:
        while not self._remaining:
            if self._remaining == 0 and await self._line():  # the CRLF after a chunk's data
                raise _TargetProtocolError("bad chunked body")
            size_text = (await self._line()).split(";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise _TargetProtocolError("bad chunk size") from exc
            if size == 0:
                while await self._line():  # trailers, up to the empty line
                    pass
                return b""
            self._remaining = size
        data = await self._take(self._remaining)
        if not data:
            raise _TargetProtocolError("the target closed the connection mid-body")
        self._remaining -= len(data)  # at 0, the CRLF after the data is read next time
        return data

    def _finish(self, *, reuse: bool) -> None:
        if self._done:
            return
        self._done = True
        if reuse:
            self._pool.release(self._conn)
        else:
            self._pool._discard(self._conn)

    async def aclose(self) -> None:
        # Unread data left: the connection cannot be reused.
        self._finish(reuse=False)
