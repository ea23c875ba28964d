"""An asyncio WebSocket client that can half-close, for byte bridges and HC senders/listeners.

Why not ``websockets``: it answers a received close frame at once, so a connection
cannot stay half-open. Hybrid Connections rely on TCP-like half-close (HC Part 1 §5:
NET's ``CloseOutputAsync(1000, "Shutdown")``, azbridge): one side sends its close
and keeps receiving data until the other side closes too. With
``auto_close_echo=False`` this client does not echo the peer's close frame; the
application keeps sending until it calls :meth:`WsConnection.close_write` or
:meth:`WsConnection.close`.

The framing is :mod:`hybridrelay.protocol.frames` (sans-I/O). This module adds the
opening handshake (RFC 6455 §4.1), the closing handshake (§7), keepalive pings and
flow control in both directions, on a plain :class:`asyncio.Protocol`.

Receiving: the frame parser streams payload into a bounded deque of chunks. Reading
from the socket pauses above ``read_limit`` buffered bytes and resumes below half of
it. Text is checked as UTF-8 while it arrives (§8.1, close 1007). Consumers pick
their view of the same chunks: whole messages (:meth:`~WsConnection.recv`), frames
of one message (:meth:`~WsConnection.recv_fragments`), one message's payload as it
arrives (:meth:`~WsConnection.recv_stream`) or a byte stream
(:meth:`~WsConnection.read`).

Only :meth:`~WsConnection.recv` assembles a whole message in memory, so only it has a
size limit: ``max_size``, :data:`DEFAULT_MAX_SIZE` (1 MiB, as websockets) unless the
caller says otherwise; a larger message fails the connection with 1009 (RFC 6455 §7.4.1)
before more than ``max_size`` bytes of it are held. The streaming views hold at most
``read_limit`` bytes (and :meth:`~WsConnection.recv_fragments` one frame) whatever the
message's size.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import functools
import hashlib
import logging
import os
import socket
import ssl as _ssl
import string
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeAlias, cast
from urllib.parse import quote, urlsplit

from hybridrelay import errors
from hybridrelay.protocol.frames import (
    FrameError,
    FrameParser,
    Opcode,
    apply_mask,
    encode_close_payload,
    encode_frame_header,
    parse_close_payload,
)

__all__ = ["DEFAULT_MAX_SIZE", "WsConnection", "ws_connect"]

logger = logging.getLogger("hybridrelay.client")

Data: TypeAlias = str | bytes | bytearray | memoryview

DEFAULT_MAX_SIZE: Final = 1 << 20
"""The largest message :meth:`WsConnection.recv` assembles by default (bytes on the wire)."""

_GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_MAX_RESPONSE_HEAD: Final = 64 * 1024
_MAX_ERROR_BODY: Final = 4 * 1024
_ERROR_BODY_TIMEOUT: Final = 1.0
# §7.1.1: after the closing handshake the server should close TCP first; the client
# gives it this long before closing the connection itself.
_TCP_CLOSE_GRACE: Final = 1.0
# Headers this module writes itself; a caller must not override them.
_RESERVED_HEADERS: Final = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
    }
)
_TOKEN_CHARS: Final = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
# Everything printable in ASCII except the space stays as it is in the request target
# (a literal ``$`` in ``/$hc/``, existing %-escapes); the rest is %-encoded as UTF-8.
_TARGET_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F))
_SENDABLE_CLOSE_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)

# Phases of the opening handshake; after _OPEN the closing state lives in flags
# (_close_sent, _close_rcvd, _lost) because half-close makes the states overlap.
_CONNECTING: Final = 0  # reading the response head
_HEAD_DONE: Final = 1  # head parsed, reading paused until ws_connect has checked it
_REJECTED: Final = 2  # non-101: collecting the error body
_OPEN: Final = 3  # frames flow


class _Chunk(NamedTuple):
    """A piece of received payload. ``data`` is str for text messages (already decoded)."""

    data: bytes | str
    size: int  # bytes on the wire, for flow control
    frame_end: bool
    message_end: bool


@dataclass(frozen=True, slots=True)
class _Target:
    secure: bool
    host: str  # for connecting and TLS SNI
    port: int
    resource: str  # request target: path + query, as given
    host_header: str
    log_url: str  # scheme://host:port/path, never the query (it may carry sb-hc-token)


def _quote_target(text: str) -> str:
    # Printable ASCII without spaces is all in _TARGET_SAFE: quote() would return it as is.
    if text.isascii() and text.isprintable() and " " not in text:
        return text
    return quote(text, safe=_TARGET_SAFE)


def _sets_nodelay(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the loop's TCP transports come with TCP_NODELAY already (TLS ones included).

    asyncio's selector loops set it on every TCP socket and uvloop on every TCP handle;
    setting it again costs a system call per connection. Other loops get it set here.
    """
    kind = type(loop)
    known = _NODELAY_LOOPS.get(kind)
    if known is None:
        known = _NODELAY_LOOPS[kind] = (
            isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
            or kind.__module__.split(".")[0] == "uvloop"
        )
    return known


_NODELAY_LOOPS: dict[type, bool] = {}
_UTF8_DECODER: Final = codecs.getincrementaldecoder("utf-8")


def _parse_url(url: str) -> _Target:
    # Query strings change with every rendezvous address and senders reuse their URL:
    # the part before the query is parsed once. Anything unusual takes the full path.
    base, _, query = url.partition("?")
    if not query or "#" in url or not (query.isascii() and query.isprintable()) or " " in query:
        return _parse_full_url(url)
    target = _parse_base_url(base)
    resource = f"{target.resource}?{query}"
    return _Target(
        target.secure, target.host, target.port, resource, target.host_header, target.log_url
    )


@functools.lru_cache(maxsize=64)
def _parse_base_url(url: str) -> _Target:
    return _parse_full_url(url)


def _parse_full_url(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise errors.InvalidAddressError(f"invalid WebSocket URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise errors.InvalidAddressError(f"WebSocket URL scheme must be ws or wss, not {scheme!r}")
    host = parts.hostname
    if not host:
        raise errors.InvalidAddressError("WebSocket URL has no host")
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    secure = scheme == "wss"
    default_port = 443 if secure else 80
    if port is None:
        port = default_port
    host_literal = f"[{host}]" if ":" in host else host
    host_header = host_literal if port == default_port else f"{host_literal}:{port}"
    path = parts.path or "/"
    resource = path + ("?" + parts.query if parts.query else "")
    resource = _quote_target(resource)
    log_url = f"{scheme}://{host_literal}:{port}{_quote_target(path)}"
    return _Target(secure, host, port, resource, host_header, log_url)


def _check_header(name: str, value: str) -> None:
    if not name or not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"invalid header name {name!r}")
    if any(c in value for c in "\r\n\x00"):
        raise ValueError(f"invalid value for header {name!r}")


def _build_request(
    target: _Target, key: str, headers: Mapping[str, str] | None, subprotocols: Sequence[str]
) -> bytes:
    extra: list[tuple[str, str]] = []
    host = target.host_header
    for name, value in (headers or {}).items():
        _check_header(name, value)
        lname = name.lower()
        if lname in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the WebSocket client itself")
        if lname == "host":
            host = value
        else:
            extra.append((name, value))
    lines = [
        f"GET {target.resource} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        for proto in subprotocols:
            if not proto or not set(proto) <= _TOKEN_CHARS:
                raise ValueError(f"invalid subprotocol {proto!r}")
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
    lines.extend(f"{name}: {value}" for name, value in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _accept_value(key: str) -> str:
    digest = hashlib.sha1((key + _GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    parts = status_line.split(" ", 2)
    if (
        len(parts) < 2
        or not parts[0].startswith("HTTP/1.")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
    ):
        raise errors.ProtocolError(f"malformed HTTP status line {status_line[:100]!r}")
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers: dict[str, str] = {}
    last = ""
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and last:  # obsolete line folding (RFC 9112 §5.2)
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise errors.ProtocolError(f"malformed HTTP header line {line[:100]!r}")
        last = name.lower()
        value = value.strip()
        headers[last] = f"{headers[last]}, {value}" if last in headers else value
    return status, reason, headers


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def _dechunk(data: bytes) -> bytes:
    """Best effort: the chunks of a ``Transfer-Encoding: chunked`` body that arrived whole."""
    out = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        try:
            size = int(data[pos:end].split(b";", 1)[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
        if pos > len(data):
            break
    return bytes(out)


def _encode_message(message: Data) -> tuple[int, bytes | memoryview]:
    if isinstance(message, str):
        return Opcode.TEXT, message.encode("utf-8")
    if isinstance(message, bytes):
        return Opcode.BINARY, message
    if isinstance(message, bytearray | memoryview):
        return Opcode.BINARY, memoryview(message).cast("B")
    raise TypeError(f"WebSocket messages are str or bytes-like, not {type(message).__name__}")


def _check_same_type(opcode: int, frag_opcode: int) -> None:
    if frag_opcode != opcode:
        raise TypeError("all fragments of a message must be str or all bytes")


def _join(chunks: list[_Chunk]) -> bytes | str:
    if chunks and isinstance(chunks[0].data, str):
        return "".join([c.data for c in chunks if isinstance(c.data, str)])
    return b"".join([c.data for c in chunks if isinstance(c.data, bytes)])


def _check_close_code(code: int) -> None:
    if code not in _SENDABLE_CLOSE_CODES and not 3000 <= code <= 4999:
        raise ValueError(f"{code} is not a close code an endpoint may send (RFC 6455 §7.4)")


class _Sink:
    """Adapts :class:`FrameParser` callbacks to the private methods of a connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: WsConnection) -> None:
        self._conn = conn

    def on_data_frame(self, fin: bool, opcode: int, length: int) -> None:
        self._conn._on_data_frame(fin, opcode)

    def on_payload(self, data: bytes, frame_done: bool) -> None:
        self._conn._on_payload(data, frame_done)

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        self._conn._on_control_frame(opcode, payload)


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
        self._auto_close_echo = auto_close_echo
        self._read_limit = read_limit
        self._close_timeout = close_timeout
        self._max_size = max_size
        self._log_url = log_url
        self._debug = logger.isEnabledFor(logging.DEBUG)

        self.subprotocol: str | None = None
        self.response_headers: dict[str, str] = {}
        self._addresses: dict[str, tuple[str, int]] = {}

        self._transport: asyncio.Transport | None = None
        self._phase = _CONNECTING
        self._head = bytearray()
        self._pending = bytearray()  # bytes after the response head, before the parser runs
        self._head_error: errors.ProtocolError | None = None
        self._hs_event = asyncio.Event()

        # Receiving
        self._parser = FrameParser(_Sink(self), masked=False)
        self._rx_stopped = False  # no more frames are parsed (close received, or failed)
        self._frame_fin = False
        self._msg_text = False
        self._decoder: codecs.IncrementalDecoder | None = None  # made for the first text message
        self._rx: deque[_Chunk] = deque()
        self._rx_bytes = 0
        self._rx_eof = False
        self._rx_waiter: asyncio.Future[None] | None = None
        self._rx_busy = False
        self._rx_mid = False  # the consumer stopped inside a message
        self._discard = False  # close() was called: the application reads no more
        self._reading_paused = False

        # Sending
        self._send_lock = asyncio.Lock()
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

        # Closing
        self._close_sent: tuple[int, str] | None = None
        self._close_rcvd: tuple[int, str] | None = None
        self._failure: tuple[int, str] | None = None
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
        if self._close_rcvd is not None:
            return self._close_rcvd[0]
        return 1006 if self._lost else None

    @property
    def close_reason(self) -> str:
        """The reason in the peer's close frame ("" if none was received)."""
        return self._close_rcvd[1] if self._close_rcvd is not None else ""

    @property
    def auto_close_echo(self) -> bool:
        """Whether the peer's close frame is answered at once (False: half-close allowed)."""
        return self._auto_close_echo

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

    # ------------------------------------------------------------------ sending

    async def send(self, message: Data) -> None:
        """Send one message in one frame: str as TEXT, bytes-like as BINARY.

        Raises:
            ConnectionClosedError: Our close frame was sent or the connection is gone.
        """
        opcode, payload = _encode_message(message)
        async with self._send_lock:
            self._check_can_send()
            self._write_frame(True, opcode, payload)
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
            self._check_can_send()
            transport = self._transport
            if transport is None or transport.is_closing():
                return
            buffers: list[bytes | memoryview] = []
            for opcode, payload in frames:
                mask = os.urandom(4)  # RFC 6455 §5.3: a fresh key per frame
                buffers.append(
                    encode_frame_header(fin=True, opcode=opcode, length=len(payload), mask=mask)
                )
                if payload:
                    buffers.append(apply_mask(payload, mask))
            transport.writelines(buffers)
            await self._drain()

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
        async with self._send_lock:
            opcode = 0
            # One fragment of lookahead: a frame's FIN bit depends on whether another follows.
            pending: bytes | memoryview | None = None
            started = complete = False
            try:
                async for fragment in _aiter(fragments):
                    frag_opcode, payload = _encode_message(fragment)
                    if pending is None:  # the first fragment
                        opcode = frag_opcode
                    else:
                        _check_same_type(opcode, frag_opcode)
                        self._check_can_send()
                        self._write_frame(
                            False, Opcode.CONTINUATION if started else opcode, pending
                        )
                        started = True
                        await self._drain()
                    pending = payload
                if pending is not None:
                    self._check_can_send()
                    self._write_frame(True, Opcode.CONTINUATION if started else opcode, pending)
                    complete = True
                    await self._drain()
            except BaseException:
                # Once our close frame is out the message is moot; otherwise it must not
                # stay open.
                if started and not complete and self._close_sent is None and not self._lost:
                    self._fail(1011, "incomplete fragmented message")
                raise

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Stream mode: send ``data`` as one BINARY message (nothing for empty data)."""
        if data:
            await self.send(data)

    async def close_write(self, code: int = 1000, reason: str = "") -> None:
        """Half-close: send our close frame and keep receiving until the peer's close.

        Does nothing if our close frame was already sent or the connection is gone.
        """
        _check_close_code(code)
        if self._lost or self._close_sent is not None or self._transport is None:
            return
        self._send_close(code, reason)
        if self._close_rcvd is not None:
            self._closing_handshake_done()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close: send our close frame if not done yet, then wait (at most ``close_timeout``)
        for the peer's close and the end of TCP. Data still buffered or arriving is dropped.
        """
        _check_close_code(code)
        if not self._lost and self._transport is not None:
            self._discard_incoming()
            if self._close_sent is None and self._failure is None:
                self._send_close(code, reason)
                if self._close_rcvd is not None:
                    self._closing_handshake_done()
            # A timer rather than asyncio.timeout(): connection_lost() cancels it, and
            # the wait below ends either way (the abort loses the connection).
            self._call_later(self._close_timeout, self._close_timed_out)
        await self.wait_closed()

    def _close_timed_out(self) -> None:
        logger.warning("! close timeout %s: no close from the peer", self._log_url)
        self._abort(1006, "close timeout")

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        self._abort(1006, "aborted")

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
        await self._skip_rest_of_message()
        chunks: list[_Chunk] = []
        size = 0
        try:
            while True:
                chunk = await self._next_chunk()
                if chunk is None:
                    raise self._closed_error()
                chunks.append(chunk)
                size += chunk.size
                if self._max_size is not None and size > self._max_size:
                    self._fail(1009, "message too big")
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
        await self._skip_rest_of_message()
        while True:
            parts: list[_Chunk] = []
            mid = self._rx_mid
            try:
                while True:
                    chunk = await self._next_chunk()
                    if chunk is None:
                        raise self._closed_error()
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
        await self._skip_rest_of_message()
        while True:
            chunk = await self._next_chunk()
            if chunk is None:
                raise self._closed_error()
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
                if self._close_rcvd is not None:
                    return b""
                raise self._closed_error()
            data = chunk.data
            if isinstance(data, str):
                data = data.encode("utf-8")
            if data:
                return data

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection() gives a stream transport; uvloop's don't subclass asyncio's.
        self._transport = cast(asyncio.Transport, transport)
        if not _sets_nodelay(self._loop):
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._phase == _OPEN:
            keepalive = self._keepalive_task
            if keepalive is not None and keepalive.awaiting:
                keepalive.alive()
            if not self._rx_stopped:
                try:
                    self._parser.feed(data)
                except FrameError as exc:
                    self._fail(exc.code, exc.reason)
            return
        if self._phase == _CONNECTING:
            start = max(0, len(self._head) - 3)
            self._head += data
            end = self._head.find(b"\r\n\r\n", start)
            if end < 0:
                if len(self._head) > _MAX_RESPONSE_HEAD:
                    self._head_error = errors.PayloadTooBigError("HTTP response head over 64 KiB")
                    self._head.clear()
                    self._hs_event.set()
                    self._abort(1006, "response head too large")
                return
            self._pending += self._head[end + 4 :]
            del self._head[end + 4 :]
            self._phase = _HEAD_DONE
            self._pause_reading()
        else:
            self._pending += data
            if len(self._pending) >= _MAX_ERROR_BODY:
                self._pause_reading()
        self._hs_event.set()

    def eof_received(self) -> bool | None:
        if self._debug:
            logger.debug("< EOF %s", self._log_url)
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._rx_eof = True
        self._rx_stopped = True
        self._wake_rx()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._hs_event.set()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._keepalive_task is not None:
            self._keepalive_task.stop()
        if not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        if self._phase == _OPEN and self._debug:
            logger.debug("= closed %s code=%s error=%r", self._log_url, self.close_code, exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ handshake (ws_connect)

    async def _handshake(self, request: bytes, key: str, subprotocols: Sequence[str]) -> None:
        if self._transport is None or self._lost:
            raise errors.ConnectionClosedError(1006, "connection closed before the handshake")
        self._transport.write(request)
        status, reason, headers = await self._read_response_head()
        if status != 101:
            body = await self._read_error_body(headers)
            if self._debug:
                logger.debug("! handshake rejected %s: %d %s", self._log_url, status, reason)
            raise errors.HandshakeError(status, reason, body)
        self._accept_response(key, headers, subprotocols)

    async def _read_response_head(self) -> tuple[int, str, dict[str, str]]:
        while self._phase == _CONNECTING:
            if self._head_error is not None:
                raise self._head_error
            if self._lost:
                raise errors.ConnectionClosedError(
                    1006, "connection closed during the opening handshake"
                )
            self._hs_event.clear()
            await self._hs_event.wait()
        return _parse_head(bytes(self._head))

    async def _read_error_body(self, headers: Mapping[str, str]) -> str:
        chunked = "chunked" in _tokens(headers.get("transfer-encoding", ""))
        length = headers.get("content-length", "").strip()
        want = _MAX_ERROR_BODY
        if not chunked and length.isdigit():
            want = min(int(length), _MAX_ERROR_BODY)
        self._phase = _REJECTED
        self._resume_reading()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_ERROR_BODY_TIMEOUT):
                while len(self._pending) < want and not self._lost:
                    if chunked and (
                        self._pending.startswith(b"0\r\n") or b"\r\n0\r\n" in self._pending
                    ):
                        break  # the last chunk arrived
                    self._hs_event.clear()
                    await self._hs_event.wait()
        body = bytes(self._pending[:want])
        if chunked:
            body = _dechunk(body)
        return body.decode("utf-8", "replace")

    def _accept_response(
        self, key: str, headers: dict[str, str], subprotocols: Sequence[str]
    ) -> None:
        # RFC 6455 §4.1, the client's checks of the server's handshake
        if "websocket" not in _tokens(headers.get("upgrade", "")):
            raise errors.ProtocolError("101 response without 'Upgrade: websocket'")
        if "upgrade" not in _tokens(headers.get("connection", "")):
            raise errors.ProtocolError("101 response without 'Connection: Upgrade'")
        if headers.get("sec-websocket-accept", "").strip() != _accept_value(key):
            raise errors.ProtocolError("101 response with a wrong Sec-WebSocket-Accept")
        if headers.get("sec-websocket-extensions", "").strip():
            raise errors.ProtocolError("server negotiated an extension; none was offered")
        proto = headers.get("sec-websocket-protocol")
        if proto is not None:
            proto = proto.strip()
            if proto not in subprotocols:
                raise errors.ProtocolError(
                    f"server chose subprotocol {proto[:100]!r}, which was not offered"
                )
        self.subprotocol = proto
        self.response_headers = headers
        self._phase = _OPEN
        pending = bytes(self._pending)
        self._pending.clear()
        self._resume_reading()
        if pending:
            self.data_received(pending)

    def _start_keepalive(self, ping_interval: float | None, ping_timeout: float | None) -> None:
        if ping_interval is not None and not self._lost:
            timeout = ping_interval if ping_timeout is None else ping_timeout
            self._keepalive_task = _Keepalive(self, ping_interval, timeout)

    # ------------------------------------------------------------------ frame callbacks

    def _on_data_frame(self, fin: bool, opcode: int) -> None:
        if self._rx_stopped:
            return
        self._frame_fin = fin
        if opcode != Opcode.CONTINUATION:
            self._msg_text = opcode == Opcode.TEXT
            if self._msg_text and self._decoder is not None:
                self._decoder.reset()
        if self._debug:
            logger.debug("< data frame %s opcode=%d fin=%s", self._log_url, opcode, fin)

    def _on_payload(self, data: bytes, frame_done: bool) -> None:
        if self._rx_stopped or self._discard:
            return
        if not data and not frame_done:
            return
        message_end = frame_done and self._frame_fin
        item: bytes | str = data
        if self._msg_text:
            try:
                decoder = self._decoder
                if decoder is None:
                    decoder = self._decoder = _UTF8_DECODER("strict")
                item = decoder.decode(data, message_end)
            except UnicodeDecodeError as exc:
                # RFC 6455 §8.1: invalid UTF-8 fails the connection with 1007
                raise FrameError(1007, "invalid UTF-8 in a text message") from exc
        self._rx.append(_Chunk(item, len(data), frame_done, message_end))
        self._rx_bytes += len(data)
        if self._rx_bytes > self._read_limit:
            self._pause_reading()
        self._wake_rx()

    def _on_control_frame(self, opcode: int, payload: bytes) -> None:
        if self._rx_stopped:
            return
        if opcode == Opcode.CLOSE:
            code, reason = parse_close_payload(payload)  # FrameError fails the connection
            self._close_rcvd = (code, reason)
            self._rx_stopped = True  # §5.5.1: nothing follows a close frame
            self._rx_eof = True
            self._wake_rx()
            if self._debug:
                logger.debug("< CLOSE %s %d %r", self._log_url, code, reason)
            if self._close_sent is None and self._auto_close_echo:
                # §5.5.1: echo the code we received; none if there was none
                self._send_close(None if code == 1005 else code, reason)
            if self._close_sent is not None:
                self._closing_handshake_done()
        elif opcode == Opcode.PING:
            if self._debug:
                logger.debug("< PING %s", self._log_url)
            # After our close frame we send nothing more (§5.5.1).
            if self._close_sent is None and not self._lost:
                self._write_frame(True, Opcode.PONG, payload)
        elif self._debug:
            logger.debug("< PONG %s", self._log_url)

    # ------------------------------------------------------------------ internals

    def _check_can_send(self) -> None:
        if self._lost or self._close_sent is not None or self._failure is not None:
            raise self._closed_error()

    def _write_frame(self, fin: bool, opcode: int, payload: bytes | memoryview) -> None:
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            return
        mask = os.urandom(4)  # RFC 6455 §5.3: a fresh, unpredictable key per frame
        header = encode_frame_header(fin=fin, opcode=opcode, length=len(payload), mask=mask)
        if payload:
            transport.writelines((header, apply_mask(payload, mask)))
        else:
            transport.write(header)
        if self._debug:
            logger.debug(
                "> frame %s opcode=%d fin=%s len=%d", self._log_url, opcode, fin, len(payload)
            )

    async def _drain(self) -> None:
        while self._write_paused and not self._lost:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                self._drain_waiters.remove(waiter)
        if self._lost:
            raise self._closed_error()

    def _send_close(self, code: int | None, reason: str) -> None:
        payload = b"" if code is None else encode_close_payload(code, reason)
        self._write_frame(True, Opcode.CLOSE, payload)
        self._close_sent = (1005 if code is None else code, reason)
        if self._debug:
            logger.debug("> CLOSE %s %s %r", self._log_url, code, reason)

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

    def _abort(self, code: int, reason: str) -> None:
        if self._lost:
            return
        if self._failure is None:
            self._failure = (code, reason)
        self._rx_stopped = True
        self._rx_eof = True
        self._wake_rx()
        self._abort_transport()

    def _fail(self, code: int, reason: str) -> None:
        """RFC 6455 §7.1.7: send a close frame with ``code`` if we can, then drop TCP."""
        if self._lost:
            return
        if self._failure is None:
            self._failure = (code, reason)
        logger.warning("! failing %s: %d %s", self._log_url, code, reason)
        self._rx_stopped = True
        self._rx_eof = True
        self._wake_rx()
        if self._close_sent is None:
            self._send_close(code, reason)
        self._close_after_failure()

    def _close_after_failure(self) -> None:
        # Closing a socket that still has unread data sends a TCP reset, and a reset makes
        # the peer drop what it has not read yet: our close frame (1009 to a peer that
        # floods us, say). So stop sending (FIN) and read on, discarding (nothing is
        # parsed any more), until the peer closes or the grace is over.
        transport = self._transport
        if transport is None or self._lost or not transport.can_write_eof():
            self._close_transport()  # TLS has no half-close
            return
        self._resume_reading()  # what was received stays for the consumer; no more is kept
        transport.write_eof()
        self._call_later(min(self._close_timeout, _TCP_CLOSE_GRACE), self._close_transport)

    def _closed_error(self) -> errors.ConnectionClosedError:
        if self._close_rcvd is not None:
            code, reason = self._close_rcvd
        elif self._failure is not None:
            code, reason = self._failure
        elif self._close_sent is not None and not self._lost:
            code, reason = self._close_sent
        else:
            code, reason = 1006, "connection lost"
        return errors.ConnectionClosedError(code, reason)

    def _call_later(self, delay: float, callback: Callable[[], object]) -> None:
        if not self._lost:
            self._timers.append(self._loop.call_later(delay, callback))

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._lost:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self._transport is not None and not self._lost:
                self._transport.resume_reading()

    def _discard_incoming(self) -> None:
        self._discard = True
        self._rx.clear()
        self._rx_bytes = 0
        self._rx_eof = True
        self._wake_rx()
        self._resume_reading()

    def _wake_rx(self) -> None:
        waiter = self._rx_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @contextlib.contextmanager
    def _receiving(self) -> Iterator[None]:
        if self._rx_busy:
            raise RuntimeError("another coroutine is already receiving on this connection")
        self._rx_busy = True
        try:
            yield
        finally:
            self._rx_busy = False

    async def _next_chunk(self) -> _Chunk | None:
        """Pop the next chunk, waiting for one; None at the end of incoming data."""
        with self._receiving():
            while not self._rx:
                if self._rx_eof:
                    return None
                waiter = self._loop.create_future()
                self._rx_waiter = waiter
                try:
                    await waiter
                finally:
                    self._rx_waiter = None
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
        return (
            self._lost
            or self._close_sent is not None
            or self._close_rcvd is not None
            or self._failure is not None
        )

    def _keepalive_ping(self) -> bool:
        """Send a keepalive ping if one is due; False when none is (closing, or paused)."""
        if self._closing():
            return False
        if self._reading_paused:
            return False  # the peer's data waits on us, so it is alive
        self._write_frame(True, Opcode.PING, os.urandom(4))
        return True

    def _keepalive_expired(self, pong_timeout: float) -> None:
        # Reading can't have paused meanwhile: that takes data, which counts as a pong.
        if self._closing():
            return
        logger.warning("%% keepalive timeout %s: no pong in %.1fs", self._log_url, pong_timeout)
        self._abort(1006, "keepalive ping timeout")


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
    target = _parse_url(url)
    if ping_interval is not None and ping_interval <= 0:
        raise ValueError("ping_interval must be positive")
    if target.secure and ssl is None:
        ssl = _ssl.create_default_context()
    elif not target.secure and ssl is not None:
        raise ValueError("an ssl context needs a wss:// URL")
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    request = _build_request(target, key, headers, subprotocols)
    loop = asyncio.get_running_loop()
    conn = WsConnection(
        auto_close_echo=auto_close_echo,
        read_limit=read_limit,
        close_timeout=close_timeout,
        max_size=max_size,
        log_url=target.log_url,
    )
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
            await conn._handshake(request, key, subprotocols)
    except BaseException:
        conn._abort(1006, "opening handshake failed")
        raise
    conn._start_keepalive(ping_interval, ping_timeout)
    if conn._debug:
        logger.debug("= open %s subprotocol=%s", target.log_url, conn.subprotocol)
    return conn
