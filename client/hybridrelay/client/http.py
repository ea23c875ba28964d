"""HTTP senders: plain HTTP(S) requests to a hybrid connection through the relay (HC §2.7).

    async with relay_session("http://127.0.0.1:8080", key_name="send", key=KEY) as relay:
        async with relay.request("POST", "api", "/items?x=1", data=b"...") as resp:
            body = await resp.read()

    async with request("GET", RELAY, "api", "/health", key_name=NAME, key=KEY) as resp:
        print(resp.status)

The request goes to ``{relay}/{hc}{path}`` (no ``$hc``) with a SAS token in the
``ServiceBusAuthorization`` header. The token's audience is the hybrid connection's
URL, ``http://{relay host}/{hc}``, as hyco-https' samples sign it: the relay accepts
a token for the entity for any suffix below it, and one token per entity (not per
path) keeps a token provider's cache small.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterable, Callable, Generator, Mapping
from types import TracebackType
from typing import Any, Final, TypeAlias
from urllib.parse import quote, urlsplit

import aiohttp

from hybridrelay.protocol.sas import SasTokenProvider, TokenProvider, audience_for

__all__ = ["RelayHttpClient", "http_url", "relay_session", "request"]

RequestData: TypeAlias = bytes | bytearray | str | AsyncIterable[bytes] | None
_SCHEMES: Final[Mapping[str, str]] = {
    "http": "http",
    "https": "https",
    "ws": "http",
    "wss": "https",
}


def http_url(relay: str, hc: str, path: str = "") -> str:
    """The HTTP-mode URL ``{relay}/{hc}{path}`` (HC §2.7).

    Args:
        relay: Relay base URL: ``http(s)://host[:port]``; ``ws(s)://`` is accepted and
            mapped to ``http(s)://``, so the URL given to listeners works too.
        hc: Hybrid connection name (may contain "/"); percent-encoded where needed.
        path: Path below the hybrid connection, starting with "/", optionally with a
            query; sent as given.

    Returns:
        The URL to send the request to.

    Raises:
        ValueError: ``relay`` is not an http/https/ws/wss URL or ``path`` does not
            start with "/" or "?".
    """
    if path and path[0] not in "/?":
        raise ValueError("path must start with '/' (or '?' for a query only)")
    return f"{_base(relay)}/{quote(hc.strip('/'), safe='/')}{path}"


def _base(relay: str) -> str:
    parts = urlsplit(relay)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"relay must be an http(s):// or ws(s):// URL, not {relay!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _provider(
    key_name: str | None, key: str | None, token_provider: TokenProvider | None
) -> TokenProvider | None:
    if token_provider is not None:
        return token_provider
    if key_name is not None and key is not None:
        return SasTokenProvider(key_name, key)
    if key_name is not None or key is not None:
        raise ValueError("give both key_name and key, or a token_provider")
    return None


def _headers(
    url_for_token: str, provider: TokenProvider | None, headers: Mapping[str, str] | None
) -> dict[str, str]:
    out = dict(headers or {})
    if provider is not None:
        out["ServiceBusAuthorization"] = provider.token_for(
            audience_for(url_for_token), time.time()
        )
    return out


class _ResponseContext:
    """``await`` it for the response, or ``async with`` it; closes a session it owns."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        owned: bool,
        method: str,
        url: str,
        options: dict[str, Any],
    ) -> None:
        self._get_session = session
        self._session: aiohttp.ClientSession | None = None
        self._owned = owned
        self._method = method
        self._url = url
        self._options = options
        self._response: aiohttp.ClientResponse | None = None

    async def _send(self) -> aiohttp.ClientResponse:
        # The session is made here, inside the event loop, not when request() is called.
        self._session = self._get_session()
        try:
            self._response = await self._session.request(self._method, self._url, **self._options)
        except BaseException:
            await self._close_session()
            raise
        return self._response

    async def _await(self) -> aiohttp.ClientResponse:
        response = await self._send()
        if self._owned:
            # The session goes away with this call, so the body is read now and stays
            # readable on the response (read(), text(), json()).
            try:
                await response.read()  # at the end of the body aiohttp frees the connection
            finally:
                await self._close_session()
        return response

    async def _close_session(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()

    def __await__(self) -> Generator[Any, None, aiohttp.ClientResponse]:
        return self._await().__await__()

    async def __aenter__(self) -> aiohttp.ClientResponse:
        return await self._send()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._response is not None:
                self._response.release()
        finally:
            await self._close_session()


class RelayHttpClient:
    """Sends HTTP requests to hybrid connections on one relay over one pooled session.

    Args:
        relay: Relay base URL (``http(s)://host[:port]`` or ``ws(s)://…``).
        key_name, key: A SAS rule with the Send right (or pass ``token_provider``); omit
            all three for hybrid connections that allow anonymous senders.
        token_provider: Issues the tokens instead of ``key_name``/``key``.
        session: Use this aiohttp session (not closed by :meth:`close`); by default one
            is created on first use and closed by :meth:`close`.
        ssl_context: TLS settings for an https relay (default: system trust store).
        timeout: aiohttp timeouts for each request (default: aiohttp's 5 minute total).
    """

    def __init__(
        self,
        relay: str,
        *,
        key_name: str | None = None,
        key: str | None = None,
        token_provider: TokenProvider | None = None,
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        _base(relay)  # fail early on a bad relay URL
        self.relay = relay
        self._tokens = _provider(key_name, key, token_provider)
        self._session = session
        self._owns_session = session is None
        self._ssl = ssl_context
        self._timeout = timeout

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    def request(
        self,
        method: str,
        hc: str,
        path: str = "/",
        *,
        headers: Mapping[str, str] | None = None,
        data: RequestData = None,
        **options: Any,
    ) -> _ResponseContext:
        """Send one request to ``{relay}/{hc}{path}``.

        Args:
            method: The HTTP method (not CONNECT; the relay refuses it).
            hc: Hybrid connection name.
            path: Path (and query) below the hybrid connection.
            headers: Extra request headers; they reach the listener in ``requestHeaders``.
            data: The body: bytes, str, or an async iterable of byte chunks, which is
                streamed (chunked) and relayed over a rendezvous socket.
            **options: More ``aiohttp.ClientSession.request`` keywords (``params``,
                ``timeout``, ``allow_redirects``...).

        Returns:
            An async context manager yielding the ``aiohttp.ClientResponse``; it may
            also be awaited for the response (then release it yourself).
        """
        url = http_url(self.relay, hc, path)
        options.update(headers=_headers(http_url(self.relay, hc), self._tokens, headers), data=data)
        return _ResponseContext(self._get_session, False, method, url, options)

    def get(self, hc: str, path: str = "/", **kwargs: Any) -> _ResponseContext:
        """``request("GET", …)``."""
        return self.request("GET", hc, path, **kwargs)

    def post(self, hc: str, path: str = "/", **kwargs: Any) -> _ResponseContext:
        """``request("POST", …)``."""
        return self.request("POST", hc, path, **kwargs)

    async def close(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RelayHttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def relay_session(
    relay: str,
    *,
    key_name: str | None = None,
    key: str | None = None,
    token_provider: TokenProvider | None = None,
    session: aiohttp.ClientSession | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: aiohttp.ClientTimeout | None = None,
) -> RelayHttpClient:
    """A :class:`RelayHttpClient`; use it as ``async with relay_session(…) as relay:``.

    Args: as for :class:`RelayHttpClient`.

    Returns:
        The client; leaving the ``async with`` block closes its pooled connections.
    """
    return RelayHttpClient(
        relay,
        key_name=key_name,
        key=key,
        token_provider=token_provider,
        session=session,
        ssl_context=ssl_context,
        timeout=timeout,
    )


def request(
    method: str,
    relay: str,
    hc: str,
    path: str = "/",
    *,
    key_name: str | None = None,
    key: str | None = None,
    token_provider: TokenProvider | None = None,
    headers: Mapping[str, str] | None = None,
    data: RequestData = None,
    session: aiohttp.ClientSession | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> _ResponseContext:
    """Send one HTTP request to a hybrid connection.

    Args:
        method: The HTTP method.
        relay: Relay base URL (``http(s)://host[:port]`` or ``ws(s)://…``).
        hc: Hybrid connection name.
        path: Path (and query) below the hybrid connection.
        key_name, key: A SAS rule with the Send right (or pass ``token_provider``).
        token_provider: Issues the token instead of ``key_name``/``key``.
        headers: Extra request headers.
        data: bytes, str, or an async iterable of byte chunks (streamed).
        session: Send on this aiohttp session; without one a session is opened for
            this request only.
        ssl_context: TLS settings for an https relay when no session is given.
        **options: More ``aiohttp.ClientSession.request`` keywords.

    Returns:
        ``async with request(…) as resp`` yields the ``aiohttp.ClientResponse`` and
        streams its body; ``resp = await request(…)`` returns it too, with the body
        already read when no ``session`` was given.

    Raises:
        ValueError: Bad relay URL or path, or only one of ``key_name``/``key``.
    """
    url = http_url(relay, hc, path)
    tokens = _provider(key_name, key, token_provider)
    options.update(headers=_headers(http_url(relay, hc), tokens, headers), data=data)
    if session is not None:
        given = session
        return _ResponseContext(lambda: given, False, method, url, options)

    def new_session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True)
        return aiohttp.ClientSession(connector=connector)

    return _ResponseContext(new_session, True, method, url, options)
