"""Sending on the client WebSocket: messages to frames, and waiting for room.

A message goes out in one frame (:meth:`SendMixin.send`), several in one write
(:meth:`SendMixin.send_many`, or :meth:`SendMixin.send_soon` with the loop turn's other
sends), or one message as a frame per fragment
(:meth:`SendMixin.send_fragments`). Framing and masking are the sans-I/O
:class:`~hybridrelay.protocol.connection.Connection`'s; here only the order (one sender
at a time), the wait while the transport's buffer is over its high-water mark, and the
1011 for a fragmented message that cannot be finished.

:class:`SendMixin` is a mixin of :class:`~hybridrelay.wsclient.WsConnection`, as
:class:`~hybridrelay.ws_receive.ReceiveMixin` is and for the same reason: ``send()`` is
on the path of every message. A send waits (a coroutine) only while writing is paused
or the connection is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Final, TypeAlias

from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.connection import Connection
from hybridrelay.protocol.frames import Opcode

__all__ = ["Data", "SendMixin"]

Data: TypeAlias = str | bytes | bytearray | memoryview

_TEXT: Final = int(Opcode.TEXT)
_BINARY: Final = int(Opcode.BINARY)
_CONT: Final = int(Opcode.CONTINUATION)


def _encode_message(message: Data) -> tuple[int, bytes]:
    if isinstance(message, str):
        return _TEXT, message.encode("utf-8")
    if isinstance(message, bytes):
        return _BINARY, message
    if isinstance(message, bytearray | memoryview):
        return _BINARY, bytes(memoryview(message).cast("B"))
    raise TypeError(f"WebSocket messages are str or bytes-like, not {type(message).__name__}")


def _check_same_type(opcode: int, frag_opcode: int) -> None:
    if frag_opcode != opcode:
        raise TypeError("all fragments of a message must be str or all bytes")


class SendMixin:
    """The sending half of :class:`~hybridrelay.wsclient.WsConnection`."""

    # The connection's, used here.
    _loop: asyncio.AbstractEventLoop
    _conn: Connection
    _lost: bool
    _write_paused: bool

    if TYPE_CHECKING:

        def _fail(self, code: int, reason: str) -> None: ...
        def _flush(self) -> None: ...

    def _init_sending(self) -> None:
        self._send_lock = asyncio.Lock()
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._flush_soon = False  # send_soon() queued frames for the end of this loop turn

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


async def _aiter(fragments: Iterable[Data] | AsyncIterable[Data]) -> AsyncIterator[Data]:
    if isinstance(fragments, AsyncIterable):
        async for fragment in fragments:
            yield fragment
    else:
        for fragment in fragments:
            yield fragment
