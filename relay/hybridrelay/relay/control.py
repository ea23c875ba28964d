"""ControlChannel: the relay's end of one listener's long-lived WebSocket (HC §2.2, §3).

It sends ``accept`` (and, in HTTP mode, ``request``) messages, takes
``renewToken``, and watches the listener: the relay pings every
``ping_interval`` because hyco-ws never pings (HC §6), and drops a channel that
has shown no sign of life for two intervals. Token expiry is enforced with a
grace period because both SDKs renew exactly at expiry (HC §3.4); a failed
renewal closes the channel with 1008.

Thin asyncio glue, as a splice leg (relay/splice.py) and an HTTP rendezvous socket
(relay/http_mode.py): after the 101 the transport is taken over from aiohttp and
driven by a sans-I/O :class:`~hybridrelay.protocol.connection.Connection` (server
role, messages mode, ``max_message_size`` = ``max_control_message_size``), whose
WebSocket rules are its own (unmasked frames refused with 1002, ping answered, close
handshake, 1009 over the size, pongs owed to a listener that does not read coalesced
at ``max_queued_control_frames`` and that listener not read while they wait). What
the listener's messages mean, and when a bad one closes the channel, is
:class:`~hybridrelay.relay.control_protocol.RelayControl`'s to decide; this module
matches responses to the requests they answer, renews tokens and keeps time.

Every wait on the listener is bounded (``[relay]`` keys): a message or control frame
the listener does not take within ``control_send_timeout`` (its socket buffer stays
over its mark while something waits for room), a close it does not answer within
``close_timeout``; each cut, like the silent channel and the expired token, is
counted by ``limit_hit`` under the key's name (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, cast

from hybridrelay.errors import (
    AuthError,
    BadGatewayError,
    ConnectionClosedError,
)
from hybridrelay.logs import ConnectionLogger
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.connection import (
    BytesMessage,
    CloseReceived,
    Connection,
    Event,
    Failed,
    Hold,
    LimitReached,
    Ping,
    Pong,
    Role,
    State,
    TextMessage,
)
from hybridrelay.protocol.frames import Opcode
from hybridrelay.protocol.messages import Accept, Request, encode
from hybridrelay.relay.control_protocol import (
    BadMessage,
    CloseChannel,
    ControlEvent,
    RelayControl,
    RenewTokenReceived,
    ResponseBodyMissing,
    ResponseInvalid,
    ResponseReceived,
)
from hybridrelay.relay.pending import PendingRequest

__all__ = ["ControlChannel"]

_TEXT: Final = int(Opcode.TEXT)
_BINARY: Final = int(Opcode.BINARY)
# The listener's socket counts as full over this many unwritten bytes (asyncio's default
# high-water mark, which aiohttp's writer drained against); not full again at a quarter.
_WRITE_HIGH_WATER: Final = 64 * 1024
# Bytes of control frames left for one write at the end of a loop turn; more go out at
# once (a bound on what waits, not a limit on anything a peer does).
_CORK_LIMIT: Final = 64 * 1024

# renew(token) -> new expiry (unix seconds); raises AuthError when the token is refused.
Renewer = Callable[[str], Awaitable[float]]

Parts = tuple[asyncio.Transport, asyncio.BaseProtocol, bytes]  # splice.take_over()


class ControlChannel(asyncio.Protocol):
    """One listener's control channel on this node.

    Built before the 101 (its listener slot is reserved first); :meth:`attach` takes the
    transport once the 101 is out, :meth:`run` serves the channel until it closes.
    """

    def __init__(
        self,
        *,
        hc_name: str,
        listener_id: str,
        expires_at: float | None,
        renew: Renewer,
        ping_interval: float,
        token_grace: float,
        log: ConnectionLogger,
        requests: Mapping[str, PendingRequest] | None = None,
        now: Callable[[], float] = time.time,
        send_timeout: float = 10.0,
        close_timeout: float = 10.0,
        max_message_size: int = 1 << 20,
        max_queued_control: int = 64,
        limit_hit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self._hc_name = hc_name
        self._listener_id = listener_id
        self.expires_at = expires_at
        self._renew = renew
        self._ping_interval = ping_interval
        self._grace = token_grace
        self._log = log
        self._now = now
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout
        self._limit_hit = limit_hit
        self._requests: Mapping[str, PendingRequest] = requests if requests is not None else {}
        self._conn = Connection(
            Role.SERVER,
            max_message_size=max_message_size,
            # Pings and broken frames are answered in the order of what came with them:
            # once a message has made the relay close, the pings behind it get no pong
            # (RFC 6455 §5.5.1) and a broken frame behind it does not change the code.
            auto_answer=False,
            max_queued_control=max_queued_control,
            high_water=_WRITE_HIGH_WATER,
        )
        self._control = RelayControl()
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.BaseProtocol | None = None
        self._reading = True  # aiohttp hands the transport over reading
        self._write_paused = False
        self._waiting = 0  # deliver() calls waiting for room in the socket buffer
        self._room: asyncio.Future[None] | None = None  # set when the buffer drains
        self._stall_timer: asyncio.TimerHandle | None = None  # control_send_timeout
        self._close_timer: asyncio.TimerHandle | None = None  # close_timeout
        self._close_after_flush = False
        # Bytes delivered this loop turn and not yet written; a write at the turn's end
        # is scheduled while there are any (see _cork).
        self._corked = 0
        self._flush_scheduled = False
        self._early_close: tuple[int, str] | None = None
        self._renewal: asyncio.Task[None] | None = None
        # What came behind a renewToken waits for its renewal (which may close the
        # channel), as it did behind aiohttp's receive(); the listener is not read then.
        self._deferred: list[Event] = []
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._last_seen = loop.time()
        self._lost: asyncio.Future[None] = loop.create_future()
        self.closing = False
        self.connected_at = now()  # wall time, for the management API's listener list
        # The last keepalive ping's payload and loop time: its pong gives the round trip.
        # Each ping carries a fresh counter so a late pong of an older one, or one the
        # listener sends unasked (RFC 6455 §5.5.3), is not taken for the current one.
        self._pings_sent = 0
        self._ping_outstanding: tuple[bytes, float] | None = None
        self.last_ping_rtt: float | None = None  # seconds; None until the first pong

    @property
    def listener_id(self) -> str:
        return self._listener_id

    @property
    def hc_name(self) -> str:
        return self._hc_name

    @property
    def remote_address(self) -> str:
        """The listener's address and port as the relay sees them (``""`` when gone)."""
        transport = self._transport
        if transport is None or self._lost.done():
            return ""
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return ""

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code once the channel is closed (None while it is open)."""
        conn = self._conn
        if conn.close_received is not None:
            return conn.close_received[0]
        if conn.failure is not None:
            return conn.failure[0]
        return 1006 if self._lost.done() else None

    # -- setup -------------------------------------------------------------------------

    def attach(self, parts: Parts) -> None:
        """Take the transport over from aiohttp (the 101 is out)."""
        transport, inner, tail = parts
        self._transport = transport
        self._inner = inner
        # The transport and the Connection agree on when the listener counts as full.
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER, low=_WRITE_HIGH_WATER // 4)
        transport.set_protocol(self)
        if transport.is_closing():
            self.connection_lost(None)  # lost before we took over: we would never hear
            return
        if self.closing:  # closed (a reaction, a shutdown) or cut while the 101 went out
            early, self._early_close = self._early_close, None
            if early is None:
                transport.abort()
                return
            self.closing = False
            self._start_close(*early)
        self._flush()  # what was delivered while the 101 went out follows it
        if tail:
            self.data_received(tail)

    # -- sending -------------------------------------------------------------------------

    async def deliver(self, message: Accept | Request, body: bytes | None = None) -> None:
        """Send one control message, and its body right after it (HC §4: adjacent).

        The usual case costs no lock, timer or await: nothing waits before this message
        and the socket has room, so its frames (and the body's) leave in one write at
        the end of this loop turn, with the turn's other messages (see _cork).
        Otherwise it waits its turn for room, at most ``control_send_timeout``.

        Raises ConnectionClosedError when the channel is gone or stuck.
        """
        if self.closing or not self._conn.can_send:
            raise ConnectionClosedError(CloseCode.GOING_AWAY, "control channel closed")
        text = encode(message).encode("ascii")
        if self._write_paused or self._waiting:
            await self._wait_for_room()
        conn = self._conn
        conn.send_frame(_TEXT, text)
        if body is not None:
            conn.send_frame(_BINARY, body)
        self._cork(len(text) + (len(body) if body is not None else 0))

    def _cork(self, size: int) -> None:
        """Leave the frames just sent for one write at the end of this loop turn.

        The requests that arrive together (one loop turn serves every sender socket that
        became readable at once) then cost the channel one system call, not one each
        (py-spy: the per-request write was 15% of the relay under bench.http). The
        Connection keeps every frame in order, so a message and its body stay adjacent
        (HC §4) and anything flushed sooner (a pong, a close) takes them along first.
        At most ``_CORK_LIMIT`` bytes wait; past that they are written at once.
        """
        self._corked += size
        if self._corked > _CORK_LIMIT:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_corked)

    def _flush_corked(self) -> None:
        self._flush_scheduled = False
        self._flush()

    async def _wait_for_room(self) -> None:
        """Wait, in turn, until the socket takes more; raises ConnectionClosedError."""
        self._waiting += 1
        try:
            self._arm_stall_timer()
            async with asyncio.timeout(self._send_timeout):
                while self._write_paused and not self._lost.done():
                    if self._room is None or self._room.done():
                        self._room = self._loop.create_future()
                    await asyncio.shield(self._room)
        except TimeoutError as exc:
            self._not_reading()
            raise ConnectionClosedError(
                CloseCode.INTERNAL_ERROR, "control channel send failed"
            ) from exc
        finally:
            self._waiting -= 1
        if self.closing or not self._conn.can_send:
            raise ConnectionClosedError(CloseCode.INTERNAL_ERROR, "control channel send failed")

    def _flush(self) -> None:
        """Write what the Connection has for the listener (kept there until attach())."""
        self._corked = 0
        transport = self._transport
        if transport is None or self._lost.done():
            return
        out = self._conn.data_to_send()
        if not out:
            return
        if len(out) == 1:
            transport.write(out[0])
        else:
            transport.writelines(out)
        if self._close_after_flush and not self._conn.control_pending:
            transport.close()

    def _sync_reading(self) -> None:
        wanted = self._conn.wants_read
        transport = self._transport
        if wanted is not self._reading and transport is not None and not self._lost.done():
            self._reading = wanted
            if wanted:
                transport.resume_reading()
            else:
                transport.pause_reading()
        if self._write_paused and self._conn.control_pending:
            self._arm_stall_timer()  # pongs (or a ping) owed to a listener that does not read

    def _arm_stall_timer(self) -> None:
        if self._stall_timer is None and not self._lost.done():
            self._stall_timer = self._loop.call_later(self._send_timeout, self._stalled)

    def _stalled(self) -> None:
        self._stall_timer = None
        if self._write_paused and (self._waiting or self._conn.control_pending):
            self._not_reading()

    def _not_reading(self) -> None:
        """The listener has not taken what it was sent for control_send_timeout: cut it."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # cut already (the other timer fired first)
        self._log.warning("control_channel_not_reading")
        self._limit_hit("control_send_timeout")
        self.abort()

    # -- closing --------------------------------------------------------------------------

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and wait (at most ``close_timeout``) for the listener's answer."""
        self._start_close(code, reason)
        with contextlib.suppress(TimeoutError):
            # The close timer cuts the connection first; this only bounds our own wait.
            async with asyncio.timeout(self._close_timeout + 1.0):
                await asyncio.shield(self._lost)

    def _start_close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self._log.info("control_channel_closing", extra={"code": code, "reason": reason})
        if self._transport is None:
            self._early_close = (code, reason)  # sent as soon as attach() has the socket
            return
        if self._lost.done():
            return
        self._conn.send_close(code, reason)
        self._flush()
        self._arm_close_timer()
        self._close_transport_if_closed()

    def _close_transport_if_closed(self) -> None:
        """Close TCP once the handshake is over and our close frame is out (RFC 6455 §7.1.1)."""
        transport = self._transport
        if self._conn.state is not State.CLOSED or transport is None or self._lost.done():
            return
        self._flush()
        if self._conn.control_pending:
            self._close_after_flush = True  # once the owed close frame is out
            self._arm_close_timer()
            return
        transport.close()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self._lost.done():
            # A listener that never answers (or never reads) the close is cut, counted.
            self._close_timer = self._loop.call_later(self._close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if not self._lost.done():
            self._limit_hit("close_timeout")
            self.abort()

    def abort(self) -> None:
        self.closing = True
        if self._transport is not None and not self._lost.done():
            self._transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._last_seen = self._loop.time()
        self._handle(self._conn.receive_data(data))

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Pong):
                # Timed at arrival, even while a renewal holds the other events back.
                self._on_pong(event)
            elif self._renewal is None:
                self._on_event(event)
            else:
                self._deferred.append(event)
        self._flush()  # pongs, a close
        self._sync_reading()
        self._close_transport_if_closed()

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost.done():
            return
        self.closing = True
        self._conn.receive_eof()
        self._conn.data_to_send()  # what was owed to the listener goes nowhere
        for timer in (self._stall_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._stall_timer = self._close_timer = None
        if self._renewal is not None:
            self._renewal.cancel()
        if self._room is not None and not self._room.done():
            self._room.set_result(None)  # deliver() waiters see the channel closed
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)  # aiohttp forgets the connection
        self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        transport = cast(asyncio.Transport, self._transport)
        self._conn.outgoing_buffered(transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._conn.outgoing_buffered(0)  # under the low mark: owed control frames go out
        self._flush()
        self._sync_reading()
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    # -- what the listener sends ---------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        kind = type(event)
        if kind is TextMessage or kind is BytesMessage:
            if self.closing:
                return  # the relay has closed: nothing more is acted on
            data = cast(TextMessage | BytesMessage, event).data
            for control in self._control.receive(data):
                self._on_control(control)
        elif kind is CloseReceived:
            self.closing = True  # the Connection answered it; TCP closes after the flush
        elif kind is Failed:
            failed = cast(Failed, event)
            self._conn.fail(failed.code, failed.reason)  # our close with its code, if none
            if self.closing:
                return  # the relay had closed already: what came after is not acted on
            self.closing = True
            self._log.warning("control_channel_error", extra={"error": failed.reason})
            if failed.limit is not None:  # a control frame over RFC 6455's 125 bytes
                self._limit_hit(failed.limit)
            elif failed.code == CloseCode.MESSAGE_TOO_BIG:
                self._limit_hit("max_control_message_size")
            self._arm_close_timer()
        elif kind is Ping:
            self._conn.send_pong(cast(Ping, event).payload)
        elif kind is LimitReached:
            self._limit_hit(cast(LimitReached, event).limit)
        # Pong: handled in _handle (round trip); liveness is _last_seen.

    def _on_pong(self, pong: Pong) -> None:
        outstanding = self._ping_outstanding
        if outstanding is not None and pong.payload == outstanding[0]:
            self._ping_outstanding = None
            self.last_ping_rtt = self._loop.time() - outstanding[1]

    def _on_control(self, event: ControlEvent) -> None:
        kind = type(event)
        if kind is ResponseReceived:
            response, body = cast(ResponseReceived, event)
            pending = self._pending_for(response.request_id)
            if pending is None:
                return
            if body is not None:
                # Header and body travel adjacent (HC §4); hand them over together so
                # the sender gets a Content-Length answer.
                pending.body.feed(body)
                pending.body.feed_eof()
            pending.deliver_header(response)
        elif kind is RenewTokenReceived:
            token = cast(RenewTokenReceived, event).token
            self._renewal = asyncio.create_task(
                self._renew_token(token), name=f"renew:{self._listener_id}"
            )
            self._conn.hold_reading(Hold.PEER_FULL)
        elif kind is ResponseInvalid:
            response, reason = cast(ResponseInvalid, event)
            if (pending := self._pending_for(response.request_id)) is not None:
                # A well-formed message whose content cannot go on an HTTP connection:
                # that request gets a 502, the channel and every other request carry on.
                self._log.warning(
                    "http_response_invalid",
                    extra={"request_id": response.request_id, "reason": reason},
                )
                pending.fail(BadGatewayError("the listener's response is not valid HTTP"))
        elif kind is ResponseBodyMissing:
            response = cast(ResponseBodyMissing, event).response
            if (pending := self._pending_for(response.request_id)) is not None:
                self._log.warning(
                    "response_body_missing", extra={"request_id": response.request_id}
                )
                pending.fail(BadGatewayError("the listener's response came without its body"))
        elif kind is BadMessage:
            bad = cast(BadMessage, event)
            if bad.kind == "stray_body":
                self._log.warning("unexpected_binary_message", extra={"reason": bad.reason})
            elif bad.kind == "not_for_relay":
                self._log.warning("unexpected_control_message", extra={"reason": bad.reason})
            else:
                self._log.warning("control_message_invalid", extra={"error": bad.reason})
        elif kind is CloseChannel:
            close = cast(CloseChannel, event)
            if close.limit is not None:  # over HC's 64 KiB (control_message_limit): 1009
                self._limit_hit(close.limit)
            self._start_close(close.code, close.reason)

    def _pending_for(self, request_id: str) -> PendingRequest | None:
        """The request a response answers, if this listener may still answer it."""
        pending = self._requests.get(request_id)
        # Only the listener that got a request may answer it. Listener ids are chosen
        # by listeners and only unique per hybrid connection, so the entity counts too.
        if (
            pending is None
            or pending.listener_id != self._listener_id
            or pending.hc_name != self._hc_name
        ):
            self._log.warning("response_for_unknown_request", extra={"request_id": request_id})
            return None
        if pending.header.done():
            self._log.warning("duplicate_response", extra={"request_id": request_id})
            return None
        return pending

    async def _renew_token(self, token: str) -> None:
        try:
            self.expires_at = await self._renew(token)
        except AuthError as exc:
            self._log.warning("token_renewal_refused", extra={"reason": str(exc)})
            self._start_close(1008, f"token renewal refused: {exc}"[:120])
        except Exception:  # noqa: BLE001 - a renewal must never leave the channel held
            # Not the listener's doing (the store failed): it redials, as it would have
            # when this ended the channel's handler; reading must not stay held.
            self._log.exception("token_renewal_failed")
            self._start_close(1011, "token renewal failed")
        else:
            self._log.info("token_renewed", extra={"expires_at": self.expires_at})
        self._renewal = None
        self._conn.unhold_reading(Hold.PEER_FULL)
        deferred, self._deferred = self._deferred, []
        if not self._lost.done():
            self._handle(deferred)  # may start the next renewal, and wait again

    # -- serving -------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve the channel until it closes; returns the close code seen."""
        watchdog = asyncio.create_task(self._watchdog(), name=f"watchdog:{self._listener_id}")
        try:
            await asyncio.shield(self._lost)
        finally:
            watchdog.cancel()
            renewal = self._renewal
            if renewal is not None:
                renewal.cancel()
            for task in (watchdog, renewal):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if not self._lost.done():  # the handler was cancelled: do not leave the socket
                self.abort()
        return self.close_code or 1006

    async def _watchdog(self) -> None:
        # Ticks four times per interval so a silent listener is dropped soon after it
        # has missed two pings (HC §6: hyco-ws never pings, NAT/LB idle timeouts are real).
        loop = self._loop
        interval = self._ping_interval
        next_ping = loop.time() + interval
        while not self.closing:
            await asyncio.sleep(interval / 4)
            now = loop.time()
            if self.expires_at is not None and self.expires_at + self._grace <= self._now():
                self._limit_hit("token_grace")
                await self.close(CloseCode.POLICY_VIOLATION, "token expired")
                return
            if now - self._last_seen > 2 * interval:
                self._log.warning(
                    "control_channel_unresponsive",
                    extra={"silent_s": round(now - self._last_seen, 2)},
                )
                self._limit_hit("ping_interval")
                self.abort()
                return
            if now >= next_ping and self._conn.state is State.OPEN:
                next_ping = now + interval
                # Written at once, or queued while the listener's buffer is full (a
                # listener that does not take it is cut at control_send_timeout).
                self._pings_sent += 1
                payload = self._pings_sent.to_bytes(8, "big")
                self._ping_outstanding = (payload, now)
                self._conn.send_ping(payload)
                self._flush()
                self._sync_reading()
