"""connect(): a sender's WebSocket to a hybrid connection, as a RelayStream (HC §2.3).

    async with connect("ws://127.0.0.1:8080", "mqtt", key_name="send", key=KEY) as stream:
        await stream.send(b"hello")
        reply = await stream.recv()

``connect`` may also be awaited directly; then the caller closes the stream.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Generator, Mapping, Sequence
from types import TracebackType

from hybridrelay.protocol.addresses import connect_uri
from hybridrelay.protocol.sas import SasTokenProvider, TokenProvider, audience_for
from hybridrelay.wsclient import DEFAULT_MAX_SIZE, WsConnection, ws_connect

__all__ = ["RelayStream", "connect", "send_url"]

RelayStream = WsConnection


def send_url(relay: str, hc: str, *, tracking_id: str | None = None) -> str:
    """The sender address ``{relay}/$hc/{hc}?sb-hc-action=connect``."""
    return connect_uri(relay, hc, tracking_id)


# Senders open connection after connection to the same place: build and parse it once.
@functools.lru_cache(maxsize=256)
def _send_url(relay: str, hc: str, tracking_id: str | None) -> str:
    return send_url(relay, hc, tracking_id=tracking_id)


@functools.lru_cache(maxsize=256)
def _audience(url: str) -> str:
    return audience_for(url)


class _Connect:
    def __init__(self, url: str, headers: dict[str, str], **options: object) -> None:
        self._url = url
        self._headers = headers
        self._options = options
        self._stream: WsConnection | None = None

    async def _open(self) -> WsConnection:
        return await ws_connect(self._url, headers=self._headers, **self._options)  # type: ignore[arg-type] # options are ws_connect's keywords, checked by connect()'s signature

    def __await__(self) -> Generator[object, None, WsConnection]:
        return self._open().__await__()

    async def __aenter__(self) -> WsConnection:
        self._stream = await self._open()
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stream is not None:
            await self._stream.close()


def connect(
    relay: str,
    hc: str,
    *,
    key_name: str | None = None,
    key: str | None = None,
    token_provider: TokenProvider | None = None,
    subprotocols: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    open_timeout: float = 30.0,
    ping_interval: float | None = None,
    stream_mode: bool = False,
    tracking_id: str | None = None,
    max_size: int | None = DEFAULT_MAX_SIZE,
) -> _Connect:
    """Open a relayed connection to the listener of ``hc``.

    Args:
        relay: relay base URL (``ws://host:port`` or ``wss://host``).
        hc: hybrid connection name.
        key_name, key: SAS rule with the Send right (or pass ``token_provider``);
            omit both for hybrid connections that allow anonymous senders.
        subprotocols: offered ``Sec-WebSocket-Protocol`` values; the listener picks one.
        headers: extra request headers; they reach the listener in ``connectHeaders``.
        open_timeout: how long to wait for the listener to accept (the relay gives up at 30 s).
        stream_mode: keep sending after the peer's close (half-close) for byte bridges.
        max_size: the largest message ``stream.recv()`` assembles, in bytes (default 1 MiB,
            ``hybridrelay.wsclient.DEFAULT_MAX_SIZE``; None: no limit). A larger one closes
            the stream with 1009 and raises PayloadTooBigError; ``recv_stream()``,
            ``recv_fragments()`` and ``read()`` stream messages of any size.

    Returns:
        An awaitable async context manager yielding the :data:`RelayStream`.

    Raises:
        HandshakeError: the relay answered with an HTTP status (401, 403, 404, 504, or the
            listener's own rejection status).
    """
    url = _send_url(relay, hc, tracking_id)
    if token_provider is None and key_name is not None and key is not None:
        token_provider = SasTokenProvider(key_name, key)
    all_headers = dict(headers or {})
    if token_provider is not None:
        all_headers["ServiceBusAuthorization"] = token_provider.token_for(
            _audience(url), time.time()
        )
    return _Connect(
        url,
        all_headers,
        subprotocols=tuple(subprotocols),
        ssl=ssl_context,
        open_timeout=open_timeout,
        ping_interval=ping_interval,
        auto_close_echo=not stream_mode,
        max_size=max_size,
    )
