"""Keep-alive HTTP/1.1 connections to one plain ``http://`` target, behind HttpTarget.

Requests go out as bytes built here: the request line and headers as aiohttp would
send them (:meth:`HttpPool.request_head`), so a target sees the same thing on either
path. Responses are read by httptools (llhttp, the parser of Node.js, as a C
extension): it decides the status line, header syntax, Content-Length (duplicated or
negative values refused), chunked bodies with extensions and trailers, interim 1xx
responses and 204/304 without a body, and whether the target keeps the connection.
This module adds what a response parser cannot know: a HEAD answer has no body
whatever its headers say, a body without a length ends when the connection does, and a
head may not be over 64 KiB (llhttp would hold a head of any size). A target that breaks
HTTP/1.1, stalls past the read timeout or closes early is a :class:`BadGatewayError`: a
502 before the body, a failed body stream after it, never a hang.

h11 (pure Python, sans-I/O) was measured on this path first: about 135 µs of CPU per
exchange against 5 µs for httptools, which more than doubled the pool's cost per request.
"""

from __future__ import annotations

import asyncio
import collections
import re
from typing import Final, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from hybridrelay.deadlines import Deadlines
from hybridrelay.errors import BadGatewayError
from hybridrelay.listener.http_messages import HttpRequest, HttpResponse
from hybridrelay.protocol.codes import fits_inline

__all__ = ["HttpPool"]

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE: Final = re.compile("[\r\n\x00]")
# "name NUL value CRLF" lines whose names are tokens and whose values hold no CR, LF or NUL.
_HEADER_LINES: Final = re.compile("(?:[!#$%&'*+\\-.^_`|~0-9A-Za-z]+\x00[^\r\n\x00]*\r\n)*")
# aiohttp sends no Content-Length for an empty body with these methods, "0" otherwise.
_NO_LENGTH_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_MAX_HEAD: Final = 64 * 1024
_READ_HIGH: Final = 256 * 1024  # buffered response bytes before reading from the socket pauses


class _Answer:
    """What the parser has read of one response; httptools calls the ``on_*`` methods.

    Interim (1xx) responses are read and forgotten; ``head`` is set once the final
    response's head is in, ``complete`` once its body is.
    """

    __slots__ = (
        "body",
        "close_delimited",
        "complete",
        "extra",
        "head",
        "headers",
        "keep",
        "no_body",
        "parser",
        "reason",
        "room_reset",
        "status",
    )

    def __init__(self, *, no_body: bool) -> None:
        self.no_body = no_body  # a HEAD request: no body whatever the headers say
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        # The body ends when the connection does (no length, not chunked): set by the
        # reader once the head is in.
        self.close_delimited = False
        self.head = False
        self.complete = False
        self.extra = False  # bytes after the response: the connection cannot be reused
        self.keep = False  # the target keeps the connection (read when the answer ends)
        self.room_reset = False  # an interim response ended: the next head gets 64 KiB
        self.body: list[bytes] = []  # parsed, not yet taken

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True
            return
        self.reason = b""
        self.headers = []

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name, value))  # read once the head is in

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # interim: 100 Continue, 103 Early Hints (101 raises HttpParserUpgrade)
        self.status = status
        self.head = True
        if self.no_body or status in (204, 304):
            self.complete = True
            # Read now: the parser forgets once the message is over.
            self.keep = self.parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        if self.complete:
            self.extra = True
        elif self.head:
            self.body.append(data)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if self.head:
            self.complete = True
            self.keep = self.parser.should_keep_alive()
        else:
            self.room_reset = True

    def keep_alive(self) -> bool:
        return self.keep and not self.extra


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the target; bytes wait in ``buffer`` until read."""

    __slots__ = (
        "answer",
        "buffer",
        "closed",
        "deadlines",
        "generation",
        "head_room",
        "paused",
        "received",
        "transport",
        "waiter",
    )

    def __init__(self, generation: int, deadlines: Deadlines) -> None:
        self.generation = generation  # the pool's, when this connection was opened
        self.deadlines = deadlines  # the pool's: read timeouts on one shared timer
        self.buffer = bytearray()
        self.closed = False  # EOF or lost: nothing more will arrive
        self.received = False  # some of this exchange's answer arrived
        # Bytes the parser may still be given before the response head must be complete;
        # None once the head is in.
        self.head_room: int | None = None
        self.answer = _Answer(no_body=False)
        self.paused = False
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None

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
        """A request with this method is going out now: a new parser for its answer."""
        self.received = False
        self.head_room = _MAX_HEAD
        self.answer = _Answer(no_body=method == "HEAD")

    async def read_body(self, limit_s: float | None) -> bytes:
        """The next piece of the body; b"" at its end."""
        answer = self.answer
        while not answer.body:
            if answer.complete:
                return b""
            if not self.feed():
                await self.more(limit_s)
        data = answer.body[0] if len(answer.body) == 1 else b"".join(answer.body)
        answer.body.clear()
        return data

    def reusable(self) -> bool:
        """After a whole response: whether the connection may carry the next exchange."""
        return not self.closed and not self.buffer and self.answer.keep_alive()

    def feed(self) -> bool:
        """Give the parser what arrived; False when nothing did (wait for more then).

        Raises:
            BadGatewayError: The answer is not HTTP/1.1 or stopped before its end.
        """
        answer = self.answer
        if self.buffer:
            room = self.head_room
            data: bytes | bytearray = self.buffer  # the parser copies what it keeps
            if room is not None and len(data) > room:
                if not room:
                    raise BadGatewayError("the target's response head is over 64 KiB")
                data = self.buffer[:room]
            self.received = True
            try:
                answer.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                raise BadGatewayError("the target switched protocols unasked") from exc
            except httptools.HttpParserError as exc:
                if not answer.complete:
                    raise BadGatewayError(f"the target's answer is not HTTP/1.1: {exc}") from exc
                answer.extra = True  # garbage after a whole answer: not reused
            finally:
                del self.buffer[: len(data)]
                self._consumed()
            if answer.head:
                self.head_room = None
            elif room is not None:
                self.head_room = _MAX_HEAD if answer.room_reset else room - len(data)
                answer.room_reset = False
        elif self.closed:
            if answer.head and answer.close_delimited and not answer.complete:
                answer.complete = True  # the end of a body without a length
                answer.extra = True
                return True
            raise BadGatewayError("the target closed the connection")
        else:
            return False
        return True

    def _consumed(self) -> None:
        if self.paused and len(self.buffer) <= _READ_HIGH // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    async def more(self, limit_s: float | None) -> None:
        """Wait for more bytes (or the end); TimeoutError after ``limit_s`` seconds.

        A limit per wait (aiohttp's sock_read), on the pool's shared timer.
        """
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        deadline = None if limit_s is None else self.deadlines.arm(limit_s, _expire, waiter)
        try:
            await waiter
        finally:
            self.waiter = None
            if deadline is not None:
                self.deadlines.disarm(deadline)

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
        self._deadlines = Deadlines()

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
        # All the header lines checked by one regex and encoded at once (about a third
        # of the cost of a check and an encode per header); anything unusual is left to
        # the header-by-header loop, which decides it as it always did.
        # NUL between name and value: in neither once checked, so the regex cannot take
        # part of a name for the value (a name "A: b" must fail as before).
        try:
            lines = "\r\n".join(map("\x00".join, headers.items())) + "\r\n" if headers else ""
        except TypeError:  # a value that is not str: the loop below says so, as before
            lines = "\r"
        if _HEADER_LINES.fullmatch(lines) is not None:
            try:
                head += lines.replace("\x00", ": ").encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                pass
            else:
                return head
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
        conn = self._idle_connection()  # the usual case, without a coroutine
        reused = conn is not None
        if conn is None:
            conn, reused = await self._acquire()
        try:
            self._write(conn, head, body, method)
            try:
                return await self._response(conn)
            except BadGatewayError:
                if not (reused and not conn.received and method in _IDEMPOTENT):
                    raise
            # An idle connection the target had closed just then: once more, on a new one.
            self._discard(conn)
            conn, reused = await self._acquire(fresh=True)
            self._write(conn, head, body, method)
            return await self._response(conn)
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

    def _idle_connection(self) -> _Connection | None:
        """An open idle connection, or None."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._discard(conn)
        return None

    async def _acquire(self, *, fresh: bool = False) -> tuple[_Connection, bool]:
        if not fresh and (conn := self._idle_connection()) is not None:
            return conn, True
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
        conn = _Connection(self._generation, self._deadlines)
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

    async def _response(self, conn: _Connection) -> HttpResponse:
        answer = conn.answer
        while not answer.head:  # the final response's head (interim ones skipped)
            if not conn.feed():
                await conn.more(self.read_timeout)
        headers: list[tuple[str, str]] = []
        length: int | None = None  # of the body; None: chunked, or until the target closes
        chunked = False
        for raw_name, raw_value in answer.headers:
            name = raw_name.decode("latin-1")  # a token: llhttp checked it
            value = raw_value.strip(b" \t").decode("utf-8", "surrogateescape")
            headers.append((name, value))
            size = len(name)  # lower() only for names of the right length
            if size == 14 and name.lower() == "content-length":
                length = int(value)  # llhttp checked it: digits, and no second value
            elif size == 17 and name.lower() == "transfer-encoding":
                chunked = value.lower().rsplit(",", 1)[-1].strip() == "chunked"
        reason = answer.reason.decode("utf-8", "surrogateescape")
        if answer.no_body or answer.status in (204, 304):
            length = 0
        elif chunked:
            length = None
        answer.close_delimited = length is None and not chunked
        if fits_inline(length):
            # Small and of known size: read it, so the answer can go inline (HC §4).
            if answer.complete:  # usually: it came with the head, parsed with it
                whole = b"".join(answer.body)
                answer.body.clear()
            else:
                body = bytearray()
                while chunk := await conn.read_body(self.read_timeout):
                    body += chunk
                whole = bytes(body)
            self.release(conn)
            return HttpResponse(answer.status, headers, whole, reason)
        return HttpResponse(answer.status, headers, _PoolBody(self, conn), reason)


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
            chunk = await self._conn.read_body(self._pool.read_timeout)
        except (TimeoutError, BadGatewayError) as exc:
            self._finish(reuse=False)
            raise BadGatewayError(f"target response failed: {exc!r}") from exc
        if chunk:
            return chunk
        self._finish(reuse=True)  # trailers, if any, are dropped
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
