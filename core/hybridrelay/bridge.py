"""Byte bridge between a WebSocket and a TCP (or unix) stream, for the listener and the forwarder.

Both directions run at once and end on their own, the way TCP half-close works and
the way NET and azbridge use Hybrid Connections (HC Part 1 §5):

- TCP → WebSocket: each chunk read from the stream is one BINARY message. At the
  stream's EOF we send our close frame (1000) and keep receiving: a half-close.
- WebSocket → TCP: payload is written to the stream with backpressure (drain).
  At the peer's close frame (1000, 1001 or none) we write EOF to the stream when
  it supports that, and keep sending.

When both directions have ended, both ends are closed. A TCP error closes the
WebSocket with 1011; a WebSocket error (lost connection, an error close code)
resets the TCP connection, so that a cut-off stream does not look complete.
Memory stays bounded: one chunk per direction in flight, plus the WebSocket's
``read_limit``.

The WebSocket must come from ``ws_connect(..., auto_close_echo=False)``, or the
peer's close would end our sending direction too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeAlias

from hybridrelay.errors import ConnectionClosedError
from hybridrelay.logs import BRIDGE
from hybridrelay.protocol.codes import CloseCode

__all__ = ["BridgeStats", "BridgeStream", "bridge"]

logger = logging.getLogger(BRIDGE)

# Close codes after which the peer's data is complete, so the stream gets a clean EOF.
_CLEAN_CLOSE_CODES: Final = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.NO_STATUS})
_STREAM_CLOSE_TIMEOUT: Final = 10.0

# How the two directions ended: both normally, or which side failed first.
_Outcome: TypeAlias = Literal["done", "stream", "ws", "idle"]


@dataclass(slots=True)
class BridgeStats:
    """What one bridged connection carried.

    Attributes:
        bytes_up: Bytes read from the stream and sent on the WebSocket.
        bytes_down: Bytes received on the WebSocket and written to the stream.
        close_code: The WebSocket peer's close code (1006 if the connection was lost).
    """

    bytes_up: int = 0
    bytes_down: int = 0
    close_code: int | None = None


class BridgeStream(Protocol):
    """The part of :class:`~hybridrelay.wsclient.WsConnection` that :func:`bridge` uses.

    A relayed stream, or a wrapper around one (a listener accept hook may wrap the
    stream, for example to compress it), must offer exactly this:

    - ``read()``: the next chunk of payload, ``b""`` once the peer's close arrived;
      raises ``ConnectionClosedError`` when the connection failed or was lost.
    - ``write(data)``: send ``data`` (one message); raises ``ConnectionClosedError``.
    - ``close_write(code)``: half-close, keep reading. ``close(code, reason)``: close
      and wait for the end. ``abort()``: drop the connection now.
    - ``close_code``/``close_reason``: the peer's close (1006 when lost, None while open);
      ``auto_close_echo``: must be False for a bridge (half-close allowed).
    """

    @property
    def auto_close_echo(self) -> bool: ...

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str: ...

    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close_write(self, code: int = CloseCode.NORMAL, reason: str = "") -> None: ...

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None: ...

    def abort(self) -> None: ...


class _StreamFailedError(Exception):
    """The TCP/unix side failed (reset, broken pipe)."""


class _WebSocketFailedError(Exception):
    """The WebSocket failed: lost, failed, or closed by the peer with an error code."""


class _IdleError(Exception):
    """Nothing moved in either direction for ``idle_timeout`` seconds."""


async def bridge(
    ws: BridgeStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    chunk_size: int = 65536,
    idle_timeout: float | None = None,
) -> BridgeStats:
    """Copy bytes both ways between ``ws`` and a stream until both directions have ended.

    Args:
        ws: An open connection made with ``auto_close_echo=False``, or a wrapper
            around one offering :class:`BridgeStream`.
        reader: The stream's reader.
        writer: The stream's writer; closed when the bridge returns.
        chunk_size: Largest read from the stream, so the largest message we send.
        idle_timeout: Close both ends (WebSocket code 1001) when no byte moved either
            way for this long; None waits forever.

    Returns:
        Byte counts and the WebSocket peer's close code. Network errors on either side
        end the bridge normally; they are not raised.

    Raises:
        ValueError: ``ws`` answers close frames at once (``auto_close_echo=True``).
        asyncio.CancelledError: The bridge was cancelled; both ends are aborted first.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if ws.auto_close_echo:
        raise ValueError("bridge() needs a WebSocket made with auto_close_echo=False")
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return await _Bridge(ws, reader, writer, chunk_size, idle_timeout).run()


class _Bridge:
    def __init__(
        self,
        ws: BridgeStream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        chunk_size: int,
        idle_timeout: float | None,
    ) -> None:
        self.ws = ws
        self.reader = reader
        self.writer = writer
        self.chunk_size = chunk_size
        self.idle_timeout = idle_timeout
        self.stats = BridgeStats()
        self.half_closed = False  # our close frame is out
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()

    async def run(self) -> BridgeStats:
        try:
            outcome = await self._pump()
            await self._finish(outcome)
        except BaseException:
            # Cancelled (or a bug): drop both ends without waiting on the network.
            self.ws.abort()
            self.writer.transport.abort()
            raise
        self.stats.close_code = self.ws.close_code
        return self.stats

    async def _pump(self) -> _Outcome:
        """Run both directions until both ended or one side failed."""
        outcome: _Outcome = "done"
        try:
            async with asyncio.TaskGroup() as tg:
                up = tg.create_task(self._stream_to_ws())
                down = tg.create_task(self._ws_to_stream())
                if self.idle_timeout is not None:
                    tg.create_task(self._watchdog(self.idle_timeout, {up, down}))
        except* _StreamFailedError as group:
            outcome = "stream"
            logger.debug("! bridge stream side failed: %s", group.exceptions[0])
        except* _WebSocketFailedError as group:
            outcome = "ws"  # wins over "stream": the WebSocket can't carry a 1011 anyway
            logger.debug("! bridge WebSocket side failed: %s", group.exceptions[0])
        except* _IdleError:
            outcome = "idle"
            logger.info("%% bridge idle for %ss, closing", self.idle_timeout)
        return outcome

    async def _finish(self, outcome: _Outcome) -> None:
        if outcome == "ws":
            _reset(self.writer)  # a truncated stream must not look complete
            await self.ws.close()
        elif outcome == "stream":
            self.writer.transport.abort()
            if self.half_closed:
                # Our 1000 is out already, so 1011 can't be said: dropping the connection
                # is the only way left to tell the peer its data went nowhere.
                self.ws.abort()
            await self.ws.close(CloseCode.INTERNAL_ERROR, "target connection lost")
        elif outcome == "idle":
            await self.ws.close(CloseCode.GOING_AWAY, "idle timeout")
            await self._close_stream()
        else:
            await self.ws.close()  # both close frames are out: waits for TCP to end
            await self._close_stream()

    async def _stream_to_ws(self) -> None:
        while True:
            try:
                data = await self.reader.read(self.chunk_size)
            except OSError as exc:
                raise _StreamFailedError(f"read: {exc!r}") from exc
            if not data:
                break
            self.last_activity = self.loop.time()
            try:
                await self.ws.write(data)
            except ConnectionClosedError as exc:
                raise _WebSocketFailedError(f"write: {exc}") from exc
            self.stats.bytes_up += len(data)
            self.last_activity = self.loop.time()
        # EOF from the stream: half-close the WebSocket (NET's CloseOutputAsync).
        self.half_closed = True
        await self.ws.close_write(CloseCode.NORMAL)

    async def _ws_to_stream(self) -> None:
        while True:
            try:
                data = await self.ws.read()
            except ConnectionClosedError as exc:
                raise _WebSocketFailedError(f"read: {exc}") from exc
            if not data:
                break
            self.last_activity = self.loop.time()
            try:
                self.writer.write(data)
                await self.writer.drain()
            except OSError as exc:
                raise _StreamFailedError(f"write: {exc!r}") from exc
            self.stats.bytes_down += len(data)
            self.last_activity = self.loop.time()
        code = self.ws.close_code
        if code not in _CLEAN_CLOSE_CODES:
            raise _WebSocketFailedError(f"peer closed with {code} {self.ws.close_reason!r}")
        # The peer's close: half-close the stream and keep the other direction going.
        if self.writer.can_write_eof():
            try:
                self.writer.write_eof()
            except OSError as exc:
                raise _StreamFailedError(f"write_eof: {exc!r}") from exc

    async def _watchdog(self, idle_timeout: float, directions: set[asyncio.Task[None]]) -> None:
        while True:
            remaining = self.last_activity + idle_timeout - self.loop.time()
            if remaining <= 0:
                raise _IdleError
            _done, pending = await asyncio.wait(directions, timeout=remaining)
            if not pending:
                return

    async def _close_stream(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(_STREAM_CLOSE_TIMEOUT):
                await self.writer.wait_closed()
        except TimeoutError:
            self.writer.transport.abort()
        except OSError as exc:
            logger.debug("! bridge stream close: %r", exc)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop a stream so that a TCP peer sees a reset (SO_LINGER 0), not a clean EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
