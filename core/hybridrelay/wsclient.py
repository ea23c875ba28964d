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

One job per module: this one is the connection (its state, closing, the asyncio
callbacks) and :func:`ws_connect`, and it re-exports the public names of the others:

- :mod:`hybridrelay.ws_send`: messages to frames and waiting for room
  (:meth:`~WsConnection.send`, :meth:`~WsConnection.send_many`,
  :meth:`~WsConnection.send_fragments`).
- :mod:`hybridrelay.ws_receive`: what arrived and is not read yet, and the four ways to
  read it (:meth:`~WsConnection.recv`, :meth:`~WsConnection.recv_fragments`,
  :meth:`~WsConnection.recv_stream`, :meth:`~WsConnection.read`).
- :mod:`hybridrelay.ws_sink`: bridge mode, payload handed to a :class:`PayloadSink` as it
  arrives (:meth:`~WsConnection.attach_sink`).
- :mod:`hybridrelay.ws_handshake`: waiting for the 101 (:func:`ws_connect`).
- :mod:`hybridrelay.ws_keepalive`: when to ping, when to give up on a silent peer.

Only :meth:`~WsConnection.recv` assembles a whole message in memory, so only it has a
size limit: ``max_size``, :data:`DEFAULT_MAX_SIZE` (1 MiB, as websockets) unless the
caller says otherwise; a larger message fails the connection with 1009 (RFC 6455 §7.4.1)
before more than ``max_size`` bytes of it are held. The streaming views hold at most
``read_limit`` bytes (and :meth:`~WsConnection.recv_fragments` one frame) whatever the
message's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl as _ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Final, cast

from hybridrelay import errors
from hybridrelay.logs import CLIENT
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.connection import (
    CloseReceived,
    Connection,
    ConnectionLost,
    Event,
    Failed,
    Hold,
    Role,
    State,
)
from hybridrelay.protocol.frames import is_valid_close_code
from hybridrelay.protocol.handshake import ClientHandshake, parse_ws_url
from hybridrelay.ws_handshake import OpeningHandshake
from hybridrelay.ws_keepalive import Keepalive
from hybridrelay.ws_receive import ReceiveMixin
from hybridrelay.ws_send import SendMixin
from hybridrelay.ws_sink import PayloadSink, SinkMixin

__all__ = ["DEFAULT_MAX_SIZE", "PayloadSink", "WsConnection", "ws_connect"]

logger = logging.getLogger(CLIENT)

DEFAULT_MAX_SIZE: Final = 1 << 20
"""The largest message :meth:`WsConnection.recv` assembles by default (bytes on the wire)."""

# §7.1.1: after the closing handshake the server should close TCP first; the client
# gives it this long before closing the connection itself.
_TCP_CLOSE_GRACE: Final = 1.0
# The write-buffer high-water mark of asyncio's and uvloop's transports (64 KiB, low mark a
# quarter of it): pause_writing() means the Connection's peer counts as full.
_TRANSPORT_HIGH_WATER: Final = 64 * 1024


def _loop_sets_nodelay(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the loop's TCP transports come with TCP_NODELAY already (TLS ones included).

    asyncio's selector loops set it on every TCP socket and uvloop on every TCP handle;
    setting it again costs a system call per connection. An isinstance per connection is
    cheaper than that call, so nothing is cached.
    """
    return isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop) or type(
        loop
    ).__module__.startswith("uvloop")


def _check_close_code(code: int) -> None:
    if not is_valid_close_code(code):
        raise ValueError(f"{code} is not a close code an endpoint may send (RFC 6455 §7.4)")


class WsConnection(SendMixin, ReceiveMixin, SinkMixin, asyncio.Protocol):
    """One client WebSocket connection; create it with :func:`ws_connect`.

    Its sending, receiving and bridge-mode methods are in :mod:`~hybridrelay.ws_send`,
    :mod:`~hybridrelay.ws_receive` and :mod:`~hybridrelay.ws_sink` (mixins).

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
        self._log_url = log_url
        self._debug = logger.isEnabledFor(logging.DEBUG)
        # Streaming: every view of what arrives is built from payload pieces; only recv()
        # assembles, so only recv() has a size limit. Text is decoded where it is handed
        # out (ws_receive.py), or only checked (ws_sink.py).
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
        self._hs: OpeningHandshake | None = None  # until the 101 is accepted

        # Receiving (ws_receive.py; ws_sink.py in bridge mode)
        self._init_receiving(max_size)
        self._draining = False  # closing or failed: the socket is read only to drain it
        self._reading_paused = False
        self._init_sink()

        # Sending (ws_send.py)
        self._init_sending()
        self._write_paused = False
        self._eof_written = False

        # Closing
        self._lost = False
        self._closed_waiter: asyncio.Future[None] = self._loop.create_future()
        self._timers: list[asyncio.TimerHandle] = []
        # Timers, not a task per connection (the name predates that).
        self._keepalive_task: Keepalive | None = None

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

    # ------------------------------------------------------------------ closing

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
        if hs is not None:
            hs.connection_lost()
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

    def _handshake_data(self, hs: OpeningHandshake, data: bytes) -> None:
        accepted = hs.receive_data(data)
        if accepted is not None:
            self._hs = None
            self.subprotocol = accepted.subprotocol
            self.response_headers = dict(accepted.headers)
            if accepted.leftover:
                self.data_received(accepted.leftover)

    async def _handshake(self, hs: OpeningHandshake) -> None:
        if self._transport is None or self._lost:
            raise errors.ConnectionClosedError(
                CloseCode.ABNORMAL, "connection closed before the handshake"
            )
        await hs.run(self._transport, self._log_url, self._debug)

    def _start_keepalive(self, ping_interval: float | None, ping_timeout: float | None) -> None:
        if ping_interval is not None and not self._lost:
            timeout = ping_interval if ping_timeout is None else ping_timeout
            self._keepalive_task = Keepalive(self, ping_interval, timeout)

    # ------------------------------------------------------------------ events

    def _on_control_event(self, event: Event) -> bool:
        """A received event other than a data frame; True if nothing more will arrive
        after it (the peer's close, a failure, the end of TCP). Both ways of receiving
        (ws_receive.py's buffer, ws_sink.py's sink) hand their control events here."""
        if isinstance(event, CloseReceived):
            if self._debug:
                logger.debug("< CLOSE %s %d %r", self._log_url, event.code, event.reason)
            self._rx_eof = True
            self._flush()  # our echo, if auto_close_echo
            if self._conn.state is State.CLOSED:
                self._closing_handshake_done()
            return True
        if isinstance(event, Failed):
            self._rx_eof = True
            self._after_failure(event.code, event.reason)
            return True
        if isinstance(event, ConnectionLost):
            self._rx_eof = True
            return True
        return False

    # ------------------------------------------------------------------ internals

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        transport = self._transport
        if out and transport is not None and not (self._lost or self._eof_written):
            if transport.is_closing():
                return
            transport.writelines(out)

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
    hs = OpeningHandshake(
        ClientHandshake(
            target.host_header, target.resource, subprotocols=subprotocols, headers=headers
        )
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
