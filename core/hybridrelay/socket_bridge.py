"""Byte bridge between a TCP or unix socket and a relayed WebSocket, made of callbacks.

The same contract as :func:`hybridrelay.bridge.bridge` (half-close both ways, the same
close codes, resets and stats), without asyncio streams and without a task per
direction: :class:`SocketBridge` is the socket's protocol and the WebSocket's payload
sink (:meth:`~hybridrelay.wsclient.WsConnection.attach_sink`), so a byte read on one
side is written to the other in the callback that read it.

- Socket -> WebSocket: each read (into one buffer shared by every bridge of the thread:
  masking copies what goes out, RFC 6455 §5.3) is one BINARY message, its header and
  payload handed to the transport together. While the WebSocket's write buffer is over
  its high-water mark the socket is not read, so the kernel coalesces what the app
  writes meanwhile into the next read. At the socket's EOF our close frame (1000) goes
  out and the WebSocket keeps receiving: a half-close (HC Part 1 §5).
- WebSocket -> socket: the payload of all the frames of one WebSocket read is one
  socket write: views of the read, not copies (:meth:`Connection.payload_views
  <hybridrelay.protocol.connection.Connection.payload_views>`), gathered by
  ``writelines`` (uvloop does not join them). While the socket's write buffer is over its
  high-water mark the WebSocket is not read. At the peer's close frame (1000, 1001 or
  none) the socket gets EOF, and keeps being read.

When both directions have ended both ends are closed. A socket error closes the
WebSocket with 1011 (or drops it, when our 1000 is out already); a WebSocket error resets
the socket, so that a cut-off stream does not look complete. Memory stays bounded by the
two transports' high-water marks plus one read each way.

Use it as the protocol of the socket (``loop.create_server(SocketBridge, ...)`` in the
forwarder, ``loop.create_connection(SocketBridge, ...)`` in the agent); what arrives
before :meth:`SocketBridge.run` is held, up to ``chunk_size`` bytes before the socket
stops being read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable
from typing import Final, Literal, TypeAlias

from hybridrelay.bridge import BridgeStats
from hybridrelay.errors import ConnectionClosedError
from hybridrelay.logs import BRIDGE
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.wsclient import WsConnection

__all__ = ["DEFAULT_CHUNK_SIZE", "SocketBridge"]

logger = logging.getLogger(BRIDGE)

DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
"""The largest socket read, so the largest message sent. A read returns what the socket
has, so this only matters in bulk: 1 MiB took about 0.3 CPU-s per GB off forward ->
relay -> agent against 256 KiB (bench.peer, four paired runs), for at most one such
message per connection in the WebSocket's write buffer (its high-water mark is 64 KiB)."""

# Close codes after which the peer's data is complete, so the socket gets a clean EOF.
_CLEAN_CLOSE_CODES: Final = frozenset({1000, 1001, 1005})
_SOCKET_CLOSE_TIMEOUT: Final = 10.0

_Outcome: TypeAlias = Literal["done", "stream", "ws", "idle"]

# Why the socket is not being read (any of them): not started, the WebSocket is full.
_HOLD_START: Final = 1
_HOLD_WS_FULL: Final = 2


class _ReadBuffer(threading.local):
    """One read buffer per thread: a read is consumed (masked into a new buffer) in the
    callback that made it, so one buffer serves every bridge of an event loop."""

    def __init__(self) -> None:
        self.size = 0
        self.view = memoryview(bytearray())

    def get(self, size: int) -> memoryview:
        if self.size < size:
            self.size = size
            self.view = memoryview(bytearray(size))
        return self.view[:size]


_read_buffer = _ReadBuffer()


class SocketBridge(asyncio.BufferedProtocol):
    """The socket side's protocol and the WebSocket's payload sink, for one connection.

    Args:
        chunk_size: Largest socket read, so the largest message sent; also how much
            is held before :meth:`run`.
        on_connect: Called with the bridge once its socket is connected (a server's
            cue to open the WebSocket and call :meth:`run`).
    """

    def __init__(
        self,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_connect: Callable[[SocketBridge], object] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._loop = asyncio.get_running_loop()
        self._chunk_size = chunk_size
        self._on_connect = on_connect
        self.stats = BridgeStats()
        self._transport: asyncio.Transport | None = None
        self._ws: WsConnection | None = None
        self._holds = _HOLD_START
        self._paused = False  # reading the socket
        self._held: list[bytes] = []  # read before run(), for the WebSocket
        self._held_size = 0
        self._eof = False  # the socket's EOF arrived
        self._lost = False  # the socket is gone
        self._lost_error: Exception | None = None
        self._eof_written = False
        self._half_closed = False  # our close frame is out
        self._outcome: asyncio.Future[_Outcome] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._idle_timeout: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0

    # ------------------------------------------------------------------ running

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    def peername(self) -> object:
        """The socket's peer address (None once it is gone)."""
        if self._transport is None:
            return None
        return self._transport.get_extra_info("peername")

    async def run(self, ws: WsConnection, *, idle_timeout: float | None = None) -> BridgeStats:
        """Bridge the socket and ``ws`` until both directions have ended.

        Args:
            ws: An open connection made with ``auto_close_echo=False``.
            idle_timeout: Close both ends (WebSocket code 1001) when no byte moved either
                way for this long; None waits forever.

        Returns:
            Byte counts and the WebSocket peer's close code. Network errors on either
            side end the bridge normally; they are not raised.

        Raises:
            ValueError: ``ws`` answers close frames at once (``auto_close_echo=True``).
            RuntimeError: The bridge ran already, or the socket never connected.
            asyncio.CancelledError: The bridge was cancelled; both ends are aborted first.
        """
        if ws.auto_close_echo:
            raise ValueError("a bridge needs a WebSocket made with auto_close_echo=False")
        if self._ws is not None or self._transport is None:
            raise RuntimeError("SocketBridge.run() needs a connected socket, once")
        self._ws = ws
        try:
            self._start(ws, idle_timeout)
            outcome = await self._outcome
            self._stop_callbacks(ws)
            await self._finish(ws, outcome)
        except BaseException:
            # Cancelled (or a bug): drop both ends without waiting on the network.
            self._stop_callbacks(ws)
            ws.abort()
            self.abort()
            raise
        self.stats.close_code = ws.close_code
        return self.stats

    def abort(self) -> None:
        """Drop the socket now (a bridge that never ran, or one being cancelled)."""
        if self._transport is not None and not self._lost:
            self._transport.abort()

    def close(self) -> None:
        """Close the socket of a bridge that will not run (its WebSocket was refused): what
        is buffered is sent, then FIN."""
        if self._transport is not None and not self._lost:
            self._transport.close()

    def _start(self, ws: WsConnection, idle_timeout: float | None) -> None:
        held, self._held, self._held_size = self._held, [], 0
        for data in held:
            self._send(ws, data)
        if self._eof:
            self._socket_eof(ws)
        if self._lost:
            self._socket_lost()
        if idle_timeout is not None:
            self._idle_timeout = idle_timeout
            self._last_activity = self._loop.time()
            self._idle_timer = self._loop.call_later(idle_timeout, self._idle_check)
        ws.attach_sink(self)  # hands over what it holds, maybe its close
        self._unhold(_HOLD_START)

    def _stop_callbacks(self, ws: WsConnection) -> None:
        ws.detach_sink()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _end(self, outcome: _Outcome) -> None:
        if not self._outcome.done():
            self._outcome.set_result(outcome)

    async def _finish(self, ws: WsConnection, outcome: _Outcome) -> None:
        if outcome == "ws":
            logger.debug("! bridge WebSocket side failed: code %s", ws.close_code)
            self._reset()  # a truncated stream must not look complete
            await ws.close()
        elif outcome == "stream":
            logger.debug("! bridge socket side failed: %r", self._lost_error)
            self.abort()
            if self._half_closed:
                # Our 1000 is out already, so 1011 can't be said: dropping the connection
                # is the only way left to tell the peer its data went nowhere.
                ws.abort()
            await ws.close(CloseCode.INTERNAL_ERROR, "target connection lost")
        elif outcome == "idle":
            logger.info("%% bridge idle for %ss, closing", self._idle_timeout)
            await ws.close(CloseCode.GOING_AWAY, "idle timeout")
            await self._close_socket()
        else:
            await ws.close()  # both close frames are out: waits for TCP to end
            await self._close_socket()

    async def _close_socket(self) -> None:
        transport = self._transport
        if transport is None or self._lost:
            return
        transport.close()
        try:
            async with asyncio.timeout(_SOCKET_CLOSE_TIMEOUT):
                await asyncio.shield(self._closed)
        except TimeoutError:
            transport.abort()

    def _reset(self) -> None:
        """Drop the socket so that a TCP peer sees a reset (SO_LINGER 0), not a clean EOF."""
        transport = self._transport
        if transport is None or self._lost:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _idle_check(self) -> None:
        timeout = self._idle_timeout
        if timeout is None:
            return
        remaining = self._last_activity + timeout - self._loop.time()
        if remaining <= 0:
            self._idle_timer = None
            self._end("idle")
        else:
            self._idle_timer = self._loop.call_later(remaining, self._idle_check)

    # ------------------------------------------------------------------ socket -> WebSocket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (create_server/create_connection); uvloop's don't subclass
        # asyncio's. Not read until run(): the first read goes to the hold.
        self._transport = transport  # type: ignore[assignment]  # see above
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._on_connect is not None:
            self._on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer = _read_buffer.get(self._chunk_size)
        if self._ws is None:
            # Before run(): read no more than the hold has room for, so that it never
            # holds more than chunk_size (a whole chunk on top of a nearly full hold was
            # almost twice that, per connection waiting for its WebSocket).
            return buffer[: max(1, self._chunk_size - self._held_size)]
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = _read_buffer.view[:nbytes]
        ws = self._ws
        if ws is None:  # before run(): held, a copy (the buffer is shared)
            self._held.append(bytes(data))
            self._held_size += nbytes
            if self._held_size >= self._chunk_size:
                self._hold(_HOLD_START)
            return
        if self._outcome.done():
            return  # closing: nothing goes anywhere any more
        self._send(ws, data)

    def _send(self, ws: WsConnection, data: bytes | memoryview) -> None:
        try:
            ws.send_nowait(data)
        except ConnectionClosedError:
            self._end("ws")
            return
        self.stats.bytes_up += len(data)
        if self._idle_timeout is not None:
            self._last_activity = self._loop.time()

    def eof_received(self) -> bool:
        self._eof = True
        ws = self._ws
        if ws is not None and not self._outcome.done():
            self._socket_eof(ws)
        return True  # keep the socket open: the other direction goes on

    def _socket_eof(self, ws: WsConnection) -> None:
        # EOF from the socket: half-close the WebSocket (NET's CloseOutputAsync).
        if self._half_closed:
            return
        self._half_closed = True
        ws.close_write_nowait(1000)
        self._check_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._lost_error = exc
        if not self._closed.done():
            self._closed.set_result(None)
        if self._ws is not None:
            self._socket_lost()

    def _socket_lost(self) -> None:
        if not (self._half_closed and self._eof_written):
            self._end("stream")

    def pause_writing(self) -> None:
        # The socket's write buffer is over its mark: stop reading the WebSocket.
        if self._ws is not None and not self._outcome.done():
            self._ws.hold_reading(True)

    def resume_writing(self) -> None:
        if self._ws is not None and not self._outcome.done():
            self._ws.hold_reading(False)

    def _hold(self, reason: int) -> None:
        self._holds |= reason
        self._sync_reading()

    def _unhold(self, reason: int) -> None:
        self._holds &= ~reason
        self._sync_reading()

    def _sync_reading(self) -> None:
        transport = self._transport
        # After EOF the transport reads no more; resuming it would read the EOF again.
        if transport is None or self._lost or self._eof:
            return
        pause = bool(self._holds)
        if pause != self._paused:
            self._paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # ------------------------------------------------------------------ WebSocket -> socket

    def ws_data(self, parts: list[bytes | memoryview]) -> None:
        transport = self._transport
        if self._outcome.done() or transport is None or self._lost:
            return
        if len(parts) == 1:
            data = parts[0]
            transport.write(data)
            self.stats.bytes_down += len(data)
        else:
            transport.writelines(parts)  # uvloop: one writev, nothing joined
            self.stats.bytes_down += sum(map(len, parts))
        if self._idle_timeout is not None:
            self._last_activity = self._loop.time()

    def ws_ended(self) -> None:
        ws = self._ws
        if ws is None or self._outcome.done():
            return
        code = ws.close_code
        if code not in _CLEAN_CLOSE_CODES:
            # Lost or failed without the peer's close, or closed with an error code.
            self._end("ws")
            return
        if self._eof_written:
            return
        # The peer's close: half-close the socket and keep the other direction going.
        self._eof_written = True
        transport = self._transport
        if transport is not None and not self._lost and transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError as exc:
                self._lost_error = exc
                self._end("stream")
                return
        self._check_done()

    def ws_writable(self, writable: bool) -> None:
        if writable:
            self._unhold(_HOLD_WS_FULL)
        else:
            self._hold(_HOLD_WS_FULL)

    def _check_done(self) -> None:
        if self._half_closed and self._eof_written:
            self._end("done")
