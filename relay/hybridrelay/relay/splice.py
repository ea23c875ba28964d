"""Sender <-> listener splice: frame by frame, on asyncio Protocols, with end-to-end backpressure.

This is the relay's hot path and its one entry point is :class:`Splice`.

Both legs are WebSocket *clients* of the relay (HC §5), so frames arrive masked
from both sides and must leave unmasked: a raw byte splice is impossible. Each
leg takes its transport over from aiohttp after the 101 and is driven by a
sans-I/O :class:`~hybridrelay.protocol.connection.Connection` (server role,
streaming) spliced to the other leg's (:meth:`Connection.splice_to`): a data
frame is re-framed the moment its header is known and its payload streams
through in whatever chunks the socket delivers, so messages and frames of any
size pass with bounded memory, fragmentation, opcodes and FIN bits unchanged.
Nothing is queued per message, no task runs per frame, and what one read
produces for the other leg leaves in one write.

The WebSocket rules are the Connection's: ping answered with pong per hop (never
forwarded), close frames validated, control frames owed to a leg held while a
frame to it is half sent or while its write buffer is over its mark, pongs
coalesced at ``max_queued_control_frames`` (issue 11: a peer that pings and never
reads cannot fill relay memory), and when to stop reading a leg. This module is
only glue: it moves bytes, turns ``pause_writing`` / ``resume_writing`` into the
Connection's flow control, pauses the transport when :attr:`Connection.wants_read`
says so, and decides what the *splice* does with a close.

Backpressure: when a leg's transport buffer passes its high-water mark, the other
leg (whose data fills it) is held (:attr:`Hold.PEER_FULL`) until ``resume_writing``:
a reader that stops reading stops the writer. A leg's own full buffer alone does
not stop reading it (its data goes to the *other* leg), so the two directions stay
as independent as over plain TCP.

Close (HC §5, RFC 6455 §7): a close frame is forwarded with its code and
reason; the other direction keeps flowing until the other side closes too
(NET's half-close), then the relay closes both TCP connections. A leg that
vanishes without a close makes the relay close the other leg with 1011.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any, ClassVar, Final, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from hybridrelay.logs import RELAY
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.connection import (
    LIMIT_QUEUED_CONTROL,
    CloseReceived,
    Connection,
    ConnectionSettings,
    Event,
    Failed,
    Hold,
    LimitReached,
    Role,
)

__all__ = [
    "LIMIT_QUEUED_CONTROL",
    "Leg",
    "Splice",
    "SpliceSettings",
    "Upgraded",
    "forget",
    "forget_connection",
    "take_over",
    "take_over_connection",
]

log = logging.getLogger(RELAY)

_UNRELEASED: Final = Hold.UNRELEASED  # attached, waiting for the other leg (Leg.release)
_PEER_FULL: Final = Hold.PEER_FULL  # the other leg's write buffer is over its mark
# Splice._done once the splice finished before anyone asked for Splice.done.
_FINISHED: Final = True


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
    return take_over_connection(request.protocol)


def take_over_connection(
    protocol: RequestHandler,
) -> tuple[asyncio.Transport, asyncio.BaseProtocol, bytes]:
    """:func:`take_over` for a connection whose upgrade head never became a request.

    The front door's upgrade hook (``hc_endpoints.accept_upgrade``) completes a
    rendezvous dial straight from the parsed head; its connection is detached the same way.
    """
    transport = protocol.transport
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
    forget_connection(request.protocol)


def forget_connection(protocol: RequestHandler) -> None:
    """:func:`forget` for a connection :func:`take_over_connection` took."""
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
        "_reading",
        "conn",
        "lost",
        "peer",
        "splice",
        "transport",
    )

    # "sender" or "listener", for logs and close reasons: the subclass's, not a slot.
    name: ClassVar[str] = "leg"

    def __init__(self, splice: Splice) -> None:
        self.splice = splice
        self.conn = Connection.sharing(splice.settings.conn)
        self.conn.hold_reading(_UNRELEASED)  # until release()
        self.transport: asyncio.Transport | None = None
        self.peer: Leg = self  # replaced by Splice
        self._reading = True  # aiohttp hands the transport over reading
        self._close_after_flush = False  # close_transport waits for owed frames to go out
        self.lost = False
        self._close_timer: asyncio.TimerHandle | None = None

    @property
    def bytes_in(self) -> int:
        """Data payload bytes received on this leg (and forwarded to the other)."""
        return self.conn.bytes_received

    @property
    def close_received(self) -> bool:
        return self.conn.close_received is not None

    @property
    def close_sent(self) -> bool:
        return self.conn.close_sent is not None

    # -- setup -------------------------------------------------------------------

    def attach(self, transport: asyncio.Transport, *, paused: bool = False) -> None:
        """Make this leg the transport's protocol; it is read from release() on, and
        ``paused`` pauses the transport until then.

        aiohttp must have forgotten the connection (:func:`forget`): the leg is its only
        protocol.
        """
        self.transport = transport
        # Reading on the other leg pauses above this ([relay] stream_buffer_size); the
        # low mark is the Connection's too (a quarter).
        write_buffer = self.splice.settings.write_buffer
        transport.set_write_buffer_limits(high=write_buffer, low=write_buffer // 4)
        transport.set_protocol(self)
        if transport.is_closing():
            # Lost before we took over: aiohttp saw connection_lost, we never will.
            self.connection_lost(None)
            return
        if paused:
            self._sync_reading()

    def release(self, tail: bytes) -> None:
        """Start reading: forward ``tail``, what the client sent after its handshake
        (:func:`take_over`), then resume the transport."""
        if self.lost or self.transport is None:
            return
        if tail:
            self.data_received(tail)
        self.conn.unhold_reading(_UNRELEASED)
        self._sync_reading()

    def _sync_reading(self) -> None:
        """Pause or resume the transport when the Connection's holds say otherwise."""
        wanted = self.conn.wants_read
        if wanted is not self._reading and not self.lost and self.transport is not None:
            self._reading = wanted
            if wanted:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    # -- asyncio.Protocol --------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        events = conn.receive_data(data)
        # What the frames of this read made for the other leg leaves in one write.
        self.peer.flush()
        self.flush()  # pongs, or our close after a protocol error
        if events:
            self._handle(events)
        self._sync_reading()

    def _handle(self, events: list[Event]) -> None:
        splice = self.splice
        for event in events:
            kind = type(event)
            if kind is CloseReceived:
                close = cast(CloseReceived, event)
                splice.close_received(self, close.code, close.reason)
            elif kind is Failed:
                failed = cast(Failed, event)
                if failed.limit is not None:  # a control frame over RFC 6455's 125 bytes
                    splice.settings.limit_hit(failed.limit)
                splice.protocol_error(self, failed.code, failed.reason)
            elif kind is LimitReached:
                splice.settings.limit_hit(cast(LimitReached, event).limit)
            # Ping: the Connection queued its pong. Pong: proves liveness only.

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self.conn.receive_eof()  # CLOSED: frames for this leg are dropped from now on
        self.conn.data_to_send()  # and what was owed to it goes nowhere
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.splice.leg_lost(self)

    def pause_writing(self) -> None:
        transport = cast(asyncio.Transport, self.transport)
        self.conn.outgoing_buffered(transport.get_write_buffer_size())
        peer = self.peer
        peer.conn.hold_reading(_PEER_FULL)
        peer._sync_reading()

    def resume_writing(self) -> None:
        self.conn.outgoing_buffered(0)  # under the low mark: owed control frames go out
        self.flush()
        self._sync_reading()  # what still waits, waits for the frame in flight only
        peer = self.peer
        peer.conn.unhold_reading(_PEER_FULL)
        peer._sync_reading()

    # -- writing to this leg ---------------------------------------------------------

    def flush(self) -> None:
        """Write what the Connection has for this leg (dropped once the leg is gone)."""
        out = self.conn.data_to_send()
        if not out or self.lost:
            return
        transport = cast(asyncio.Transport, self.transport)
        if len(out) == 1:
            transport.write(out[0])
        else:
            transport.writelines(out)
        if self._close_after_flush and not self.conn.control_pending:
            transport.close()

    def send_close(self, code: int, reason: str, *, timeout: float | None) -> None:
        """Send a close frame (once); abort instead if a frame to this leg is half written."""
        conn = self.conn
        if self.lost or conn.close_sent is not None:
            return
        source = self.peer
        # A frame in flight to this leg whose source is gone can never be completed. If
        # not a byte of it was written (headers go out with the first payload bytes) it
        # is forgotten and the leg is told why with a proper close (HC §5: 1011); if part
        # of it is on the wire nothing may follow it: the connection is cut.
        if conn.frame_in_flight and source.lost and not source.conn.abandon_frame():
            conn.fail(CloseCode.ABNORMAL, "frame in flight cut")  # CLOSED; no close frame to send
            self.abort()
            return
        conn.send_close(code, reason)
        self.flush()
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
            self.splice.settings.limit_hit("close_timeout")
            self.transport.abort()

    def close_transport(self) -> None:
        if not self.lost and self.transport is not None:
            self.flush()
            if self.conn.control_pending:
                self._close_after_flush = True  # once the owed close frame is out
                return
            self.transport.close()

    def abort(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abort()


class _SenderLeg(Leg):
    __slots__ = ()
    name = "sender"


class _ListenerLeg(Leg):
    __slots__ = ()
    name = "listener"


class SpliceSettings:
    """What every splice of a relay is made with, made once and shared by them all.

    One object rather than four slots on every splice and nine on each of its two
    Connections (issue 13: memory per idle relayed connection).

    Args:
        close_timeout: seconds a leg gets to answer a close the relay sent on its own
            (peer vanished, protocol error, shutdown) before its TCP connection is cut.
        max_queued_control: control frames (pongs, a close) that may wait for one leg
            before it stops being read (``[relay] max_queued_control_frames``).
        write_buffer: bytes a leg's write buffer holds before the other leg stops being
            read (``[relay] stream_buffer_size``).
        limit_hit: counts a limit reached, by name (``RelayMetrics.limit_hit``).
    """

    __slots__ = ("close_timeout", "conn", "limit_hit", "write_buffer")

    def __init__(
        self,
        *,
        close_timeout: float,
        max_queued_control: int = 64,
        write_buffer: int = 256 * 1024,
        limit_hit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.close_timeout = close_timeout
        self.write_buffer = write_buffer
        self.limit_hit = limit_hit
        # Each leg's Connection. The relay only passes frames on: text is the endpoints'
        # to validate, and a close is answered by forwarding it (half-close), not echoed.
        self.conn = ConnectionSettings(
            Role.SERVER,
            streaming=True,
            validate_utf8=False,
            auto_close_echo=False,
            max_queued_control=max_queued_control,
            high_water=write_buffer,
        )


class Splice:
    """Joins a sender leg and a listener leg until both have closed.

    Args:
        settings: what every splice is made with (:class:`SpliceSettings`), shared.
        on_finish: called once with (bytes sender->listener, bytes listener->sender);
            the attribute of that name may be replaced until the splice finishes.
        hc_name: the hybrid connection relayed, so that deleting it can shut the splice
            (``reactions.py``); ``PendingConnect`` fills it in when not given.
    """

    __slots__ = (
        "_done",
        "_stream_id",
        "hc_name",
        "listener",
        "listener_id",
        "on_finish",
        "sender",
        "sender_address",
        "settings",
        "started_at",
    )

    def __init__(
        self,
        settings: SpliceSettings,
        *,
        on_finish: Callable[[int, int], None] | None = None,
        hc_name: str | None = None,
    ) -> None:
        self.settings = settings
        self.hc_name = hc_name
        # What the management API shows of a live stream (mgmt/live.py); filled in
        # when the splice starts (started()).
        self._stream_id: str | None = None  # "" once started: made when first read
        self.listener_id = ""
        self.sender_address = ""
        self.started_at = 0.0
        self.sender: Leg = _SenderLeg(self)
        self.listener: Leg = _ListenerLeg(self)
        self.sender.peer = self.listener
        self.listener.peer = self.sender
        self.sender.conn.splice_to(self.listener.conn)
        self.listener.conn.splice_to(self.sender.conn)
        self.on_finish = on_finish
        # The future behind ``done``, made when first asked for (most splices never
        # are); _FINISHED when the splice finished before that.
        self._done: asyncio.Future[None] | bool | None = None

    def started(self, listener_id: str, started_at: float) -> None:
        """The splice runs: it is a live stream now, with an id (mgmt/live.py)."""
        self.listener_id = listener_id
        self.started_at = started_at
        self._stream_id = ""

    @property
    def stream_id(self) -> str:
        """The live stream's id (16 hex digits) once the splice started, else "".

        Random, made when first read: most streams are never listed.
        """
        stream_id = self._stream_id
        if stream_id == "":
            stream_id = self._stream_id = secrets.token_hex(8)
        return stream_id or ""

    @property
    def done(self) -> asyncio.Future[None]:
        """Resolves once both legs are closed."""
        done = self._done
        if isinstance(done, asyncio.Future):
            return done
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if done is _FINISHED:
            future.set_result(None)
        self._done = future
        return future

    def join(self, transport: asyncio.Transport, tail: bytes, listener_tail: bytes) -> None:
        """Attach the sender after its 101 and start both legs; the listener leg must be
        attached (paused) already. The tails: what each client sent after its handshake."""
        self.sender.attach(transport)
        self.sender.release(tail)
        if self.listener.lost:
            self.sender.send_close(
                CloseCode.INTERNAL_ERROR,
                "listener connection lost",
                timeout=self.settings.close_timeout,
            )
        else:
            self.listener.release(listener_tail)

    def abandon(self, code: int, reason: str) -> None:
        """The sender never reached its 101: close the listener leg and finish."""
        self.sender.lost = True
        self.sender.conn.receive_eof()
        self.listener.send_close(code, reason, timeout=self.settings.close_timeout)
        self.listener.close_transport()
        if self.listener.lost or self.listener.transport is None:
            self._finish()

    async def wait(self) -> None:
        """Wait until both legs are closed; cancellation shuts the splice down first."""
        try:
            await asyncio.shield(self.done)
        except asyncio.CancelledError:
            self.shutdown(CloseCode.GOING_AWAY, "relay shutting down")
            raise

    def shutdown(self, code: int, reason: str, *, timeout: float | None = None) -> None:
        """Close both legs from the relay side (entity deleted, relay stopping)."""
        for leg in (self.sender, self.listener):
            leg.send_close(
                code, reason, timeout=self.settings.close_timeout if timeout is None else timeout
            )

    # -- events from the legs ---------------------------------------------------------

    def close_received(self, leg: Leg, code: int, reason: str) -> None:
        peer = leg.peer
        if peer.lost:
            leg.send_close(code, reason, timeout=self.settings.close_timeout)
        else:
            # Forward code and reason; the peer's own close completes the exchange.
            peer.send_close(code, reason, timeout=None)
        if leg.close_sent:
            leg.close_transport()
        if peer.close_received and peer.close_sent:
            peer.close_transport()

    def protocol_error(self, leg: Leg, code: int, reason: str) -> None:
        """The Connection failed the leg and owes it a close with ``code``: send it, then
        close (bounded by the close timeout)."""
        log.warning("peer_protocol_error", extra={"leg": leg.name, "code": code, "reason": reason})
        leg.flush()
        leg.arm_close_timer(self.settings.close_timeout)
        leg.close_transport()

    def leg_lost(self, leg: Leg) -> None:
        peer = leg.peer
        if peer.transport is None and not peer.lost:
            return  # the sender is not attached yet; join() or abandon() sees leg.lost
        if not peer.lost:
            if not leg.close_received:
                # Vanished without a close: HC §5 maps 1006 to 1011 for the other side.
                peer.send_close(
                    CloseCode.INTERNAL_ERROR,
                    f"{leg.name} connection lost",
                    timeout=self.settings.close_timeout,
                )
            else:
                # The close we forwarded may still await its answer; bound the wait.
                peer.arm_close_timer(self.settings.close_timeout)
            # Nothing is left to wait for on this side: read the peer's close.
            peer.conn.unhold_reading(_PEER_FULL)
            peer._sync_reading()
            return
        self._finish()

    def _finish(self) -> None:
        done = self._done
        if done is _FINISHED or (isinstance(done, asyncio.Future) and done.done()):
            return
        if done is None:
            self._done = _FINISHED
        else:
            cast(asyncio.Future[None], done).set_result(None)
        on_finish, self.on_finish = self.on_finish, None  # it may refer to this splice
        if on_finish is not None:
            on_finish(self.sender.bytes_in, self.listener.bytes_in)
        # Both legs are lost, so nothing calls into them any more (every Leg method
        # returns early on ``lost`` before it would reach its peer or splice). Drop
        # the references between them: a finished splice is then freed by reference
        # counting at once instead of waiting, with its two Connections, parsers and
        # buffers, for the cyclic GC (which a relay pays for per connect).
        for leg in (self.sender, self.listener):
            leg.conn.splice_to(None)
            del leg.peer, leg.splice
