"""HttpTarget: the HTTP handler that forwards relayed requests to a local HTTP service.

The usual request to an ``http://`` service (a body of known size, a plain target and
headers) goes over :class:`~hybridrelay.listener.http_pool.HttpPool`'s own keep-alive
connections, at about a third of aiohttp's cost per request; the rest (``https://``,
streamed uploads, anything aiohttp would quote, refuse or rewrite) through one pooled
``aiohttp.ClientSession``. Either way a failing service is a 502 with a JSON error body.

The request and response types live in :mod:`~hybridrelay.listener.http_messages`; they
are importable from here as well, as they always were.
"""

from __future__ import annotations

import ssl
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from hybridrelay.errors import BadGatewayError
from hybridrelay.listener.http_messages import (
    HeadersLike,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    RequestBody,
    ResponseBody,
    build_request,
    close_body,
    error_response,
    forwardable_request_headers,
    response_header_map,
    sender_address_headers,
)
from hybridrelay.listener.http_pool import HttpPool
from hybridrelay.protocol.codes import fits_inline

__all__ = [
    "HeadersLike",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "HttpTarget",
    "RequestBody",
    "ResponseBody",
    "build_request",
    "close_body",
    "error_response",
    "forwardable_request_headers",
    "response_header_map",
    "sender_address_headers",
]

# Headers aiohttp would add on its own; the sender's own values (if any) pass through.
_NO_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


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
        # http:// targets: plain requests over HttpPool, the rest through aiohttp (see the
        # module's docstring). Each keeps at most ``limit`` connections.
        self._pool: HttpPool | None = None
        url = URL(self.base_url)
        if parts.scheme == "http" and url.raw_host and url.raw_host.isascii():
            host = url.raw_host
            netloc = f"[{host}]" if ":" in host else host
            if not url.is_default_port():
                netloc += f":{url.port}"
            self._pool = HttpPool(
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
        elif fits_inline(response.content_length):
            # Small and of known size: read it, so the answer can go inline (HC §4).
            try:
                body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                response.close()
                return error_response(502, "TargetError", f"{self}: {type(exc).__name__}")
        else:
            body = _TargetBody(response)
        return HttpResponse(response.status, list(response.headers.items()), body, response.reason)

    async def _lean(self, pool: HttpPool, request: HttpRequest, head: bytearray) -> HttpResponse:
        data = await request.read()
        try:
            return await pool.send(head, data, request.method)
        except TimeoutError:
            return error_response(502, "TargetTimeout", f"{self} did not answer in time")
        except (OSError, BadGatewayError) as exc:
            return error_response(502, "TargetUnreachable", f"{self}: {type(exc).__name__}")

    async def aclose(self) -> None:
        """Close the pooled connections; a later request opens a new pool."""
        if self._pool is not None:
            self._pool.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
