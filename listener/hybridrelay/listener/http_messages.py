"""HTTP mode's app-facing types: :class:`HttpRequest` in, :class:`HttpResponse` out.

The listener turns each ``request`` message (HC §3.2) and its body into an
:class:`HttpRequest` (:func:`build_request`), awaits an :data:`HttpHandler` and sends
the returned :class:`HttpResponse` back as a ``response`` message plus body (HC §3.3,
§4; :mod:`~hybridrelay.listener.exchange`). :class:`~hybridrelay.listener.http_target.HttpTarget`
is the handler that forwards to a local HTTP service.

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
from urllib.parse import parse_qsl, unquote

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from hybridrelay.protocol.http_response import is_field_value, is_token
from hybridrelay.protocol.messages import RemoteEndpoint, Request

__all__ = [
    "HeadersLike",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "RequestBody",
    "ResponseBody",
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


def _dropped_names(pairs: Iterable[tuple[str, str]]) -> AbstractSet[str]:
    named: set[str] = set()
    for name, value in pairs:
        # len() first: lower() for the one name in ten that could be "Connection".
        if len(name) == 10 and name.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return _CONNECTION_LEVEL | named if named else _CONNECTION_LEVEL


def _pairs(headers: HeadersLike) -> list[tuple[str, str]]:
    """The (name, value) pairs, for reading only (a list given is returned as it is)."""
    kind = type(headers)
    if kind is dict:  # decoded requestHeaders: no ABC check (isinstance(..., Mapping))
        return list(cast(dict[str, str], headers).items())
    if kind is list:  # a target's response headers
        return cast(list[tuple[str, str]], headers)
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
    return CIMultiDict([pair for pair in pairs if pair[0].lower() not in dropped])


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
    name = hc.strip("/")
    n = len(name) + 1
    if (
        name
        and "%" not in name
        and path[:1] == "/"
        and path.startswith(name, 1)
        and path[n : n + 1] in ("", "/")
    ):
        # Spelled as registered (the usual case): the comparison below would match.
        return path[n:] or "/"
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
