"""Keep-alive HTTP/1.1 connections to one plain ``http://`` target, behind HttpTarget.

Requests go out as bytes built here: the request line and headers as aiohttp would
send them (:meth:`HttpPool.request_head`), so a target sees the same thing on either
path. Responses are read by h11, a sans-I/O HTTP/1.1 parser, which decides what a
hand-written parser would have to: interim 1xx responses (skipped), HEAD and 204/304
(no body), Content-Length (conflicting or negative values refused), chunked bodies
with extensions and trailers, bodies that end when the connection does, a head over
64 KiB, and whether the connection may carry another exchange. A target that breaks
HTTP/1.1, stalls past the read timeout or closes early is a :class:`BadGatewayError`:
a 502 before the body, a failed body stream after it, never a hang.
"""

from __future__ import annotations

import asyncio
import collections
import re
from typing import Final, cast

import h11
from multidict import CIMultiDict, CIMultiDictProxy

from hybridrelay.errors import BadGatewayError
from hybridrelay.listener.http_messages import HttpRequest, HttpResponse
from hybridrelay.protocol.codes import fits_inline

__all__ = ["HttpPool"]

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE: Final = re.compile("[\r\n\x00]")
# aiohttp sends no Content-Length for an empty body with these methods, "0" otherwise.
_NO_LENGTH_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_MAX_HEAD: Final = 64 * 1024
_READ_HIGH: Final = 256 * 1024  # buffered response bytes before reading from the socket pauses
# What h11 is told of a request (it reads the response in its light: HEAD has no body).
# The bytes h11 would write for it are not used; the request went out as built.
_MIRROR_HEADERS: Final = [("Host", "target")]


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the target: socket bytes in ``buffer``, parsed by h11."""

    __slots__ = (
        "buffer",
        "closed",
        "eof_seen",
        "generation",
        "head_room",
        "http",
        "paused",
        "received",
        "transport",
        "waiter",
    )

    def __init__(self, generation: int) -> None:
        self.generation = generation  # the pool's, when this connection was opened
        self.buffer = bytearray()
        self.closed = False  # EOF or lost: nothing more will arrive
        self.eof_seen = False  # h11 was told of the end
        self.received = False  # some of this exchange's answer arrived
        # Bytes h11 may still be given before the response head must be complete (h11
        # bounds only a head that arrives in pieces); None once the head is in.
        self.head_room: int | None = None
        self.paused = False
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _READ_HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def begin(self, method: str) -> None:
        """A request with this method is going out now."""
        self.received = False
        self.head_room = _MAX_HEAD
        self.http.send(h11.Request(method=method, target="/", headers=_MIRROR_HEADERS))
        self.http.send(h11.EndOfMessage())

    async def next_event(self, limit_s: float | None) -> h11.Event:
        """The target's next event (a response head, body data, the end of the response).

        Raises:
            BadGatewayError: The answer is not HTTP/1.1 or stopped before its end.
            TimeoutError: Nothing arrived for ``limit_s`` seconds.
        """
        http = self.http
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadGatewayError(f"the target's answer is not HTTP/1.1: {exc}") from exc
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.Event) and not isinstance(event, h11.ConnectionClosed):
                    return event
                raise BadGatewayError("the target closed the connection")  # or pipelined
            if self.buffer:
                room = self.head_room
                if room is None or len(self.buffer) <= room:
                    data = bytes(self.buffer)
                    self.buffer.clear()
                elif room:
                    data = bytes(self.buffer[:room])
                    del self.buffer[:room]
                else:
                    raise BadGatewayError("the target's response head is over 64 KiB")
                if room is not None:
                    self.head_room = room - len(data)
                self._consumed()
                self.received = True
                http.receive_data(data)
            elif self.closed and not self.eof_seen:
                self.eof_seen = True
                http.receive_data(b"")
            elif self.closed:
                raise BadGatewayError("the target closed the connection")
            else:
                await self._more(limit_s)

    def reusable(self) -> bool:
        """After a whole response: ready for the next exchange when both sides allow it."""
        http = self.http
        if (
            self.closed
            or self.buffer
            or http.our_state is not h11.DONE
            or http.their_state is not h11.DONE
            or http.trailing_data[0]
        ):
            return False
        http.start_next_cycle()
        return True

    def _consumed(self) -> None:
        if self.paused and len(self.buffer) <= _READ_HIGH // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    async def _more(self, limit_s: float | None) -> None:
        """Wait for more bytes (or the end); TimeoutError after ``limit_s`` seconds.

        One timer per wait (aiohttp's sock_read), cheaper than asyncio.timeout().
        """
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = None if limit_s is None else loop.call_later(limit_s, _expire, waiter)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class HttpPool:
    """HTTP/1.1 keep-alive connections to one target, at most ``limit`` at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        host_header: str,
        base_path: str,
        limit: int,
        connect_timeout: float,
        read_timeout: float | None,
    ) -> None:
        self._host = host
        self._port = port
        self._base = base_path
        self._host_line = f"Host: {host_header}\r\n".encode("ascii")
        self._limit = limit
        self._connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[_Connection] = []
        self._open = 0
        self._generation = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def request_head(
        self, request: HttpRequest, headers: CIMultiDictProxy[str] | CIMultiDict[str]
    ) -> bytearray | None:
        """The request line and headers as aiohttp would send them, or None when this
        request is not a plain one (then aiohttp, which quotes or refuses, sends it)."""
        target = self._base + request.raw_path
        if request.query_string:
            target += "?" + request.query_string
        method = request.method
        if (
            not (target.isascii() and target.isprintable())
            or " " in target
            or "#" in target
            or not target.startswith("/")
            or _TOKEN.fullmatch(method) is None
        ):
            return None
        head = bytearray(f"{method} {target} HTTP/1.1\r\n".encode("ascii"))
        head += self._host_line
        for name, value in headers.items():
            if _TOKEN.fullmatch(name) is None or _UNSAFE_VALUE.search(value) is not None:
                return None
            head += f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
        return head

    async def send(self, head: bytearray, body: bytes, method: str) -> HttpResponse:
        """Send one request and read its answer's head (and a small body).

        Raises:
            BadGatewayError: The target broke HTTP/1.1 or closed the connection.
            TimeoutError: The target did not answer in time.
            OSError: The target could not be reached.
        """
        if body:
            head += b"Content-Length: %d\r\n" % len(body)
        elif method not in _NO_LENGTH_METHODS:
            head += b"Content-Length: 0\r\n"
        head += b"\r\n"
        conn, reused = await self._acquire()
        try:
            self._write(conn, head, body, method)
            try:
                return await self._response(conn, method)
            except BadGatewayError:
                if not (reused and not conn.received and method in _IDEMPOTENT):
                    raise
            # An idle connection the target had closed just then: once more, on a new one.
            self._discard(conn)
            conn, reused = await self._acquire(fresh=True)
            self._write(conn, head, body, method)
            return await self._response(conn, method)
        except BaseException:
            self._discard(conn)
            raise

    @staticmethod
    def _write(conn: _Connection, head: bytearray, body: bytes, method: str) -> None:
        assert conn.transport is not None  # noqa: S101 - set when connected
        conn.begin(method)
        if len(body) < 16384:
            conn.transport.write(head + body)
        else:
            conn.transport.write(head)
            conn.transport.write(body)

    async def _acquire(self, *, fresh: bool = False) -> tuple[_Connection, bool]:
        while not fresh and self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
            self._discard(conn)
        while self._open >= self._limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif not waiter.cancelled():
                    self._wake_one()  # it was our turn: pass it on
                raise
            if not fresh and self._idle:
                return await self._acquire()
        self._open += 1
        conn = _Connection(self._generation)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.get_running_loop().create_connection(
                    lambda: conn, self._host, self._port
                )
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        return conn, False

    def release(self, conn: _Connection) -> None:
        """The exchange on ``conn`` is over: keep it for the next one if it may carry it."""
        if conn.generation != self._generation or not conn.reusable():
            self._discard(conn)
            return
        self._idle.append(conn)
        self._wake_one()

    def discard(self, conn: _Connection) -> None:
        """The exchange on ``conn`` failed or was abandoned: close it."""
        self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        if conn.transport is not None and not conn.transport.is_closing():
            conn.abort()
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.transport is not None:
            conn.transport = None
            self._open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close the idle connections; busy ones close when their exchange ends."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    async def _response(self, conn: _Connection, method: str) -> HttpResponse:
        event = await conn.next_event(self.read_timeout)
        while not isinstance(event, h11.Response):
            # Interim responses (100 Continue, 103 Early Hints) are skipped; the next head
            # has 64 KiB of its own, less what h11 holds of it already.
            conn.head_room = _MAX_HEAD - len(conn.http.trailing_data[0])
            event = await conn.next_event(self.read_timeout)
        conn.head_room = None
        status = event.status_code
        headers = [
            (name.decode("ascii"), value.decode("utf-8", "surrogateescape"))
            for name, value in event.headers.raw_items()
        ]
        reason = event.reason.decode("utf-8", "surrogateescape")
        length: int | None = None  # unknown: chunked, or until the target closes
        if method == "HEAD" or status in (204, 304):
            length = 0
        else:
            for name, value in event.headers:  # lower-cased names; h11 checked the values
                if name == b"transfer-encoding":
                    length = None
                    break
                if name == b"content-length":
                    length = int(value)
        if fits_inline(length):
            # Small and of known size: read it, so the answer can go inline (HC §4).
            body = bytearray()
            while isinstance(event := await conn.next_event(self.read_timeout), h11.Data):
                body += event.data
            self.release(conn)
            return HttpResponse(status, headers, bytes(body), reason)
        return HttpResponse(status, headers, _PoolBody(self, conn), reason)


class _PoolBody:
    """Streams a response body off a pool connection, then hands the connection back.

    A class rather than an async generator: a generator closed before its first
    ``__anext__`` never runs its ``finally``, and the connection would leak.
    """

    __slots__ = ("_conn", "_done", "_pool")

    def __init__(self, pool: HttpPool, conn: _Connection) -> None:
        self._pool = pool
        self._conn = conn
        self._done = False

    def __aiter__(self) -> _PoolBody:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            event = await self._conn.next_event(self._pool.read_timeout)
        except (TimeoutError, BadGatewayError) as exc:
            self._finish(reuse=False)
            raise BadGatewayError(f"target response failed: {exc!r}") from exc
        if isinstance(event, h11.Data):
            return bytes(event.data)
        self._finish(reuse=True)  # h11.EndOfMessage: trailers, if any, are dropped
        raise StopAsyncIteration

    def _finish(self, *, reuse: bool) -> None:
        if self._done:
            return
        self._done = True
        if reuse:
            self._pool.release(self._conn)
        else:
            self._pool.discard(self._conn)

    async def aclose(self) -> None:
        # Unread data left: the connection cannot be reused.
        self._finish(reuse=False)
