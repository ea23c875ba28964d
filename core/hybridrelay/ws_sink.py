"""Bridge mode of the client WebSocket: payload handed to a sink as it arrives.

For a byte bridge built of callbacks (:mod:`hybridrelay.socket_bridge`): no coroutine
and no buffer between the socket reads and the sink, and the pieces of one read handed
over in one call (one write to the bridged socket however many frames the read held).
:class:`SinkMixin` is a mixin of :class:`~hybridrelay.wsclient.WsConnection` for the
same reason as :class:`~hybridrelay.ws_receive.ReceiveMixin`: it is on the path of every
read.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING, Final, Protocol

from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.connection import Connection, Event, Frame
from hybridrelay.protocol.frames import Opcode

if TYPE_CHECKING:
    import asyncio
    from collections import deque

    from hybridrelay.ws_receive import Chunk

__all__ = ["PayloadSink", "SinkMixin"]

_TEXT: Final = int(Opcode.TEXT)
_BINARY: Final = int(Opcode.BINARY)
_UTF8_DECODER: Final = codecs.getincrementaldecoder("utf-8")


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


class SinkMixin:
    """Bridge mode of :class:`~hybridrelay.wsclient.WsConnection`."""

    # The connection's (and ReceiveMixin's), used here.
    _conn: Connection
    _transport: asyncio.Transport | None
    _lost: bool
    _eof_written: bool
    _reading_paused: bool
    _write_paused: bool
    _msg_text: bool
    _decoder: codecs.IncrementalDecoder | None
    _rx: deque[Chunk]
    _rx_bytes: int
    _rx_eof: bool
    _rx_busy: bool
    _discard: bool

    if TYPE_CHECKING:

        def _fail(self, code: int, reason: str) -> None: ...
        def _on_control_event(self, event: Event) -> bool: ...
        def _pause_reading(self) -> None: ...
        def _resume_reading(self) -> None: ...
        def _sync_reading(self) -> None: ...
        def _flush(self) -> None: ...

    def _init_sink(self) -> None:
        self._sink: PayloadSink | None = None  # attach_sink(): payload goes there, not to _rx

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

    def _on_events_to_sink(self, events: list[Event], sink: PayloadSink) -> None:
        """Payload straight to the sink, the pieces of one read in one call (one write to
        the bridged socket however many frames the read held)."""
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
            self._on_control_event(event)
        if parts:
            sink.ws_data(parts)
        if self._rx_eof and self._sink is not None:
            sink.ws_ended()
        if control:
            if self._write_paused:
                self._sync_reading()
            self._flush()
