"""ControlChannel: the relay's end of one listener's long-lived WebSocket (HC §2.2, §3).

It sends ``accept`` (and, in HTTP mode, ``request``) messages, takes
``renewToken``, and watches the listener: the relay pings every
``ping_interval`` because hyco-ws never pings (HC §6), and drops a channel that
has shown no sign of life for two intervals. Token expiry is enforced with a
grace period because both SDKs renew exactly at expiry (HC §3.4); a failed
renewal closes the channel with 1008.

Every wait on the listener is bounded (``[relay]`` keys): a message or pong the
listener does not take within ``control_send_timeout``, a close it does not answer
within ``close_timeout``; each cut, like the silent channel and the expired token,
is counted by ``limit_hit`` under the key's name (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web
from aiohttp.http import WebSocketWriter

from hybridrelay.errors import (
    AuthError,
    BadGatewayError,
    ConnectionClosedError,
    HybridRelayError,
    InvalidMessageError,
)
from hybridrelay.logs import ConnectionLogger
from hybridrelay.protocol.frames import MaskCheck, Opcode, encode_frame, encode_frame_header
from hybridrelay.protocol.http_response import check_response
from hybridrelay.protocol.messages import (
    Accept,
    RenewToken,
    Request,
    Response,
    decode,
    encode,
)
from hybridrelay.relay.pending import PendingRequest

__all__ = ["ControlChannel", "ControlSocketResponse"]

_TEXT: Final = int(Opcode.TEXT)
# Bytes of control frames held back to leave in one write per loop turn; more than this
# go out at once (a bound on the queue, not a limit on anything a peer does).
_CORK_LIMIT: Final = 64 * 1024
_BINARY: Final = int(Opcode.BINARY)

# renew(token) -> new expiry (unix seconds); raises AuthError when the token is refused.
Renewer = Callable[[str], Awaitable[float]]

# aiohttp's reader reports an oversized control frame as a 1002 with this text (RFC 6455
# §5.5); it is counted as the protocol value it breaks.
_CONTROL_FRAME_TOO_BIG: Final = "Control frame payload cannot be larger than 125 bytes"


class ControlSocketResponse(web.WebSocketResponse):
    """aiohttp's server WebSocket, failing a client that sends an unmasked frame (1002).

    RFC 6455 §5.1: a server must close the connection on an unmasked client frame.
    aiohttp's reader unmasks what is masked and takes the rest as it is, so a
    :class:`MaskCheck` sits in front of it, on the one path bytes take from the
    connection to the reader (``RequestHandler._payload_parser``). The bytes a client
    sent behind its handshake, which aiohttp hands the reader the moment it is
    installed, go through the check too.
    """

    def _post_start(
        self, request: web.BaseRequest, protocol: str | None, writer: WebSocketWriter
    ) -> None:
        handler = request.protocol
        tail, handler._message_tail = handler._message_tail, b""
        super()._post_start(request, protocol, writer)
        gate = _MaskedFramesOnly(handler._payload_parser, self._fail_unmasked)
        handler._payload_parser = gate
        if tail:
            gate.feed_data(tail)  # as set_parser does: a failure shows in the next receive

    def _fail_unmasked(self) -> None:
        # What aiohttp's reader does with its own protocol errors: receive() then closes
        # with this code and returns an ERROR message.
        if self._reader is not None:
            self._reader.set_exception(
                WebSocketError(WSCloseCode.PROTOCOL_ERROR, "unmasked client frame")
            )


class _MaskedFramesOnly:
    """Passes a client's bytes to aiohttp's WebSocket reader up to its first unmasked frame."""

    __slots__ = ("_check", "_fail", "_reader")

    def __init__(self, reader: Any, fail: Callable[[], None]) -> None:
        self._reader = reader  # aiohttp's WebSocketReader (its C or its Python build)
        self._fail = fail
        self._check = MaskCheck()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        good = self._check.feed(data)
        if good == len(data):
            result: tuple[bool, bytes] = self._reader.feed_data(data)
            return result
        if good:
            self._reader.feed_data(data[:good])
        self._fail()
        return True, b""  # aiohttp's "stop reading this connection"

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class ControlChannel:
    """One listener's control channel on this node."""

    def __init__(
        self,
        *,
        request: web.Request,
        ws: web.WebSocketResponse,
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
        limit_hit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self._request = request
        self._ws = ws
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
        self._send_lock = asyncio.Lock()
        self._requests: Mapping[str, PendingRequest] = requests if requests is not None else {}
        # The response whose body is the next binary message on this channel (HC §4);
        # _skip_body swallows the body of a response nobody waits for.
        self._body_for: PendingRequest | None = None
        self._body_header: Response | None = None
        self._skip_body = False
        self._loop = asyncio.get_running_loop()
        self._last_seen = self._loop.time()
        # Frames of the fast path waiting for the end of this loop turn (see _cork).
        self._corked: list[bytes] = []
        self._corked_size = 0
        self.closing = False
        self.connected_at = now()  # wall time, for the management API's listener list

    @property
    def listener_id(self) -> str:
        return self._listener_id

    @property
    def hc_name(self) -> str:
        return self._hc_name

    @property
    def remote_address(self) -> str:
        """The listener's address and port as the relay sees them (``""`` when gone)."""
        peer = (
            self._request.transport.get_extra_info("peername") if self._request.transport else None
        )
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return ""

    async def deliver(self, message: Accept | Request, body: bytes | None = None) -> None:
        """Send one control message, and its body right after it (HC §4: adjacent).

        Raises ConnectionClosedError when the channel is gone or stuck.
        """
        if self.closing or self._ws.closed:
            raise ConnectionClosedError(1001, "control channel closed")
        text = encode(message)
        transport = self._request.transport
        if (
            transport is not None
            and not self._send_lock.locked()
            and not self._request.protocol.writing_paused
            and not transport.is_closing()
        ):
            # The usual case: nothing is queued before this message and the socket takes
            # it. Its frames (and the body's: adjacent, HC §4) leave in one write at the
            # end of this loop turn, with the other messages of the turn, and with no
            # lock, timer or await; they are the frames aiohttp's writer would write, which
            # always writes whole frames, so nothing can interleave with them.
            frame = encode_frame(fin=True, opcode=_TEXT, payload=text.encode("ascii"))
            if body is None:
                self._cork(frame)
            else:
                head = encode_frame_header(fin=True, opcode=_BINARY, length=len(body))
                self._cork(frame, head, body)
            return
        try:
            async with self._send_lock, asyncio.timeout(self._send_timeout):
                self._uncork()  # what the fast path took goes first
                await self._ws.send_str(text)
                if body is not None:
                    await self._ws.send_bytes(body)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            if isinstance(exc, TimeoutError):
                self._log.warning("control_channel_not_reading")
                self._limit_hit("control_send_timeout")
            self.abort()
            raise ConnectionClosedError(1011, "control channel send failed") from exc

    def _cork(self, *frames: bytes) -> None:
        """Queue whole frames for one write at the end of this loop turn.

        The requests that arrive together (one loop turn serves every sender socket that
        became readable at once) then cost the channel one system call, not one each.
        A message and its body are queued together, so they stay adjacent (HC §4); the
        queue is bounded by ``_CORK_LIMIT`` bytes, past which it is written at once.
        """
        if not self._corked:
            self._loop.call_soon(self._uncork)
        self._corked.extend(frames)
        self._corked_size += sum(len(frame) for frame in frames)
        if self._corked_size > _CORK_LIMIT:
            self._uncork()

    def _uncork(self) -> None:
        frames, self._corked = self._corked, []
        self._corked_size = 0
        transport = self._request.transport
        # A channel closed meanwhile (our close frame is out) takes nothing more; its
        # requests fail as the channel ends (hc_endpoints._fail_requests_of).
        if frames and transport is not None and not transport.is_closing() and not self._ws.closed:
            transport.writelines(frames)

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code once the channel is closed (None while it is open)."""
        return self._ws.close_code

    async def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self._uncork()  # before our close frame, never after it
        self.closing = True
        self._log.info("control_channel_closing", extra={"code": code, "reason": reason})
        try:
            # A listener that does not read, or never answers, would hold the close (and
            # us) forever. aiohttp's own wait for the answer is longer (ws timeout), so
            # this one decides and is counted.
            async with asyncio.timeout(self._close_timeout):
                await self._ws.close(code=code, message=reason.encode("utf-8"))
        except TimeoutError:
            self._limit_hit("close_timeout")
            self.abort()
        except (ConnectionError, RuntimeError):
            pass

    def abort(self) -> None:
        self.closing = True
        self._corked = []
        self._corked_size = 0
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    async def run(self) -> int:
        """Serve the channel until it closes; returns the close code seen."""
        watchdog = asyncio.create_task(self._watchdog(), name=f"watchdog:{self._listener_id}")
        try:
            await self._receive_loop()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        return self._ws.close_code or 1006

    async def _receive_loop(self) -> None:
        ws = self._ws
        loop = asyncio.get_running_loop()
        while True:
            msg = await ws.receive()
            self._last_seen = loop.time()
            if msg.type == WSMsgType.TEXT:
                await self._on_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self._on_binary(msg.data)
            elif msg.type == WSMsgType.PING:
                try:
                    # The pong waits for room in the socket buffer (aiohttp drains); a
                    # listener that pings and never reads must not hold this loop forever.
                    async with asyncio.timeout(self._send_timeout):
                        await ws.pong(msg.data)
                except TimeoutError:
                    self._log.warning("control_channel_not_reading")
                    self._limit_hit("control_send_timeout")
                    self.abort()
                    return
                except (ConnectionError, RuntimeError):
                    pass
            elif msg.type == WSMsgType.PONG:
                continue
            elif msg.type == WSMsgType.ERROR:
                error = ws.exception() or msg.data
                self._log.warning("control_channel_error", extra={"error": str(error)})
                self._count_frame_limit(error)
                return
            else:  # CLOSE, CLOSING, CLOSED
                return
            if self.closing:
                return

    async def _on_text(self, text: str) -> None:
        try:
            message = decode(text)
        except HybridRelayError as exc:
            self._log.warning("control_message_invalid", extra={"error": str(exc)})
            if exc.limit is not None:  # over HC's 64 KiB (control_message_limit): 1009
                self._limit_hit(exc.limit)
            await self.close(exc.close_code, str(exc)[:120])
            return
        if isinstance(message, RenewToken):
            try:
                self.expires_at = await self._renew(message.token)
            except AuthError as exc:
                self._log.warning("token_renewal_refused", extra={"reason": str(exc)})
                await self.close(1008, f"token renewal refused: {exc}"[:120])
                return
            self._log.info("token_renewed", extra={"expires_at": self.expires_at})
        elif isinstance(message, Response):
            self._on_response(message)
        else:
            self._log.warning("unexpected_control_message", extra={"kind": type(message).__name__})
            await self.close(1002, "listeners may only send renewToken and response")

    def _count_frame_limit(self, error: object) -> None:
        """Count a frame aiohttp's reader refused for its size (the rest is misbehaviour)."""
        if not isinstance(error, WebSocketError):
            return
        if error.code == WSCloseCode.MESSAGE_TOO_BIG:
            self._limit_hit("max_control_message_size")
        elif error.code == WSCloseCode.PROTOCOL_ERROR and str(error) == _CONTROL_FRAME_TOO_BIG:
            self._limit_hit("max_control_payload")

    def _on_response(self, response: Response) -> None:
        pending = self._requests.get(response.request_id)
        # Only the listener that got a request may answer it. Listener ids are chosen
        # by listeners and only unique per hybrid connection, so the entity counts too.
        if (
            pending is None
            or pending.listener_id != self._listener_id
            or pending.hc_name != self._hc_name
        ):
            self._log.warning(
                "response_for_unknown_request", extra={"request_id": response.request_id}
            )
            self._skip_body = response.body
            return
        if pending.header.done():
            self._log.warning("duplicate_response", extra={"request_id": response.request_id})
            self._skip_body = response.body
            return
        try:
            check_response(response)
        except InvalidMessageError as exc:
            # A well-formed message whose content cannot go on an HTTP connection (a 101,
            # a header that would split the sender's response): that request gets a 502,
            # the channel and every other request on it carry on.
            self._log.warning(
                "http_response_invalid",
                extra={"request_id": response.request_id, "reason": str(exc)},
            )
            pending.fail(BadGatewayError("the listener's response is not valid HTTP"))
            self._skip_body = response.body
            return
        if response.body:
            # Header and body travel adjacent (HC §4); hand them over together so the
            # sender gets a Content-Length answer.
            self._body_for = pending
            self._body_header = response
        else:
            pending.deliver_header(response)

    def _on_binary(self, data: bytes) -> None:
        pending, self._body_for = self._body_for, None
        header, self._body_header = self._body_header, None
        if pending is not None and header is not None:
            pending.body.feed(data)
            pending.body.feed_eof()
            pending.deliver_header(header)
        elif self._skip_body:
            self._skip_body = False
        elif data:
            # A body with no header before it (HC §4); hyco-https sends an empty one after
            # body:false responses, which is harmless and ignored.
            self._log.warning("unexpected_binary_message", extra={"size": len(data)})

    def fail_inflight(self, error: HybridRelayError) -> None:
        """The channel is gone: a response body it was delivering never completes."""
        pending, self._body_for = self._body_for, None
        self._body_header = None
        if pending is not None:
            pending.fail(error)

    async def _watchdog(self) -> None:
        # Ticks four times per interval so a silent listener is dropped soon after it
        # has missed two pings (HC §6: hyco-ws never pings, NAT/LB idle timeouts are real).
        loop = asyncio.get_running_loop()
        interval = self._ping_interval
        next_ping = loop.time() + interval
        while not self.closing:
            await asyncio.sleep(interval / 4)
            now = loop.time()
            if self.expires_at is not None and self.expires_at + self._grace <= self._now():
                self._limit_hit("token_grace")
                await self.close(1008, "token expired")
                return
            if now - self._last_seen > 2 * interval:
                self._log.warning(
                    "control_channel_unresponsive",
                    extra={"silent_s": round(now - self._last_seen, 2)},
                )
                self._limit_hit("ping_interval")
                self.abort()
                return
            if now >= next_ping:
                next_ping = now + interval
                try:
                    # Bounded: a listener that does not read must not stop this watch (its
                    # silence, the token's expiry); the ping itself is written at once.
                    async with asyncio.timeout(interval):
                        await self._ws.ping()
                except TimeoutError:
                    pass
                except (ConnectionError, RuntimeError):
                    return
