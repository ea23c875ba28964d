"""An asyncio WebSocket client that can half-close, for byte bridges and HC senders/listeners.

Why not ``websockets``: it answers a received close frame at once, so a connection
cannot stay half-open. Hybrid Connections rely on TCP-like half-close (HC Part 1 §5:
NET's ``CloseOutputAsync(1000, "Shutdown")``, azbridge): one side sends its close
and keeps receiving data until the other side closes too. With
``auto_close_echo=False`` this client does not echo the peer's close frame; the
application keeps sending until it calls :meth:`WsConnection.close_write` or
:meth:`WsConnection.close`.

This module is asyncio glue only. The WebSocket rules are
:class:`~hybridrelay.protocol.connection.Connection` (frames, ping/pong, the closing
handshake, half-close, UTF-8 checks' failure code, the control-frame backlog) and the
opening handshake is :class:`~hybridrelay.protocol.handshake.ClientHandshake` with
:func:`~hybridrelay.protocol.handshake.parse_ws_url`. The glue moves bytes, keeps time
(keepalive, close timeouts) and buffers what the application has not read yet.

Receiving: the connection streams payload pieces (no size limit) into a bounded deque of
chunks. Reading from the socket pauses above ``read_limit`` buffered bytes and resumes
below half of it. Text is decoded (so checked as UTF-8, §8.1, close 1007) as it arrives.
Consumers pick their view of the same chunks: whole messages (:meth:`~WsConnection.recv`),
frames of one message (:meth:`~WsConnection.recv_fragments`), one message's payload as it
arrives (:meth:`~WsConnection.recv_stream`) or a byte stream (:meth:`~WsConnection.read`).

Only :meth:`~WsConnection.recv` assembles a whole message in memory, so only it has a
size limit: ``max_size``, :data:`DEFAULT_MAX_SIZE` (1 MiB, as websockets) unless the
caller says otherwise; a larger message fails the connection with 1009 (RFC 6455 §7.4.1)
before more than ``max_size`` bytes of it are held. The streaming views hold at most
``read_limit`` bytes (and :meth:`~WsConnection.recv_fragments` one frame) whatever the
message's size.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import socket
import ssl as _ssl
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Final, NamedTuple, Protocol, TypeAlias, cast

from hybridrelay import errors
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.connection import (
    CloseReceived,
    Connection,
    ConnectionLost,
    Event,
    Failed,
    Frame,
    Hold,
    Role,
    State,
)
from hybridrelay.protocol.frames import Opcode, is_valid_close_code
from hybridrelay.protocol.handshake import Accepted, ClientHandshake, parse_ws_url

__all__ = ["DEFAULT_MAX_SIZE", "PayloadSink", "WsConnection", "ws_connect"]

logger = logging.getLogger("hybridrelay.client")

Data: TypeAlias = str | bytes | bytearray | memoryview

DEFAULT_MAX_SIZE: Final = 1 << 20
"""The largest message :meth:`WsConnection.recv` assembles by default (bytes on the wire)."""

_ERROR_BODY_TIMEOUT: Final = 1.0
# §7.1.1: after the closing handshake the server should close TCP first; the client
# gives it this long before closing the connection itself.
_TCP_CLOSE_GRACE: Final = 1.0
# The write-buffer high-water mark of asyncio's and uvloop's transports (64 KiB, low mark a
# quarter of it): pause_writing() means the Connection's peer counts as full.
_TRANSPORT_HIGH_WATER: Final = 64 * 1024
_TEXT: Final = int(Opcode.TEXT)
_BINARY: Final = int(Opcode.BINARY)
_CONT: Final = int(Opcode.CONTINUATION)
_UTF8_DECODER: Final = codecs.getincrementaldecoder("utf-8")


class _Chunk(NamedTuple):
    """A piece of received payload. ``data`` is str for text messages (already decoded)."""

    data: bytes | str
    size: int  # bytes on the wire, for flow control
    frame_end: bool
    message_end: bool


class PayloadSink(Protocol):
    """Where :meth:`WsConnection.attach_sink` hands what arrives, in place of the buffer.

    Called from the connection's protocol callbacks, so each call must return at once:
    a byte bridge writes the payload to its socket and holds this connection's reading
    (:meth:`WsConnection.hold_reading`) while that socket's buffer is full.
    """

    def ws_data(self, parts: list[bytes | memoryview]) -> None:
        """Payload of data frames, in order, message boundaries dropped (a byte stream):
        the pieces of one read, for one ``writelines`` (no copy to join them; views of the
        read, not copies). Text arrives checked as UTF-8, as it came."""

    def ws_ended(self) -> None:
        """Nothing more will arrive: the peer's close frame, a failure, or the connection is
        gone; :attr:`WsConnection.close_code` and :attr:`WsConnection.closed` say which.
        May be called more than once."""

    def ws_writable(self, writable: bool) -> None:
        """The transport's write buffer went over its high-water mark (False) or back
        under its low mark (True): stop, or start again, producing what
        :meth:`WsConnection.send_nowait` sends."""


def _loop_sets_nodelay(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the loop's TCP transports come with TCP_NODELAY already (TLS ones included).

    asyncio's selector loops set it on every TCP socket and uvloop on every TCP handle;
    setting it again costs a system call per connection. An isinstance per connection is
    cheaper than that call, so nothing is cached.
    """
    return isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop) or type(
        loop
    ).__module__.startswith("uvloop")


def _encode_message(message: Data) -> tuple[int, bytes]:
    if isinstance(message, str):
        return _TEXT, message.encode("utf-8")
    if isinstance(message, bytes):
        return _BINARY, message
    if isinstance(message, bytearray | memoryview):
        return _BINARY, bytes(memoryview(message).cast("B"))
    raise TypeError(f"WebSocket messages are str or bytes-like, not {type(message).__name__}")


def _join(chunks: list[_Chunk]) -> bytes | str:
    if chunks and isinstance(chunks[0].data, str):
        return "".join([c.data for c in chunks if isinstance(c.data, str)])
    return b"".join([c.data for c in chunks if isinstance(c.data, bytes)])


def _check_same_type(opcode: int, frag_opcode: int) -> None:
    if frag_opcode != opcode:
        raise TypeError("all fragments of a message must be str or all bytes")


def _check_close_code(code: int) -> None:
    if not is_valid_close_code(code):
        raise ValueError(f"{code} is not a close code an endpoint may send (RFC 6455 §7.4)")


class WsConnection(asyncio.Protocol):
    """One client WebSocket connection; create it with :func:`ws_connect`.

    Attributes:
        subprotocol: The subprotocol the server chose, or None.
        response_headers: Headers of the 101 response, names in lower case.
        local_address: (host, port) of our end of the TCP connection, read on first use
            (``("", 0)`` if the connection was gone by then).
        remote_address: (host, port) of the server's end, likewise.
    """

    def __init__(
        self,
        *,
        auto_close_echo: bool = True,
        read_limit: int = 1 << 20,
        close_timeout: float = 10.0,
        max_size: int | None = DEFAULT_MAX_SIZE,
        log_url: str = "",
    ) -> None:
        if read_limit < 2:
            raise ValueError("read_limit must be at least 2 bytes")
        self._loop = asyncio.get_running_loop()
        self._read_limit = read_limit
        self._close_timeout = close_timeout
        self._max_size = max_size
        self._log_url = log_url
        self._debug = logger.isEnabledFor(logging.DEBUG)
        # Streaming: every view below is built from payload pieces; only recv() assembles,
        # so only recv() has a size limit. Text is decoded here, where it is handed out.
        self._conn = Connection(
            Role.CLIENT,
            streaming=True,
            validate_utf8=False,
            auto_close_echo=auto_close_echo,
            high_water=_TRANSPORT_HIGH_WATER,
        )

        self.subprotocol: str | None = None
        self.response_headers: dict[str, str] = {}
        self._addresses: dict[str, tuple[str, int]] = {}
        self._transport: asyncio.Transport | None = None
        self._hs: ClientHandshake | None = None  # until the 101 is accepted
        self._hs_outcome: Accepted | Exception | None = None
        self._hs_event = asyncio.Event()

        # Receiving
        self._msg_text = False
        self._decoder: codecs.IncrementalDecoder | None = None  # made for the first text
        self._rx: deque[_Chunk] = deque()
        self._rx_bytes = 0
        self._rx_eof = False
        self._rx_waiter: asyncio.Future[None] | None = None
        self._rx_busy = False
        self._rx_mid = False  # the consumer stopped inside a message
        self._discard = False  # close() was called: the application reads no more
        self._draining = False  # closing or failed: the socket is read only to drain it
        self._reading_paused = False
        self._sink: PayloadSink | None = None  # attach_sink(): payload goes there, not to _rx

        # Sending
        self._send_lock = asyncio.Lock()
        self._write_paused = False
        self._eof_written = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._flush_soon = False  # send_soon() queued frames for the end of this loop turn

        # Closing
        self._lost = False
        self._closed_waiter: asyncio.Future[None] = self._loop.create_future()
        self._timers: list[asyncio.TimerHandle] = []
        # Timers, not a task per connection (the name predates that).
        self._keepalive_task: _Keepalive | None = None

    # ------------------------------------------------------------------ public state

    @property
    def close_code(self) -> int | None:
        """The code of the peer's close frame (1005 if it had none), 1006 if the connection
        was lost without one, None while that is not known yet."""
        return self._conn.close_code

    @property
    def close_reason(self) -> str:
        """The reason in the peer's close frame ("" if none was received)."""
        return self._conn.close_reason

    @property
    def auto_close_echo(self) -> bool:
        """Whether the peer's close frame is answered at once (False: half-close allowed)."""
        return self._conn.auto_close_echo

    @property
    def local_address(self) -> tuple[str, int]:
        return self._address("sockname")

    @property
    def remote_address(self) -> tuple[str, int]:
        return self._address("peername")

    def _address(self, key: str) -> tuple[str, int]:
        # Two system calls per connection that almost nobody needs: made on demand.
        found = self._addresses.get(key)
        if found is None:
            found = ("", 0)
            if self._transport is not None and not self._lost:
                with contextlib.suppress(OSError, RuntimeError):
                    addr = self._transport.get_extra_info(key)
                    if isinstance(addr, tuple) and len(addr) >= 2:
                        found = (str(addr[0]), int(addr[1]))
                self._addresses[key] = found
        return found

    @property
    def closed(self) -> bool:
        """True once the TCP connection is gone."""
        return self._lost

    @property
    def reading_paused(self) -> bool:
        """True while the socket is not read: what was received waits for its consumer."""
        return self._reading_paused

    # ------------------------------------------------------------------ sending

    async def send(self, message: Data) -> None:
        """Send one message in one frame: str as TEXT, bytes-like as BINARY.

        Raises:
            ConnectionClosedError: Our close frame was sent or the connection is gone.
        """
        opcode, payload = _encode_message(message)
        async with self._send_lock:
            self._conn.send_frame(opcode, payload)
            self._flush()
            if self._write_paused or self._lost:  # no coroutine per message otherwise
                await self._drain()

    async def send_many(self, messages: Sequence[Data]) -> None:
        """Send several messages, one frame each, in one write: adjacent on the wire.

        For a message and its companion (an HTTP-mode response header and its body, HC
        §4): one system call instead of one per message, and nothing can come between.

        Raises:
            ConnectionClosedError: Our close frame was sent or the connection is gone.
        """
        frames = [_encode_message(message) for message in messages]
        async with self._send_lock:
            for opcode, payload in frames:
                self._conn.send_frame(opcode, payload)
            self._flush()
            if self._write_paused or self._lost:  # no coroutine per message otherwise
                await self._drain()

    def send_soon(self, messages: Sequence[Data]) -> bool:
        """Queue messages, one frame each and adjacent, for a write at the end of this
        loop turn; False, having queued nothing, when sending them would mean waiting.

        :meth:`send_many` without a coroutine, for a send that need not wait (no other
        send under way, room in the peer's buffer; call send_many() otherwise), and with
        one system call for everything queued in the same loop turn: the listener agent's
        inline responses, one write per response before (perf: a write and, on the
        relay, a read and a wake-up each).

        Raises:
            ConnectionClosedError: Our close frame was sent or the connection is gone.
        """
        if self._write_paused or self._send_lock.locked():
            return False
        if self._lost:
            raise self._conn.closed_error()
        frames = [_encode_message(message) for message in messages]
        for opcode, payload in frames:
            self._conn.send_frame(opcode, payload)
        if not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self._flush_queued)
        return True

    def _flush_queued(self) -> None:
        self._flush_soon = False
        self._flush()

    async def send_fragments(self, fragments: Iterable[Data] | AsyncIterable[Data]) -> None:
        """Send one message, one frame per fragment; the first fragment decides its type.

        An empty iterable sends nothing. If the message cannot be finished (the iterable
        raises, a fragment has the other type after frames were sent, the task is
        cancelled) the connection is failed with 1011, since the peer would otherwise
        wait for the rest of the message forever.

        Raises:
            TypeError: The fragments mix str and bytes.
            ConnectionClosedError: The connection is closing or closed.
        """
        if isinstance(fragments, str | bytes | bytearray | memoryview):
            raise TypeError("send_fragments() takes an iterable of fragments; use send()")
        conn = self._conn
        async with self._send_lock:
            opcode = 0
            # One fragment of lookahead: a frame's FIN bit depends on whether another follows.
            pending: bytes | None = None
            started = complete = False
            try:
                async for fragment in _aiter(fragments):
                    frag_opcode, payload = _encode_message(fragment)
                    if pending is None:  # the first fragment
                        opcode = frag_opcode
                    else:
                        _check_same_type(opcode, frag_opcode)
                        conn.send_frame(_CONT if started else opcode, pending, fin=False)
                        started = True
                        self._flush()
                        if self._write_paused or self._lost:  # no coroutine per message otherwise
                            await self._drain()
                    pending = payload
                if pending is not None:
                    conn.send_frame(_CONT if started else opcode, pending)
                    complete = True
                    self._flush()
                    if self._write_paused or self._lost:  # no coroutine per message otherwise
                        await self._drain()
            except BaseException:
                # Once our close frame is out the message is moot; otherwise it must not
                # stay open.
                if started and not complete and conn.close_sent is None and not self._lost:
                    self._fail(CloseCode.INTERNAL_ERROR, "incomplete fragmented message")
                raise

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Stream mode: send ``data`` as one BINARY message (nothing for empty data)."""
        if data:
            await self.send(data)

    async def close_write(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Half-close: send our close frame and keep receiving until the peer's close.

        Does nothing if our close frame was already sent or the connection is gone.
        """
        self.close_write_nowait(code, reason)

    def close_write_nowait(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """:meth:`close_write` for callbacks: it never waits anyway."""
        _check_close_code(code)
        if self._lost or self._conn.close_sent is not None or self._transport is None:
            return
        self._send_close(code, reason)

    # ------------------------------------------------------------------ bridge mode

    def attach_sink(self, sink: PayloadSink) -> None:
        """Hand payload to ``sink`` as it arrives instead of buffering it for a reader.

        For a byte bridge built of callbacks (:mod:`hybridrelay.socket_bridge`): no
        coroutine, no buffer between the socket reads and ``sink``. What was buffered
        before goes to ``sink`` now, and ``sink.ws_ended()`` follows at once if nothing
        more can come. The receiving coroutines (recv, read...) may not be used any more.

        Raises:
            RuntimeError: A sink is attached already, or a coroutine is receiving.
        """
        if self._sink is not None or self._rx_busy:
            raise RuntimeError("this connection is already being received from")
        self._rx_busy = True  # for good: the sink receives
        self._sink = sink
        rx = self._rx
        parts: list[bytes | memoryview] = [
            c.data.encode("utf-8") if isinstance(c.data, str) else c.data for c in rx
        ]
        rx.clear()
        self._rx_bytes = 0
        if any(parts):
            sink.ws_data([part for part in parts if part])
        self._conn.payload_views(True)  # from now on no payload is copied out of a read
        if self._reading_paused:
            self._resume_reading()
        if self._write_paused:
            sink.ws_writable(False)
        if self._rx_eof or self._lost:
            sink.ws_ended()

    def detach_sink(self) -> None:
        """Stop calling the sink; what arrives from now on is dropped (the bridge is
        closing)."""
        if self._sink is not None:
            self._sink = None
            self._discard = True
            self._conn.payload_views(False)

    def send_nowait(self, data: bytes | memoryview) -> None:
        """Bridge mode: send ``data`` as one BINARY message without waiting.

        ``data`` may be a view of a buffer that is reused once this returns: what goes
        out is masked into a new buffer (a client masks every frame, RFC 6455 §5.3).
        The sink hears :meth:`PayloadSink.ws_writable` when it should stop.

        Raises:
            ConnectionClosedError: Our close frame was sent or the connection is gone.
        """
        self._conn.send_frame(_BINARY, data)
        out = self._conn.data_to_send()
        transport = self._transport
        if transport is not None and not (self._lost or self._eof_written):
            transport.writelines(out)

    def hold_reading(self, hold: bool) -> None:
        """Bridge mode: stop reading the socket while where the payload goes is full."""
        if hold:
            self._pause_reading()
        else:
            self._resume_reading()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close: send our close frame if not done yet, then wait (at most ``close_timeout``)
        for the peer's close and the end of TCP. Data still buffered or arriving is dropped.
        """
        _check_close_code(code)
        if not self._lost and self._transport is not None:
            self._discard_incoming()
            if self._conn.close_sent is None and self._conn.failure is None:
                self._send_close(code, reason)
            # A timer rather than asyncio.timeout(): connection_lost() cancels it, and
            # the wait below ends either way (the abort loses the connection).
            self._call_later(self._close_timeout, self._close_timed_out)
        await self.wait_closed()

    def _close_timed_out(self) -> None:
        logger.warning("! close timeout %s: no close from the peer", self._log_url)
        self._abort("close timeout")

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        self._abort("aborted")

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is gone (the keepalive stops with it)."""
        await asyncio.shield(self._closed_waiter)

    # ------------------------------------------------------------------ receiving

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
        chunks: list[_Chunk] = []
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
            parts: list[_Chunk] = []
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

        Returns ``b""`` once the peer's close frame arrived (then see :attr:`close_code`).
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

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection() gives a stream transport; uvloop's don't subclass asyncio's.
        self._transport = cast(asyncio.Transport, transport)
        if not _loop_sets_nodelay(self._loop):
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._hs is not None:
            self._handshake_data(self._hs, data)
            return
        keepalive = self._keepalive_task
        if keepalive is not None and keepalive.awaiting:
            keepalive.alive()
        events = self._conn.receive_data(data)
        if events:
            self._on_events(events)

    def eof_received(self) -> bool | None:
        if self._debug:
            logger.debug("< EOF %s", self._log_url)
        if self._hs is None:
            self._on_events(self._conn.receive_eof())
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        hs = self._hs
        if hs is not None and self._hs_outcome is None:
            try:
                hs.receive_eof()
            except Exception as error:  # noqa: BLE001 - it always raises: the outcome
                self._hs_outcome = error
        self._hs_event.set()
        self._conn.receive_eof()
        self._rx_eof = True
        self._wake_rx()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._keepalive_task is not None:
            self._keepalive_task.stop()
        if not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        if self._sink is not None:
            self._sink.ws_ended()
        if hs is None and self._debug:
            logger.debug("= closed %s code=%s error=%r", self._log_url, self.close_code, exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._conn.outgoing_buffered(self._transport.get_write_buffer_size())
        if self._sink is not None:
            self._sink.ws_writable(False)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._conn.outgoing_buffered(0)  # under the transport's low mark: control frames go
        self._sync_reading()
        self._flush()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._sink is not None:
            self._sink.ws_writable(True)

    # ------------------------------------------------------------------ handshake (ws_connect)

    def _handshake_data(self, hs: ClientHandshake, data: bytes) -> None:
        if self._hs_outcome is not None:
            return  # refused or broken: ws_connect is raising, nothing more is read
        try:
            accepted = hs.receive_data(data)
        except Exception as exc:  # noqa: BLE001 - the handshake's outcome, for ws_connect
            self._hs_outcome = exc
            self._hs_event.set()
            return
        if accepted is not None:
            self._hs = None
            self._hs_outcome = accepted
            self.subprotocol = accepted.subprotocol
            self.response_headers = dict(accepted.headers)
            self._hs_event.set()
            if accepted.leftover:
                self.data_received(accepted.leftover)
        elif hs.refused:
            self._hs_event.set()  # ws_connect bounds the wait for the refusal's body

    async def _handshake(self, hs: ClientHandshake) -> None:
        if self._transport is None or self._lost:
            raise errors.ConnectionClosedError(
                CloseCode.ABNORMAL, "connection closed before the handshake"
            )
        self._transport.write(hs.request)
        while self._hs_outcome is None and not hs.refused:
            self._hs_event.clear()
            await self._hs_event.wait()
        if self._hs_outcome is None:  # a refusal: its body gets a short while
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ERROR_BODY_TIMEOUT):
                    while self._hs_outcome is None:
                        self._hs_event.clear()
                        await self._hs_event.wait()
            if self._hs_outcome is None:
                self._hs_outcome = hs.refusal()
        outcome = self._hs_outcome
        if isinstance(outcome, Exception):
            if self._debug and isinstance(outcome, errors.HandshakeError):
                logger.debug(
                    "! handshake rejected %s: %d %s", self._log_url, outcome.status, outcome.reason
                )
            raise outcome

    def _start_keepalive(self, ping_interval: float | None, ping_timeout: float | None) -> None:
        if ping_interval is not None and not self._lost:
            timeout = ping_interval if ping_timeout is None else ping_timeout
            self._keepalive_task = _Keepalive(self, ping_interval, timeout)

    # ------------------------------------------------------------------ events

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
                rx.append(_Chunk(item, len(data), end, message_end))
                self._rx_bytes += len(data)
                received = True
                continue
            control = True  # data frames write nothing; the rest may (a pong, a close)
            if isinstance(event, CloseReceived):
                if self._debug:
                    logger.debug("< CLOSE %s %d %r", self._log_url, event.code, event.reason)
                self._rx_eof = True
                received = True
                self._flush()  # our echo, if auto_close_echo
                if self._conn.state is State.CLOSED:
                    self._closing_handshake_done()
            elif isinstance(event, Failed):
                self._rx_eof = True
                received = True
                self._after_failure(event.code, event.reason)
            elif isinstance(event, ConnectionLost):
                self._rx_eof = True
                received = True
        if received:
            if self._rx_bytes > self._read_limit:
                self._pause_reading()
            self._wake_rx()
        if control:
            if self._write_paused:
                self._sync_reading()  # the Connection may hold a peer that does not read
            self._flush()

    def _on_events_to_sink(self, events: list[Event], sink: PayloadSink) -> None:
        """Bridge mode: payload straight to the sink, the pieces of one read in one call
        (one write to the bridged socket however many frames the read held)."""
        parts: list[bytes | memoryview] = []
        control = False
        for event in events:
            if type(event) is Frame:
                opcode, fin, _length, data, start, end = event
                if start and opcode:
                    self._msg_text = opcode == _TEXT
                    if self._msg_text and self._decoder is not None:
                        self._decoder.reset()
                if self._discard:
                    continue
                if self._msg_text:
                    # Checked as it arrives (RFC 6455 §8.1), passed on as it came.
                    decoder = self._decoder
                    if decoder is None:
                        decoder = self._decoder = _UTF8_DECODER("strict")
                    try:
                        decoder.decode(data, end and fin)
                    except UnicodeDecodeError:
                        self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                        break  # the frames after it were never parsed
                if data:
                    parts.append(data)
                continue
            control = True
            if parts:  # what came before the close goes first
                sink.ws_data(parts)
                parts = []
            if isinstance(event, CloseReceived):
                if self._debug:
                    logger.debug("< CLOSE %s %d %r", self._log_url, event.code, event.reason)
                self._rx_eof = True
                self._flush()  # our echo, if auto_close_echo
                if self._conn.state is State.CLOSED:
                    self._closing_handshake_done()
            elif isinstance(event, Failed):
                self._rx_eof = True
                self._after_failure(event.code, event.reason)
            elif isinstance(event, ConnectionLost):
                self._rx_eof = True
        if parts:
            sink.ws_data(parts)
        if self._rx_eof and self._sink is not None:
            sink.ws_ended()
        if control:
            if self._write_paused:
                self._sync_reading()
            self._flush()

    # ------------------------------------------------------------------ internals

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        transport = self._transport
        if out and transport is not None and not (self._lost or self._eof_written):
            if transport.is_closing():
                return
            transport.writelines(out)

    async def _drain(self) -> None:
        while self._write_paused and not self._lost:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                self._drain_waiters.remove(waiter)
        if self._lost:
            raise self._conn.closed_error()

    def _send_close(self, code: int, reason: str) -> None:
        self._conn.send_close(code, reason)
        self._flush()
        if self._debug:
            logger.debug("> CLOSE %s %s %r", self._log_url, code, reason)
        if self._conn.state is State.CLOSED:  # the peer's close came first
            self._closing_handshake_done()

    def _closing_handshake_done(self) -> None:
        # Both close frames are out; the server closes TCP first (§7.1.1), or we do.
        self._call_later(min(self._close_timeout, _TCP_CLOSE_GRACE), self._close_transport)

    def _close_transport(self) -> None:
        if self._transport is None or self._lost:
            return
        self._transport.close()  # flushes what is buffered (our close frame) first
        self._call_later(self._close_timeout, self._abort_transport)

    def _abort_transport(self) -> None:
        if self._transport is not None and not self._lost:
            self._transport.abort()

    def _abort(self, reason: str) -> None:
        if self._lost:
            return
        self._conn.fail(CloseCode.ABNORMAL, reason)  # no close frame: the connection just ends
        self._rx_eof = True
        self._wake_rx()
        self._abort_transport()

    def _fail(self, code: int, reason: str) -> None:
        """The glue's own failures (1007, 1009, 1011): RFC 6455 §7.1.7."""
        if self._lost:
            return
        self._conn.fail(code, reason)
        self._rx_eof = True
        self._wake_rx()
        self._after_failure(code, reason)

    def _after_failure(self, code: int, reason: str) -> None:
        # Closing a socket that still has unread data sends a TCP reset, and a reset makes
        # the peer drop what it has not read yet: our close frame (1009 to a peer that
        # floods us, say). So send the close, stop sending (FIN) and read on, discarding
        # (nothing is parsed any more), until the peer closes or the grace is over.
        logger.warning("! failing %s: %d %s", self._log_url, code, reason)
        self._flush()
        transport = self._transport
        if transport is None or self._lost or not transport.can_write_eof():
            self._close_transport()  # TLS has no half-close
            return
        self._draining = True  # what was received stays for the consumer; no more comes
        self._sync_reading()
        if not self._eof_written:
            self._eof_written = True
            transport.write_eof()
        self._call_later(min(self._close_timeout, _TCP_CLOSE_GRACE), self._close_transport)

    def _call_later(self, delay: float, callback: Callable[[], object]) -> None:
        if not self._lost:
            self._timers.append(self._loop.call_later(delay, callback))

    def _pause_reading(self) -> None:
        """The consumer lags: stop reading the socket until it catches up."""
        self._conn.hold_reading(Hold.PEER_FULL)
        self._sync_reading()

    def _resume_reading(self) -> None:
        self._conn.unhold_reading(Hold.PEER_FULL)
        self._sync_reading()

    def _sync_reading(self) -> None:
        # Read while the Connection wants to (no hold: ours or its backlog rule) or once
        # nothing read is kept any more (closing, failed): then reading only drains TCP.
        pause = not (self._draining or self._conn.wants_read)
        if pause != self._reading_paused and self._transport is not None and not self._lost:
            self._reading_paused = pause
            if pause:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

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

    async def _next_chunk(self) -> _Chunk | None:
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

    def _unpop(self, chunks: list[_Chunk], *, mid: bool) -> None:
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

    def _closing(self) -> bool:
        return self._lost or self._conn.state is not State.OPEN

    def _keepalive_ping(self) -> bool:
        """Send a keepalive ping if one is due; False when none is (closing, or paused)."""
        if self._closing():
            return False
        if self._reading_paused:
            return False  # the peer's data waits on us, so it is alive
        self._conn.send_ping(os.urandom(4))
        self._flush()
        return True

    def _keepalive_expired(self, pong_timeout: float) -> None:
        # Reading can't have paused meanwhile: that takes data, which counts as a pong.
        if self._closing():
            return
        logger.warning("%% keepalive timeout %s: no pong in %.1fs", self._log_url, pong_timeout)
        self._abort("keepalive ping timeout")


class _Keepalive:
    """Pings every ``interval`` and aborts the connection when nothing (a pong or any
    data) arrives within ``pong_timeout`` of a ping. Timer callbacks only: a task per
    connection would cost more than the pings."""

    __slots__ = ("_conn", "_interval", "_pong_timeout", "_timer", "awaiting")

    def __init__(self, conn: WsConnection, interval: float, pong_timeout: float) -> None:
        self._conn = conn
        self._interval = interval
        self._pong_timeout = pong_timeout
        self.awaiting = False  # a ping is out and nothing arrived since
        self._timer: asyncio.TimerHandle | None = conn._loop.call_later(interval, self._tick)

    def done(self) -> bool:
        return self._timer is None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.awaiting = False

    def alive(self) -> None:
        """Data arrived after a ping: the next ping is one interval from now."""
        self.awaiting = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._conn._loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        conn = self._conn
        if conn._closing():
            self._timer = None
            return
        if conn._keepalive_ping():
            self.awaiting = True
            self._timer = conn._loop.call_later(self._pong_timeout, self._expired)
        else:
            self._timer = conn._loop.call_later(self._interval, self._tick)

    def _expired(self) -> None:
        self._timer = None
        self.awaiting = False
        self._conn._keepalive_expired(self._pong_timeout)


async def _aiter(fragments: Iterable[Data] | AsyncIterable[Data]) -> AsyncIterator[Data]:
    if isinstance(fragments, AsyncIterable):
        async for fragment in fragments:
            yield fragment
    else:
        for fragment in fragments:
            yield fragment


async def ws_connect(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    subprotocols: Sequence[str] = (),
    ssl: _ssl.SSLContext | None = None,
    open_timeout: float = 10.0,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    read_limit: int = 1 << 20,
    close_timeout: float = 10.0,
    auto_close_echo: bool = True,
    max_size: int | None = DEFAULT_MAX_SIZE,
) -> WsConnection:
    """Open a WebSocket connection as a client.

    Args:
        url: ``ws://`` or ``wss://`` URL; path and query are sent as given (a literal
            ``$`` stays), only spaces, controls and non-ASCII are %-encoded.
        headers: Extra request headers (not the WebSocket ones; ``Host`` may be replaced).
        subprotocols: Offered in ``Sec-WebSocket-Protocol``; the server's choice is
            :attr:`WsConnection.subprotocol`.
        ssl: TLS context for ``wss://`` (default: ``ssl.create_default_context()``).
        open_timeout: Bound on TCP connect, TLS and the whole opening handshake.
        ping_interval: Send a ping this often (None: no keepalive).
        ping_timeout: Abort (close code 1006) when neither a pong nor data arrives this
            long after a ping; defaults to ``ping_interval``.
        read_limit: Received bytes buffered before reading from the socket pauses.
        close_timeout: Bound on the closing handshake.
        auto_close_echo: Answer the peer's close frame at once (plain WebSocket). Byte
            bridges pass False to keep sending after the peer's half-close.
        max_size: Largest message :meth:`WsConnection.recv` assembles, in bytes (default
            :data:`DEFAULT_MAX_SIZE`, 1 MiB; None: no limit, for peers you trust). A
            larger one fails the connection with 1009 and raises PayloadTooBigError.
            The streaming receives (recv_stream, recv_fragments, read) have no limit.

    Returns:
        The open connection.

    Raises:
        InvalidAddressError: The URL is not a ws/wss URL.
        HandshakeError: The server answered with another status than 101; ``status``,
            ``reason`` and the start of the body say why (401, 403, 404, 410...).
        ProtocolError: The 101 response is invalid (accept key, upgrade headers, a
            subprotocol that was not offered, an extension, a head over 64 KiB).
        ConnectionClosedError: The connection closed during the handshake (code 1006).
        TimeoutError: ``open_timeout`` expired.
        OSError: The TCP connection or TLS failed.
    """
    target = parse_ws_url(url)
    if ping_interval is not None and ping_interval <= 0:
        raise ValueError("ping_interval must be positive")
    if target.secure and ssl is None:
        ssl = _ssl.create_default_context()
    elif not target.secure and ssl is not None:
        raise ValueError("an ssl context needs a wss:// URL")
    hs = ClientHandshake(
        target.host_header, target.resource, subprotocols=subprotocols, headers=headers
    )
    loop = asyncio.get_running_loop()
    conn = WsConnection(
        auto_close_echo=auto_close_echo,
        read_limit=read_limit,
        close_timeout=close_timeout,
        max_size=max_size,
        log_url=target.log_url,
    )
    conn._hs = hs  # what arrives before the 101 is the handshake's
    if conn._debug:
        logger.debug("= connecting %s", target.log_url)
    try:
        async with asyncio.timeout(open_timeout):
            await loop.create_connection(
                lambda: conn,
                target.host,
                target.port,
                ssl=ssl,
                server_hostname=target.host if ssl is not None else None,
            )
            await conn._handshake(hs)
    except BaseException:
        conn._abort("opening handshake failed")
        raise
    conn._start_keepalive(ping_interval, ping_timeout)
    if conn._debug:
        logger.debug("= open %s subprotocol=%s", target.log_url, conn.subprotocol)
    return conn
