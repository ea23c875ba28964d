"""What the client WebSocket received and the application has not read yet, and the four
ways to read it.

The connection streams payload pieces (no size limit) into a deque of chunks. Reading
from the socket pauses above ``read_limit`` buffered bytes and resumes below half of it.
Text is decoded (so checked as UTF-8, RFC 6455 §8.1, close 1007) as it arrives.
Consumers pick their view of the same chunks: whole messages (``recv``), frames of one
message (``recv_fragments``), one message's payload as it arrives (``recv_stream``) or a
byte stream (``read``). Only ``recv`` assembles a whole message, so only it has a size
limit (``max_size``: the connection fails with 1009 before more than that is held).

:class:`ReceiveMixin` is a mixin of :class:`~hybridrelay.wsclient.WsConnection`, not an
object it owns: ``recv()`` is on the path of every message, and a delegating call
costs about 20 ns (a plain call returning the inner coroutine) to 70 ns (an ``await``)
per message, and an owned object would be one more per connection. Its state is set by
:meth:`ReceiveMixin._init_receiving`; what it uses of the connection is declared below.
"""

from __future__ import annotations

import asyncio
import codecs
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final, NamedTuple

from hybridrelay import errors
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.connection import Connection, Event, Frame
from hybridrelay.protocol.frames import Opcode

if TYPE_CHECKING:
    from hybridrelay.ws_sink import PayloadSink

__all__ = ["Chunk", "ReceiveMixin"]

_TEXT: Final = int(Opcode.TEXT)
_UTF8_DECODER: Final = codecs.getincrementaldecoder("utf-8")


class Chunk(NamedTuple):
    """A piece of received payload. ``data`` is str for text messages (already decoded)."""

    data: bytes | str
    size: int  # bytes on the wire, for flow control
    frame_end: bool
    message_end: bool


def _join(chunks: list[Chunk]) -> bytes | str:
    if chunks and isinstance(chunks[0].data, str):
        return "".join([c.data for c in chunks if isinstance(c.data, str)])
    return b"".join([c.data for c in chunks if isinstance(c.data, bytes)])


class ReceiveMixin:
    """The receiving half of :class:`~hybridrelay.wsclient.WsConnection`."""

    # The connection's, used here.
    _loop: asyncio.AbstractEventLoop
    _conn: Connection
    _read_limit: int
    _reading_paused: bool
    _write_paused: bool
    _draining: bool
    _sink: PayloadSink | None

    if TYPE_CHECKING:

        def _fail(self, code: int, reason: str) -> None: ...
        def _on_control_event(self, event: Event) -> bool: ...
        def _on_events_to_sink(self, events: list[Event], sink: PayloadSink) -> None: ...
        def _pause_reading(self) -> None: ...
        def _resume_reading(self) -> None: ...
        def _sync_reading(self) -> None: ...
        def _flush(self) -> None: ...

    def _init_receiving(self, max_size: int | None) -> None:
        self._max_size = max_size
        self._msg_text = False
        self._decoder: codecs.IncrementalDecoder | None = None  # made for the first text
        self._rx: deque[Chunk] = deque()
        self._rx_bytes = 0
        self._rx_eof = False
        self._rx_waiter: asyncio.Future[None] | None = None
        self._rx_busy = False
        self._rx_mid = False  # the consumer stopped inside a message
        self._discard = False  # close() was called: the application reads no more

    # ------------------------------------------------------------------ reading

    async def recv(self) -> bytes | str:
        """Return the next whole message: str for TEXT, bytes for BINARY.

        Cancelling recv() loses no data. If a :meth:`recv_fragments` loop stopped in the
        middle of a message, the rest of that message is skipped.

        Raises:
            ConnectionClosedError: The peer's close arrived (its code and reason), the
                connection failed, or it was lost (1006).
            PayloadTooBigError: The message is larger than ``max_size`` (the connection is
                failed with 1009).
        """
        if self._rx_mid:  # (no coroutine when there is nothing to skip)
            await self._skip_rest_of_message()
        chunks: list[Chunk] = []
        size = 0
        try:
            while True:
                chunk = await self._next_chunk()
                if chunk is None:
                    raise self._conn.closed_error()
                chunks.append(chunk)
                size += chunk.size
                if self._max_size is not None and size > self._max_size:
                    self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
                    raise errors.PayloadTooBigError(f"message over {self._max_size} bytes")
                if chunk.message_end:
                    return _join(chunks)
        except asyncio.CancelledError:
            self._unpop(chunks, mid=False)
            raise

    async def recv_fragments(self) -> AsyncIterator[bytes | str]:
        """Yield the frames of the next message as they arrive, one item per frame.

        Text frames are decoded incrementally, so a character split across two frames
        comes with the second. Consume the iterator to its end, or break out and the next
        recv() skips the rest of the message.

        Raises:
            ConnectionClosedError: As for :meth:`recv`, also in the middle of a message.
        """
        if self._rx_mid:  # (no coroutine when there is nothing to skip)
            await self._skip_rest_of_message()
        while True:
            parts: list[Chunk] = []
            mid = self._rx_mid
            try:
                while True:
                    chunk = await self._next_chunk()
                    if chunk is None:
                        raise self._conn.closed_error()
                    parts.append(chunk)
                    if chunk.frame_end:
                        break
            except asyncio.CancelledError:
                self._unpop(parts, mid=mid)
                raise
            yield _join(parts)
            if parts[-1].message_end:
                return

    async def recv_stream(self) -> AsyncIterator[bytes | str]:
        """Yield the payload of the next message as it arrives, in pieces of any size.

        Neither the message nor one of its frames is assembled: a message of any size
        streams through at most ``read_limit`` buffered bytes (no ``max_size`` applies).
        Text comes decoded, a character split across pieces with the later one. Consume
        the iterator to its end, or break out and the next recv() skips the rest.

        Raises:
            ConnectionClosedError: As for :meth:`recv`, also in the middle of a message.
        """
        if self._rx_mid:  # (no coroutine when there is nothing to skip)
            await self._skip_rest_of_message()
        while True:
            chunk = await self._next_chunk()
            if chunk is None:
                raise self._conn.closed_error()
            if chunk.data:
                yield chunk.data
            if chunk.message_end:
                return

    async def read(self) -> bytes:
        """Stream mode: return the next chunk of data payload, ignoring message boundaries.

        Returns ``b""`` once the peer's close frame arrived (then see ``close_code``).
        Don't mix with recv() on one connection.

        Raises:
            ConnectionClosedError: The connection failed or was lost without a close frame.
        """
        while True:
            chunk = await self._next_chunk()
            if chunk is None:
                if self._conn.close_received is not None:
                    return b""
                raise self._conn.closed_error()
            data = chunk.data
            if isinstance(data, str):
                data = data.encode("utf-8")
            if data:
                return data

    # ------------------------------------------------------------------ filling

    def _on_events(self, events: list[Event]) -> None:
        sink = self._sink
        if sink is not None:
            self._on_events_to_sink(events, sink)
            return
        rx = self._rx
        received = control = False
        for event in events:
            if type(event) is Frame:
                opcode, fin, _length, data, start, end = event
                if start and opcode:
                    self._msg_text = opcode == _TEXT
                    if self._msg_text and self._decoder is not None:
                        self._decoder.reset()
                if self._discard or (not data and not end):
                    continue
                message_end = end and fin
                item: bytes | str = data if isinstance(data, bytes) else bytes(data)
                if self._msg_text:
                    decoder = self._decoder
                    if decoder is None:
                        decoder = self._decoder = _UTF8_DECODER("strict")
                    try:
                        item = decoder.decode(data, message_end)
                    except UnicodeDecodeError:
                        # RFC 6455 §8.1: invalid UTF-8 fails the connection with 1007
                        self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                        break  # the frames after it were never parsed
                rx.append(Chunk(item, len(data), end, message_end))
                self._rx_bytes += len(data)
                received = True
                continue
            control = True  # data frames write nothing; the rest may (a pong, a close)
            if self._on_control_event(event):
                received = True
        if received:
            if self._rx_bytes > self._read_limit:
                self._pause_reading()
            self._wake_rx()
        if control:
            if self._write_paused:
                self._sync_reading()  # the Connection may hold a peer that does not read
            self._flush()

    def _discard_incoming(self) -> None:
        self._discard = self._draining = True
        self._rx.clear()
        self._rx_bytes = 0
        self._rx_eof = True
        self._wake_rx()
        self._resume_reading()

    def _wake_rx(self) -> None:
        waiter = self._rx_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ taking

    async def _next_chunk(self) -> Chunk | None:
        """Pop the next chunk, waiting for one; None at the end of incoming data."""
        # One receiver at a time; a plain try/finally, not a @contextmanager (a generator
        # per chunk, and the listener's control channel takes one chunk per request).
        if self._rx_busy:
            raise RuntimeError("another coroutine is already receiving on this connection")
        self._rx_busy = True
        try:
            while not self._rx:
                if self._rx_eof:
                    return None
                waiter = self._loop.create_future()
                self._rx_waiter = waiter
                try:
                    await waiter
                finally:
                    self._rx_waiter = None
        finally:
            self._rx_busy = False
        chunk = self._rx.popleft()
        self._rx_bytes -= chunk.size
        self._rx_mid = not chunk.message_end
        if self._reading_paused and self._rx_bytes <= self._read_limit // 2:
            self._resume_reading()
        return chunk

    def _unpop(self, chunks: list[Chunk], *, mid: bool) -> None:
        """Put chunks back after a cancelled receive, so that no data is lost."""
        if self._discard:
            return
        for chunk in reversed(chunks):
            self._rx.appendleft(chunk)
            self._rx_bytes += chunk.size
        if chunks:
            self._rx_mid = mid

    async def _skip_rest_of_message(self) -> None:
        while self._rx_mid:
            if await self._next_chunk() is None:
                return
