"""Listener: keeps one control channel open and serves every ``accept`` on it (HC §2.2-2.5).

Each accepted connection is either bridged byte for byte to a TCP target or
handed to a Python handler as a WebSocket stream. The control channel
reconnects with full-jitter backoff and never gives up on its own, except on
404 (the hybrid connection does not exist), which retrying cannot fix. Tokens
are renewed before they expire. ``stop`` drains: no new accepts, open streams
get ``drain_timeout`` seconds to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from hybridrelay.backoff import Backoff
from hybridrelay.bridge import bridge
from hybridrelay.errors import (
    ConnectionClosedError,
    EntityNotFoundError,
    HandshakeError,
    HybridRelayError,
)
from hybridrelay.listener.hooks import AcceptHook, AcceptRequest, Reject
from hybridrelay.logs import LISTENER, ConnectionLogger, redact_url
from hybridrelay.protocol.messages import Accept, RenewToken, Request, decode, encode
from hybridrelay.protocol.sas import TokenProvider, audience_for, token_expiry
from hybridrelay.wsclient import WsConnection, ws_connect

__all__ = ["Listener", "ListenerStats", "StreamHandler", "TcpTarget", "parse_target"]

log = logging.getLogger(LISTENER)

StreamHandler = Callable[[WsConnection, AcceptRequest], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TcpTarget:
    host: str
    port: int

    def __str__(self) -> str:
        return f"tcp://{self.host}:{self.port}"


def parse_target(url: str) -> TcpTarget:
    """Parse ``tcp://host:port``; raises ValueError with the reason."""
    parts = urlsplit(url)
    if parts.scheme != "tcp":
        raise ValueError(f"unsupported target scheme {parts.scheme!r} (expected tcp://host:port)")
    if not parts.hostname or parts.port is None:
        raise ValueError("target must be tcp://host:port")
    return TcpTarget(parts.hostname, parts.port)


@dataclass
class ListenerStats:
    connects: int = 0  # control channel connections made
    attempts: int = 0  # control channel connection attempts
    accepted: int = 0
    rejected: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class Listener:
    """Serves one hybrid connection.

    Args:
        relay: relay base URL, ``ws://host:port`` or ``wss://host``.
        hc: hybrid connection name (may contain ``/``).
        token_provider: issues SAS tokens with the Listen right.
        target: bridge every connection to this TCP target, or
        handler: call this coroutine with each connection's stream.
        hooks: accept hooks, run in order; the first :class:`Reject` wins.
        listener_id: sent as ``sb-hc-id``; random when omitted.
    """

    def __init__(
        self,
        relay: str,
        hc: str,
        *,
        token_provider: TokenProvider,
        target: TcpTarget | None = None,
        handler: StreamHandler | None = None,
        hooks: Sequence[AcceptHook] = (),
        listener_id: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ping_interval: float = 30.0,
        max_streams: int = 1024,
        connect_timeout: float = 10.0,
        drain_timeout: float = 10.0,
        backoff: Backoff | None = None,
        select_subprotocol: Callable[[Sequence[str]], str | None] | None = None,
    ) -> None:
        if (target is None) == (handler is None):
            raise ValueError("give exactly one of target= and handler=")
        self.relay = relay.rstrip("/")
        self.hc = hc.strip("/")
        self.listener_id = listener_id or str(uuid.uuid4())
        self._tokens = token_provider
        self._target = target
        self._handler = handler
        self._hooks = tuple(hooks)
        self._ssl = ssl_context
        self._ping_interval = ping_interval
        self._max_streams = max_streams
        self._connect_timeout = connect_timeout
        self._drain_timeout = drain_timeout
        self._backoff = backoff or Backoff()
        self._select = select_subprotocol or (lambda offered: offered[0] if offered else None)
        self._streams: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.idle = asyncio.Event()  # set while no relayed stream is open
        self.idle.set()
        self.stats = ListenerStats()
        self.listen_url = (
            f"{self.relay}/$hc/{quote(self.hc, safe='/')}?sb-hc-action=listen"
            f"&sb-hc-id={quote(self.listener_id, safe='')}"
        )
        self._log = ConnectionLogger(log, {"hc": self.hc, "listener": self.listener_id})

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; raises EntityNotFoundError if the relay says 404."""
        try:
            while not stop.is_set():
                delay = await self._connect_once(stop)
                if stop.is_set():
                    break
                self._log.info("reconnect_scheduled", extra={"delay_s": round(delay, 2)})
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
        finally:
            await self._drain()

    async def _connect_once(self, stop: asyncio.Event) -> float:
        """One control-channel session; returns how long to wait before the next."""
        self.stats.attempts += 1
        token = self._tokens.token_for(audience_for(self.listen_url), time.time())
        try:
            ws = await ws_connect(
                self.listen_url,
                headers={"ServiceBusAuthorization": token},
                ssl=self._ssl,
                open_timeout=self._connect_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_interval,
            )
        except HandshakeError as exc:
            if exc.status == 404:
                self._log.error(
                    "hybrid_connection_not_found", extra={"relay": redact_url(self.relay)}
                )
                raise EntityNotFoundError(
                    f"hybrid connection {self.hc!r} does not exist on {self.relay}"
                ) from exc
            if exc.status in (401, 403):
                self._log.error(
                    "listen_refused",
                    extra={"status": exc.status, "reason": exc.reason, "detail": exc.body[:200]},
                )
                return self._backoff.at_cap()
            self._log.warning("listen_failed", extra={"status": exc.status, "reason": exc.reason})
            return self._backoff.next_delay()
        except (OSError, TimeoutError, HybridRelayError) as exc:
            self._log.warning("relay_unreachable", extra={"error": str(exc) or type(exc).__name__})
            return self._backoff.next_delay()
        self.stats.connects += 1
        self._backoff.succeeded(time.monotonic())
        self._log.info("control_channel_open", extra={"relay": redact_url(self.relay)})
        self.connected.set()
        try:
            await self._serve(ws, stop, token)
        finally:
            self.connected.clear()
            self._backoff.failed(time.monotonic())
        return self._backoff.next_delay()

    async def _serve(self, ws: WsConnection, stop: asyncio.Event, token: str) -> None:
        async def close_on_stop() -> None:
            await stop.wait()
            await ws.close(1000, "listener stopping")

        closer = asyncio.create_task(close_on_stop())
        renewer = asyncio.create_task(self._renew_loop(ws, token))
        try:
            while True:
                message = await ws.recv()
                if isinstance(message, str):
                    self._on_control_message(message)
                # Binary messages are HTTP-mode request bodies (issue 3); not served here.
        except ConnectionClosedError as exc:
            level = logging.INFO if stop.is_set() else logging.WARNING
            self._log.log(
                level, "control_channel_closed", extra={"code": exc.code, "reason": exc.reason}
            )
        finally:
            for task in (closer, renewer):
                task.cancel()
            for task in (closer, renewer):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            ws.abort()

    async def _renew_loop(self, ws: WsConnection, token: str) -> None:
        while True:
            expiry = token_expiry(token)
            if expiry is None:
                return
            # Renew when a quarter of the lifetime is left, at least 30 s before expiry.
            lifetime = max(expiry - time.time(), 0.0)
            await asyncio.sleep(max(min(lifetime * 0.75, lifetime - 30.0), 1.0))
            token = self._tokens.token_for(audience_for(self.listen_url), time.time())
            try:
                await ws.send(encode(RenewToken(token=token)))
            except ConnectionClosedError:
                return
            self._log.info("token_renewed")

    async def _drain(self) -> None:
        if not self._streams:
            return
        self._log.info(
            "draining", extra={"open": len(self._streams), "deadline_s": self._drain_timeout}
        )
        _, pending = await asyncio.wait(set(self._streams), timeout=self._drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- accepts -----------------------------------------------------------------------

    def _on_control_message(self, text: str) -> None:
        try:
            message = decode(text)
        except HybridRelayError as exc:
            self._log.warning("control_message_invalid", extra={"error": str(exc)})
            return
        if isinstance(message, Accept):
            self._spawn(self._handle_accept(message))
        elif isinstance(message, Request):
            self._log.warning("http_request_unsupported", extra={"id": message.id})
        else:
            self._log.warning("unexpected_control_message", extra={"kind": type(message).__name__})

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def _handle_accept(self, accept: Accept) -> None:
        headers = {k.lower(): v for k, v in accept.connect_headers.items()}
        offered = tuple(
            p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()
        )
        request = AcceptRequest(
            hc=self.hc,
            id=accept.id,
            headers=headers,
            remote=accept.remote_endpoint,
            subprotocols=offered,
        )
        clog = ConnectionLogger(log, {"hc": self.hc, "conn": accept.id})
        try:
            if len(self._streams) > self._max_streams:
                await self._reject(accept.address, Reject(503, "listener at capacity"), clog)
                return
            for hook in self._hooks:
                verdict = hook(request)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                if isinstance(verdict, Reject):
                    await self._reject(accept.address, verdict, clog)
                    return
            if self._target is not None:
                await self._bridge_to_target(self._target, accept, request, clog)
            elif self._handler is not None:
                await self._run_handler(self._handler, accept, request)
        except (OSError, TimeoutError, HybridRelayError) as exc:
            clog.warning("connection_failed", extra={"error": str(exc) or type(exc).__name__})
        except Exception:  # noqa: BLE001 - top of a stream task: the app's bug or ours, logged
            clog.exception("connection_crashed")

    async def _rendezvous(
        self, accept: Accept, request: AcceptRequest, *, stream: bool
    ) -> WsConnection:
        chosen = self._select(request.subprotocols) if request.subprotocols else None
        return await ws_connect(
            accept.address,
            subprotocols=(chosen,) if chosen else (),
            ssl=self._ssl,
            open_timeout=self._connect_timeout,
            auto_close_echo=not stream,
        )

    def _stream_started(self) -> None:
        self.stats.accepted += 1
        self.stats.active += 1
        self.idle.clear()

    def _stream_ended(self) -> None:
        self.stats.active -= 1
        if not self.stats.active:
            self.idle.set()

    async def _bridge_to_target(
        self, target: TcpTarget, accept: Accept, request: AcceptRequest, clog: ConnectionLogger
    ) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(target.host, target.port)
        except (OSError, TimeoutError) as exc:
            clog.warning("target_unreachable", extra={"target": str(target), "error": str(exc)})
            await self._reject(accept.address, Reject(502, "target unreachable"), clog)
            return
        try:
            ws = await self._rendezvous(accept, request, stream=True)
        except BaseException:
            writer.close()
            raise
        self._stream_started()
        clog.info("connection_accepted", extra={"target": str(target)})
        try:
            result = await bridge(ws, reader, writer)
            self.stats.bytes_up += result.bytes_up
            self.stats.bytes_down += result.bytes_down
            clog.info(
                "connection_closed",
                extra={
                    "bytes_up": result.bytes_up,
                    "bytes_down": result.bytes_down,
                    "code": result.close_code,
                },
            )
        finally:
            self._stream_ended()

    async def _run_handler(
        self, handler: StreamHandler, accept: Accept, request: AcceptRequest
    ) -> None:
        ws = await self._rendezvous(accept, request, stream=False)
        self._stream_started()
        try:
            await handler(ws, request)
        finally:
            self._stream_ended()
            await ws.close()

    async def _reject(self, address: str, reject: Reject, clog: ConnectionLogger) -> None:
        self.stats.rejected += 1
        url = (
            f"{address}&sb-hc-statusCode={reject.status}"
            f"&sb-hc-statusDescription={quote(reject.description, safe='')}"
        )
        try:
            ws = await ws_connect(url, ssl=self._ssl, open_timeout=self._connect_timeout)
        except HandshakeError as exc:
            if exc.status != 410:  # 410 Gone is the relay's "rejection delivered" (HC §2.5)
                clog.warning("reject_failed", extra={"status": exc.status})
            else:
                clog.info("connection_rejected", extra={"status": reject.status})
            return
        ws.abort()
        clog.warning("reject_not_acknowledged")
