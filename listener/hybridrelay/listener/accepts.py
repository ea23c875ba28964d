"""Accepted connections: each ``accept`` (HC §2.2-2.5) bridged, handed over or rejected.

Each accepted connection is either bridged to a target (byte for byte to ``tcp://`` or
``unix://``, datagram by datagram to ``udp://``, see :mod:`~hybridrelay.listener.targets`)
or handed to a Python handler as a WebSocket stream. Accept hooks
(:mod:`~hybridrelay.listener.hooks`) run first and may reject the connection or wrap
its stream.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from hybridrelay.bridge import BridgeStream, bridge
from hybridrelay.datagram_bridge import DatagramBridge
from hybridrelay.errors import HandshakeError, HybridRelayError
from hybridrelay.listener.hooks import (
    Accept as AcceptVerdict,
    AcceptHook,
    AcceptRequest,
    Reject,
    StreamWrapper,
)
from hybridrelay.listener.rendezvous import Dialer
from hybridrelay.listener.stats import ListenerStats
from hybridrelay.listener.targets import (
    StreamTarget,
    TcpTarget,
    UdpConnection,
    UdpTarget,
    UnixTarget,
    open_bridge,
    open_stream,
)
from hybridrelay.logs import LISTENER, ConnectionLogger
from hybridrelay.protocol.messages import Accept
from hybridrelay.wsclient import WsConnection

__all__ = ["AcceptServer", "StreamHandler"]

log = logging.getLogger(LISTENER)

StreamHandler = Callable[[WsConnection, AcceptRequest], Awaitable[None]]

# RFC 6455 §4.1: every subprotocol a client offers is an RFC 7230 token.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class AcceptServer:
    """Serves the accepts of one listener: a target or a handler, after the hooks.

    Args:
        hc: The hybrid connection's name (for logs and hooks).
        target: Bridge every connection to this target, or
        handler: call this coroutine with each connection's stream.
        hooks: Accept hooks, run in order.
        select_subprotocol: Picks the subprotocol to answer from those offered.
        dial: How rendezvous addresses are dialled.
        stats: The listener's counters (accepted, rejected, active, bytes).
        idle: Set while no relayed stream is open.
        at_capacity: Whether the listener has more tasks than it may (503 then).
        connect_timeout: Bound on connecting to the target.
        udp_idle_timeout: A ``udp://`` stream idle this long is closed.
    """

    def __init__(
        self,
        hc: str,
        *,
        target: StreamTarget | None,
        handler: StreamHandler | None,
        hooks: Sequence[AcceptHook],
        select_subprotocol: Callable[[Sequence[str]], str | None],
        dial: Dialer,
        stats: ListenerStats,
        idle: asyncio.Event,
        at_capacity: Callable[[], bool],
        connect_timeout: float,
        udp_idle_timeout: float,
    ) -> None:
        self.hc = hc
        self._target = target
        self._handler = handler
        self._hooks = tuple(hooks)
        self._select = select_subprotocol
        self._dial = dial
        self.stats = stats
        self.idle = idle
        self._at_capacity = at_capacity
        self._connect_timeout = connect_timeout
        self._udp_idle_timeout = udp_idle_timeout

    async def handle(self, accept: Accept) -> None:
        """Serve one ``accept`` (HC §2.4); the top of its task."""
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
            if self._at_capacity():
                await self._reject(accept.address, Reject(503, "listener at capacity"), clog)
                return
            if not all(_TOKEN.fullmatch(p) for p in offered):
                # The sender's handshake is invalid: refuse it now (400), rather than fail
                # our own dial on it and leave the sender to wait out the rendezvous.
                clog.warning("accept_invalid_subprotocol", extra={"offered": repr(offered)[:200]})
                await self._reject(
                    accept.address, Reject(400, "invalid Sec-WebSocket-Protocol"), clog
                )
                return
            wrappers = await self._run_hooks(request, clog) if self._hooks else []
            if isinstance(wrappers, Reject):
                await self._reject(accept.address, wrappers, clog)
                return
            if self._target is not None:
                await self._bridge_to_target(self._target, accept, request, clog, wrappers)
            elif self._handler is not None:
                if wrappers:
                    clog.error("stream_wrap_needs_target")
                    await self._reject(accept.address, Reject(500, "listener misconfigured"), clog)
                    return
                await self._run_handler(self._handler, accept, request)
        except (OSError, TimeoutError, HybridRelayError) as exc:
            clog.warning("connection_failed", extra={"error": str(exc) or type(exc).__name__})
        except Exception:  # noqa: BLE001 - top of a stream task: the app's bug or ours, logged
            clog.exception("connection_crashed")

    async def _run_hooks(
        self, request: AcceptRequest, clog: ConnectionLogger
    ) -> Reject | list[StreamWrapper]:
        """The first Reject, or the wrappers of every Accept, in hook order.

        A hook that fails or returns something else rejects with 500: a broken policy
        must not let connections through.
        """
        wrappers: list[StreamWrapper] = []
        for hook in self._hooks:
            try:
                # object: hooks loaded from config files are not type checked.
                verdict: object = hook(request)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception:  # noqa: BLE001 - a plugin's bug; the sender gets a 500
                clog.exception("accept_hook_failed", extra={"hook": _name_of(hook)})
                return Reject(500, "accept hook failed")
            if isinstance(verdict, Reject):
                return verdict
            if isinstance(verdict, AcceptVerdict):
                if verdict.wrap is not None:
                    wrappers.append(verdict.wrap)
            elif verdict is not None:
                clog.error(
                    "accept_hook_bad_result",
                    extra={"hook": _name_of(hook), "type": type(verdict).__name__},
                )
                return Reject(500, "accept hook failed")
        return wrappers

    async def _rendezvous(
        self, accept: Accept, request: AcceptRequest, *, stream: bool
    ) -> WsConnection:
        chosen = self._select(request.subprotocols) if request.subprotocols else None
        return await self._dial.accept(accept.address, chosen, stream=stream)

    def _stream_started(self) -> None:
        self.stats.accepted += 1
        self.stats.active += 1
        self.idle.clear()

    def _stream_ended(self) -> None:
        self.stats.active -= 1
        if not self.stats.active:
            self.idle.set()

    async def _target_unreachable(
        self, target: StreamTarget, exc: Exception, accept: Accept, clog: ConnectionLogger
    ) -> None:
        """The target could not be opened: the sender gets 502 through the relay."""
        clog.warning("target_unreachable", extra={"target": str(target), "error": str(exc)})
        await self._reject(accept.address, Reject(502, "target unreachable"), clog)

    def _stream_closed(
        self, bytes_up: int, bytes_down: int, code: int | None, clog: ConnectionLogger
    ) -> None:
        """Count a finished byte stream (either bridge) and log its close."""
        self.stats.bytes_up += bytes_up
        self.stats.bytes_down += bytes_down
        clog.info(
            "connection_closed",
            extra={"bytes_up": bytes_up, "bytes_down": bytes_down, "code": code},
        )

    async def _bridge_to_target(
        self,
        target: StreamTarget,
        accept: Accept,
        request: AcceptRequest,
        clog: ConnectionLogger,
        wrappers: Sequence[StreamWrapper] = (),
    ) -> None:
        if isinstance(target, UdpTarget):
            await self._bridge_to_udp(target, accept, request, clog, wrappers)
            return
        if not wrappers:
            await self._bridge_socket(target, accept, request, clog)
            return
        # A wrapped stream (an accept hook's) is only a BridgeStream: the stream bridge.
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await open_stream(target)
        except (OSError, TimeoutError) as exc:
            await self._target_unreachable(target, exc, accept, clog)
            return
        try:
            ws = await self._rendezvous(accept, request, stream=True)
        except BaseException:
            writer.close()
            raise
        self._stream_started()
        clog.info("connection_accepted", extra={"target": str(target)})
        try:
            try:
                stream = _wrap(ws, wrappers)
            except BaseException:
                writer.transport.abort()
                ws.abort()
                raise
            result = await bridge(stream, reader, writer)
            self._stream_closed(result.bytes_up, result.bytes_down, result.close_code, clog)
        finally:
            self._stream_ended()

    async def _bridge_socket(
        self,
        target: TcpTarget | UnixTarget,
        accept: Accept,
        request: AcceptRequest,
        clog: ConnectionLogger,
    ) -> None:
        """The WebSocket straight to the target's socket (:mod:`hybridrelay.socket_bridge`)."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                local = await open_bridge(target)
        except (OSError, TimeoutError) as exc:
            await self._target_unreachable(target, exc, accept, clog)
            return
        try:
            ws = await self._rendezvous(accept, request, stream=True)
        except BaseException:
            local.close()
            raise
        self._stream_started()
        clog.info("connection_accepted", extra={"target": str(target)})
        try:
            result = await local.run(ws)
            self._stream_closed(result.bytes_up, result.bytes_down, result.close_code, clog)
        finally:
            self._stream_ended()

    async def _bridge_to_udp(
        self,
        target: UdpTarget,
        accept: Accept,
        request: AcceptRequest,
        clog: ConnectionLogger,
        wrappers: Sequence[StreamWrapper],
    ) -> None:
        """One connected UDP socket per relayed stream; datagrams framed both ways."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                udp = await UdpConnection.open(target)
        except (OSError, TimeoutError) as exc:
            await self._target_unreachable(target, exc, accept, clog)
            return
        try:
            ws = await self._rendezvous(accept, request, stream=True)
        except BaseException:
            udp.close()
            raise
        self._stream_started()
        clog.info("connection_accepted", extra={"target": str(target)})
        flow = DatagramBridge(udp.send, idle_timeout=self._udp_idle_timeout)
        udp.attach(flow.push)
        try:
            try:
                stream = _wrap(ws, wrappers)
            except BaseException:
                ws.abort()
                raise
            result = await flow.run(stream)
            self.stats.bytes_up += result.bytes_up
            self.stats.bytes_down += result.bytes_down
            self.stats.datagrams_dropped += result.dropped_up + result.dropped_down
            clog.info(
                "connection_closed",
                extra={
                    "datagrams_up": result.datagrams_up,
                    "datagrams_down": result.datagrams_down,
                    "dropped_up": result.dropped_up,
                    "dropped_down": result.dropped_down,
                    "udp_errors": udp.errors,
                    "outcome": result.outcome,
                    "code": result.close_code,
                },
            )
        finally:
            udp.close()
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
        try:
            ws = await self._dial.reject(address, reject.status, reject.description)
        except HandshakeError as exc:
            if exc.status != 410:  # 410 Gone is the relay's "rejection delivered" (HC §2.5)
                clog.warning("reject_failed", extra={"status": exc.status})
            else:
                clog.info("connection_rejected", extra={"status": reject.status})
            return
        ws.abort()
        clog.warning("reject_not_acknowledged")


def _wrap(ws: WsConnection, wrappers: Sequence[StreamWrapper]) -> BridgeStream:
    stream: BridgeStream = ws
    for wrapper in wrappers:
        stream = wrapper(stream)
    return stream


def _name_of(hook: object) -> str:
    name = getattr(hook, "__qualname__", None) or type(hook).__qualname__
    return f"{getattr(hook, '__module__', '?')}.{name}"
