"""Sender <-> listener splice: frame by frame, on asyncio Protocols, with end-to-end backpressure.

This is the relay's hot path and its one entry point is :class:`Splice`.

Both legs are WebSocket *clients* of the relay (HC §5), so frames arrive masked
from both sides and must leave unmasked: a raw byte splice is impossible. Each
leg therefore takes its transport over from aiohttp after the 101 and parses
frames itself. A data frame is re-framed the moment its header is known and its
payload streams through in whatever chunks the socket delivers, so messages
and frames of any size pass with bounded memory, fragmentation, opcodes and
FIN bits unchanged. Nothing is queued per message and no task runs per frame.

Backpressure: when a leg's transport buffer passes its high-water mark, asyncio
calls ``pause_writing`` on that leg, which pauses *reading* on the other leg;
``resume_writing`` resumes it. A reader that stops reading thus stops the writer.

The relay also writes to a leg on its own account: a pong for each ping the leg
sends, and close frames. Those wait in ``Leg.queued`` while a data frame to the
leg is in flight, and also while the leg's own write buffer is over its mark, so
a peer that pings and never reads cannot fill relay memory with pongs (issue 11).
At ``max_queued_control_frames`` waiting frames later pongs replace the newest
waiting one (RFC 6455 §5.5.3 allows answering only the most recent ping), and a
leg whose write buffer is over its mark stops being read until it has taken
them. The leg's own full write buffer alone does not stop reading it: its data
goes to the *other* leg, whose buffer decides, so the two directions stay as
independent as over plain TCP. Each reason to stop reading is a bit in
``Leg._holds``; a leg reads again only when none is left.

Close (HC §5, RFC 6455 §7): a close frame is forwarded with its code and
reason; the other direction keeps flowing until the other side closes too
(NET's half-close), then the relay closes both TCP connections. A leg that
vanishes without a close makes the relay close the other leg with 1011.
Ping/pong are answered per hop and never forwarded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final, cast

from aiohttp import web

from hybridrelay.logs import RELAY
from hybridrelay.protocol.frames import (
    FrameError,
    FrameParser,
    Opcode,
    StopParsing,
    encode_close_payload,
    encode_frame,
    encode_frame_header,
    parse_close_payload,
)

__all__ = ["LIMIT_QUEUED_CONTROL", "Leg", "Splice", "Upgraded", "forget", "take_over"]

log = logging.getLogger(RELAY)

# Payloads smaller than this are joined with their header into one write; larger
# ones are written separately to avoid copying them.
_COALESCE_LIMIT: Final = 16 * 1024
_PONG: Final = int(Opcode.PONG)
_PING: Final = int(Opcode.PING)
_CLOSE: Final = int(Opcode.CLOSE)
_PONG_FIRST_BYTE: Final = 0x80 | _PONG  # an encoded pong frame starts with this byte

# Why a leg is not being read (bits of Leg._holds); it reads again when none is left.
_UNRELEASED: Final = 1  # attached, waiting for the other leg (Leg.release)
_PEER_FULL: Final = 2  # the peer's write buffer is over the mark: what we read would pile up
_BACKLOG: Final = 4  # max_queued_control_frames frames wait for room in this leg's buffer

# hybridrelay_limit_refusals{limit=...}: each time a leg's control-frame queue fills up.
LIMIT_QUEUED_CONTROL: Final = "max_queued_control_frames"


class _TailCollector:
    """Stands in for aiohttp's WebSocket parser just long enough to collect buffered bytes."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        return None


def take_over(request: web.BaseRequest) -> tuple[asyncio.Transport, asyncio.BaseProtocol, bytes]:
    """Detach a 101-answered request's transport from aiohttp.

    Returns the transport, aiohttp's protocol (which must still be told about
    connection loss so that aiohttp forgets the connection) and any bytes the
    client sent after its handshake that aiohttp had buffered.
    """
    protocol = request.protocol
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("connection lost before the splice started")
    collector = _TailCollector()
    # set_parser flushes aiohttp's post-upgrade buffer into the parser; it is the
    # hook WebSocketResponse uses, and the only way to reach those bytes.
    protocol.set_parser(cast(Any, collector))
    protocol.keep_alive(False)
    return transport, protocol, bytes(collector.data)


def forget(request: web.BaseRequest) -> None:
    """Make aiohttp forget a connection :func:`take_over` took, without closing it.

    aiohttp's handler may then return (with :class:`Upgraded`) instead of waiting as
    long as the relayed connection lasts: its task, request, parser and buffers (about
    13 KiB per leg, two legs per relayed connection) are freed as soon as the 101 is
    out (issue 7: memory per idle connection). The transport is not aiohttp's any
    more: closing it is the splice's job.
    """
    protocol = request.protocol
    # Without a transport, aiohttp's connection_lost() cannot close ours; it forgets the
    # connection (server bookkeeping, keep-alive timer, parser) and lets its handler end.
    protocol.transport = None
    protocol.connection_lost(None)


class Upgraded(web.StreamResponse):
    """What a handler returns once its connection was detached: there is nothing to write.

    The 101 went out on the transport itself (``handshake.accept_response``) and the
    transport belongs to a splice now, so aiohttp must neither prepare headers nor
    write an end of body.
    """

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class Leg(asyncio.Protocol):
    """One side of a relayed connection: a client's WebSocket after the relay's 101."""

    __slots__ = (
        "_close_after_flush",
        "_close_timer",
        "_forwarding",
        "_header",
        "_holds",
        "_inner",
        "_tail",
        "_write_paused",
        "bytes_in",
        "close_received",
        "close_sent",
        "failed",
        "lost",
        "name",
        "out_remaining",
        "parser",
        "peer",
        "queued",
        "splice",
        "transport",
    )

    def __init__(self, name: str, splice: Splice) -> None:
        self.name = name
        self.splice = splice
        self.parser = FrameParser(self, masked=True)
        self.transport: asyncio.Transport | None = None
        self._inner: asyncio.BaseProtocol | None = None
        self._tail = b""
        self.peer: Leg = self  # replaced by Splice
        # Bytes of the frame currently streamed *to* this leg that are still to come;
        # control frames for this leg wait while it is non-zero.
        self.out_remaining = 0
        # Control frames for this leg that wait for the frame in flight or for room in the
        # write buffer; at most Splice.max_queued_control of them (then pongs coalesce).
        self.queued: list[bytes] = []
        self._write_paused = False  # this leg's write buffer is over its high-water mark
        self._holds = 0  # reasons not to read this leg (_UNRELEASED, _PEER_FULL, _BACKLOG)
        self._close_after_flush = False  # close_transport waits for queued frames to go out
        self._header: bytes | None = None
        self._forwarding = True
        self.close_sent = False
        self.close_received = False
        self.failed = False  # broke the protocol; nothing more is read from it
        self.lost = False
        self.bytes_in = 0
        self._close_timer: asyncio.TimerHandle | None = None

    # -- setup -------------------------------------------------------------------

    def attach(
        self,
        parts: tuple[asyncio.Transport, asyncio.BaseProtocol | None, bytes],
        *,
        paused: bool = False,
    ) -> None:
        """Make this leg the transport's protocol; ``paused`` holds reading until release()."""
        transport, inner, tail = parts
        self.transport = transport
        self._inner = inner
        # Reading on the other leg pauses above this ([relay] stream_buffer_size).
        transport.set_write_buffer_limits(high=self.splice.write_buffer)
        transport.set_protocol(self)
        if transport.is_closing():
            # Lost before we took over: aiohttp saw connection_lost, we never will.
            self.connection_lost(None)
            return
        self._tail = tail
        self._holds |= _UNRELEASED
        if paused:
            transport.pause_reading()
        else:
            self.release()

    def release(self) -> None:
        """Start reading: forward what was buffered, then resume the transport."""
        tail, self._tail = self._tail, b""
        if self.lost or self.transport is None:
            return
        if tail:
            self.data_received(tail)
        self._holds &= ~_UNRELEASED
        if not self._holds and not self.lost:
            self.transport.resume_reading()

    # -- reading holds: pause while any reason holds, resume when none is left ----------

    def _hold(self, reason: int) -> None:
        holds = self._holds
        self._holds = holds | reason
        if not holds and not self.lost and self.transport is not None:
            self.transport.pause_reading()

    def _unhold(self, reason: int) -> None:
        holds = self._holds
        if holds & reason:
            self._holds = holds = holds & ~reason
            if not holds and not self.lost and self.transport is not None:
                self.transport.resume_reading()

    # -- asyncio.Protocol --------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.close_received or self.failed:
            return  # RFC 6455 §1.4: discard what follows a close frame
        try:
            self.parser.feed(data)
        except FrameError as exc:
            if exc.limit is not None:  # a control frame over RFC 6455's 125 bytes
                self.splice.limit_hit(exc.limit)
            self.splice.protocol_error(self, exc.code, exc.reason)

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        inner = self._inner
        self._inner = None
        if inner is not None:
            inner.connection_lost(exc)  # aiohttp forgets the connection and ends its handler wait
        self.splice.leg_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self.peer._hold(_PEER_FULL)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.queued and not self.out_remaining:
            self.flush_queued()
        self._unhold(_BACKLOG)  # what still waits, waits for the frame in flight only
        self.peer._unhold(_PEER_FULL)

    # -- FrameSink: frames received on this leg go to the peer ---------------------

    def on_data_frame(self, fin: bool, opcode: int, length: int) -> None:
        peer = self.peer
        self._forwarding = not (peer.lost or peer.close_sent)
        if self._forwarding:
            peer.out_remaining = length
            self._header = encode_frame_header(fin=fin, opcode=opcode, length=length)

    def on_payload(self, data: bytes, frame_done: bool) -> None:
        self.bytes_in += len(data)
        peer = self.peer
        if not self._forwarding or peer.lost:
            return
        write = cast(asyncio.Transport, peer.transport).write
        header = self._header
        if header is not None:
            self._header = None
            if len(data) < _COALESCE_LIMIT:
                write(header + data)
            else:
                write(header)
                write(data)
        elif data:
            write(data)
        if frame_done:
            peer.out_remaining = 0
            if peer.queued and not peer._write_paused:
                peer.flush_queued()
        else:
            peer.out_remaining -= len(data)

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == _PING:
            self.send_control(_PONG, payload)
        elif opcode == _CLOSE:
            try:
                parse_close_payload(payload)  # validate before forwarding
            except FrameError as exc:
                self.splice.protocol_error(self, exc.code, exc.reason)
            else:
                self.splice.close_received(self, payload)
            # RFC 6455 §5.5.1: nothing after a close is acted on, not even frames that
            # came in the same read as it.
            raise StopParsing
        # Pongs only prove liveness; nothing to do.

    # -- writing to this leg ---------------------------------------------------------

    def send_control(self, opcode: int, payload: bytes) -> None:
        if self.lost or self.transport is None:
            return
        frame = encode_frame(fin=True, opcode=opcode, payload=payload)
        if self.out_remaining or self._write_paused:
            # A streamed frame is in flight (send after it), or the leg does not read
            # what it is sent: nothing the relay owes it goes into the transport buffer.
            self._queue_control(frame)
        else:
            self.transport.write(frame)

    def _queue_control(self, frame: bytes) -> None:
        queued = self.queued
        limit = self.splice.max_queued_control
        if len(queued) < limit:
            queued.append(frame)
            if len(queued) < limit:
                return
            self.splice.limit_hit(LIMIT_QUEUED_CONTROL)
        elif frame[0] == _PONG_FIRST_BYTE and queued[-1][0] == _PONG_FIRST_BYTE:
            # RFC 6455 §5.5.3: a pong for the most recent ping answers the earlier ones.
            queued[-1] = frame
        else:
            queued.append(frame)  # the one close frame (close_sent guards it)
        # Full. A leg that does not read what it is sent stops being read until it does.
        # A backlog that only waits for a frame in flight is left to coalesce: holding
        # there could make two legs wait forever, each for the other's frame.
        if self._write_paused and not self._holds & _BACKLOG:
            self._hold(_BACKLOG)

    def flush_queued(self) -> None:
        frames, self.queued = self.queued, []
        if self.transport is not None and not self.lost:
            self.transport.writelines(frames)
            if self._close_after_flush:
                self.transport.close()
        self._unhold(_BACKLOG)

    def send_close(self, payload: bytes, *, timeout: float | None) -> None:
        """Send a close frame (once); abort instead if a frame to this leg is half written."""
        if self.lost or self.close_sent:
            return
        self.close_sent = True
        source = self.peer
        if self.out_remaining and source.lost:
            if source._header is None:
                # Part of the frame in flight to this leg is on the wire and its source
                # is gone: it can never be completed, and nothing may follow it.
                self.abort()
                return
            # Headers go out with the first payload bytes: not a byte of this frame was
            # written, so the leg can still be told why with a proper close (HC §5: 1011).
            source._header = None
            self.out_remaining = 0
            if self.queued and not self._write_paused:
                self.flush_queued()
        self.send_control(_CLOSE, payload)
        if timeout is not None:
            self.arm_close_timer(timeout)

    def arm_close_timer(self, timeout: float) -> None:
        """Cut the connection if it has not closed ``timeout`` seconds from now."""
        if self._close_timer is None and not self.lost:
            self._close_timer = asyncio.get_running_loop().call_later(
                timeout, self._close_timed_out
            )

    def _close_timed_out(self) -> None:
        if not self.lost and self.transport is not None:
            self.splice.limit_hit("close_timeout")
            self.transport.abort()

    def close_transport(self) -> None:
        if not self.lost and self.transport is not None:
            if self.queued:
                self._close_after_flush = True  # once the pending close frame is out
                return
            self.transport.close()

    def abort(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abort()


class Splice:
    """Joins a sender leg and a listener leg until both have closed.

    Args:
        close_timeout: seconds a leg gets to answer a close the relay sent on its own
            (peer vanished, protocol error, shutdown) before its TCP connection is cut.
        on_finish: called once with (bytes sender->listener, bytes listener->sender);
            the attribute of that name may be replaced until the splice finishes.
        hc_name: the hybrid connection relayed, so that deleting it can shut the splice
            (``reactions.py``); ``PendingConnect`` fills it in when not given.
        max_queued_control: control frames (pongs, a close) that may wait for one leg
            before it stops being read (``[relay] max_queued_control_frames``).
        write_buffer: bytes a leg's write buffer holds before the other leg stops being
            read (``[relay] stream_buffer_size``).
        limit_hit: counts a limit reached, by name (``RelayMetrics.limit_hit``).
    """

    __slots__ = (
        "_close_timeout",
        "done",
        "hc_name",
        "limit_hit",
        "listener",
        "listener_id",
        "max_queued_control",
        "on_finish",
        "sender",
        "sender_address",
        "started_at",
        "stream_id",
        "write_buffer",
    )

    def __init__(
        self,
        *,
        close_timeout: float,
        on_finish: Callable[[int, int], None] | None = None,
        hc_name: str | None = None,
        max_queued_control: int = 64,
        write_buffer: int = 256 * 1024,
        limit_hit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.hc_name = hc_name
        # What the management API shows of a live stream (mgmt/live.py); filled in
        # when the splice starts (hc_endpoints._stream_started).
        self.stream_id = ""
        self.listener_id = ""
        self.sender_address = ""
        self.started_at = 0.0
        self.max_queued_control = max_queued_control
        self.write_buffer = write_buffer
        self.limit_hit = limit_hit
        self.sender = Leg("sender", self)
        self.listener = Leg("listener", self)
        self.sender.peer = self.listener
        self.listener.peer = self.sender
        self._close_timeout = close_timeout
        self.on_finish = on_finish
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def join(self, sender: tuple[asyncio.Transport, asyncio.BaseProtocol | None, bytes]) -> None:
        """Attach the sender after its 101; the listener leg must be attached (paused) already."""
        self.sender.attach(sender)
        if self.listener.lost:
            self.sender.send_close(
                encode_close_payload(1011, "listener connection lost"), timeout=self._close_timeout
            )
        else:
            self.listener.release()

    def abandon(self, code: int, reason: str) -> None:
        """The sender never reached its 101: close the listener leg and finish."""
        self.sender.lost = True
        self.sender.close_received = True
        self.listener.send_close(encode_close_payload(code, reason), timeout=self._close_timeout)
        self.listener.close_transport()
        if self.listener.lost or self.listener.transport is None:
            self._finish()

    async def wait(self) -> None:
        """Wait until both legs are closed; cancellation shuts the splice down first."""
        try:
            await asyncio.shield(self.done)
        except asyncio.CancelledError:
            self.shutdown(1001, "relay shutting down")
            raise

    def shutdown(self, code: int, reason: str, *, timeout: float | None = None) -> None:
        """Close both legs from the relay side (entity deleted, relay stopping)."""
        payload = encode_close_payload(code, reason)
        for leg in (self.sender, self.listener):
            leg.send_close(payload, timeout=self._close_timeout if timeout is None else timeout)

    # -- events from the legs ---------------------------------------------------------

    def close_received(self, leg: Leg, payload: bytes) -> None:
        leg.close_received = True
        peer = leg.peer
        if peer.lost:
            leg.send_close(payload, timeout=self._close_timeout)
        else:
            # Forward code and reason; the peer's own close completes the exchange.
            peer.send_close(payload, timeout=None)
        if leg.close_sent:
            leg.close_transport()
        if peer.close_received and peer.close_sent:
            peer.close_transport()

    def protocol_error(self, leg: Leg, code: int, reason: str) -> None:
        log.warning("peer_protocol_error", extra={"leg": leg.name, "code": code, "reason": reason})
        leg.failed = True
        leg.send_close(encode_close_payload(code, reason), timeout=self._close_timeout)
        leg.close_transport()

    def leg_lost(self, leg: Leg) -> None:
        peer = leg.peer
        if peer.transport is None and not peer.lost:
            return  # the sender is not attached yet; join() or abandon() sees leg.lost
        if not peer.lost:
            if not leg.close_received:
                # Vanished without a close: HC §5 maps 1006 to 1011 for the other side.
                peer.send_close(
                    encode_close_payload(1011, f"{leg.name} connection lost"),
                    timeout=self._close_timeout,
                )
            else:
                # The close we forwarded may still await its answer; bound the wait.
                peer.arm_close_timer(self._close_timeout)
            # Nothing is left to wait for on this side: read the peer's close.
            peer._unhold(_PEER_FULL)
            return
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
            if self.on_finish is not None:
                self.on_finish(self.sender.bytes_in, self.listener.bytes_in)
