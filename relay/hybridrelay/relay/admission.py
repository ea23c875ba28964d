"""The front door: what an anonymous connection may cost before it is a request (issue 11).

Every TCP connection reaches the relay before anyone knows who sent it, so what it
may hold is capped here, as early and as cheaply as the layer allows:

- per source address (IPv6: per /64, the block one subscriber gets): concurrent
  connections (``max_connections_per_ip``) and new connections and requests per
  second (``handshake_rate_per_ip`` / ``handshake_burst_per_ip``, a token bucket).
  A refused connection gets a fixed ``429`` with ``Retry-After`` and is closed at
  once, before aiohttp starts a task or registers the connection;
- a TLS handshake gets ``handshake_timeout`` (asyncio drops it after that), and then
  a connection that has not delivered a whole request head within
  ``handshake_timeout`` gets ``408`` and is closed (aiohttp itself has no
  header-read timeout: a slowloris head waits forever);
  an idle keep-alive connection is closed after ``keepalive_timeout``;
- pending work (HTTP requests and senders waiting on a rendezvous) of one hybrid
  connection is capped (``max_pending_per_hc``), so one flooded entity cannot take
  the whole rendezvous table from the others;
- a request head whose request line or a header line is over ``max_head_line_size``,
  or that has more than ``max_headers`` header lines, is refused by aiohttp's parser
  (400) before any handler runs;
- a malformed request gets a body-less ``400`` (right for a HEAD as well) and one
  rate-limited info line, never aiohttp's error-level traceback per request.

The sans-I/O parts (:class:`TokenBucket`, :class:`SourceLimits`, :class:`PendingShare`,
:class:`LogBudget`) take the clock as an argument and are tested without sockets;
:class:`FrontDoorSite` and :class:`FrontDoorProtocol` are the asyncio/aiohttp glue.
Each refusal is counted by ``RelayMetrics.limit_hit(<config key>)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from aiohttp import StreamReader, web
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from hybridrelay.errors import RateLimitedError, UnavailableError
from hybridrelay.logs import RELAY
from hybridrelay.relay.config import RelaySettings
from hybridrelay.relay.metrics import RelayMetrics

__all__ = [
    "FrontDoor",
    "FrontDoorProtocol",
    "FrontDoorSite",
    "LogBudget",
    "PendingShare",
    "Refusal",
    "SourceLimits",
    "TokenBucket",
    "UpgradeHook",
    "rate_limit_middleware",
    "source_key",
]

log = logging.getLogger(RELAY)

# Offered the first request head of a connection when it is an upgrade (nothing else
# queued): True when it took the connection, which aiohttp then never serves.
UpgradeHook = Callable[[RequestHandler, RawRequestMessage], bool]


# Refusals written straight to the transport, before (or instead of) aiohttp's parser.
# No body: the method is unknown, and a response to HEAD must not have one.
_TIMEOUT_408: Final = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
_HTTP_1: Final = frozenset({HttpVersion10, HttpVersion11})
_IPV6_SUBSCRIBER_PREFIX: Final = 64
# How long a refused connection may stay open for its answer to be read (see _refuse).
_REFUSED_LINGER_S: Final = 1.0
# Refusal log lines: a burst, then at most this many per second (the rest are counted).
_LOG_RATE: Final = 5.0
_LOG_BURST: Final = 20


def _raw_429(retry_after: int) -> bytes:
    return (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: %d\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n" % retry_after
    )


# -- sans-I/O ----------------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is there."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate

    def full(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self._burst


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a source is refused: the limit (config key) and when to retry (whole seconds)."""

    limit: str
    retry_after: int


class _Source:
    __slots__ = ("bucket", "connections")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.connections = 0


_V4_MAPPED: Final = 0xFFFF << 32  # ::ffff:a.b.c.d (RFC 4291 §2.5.5.2)
_LOW_64: Final = (1 << 64) - 1


def _address(host: str) -> tuple[int, int] | None:
    """``(4 or 6, the address as an integer)`` of a peer's host; v4-mapped IPv6 as IPv4.

    ``inet_pton`` and integer masks, not :mod:`ipaddress` (whose objects cost 13 µs per
    IPv4 and 50 µs per IPv6 peer here): this runs for every connection.
    """
    try:
        if ":" not in host:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0]), "big")
    except (OSError, ValueError):
        return None  # a UNIX socket or no peer: nothing to count per address
    if value >> 32 == 0xFFFF:
        return 4, value & 0xFFFFFFFF
    return 6, value


def _key(version: int, value: int) -> str:
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    prefix = (value & ~_LOW_64).to_bytes(16, "big")
    return f"{socket.inet_ntop(socket.AF_INET6, prefix)}/{_IPV6_SUBSCRIBER_PREFIX}"


def source_key(host: str) -> str:
    """The unit a per-IP cap counts: the address, an IPv6 address's /64, v4-mapped as IPv4.

    One IPv6 subscriber routinely holds a whole /64; counting single addresses would let
    one machine pose as 2**64 sources.
    """
    address = _address(host)
    return host if address is None else _key(*address)


def _network(text: str) -> tuple[int, int, int]:
    """``(version, network, mask)`` of a CIDR network (a bare address is one host)."""
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:a.b.c.d/N: the IPv4 network it maps
            bits = 128 - net.prefixlen
            return 4, int(mapped), (0xFFFFFFFF >> bits) << bits
    return net.version, int(net.network_address), int(net.netmask)


class SourceLimits:
    """Per-source connection counts and request token buckets.

    A source is kept while it has connections or its bucket is still refilling, so the
    table holds at most the live connections' sources plus those seen in the last
    ``burst / rate`` seconds; idle ones are swept at most once per ``sweep_interval``.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        rate: float,
        burst: int,
        exempt: Sequence[str] = (),
        sweep_interval: float = 10.0,
    ) -> None:
        self._max_connections = max_connections
        self._rate = rate
        self._burst = burst
        self._exempt: tuple[tuple[int, int, int], ...] = tuple(_network(n) for n in exempt)
        self._sweep_interval = sweep_interval
        self._next_sweep = 0.0
        self._sources: dict[str, _Source] = {}

    def __len__(self) -> int:
        return len(self._sources)

    def key(self, host: str) -> str | None:
        """The source ``host`` counts against; None when exempt (or not an IP address)."""
        address = _address(host)
        if address is None:
            return None
        version, value = address
        for net_version, network, mask in self._exempt:
            if version == net_version and value & mask == network:
                return None
        return _key(version, value)

    def _source(self, key: str, now: float) -> _Source:
        source = self._sources.get(key)
        if source is None:
            if now >= self._next_sweep:
                self._sweep(now)
            source = self._sources[key] = _Source(
                TokenBucket(rate=self._rate, burst=self._burst, now=now)
            )
        return source

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._sweep_interval
        idle = [k for k, s in self._sources.items() if not s.connections and s.bucket.full(now)]
        for k in idle:
            del self._sources[k]

    def open(self, key: str, now: float) -> Refusal | None:
        """A new connection from ``key``: counted, or refused (nothing counted then)."""
        source = self._source(key, now)
        if source.connections >= self._max_connections:
            # Retrying helps as soon as one of the source's connections ends.
            return Refusal("max_connections_per_ip", 1)
        wait = source.bucket.take(now)
        if wait:
            return Refusal("handshake_rate_per_ip", max(1, math.ceil(wait)))
        source.connections += 1
        return None

    def close(self, key: str) -> None:
        """A connection :meth:`open` counted has ended (or left aiohttp for a splice)."""
        source = self._sources.get(key)
        if source is not None and source.connections > 0:
            source.connections -= 1

    def request(self, key: str, now: float) -> Refusal | None:
        """One more request on a connection of ``key`` (the first was paid by :meth:`open`)."""
        wait = self._source(key, now).bucket.take(now)
        if wait:
            return Refusal("handshake_rate_per_ip", max(1, math.ceil(wait)))
        return None

    def connections(self, key: str) -> int:
        source = self._sources.get(key)
        return source.connections if source is not None else 0


class PendingShare:
    """How much pending work each hybrid connection holds, capped per entity.

    Pending work is an HTTP request waiting on (or streaming through) a listener, or a
    sender waiting for its rendezvous; the global rendezvous table stays capped by
    ``max_pending_rendezvous``, and this share keeps one entity from taking all of it.
    """

    __slots__ = ("_counts", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._counts: dict[str, int] = {}

    def acquire(self, hc_name: str) -> bool:
        key = hc_name.lower()
        count = self._counts.get(key, 0)
        if count >= self._limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, hc_name: str) -> None:
        key = hc_name.lower()
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def count(self, hc_name: str) -> int:
        return self._counts.get(hc_name.lower(), 0)

    @contextlib.contextmanager
    def hold(self, hc_name: str) -> Iterator[None]:
        """One slot of ``hc_name`` for the ``with`` body.

        Raises:
            UnavailableError: the entity's share is used up (503, ``Retry-After``).
        """
        if not self.acquire(hc_name):
            raise UnavailableError(
                "too many requests are waiting for this hybrid connection's listeners",
                limit="max_pending_per_hc",
                retry_after=1,
            )
        try:
            yield
        finally:
            self.release(hc_name)


class LogBudget:
    """A token bucket for log lines: hostile traffic must not turn into disk writes.

    :meth:`allow` says whether to write a line now and how many were dropped since the
    last one written (put that in the line, so nothing is silently lost).
    """

    __slots__ = ("_bucket", "_dropped")

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        self._bucket = TokenBucket(rate=rate, burst=burst, now=now)
        self._dropped = 0

    def allow(self, now: float) -> tuple[bool, int]:
        if self._bucket.take(now):
            self._dropped += 1
            return False, 0
        dropped, self._dropped = self._dropped, 0
        return True, dropped


# -- asyncio glue -----------------------------------------------------------------------------


class FrontDoor:
    """The per-process front-door state the protocol objects share."""

    def __init__(
        self,
        settings: RelaySettings,
        metrics: RelayMetrics,
        *,
        now: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.now = now
        self.sources = SourceLimits(
            max_connections=settings.max_connections_per_ip,
            rate=settings.handshake_rate_per_ip,
            burst=settings.handshake_burst_per_ip,
            exempt=settings.per_ip_limits_exempt,
        )
        self._log_budget = LogBudget(rate=_LOG_RATE, burst=_LOG_BURST, now=now())

    def note(self, event: str, **fields: object) -> None:
        """An info line about a hostile or broken peer, within the log budget."""
        allowed, dropped = self._log_budget.allow(self.now())
        if allowed:
            if dropped:
                fields["suppressed"] = dropped
            log.info(event, extra=fields)

    def refused(self, limit: str, peer: str) -> None:
        self.metrics.limit_hit(limit)
        self.note("connection_refused", limit=limit, peer=peer)


def _peer_host(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""


class FrontDoorProtocol(RequestHandler):
    """aiohttp's per-connection protocol with the front door's limits.

    Everything here happens per connection, before and around aiohttp's own parsing;
    aiohttp's ``RequestHandler`` is reused untouched otherwise.
    """

    __slots__ = (
        "_body",
        "_front_door",
        "_head_timer",
        "_linger_timer",
        "_peer",
        "_refused",
        "_requests",
        "_serving",
        "_source",
        "_upgrade",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        front_door: FrontDoor,
        upgrade: UpgradeHook | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._front_door = front_door
        self._upgrade = upgrade
        self._serving = False  # aiohttp's task serving requests was started
        self._source: str | None = None  # the counted source (None: exempt or not counted)
        self._peer = ""
        self._refused = False
        self._requests = 0  # requests that reached the application on this connection
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None  # a refused connection's
        self._body: StreamReader | None = None  # the last request's body stream

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        door = self._front_door
        self._peer = _peer_host(transport)
        key = door.sources.key(self._peer)
        if key is not None:
            refusal = door.sources.open(key, door.now())
            if refusal is not None:
                # Before aiohttp sets up anything for it: a fixed answer, then close.
                self._refused = True
                door.refused(refusal.limit, self._peer)
                self._refuse(transport, _raw_429(refusal.retry_after))
                return
            self._source = key
        self._start(cast(asyncio.Transport, transport))
        self._head_timer = self._loop.call_later(
            door.settings.handshake_timeout, self._head_timed_out
        )

    def _start(self, transport: asyncio.Transport) -> None:
        """aiohttp's ``RequestHandler.connection_made``, less four costs per connection.

        Two connections per relayed connect pass here (the sender's and the listener's
        rendezvous dial), so what aiohttp repeats on each is done once instead (issue 16):

        - ``TCP_NODELAY``: uvloop and asyncio set it on every accepted TCP socket already;
          aiohttp sets it again through a socket object and a system call;
        - ``SO_KEEPALIVE``: :class:`FrontDoorSite` sets it on the listening socket, which
          accepted sockets inherit (Linux, BSD), rather than once per connection;
        - aiohttp's keep-alive timer, armed at the start as its only guard against a
          connection that never sends a request: the head timer is that guard here (and
          answers 408), so aiohttp's would only race it. aiohttp arms it after each
          response, as before;
        - the task that serves the connection's requests: started with the first request
          head (:meth:`_serve`), not before, as it would only wait for one until then;
          a head the upgrade hook takes never needs it.

        The rest is aiohttp's, unchanged (3.10 to 3.14): register with the server.
        """
        manager = self._manager
        if manager is None:  # pragma: no cover - aiohttp sets it in __init__
            raise RuntimeError("a request handler without its server")
        self.transport = transport
        manager.connection_made(self, transport)

    def _serve(self) -> None:
        """Start aiohttp's task that serves this connection's requests (once)."""
        self._serving = True
        if sys.version_info >= (3, 12):
            task = asyncio.Task(self.start(), loop=self._loop, eager_start=True)
        else:
            task = self._loop.create_task(self.start())
        self._task_handler = task

    def _refuse(self, transport: asyncio.BaseTransport, answer: bytes) -> None:
        """Send ``answer`` and close, without the reset that would destroy it.

        Closing a socket whose peer's request is still unread makes the kernel send a
        TCP reset, and a reset arriving first makes the peer drop our answer unread. So
        the answer goes out with our FIN (on plain TCP), what the peer sends is read and
        dropped, and the connection closes when the peer closes its side (aiohttp's
        ``eof_received`` lets the transport close), or after a short linger at most.
        """
        # A stream transport (uvloop's do not subclass asyncio's: no isinstance check).
        writer = cast(asyncio.Transport, transport)
        writer.write(answer)
        if writer.can_write_eof():
            writer.write_eof()
        self._linger_timer = self._loop.call_later(_REFUSED_LINGER_S, transport.close)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            if self._linger_timer is not None:
                self._linger_timer.cancel()
            return  # aiohttp never knew this connection
        self._release()
        super().connection_lost(exc)
        body, self._body = self._body, None
        if body is not None and not body.is_eof() and body.exception() is None:
            # aiohttp fails the body of a request still being handled, but not one it is
            # reading out after a refusal (a 413's lingering read): that read would wait
            # its full lingering time for bytes a vanished peer never sends.
            body.feed_eof()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped while the refusal lingers
        messages = self._messages
        queued = len(messages)
        serve = False
        super().data_received(data)
        if len(messages) > queued:
            self._refuse_unknown_versions(queued)
            if self._current_request is not None:
                self._fail_unfinished_body()
            if not self._serving:
                if self._upgraded and self._request_count == 1 and self._take_upgrade():
                    return  # the connection is not aiohttp's any more (forgotten)
                serve = True
        if self._head_timer is not None and self._request_count:
            # A whole head arrived (or a malformed one was answered): no 408 for it.
            self._head_timer.cancel()
            self._head_timer = None
        if serve:
            self._serve()

    def _take_upgrade(self) -> bool:
        """Offer the connection's first head, an upgrade, to the upgrade hook.

        The hook detaches the connection when it takes it (``splice.forget_connection``:
        our ``connection_lost`` releases its source and head timer); the head is dropped.
        Nothing of :func:`rate_limit_middleware` is skipped: a connection's first request
        was paid for when it opened.
        """
        hook = self._upgrade
        head = self._messages[0][0]
        if hook is None or not isinstance(head, RawRequestMessage) or head.version != HttpVersion11:
            return False
        if not hook(self, head):
            return False
        self._messages.clear()
        return True

    def _refuse_unknown_versions(self, first: int) -> None:
        """A request line naming another version than HTTP/1.0 or 1.1 is answered 505.

        aiohttp's parser takes ``HTTP/2.0`` or ``HTTP/0.9`` in a request line and would
        answer in kind, a status line no HTTP/1 client can read; nothing such a peer
        sends is relayed either.
        """
        messages = self._messages
        for index in range(first, len(messages)):
            message, _ = messages[index]
            if isinstance(message, RawRequestMessage) and message.version not in _HTTP_1:
                error = HttpProcessingError(code=505, message="HTTP version not supported")
                messages[index] = (
                    _ErrInfo(status=505, exc=error, message=error.message),
                    EMPTY_PAYLOAD,
                )

    def _fail_unfinished_body(self) -> None:
        """A parse error in the body of the request being handled fails that body.

        aiohttp's parser drops the body's reader when the bytes after a request's head
        turn malformed (bad chunk framing) and queues a 400 for after the handler, which
        meanwhile waits for body bytes that can never come: the sender would get a 408
        at body_idle_timeout instead of its 400 now.
        """
        request = self._current_request
        error = self._messages[-1][0]
        if request is None or not isinstance(error, _ErrInfo):
            return
        if not request.content.is_eof() and request.content.exception() is None:
            request.content.set_exception(error.exc)
            # Nothing after the error can be framed: close after the response, without
            # aiohttp's lingering read (it would only meet the same exception again).
            self.close_without_lingering()

    def _release(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._source is not None:
            # Also when a splice takes the transport over (splice.forget): the relayed
            # stream is authorized work, no longer an anonymous connection.
            self._front_door.sources.close(self._source)
            self._source = None

    def _process_keepalive(self) -> None:
        """aiohttp's keep-alive timer: an idle connection it closes is counted."""
        closing = self._force_close
        super()._process_keepalive()
        if self._force_close and not closing:
            self._front_door.metrics.limit_hit("keepalive_timeout")

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or self._request_count or transport.is_closing():
            return
        self._front_door.refused("handshake_timeout", self._peer)
        transport.write(_TIMEOUT_408)
        self.force_close()  # closes after the 408 is flushed

    # -- requests -----------------------------------------------------------------------

    @property
    def front_door(self) -> FrontDoor:
        return self._front_door

    @property
    def handler_task(self) -> asyncio.Task[None] | None:
        """The task serving this connection's requests (aiohttp's), None before the first."""
        return self._task_handler

    def admit_request(self, body: StreamReader) -> Refusal | None:
        """Charge one request to its source: the first was paid when the connection opened."""
        self._body = body
        self._requests += 1
        if self._requests == 1 or self._source is None:
            return None
        return self._front_door.sources.request(self._source, self._front_door.now())

    def close_without_lingering(self) -> None:
        """Close right after the response: do not read out the rest of a stalled body.

        aiohttp reads an unread body for up to ``lingering_time`` (10 s) after the
        response; after a 408 for a stalled body that only keeps the slow sender.
        """
        self._lingering_time = 0.0

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A malformed request or a vanished peer is the peer's business, not an error.

        aiohttp logs each at level error with a traceback (about 1.5 KB per request from
        anyone on the internet) and answers with a body even to HEAD. Here: one info line
        within the log budget, a count, and a body-less answer that closes the connection.
        Only a failure of our own (500 with an exception that is not the peer's) keeps
        aiohttp's error log.
        """
        if isinstance(exc, ConnectionError):
            raise exc  # the peer is gone: aiohttp closes quietly (middleware logged it)
        malformed = isinstance(exc, HttpProcessingError) and (status < 500 or status == 505)
        if not malformed and status != 504:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; only closing is left")
        door = self._front_door
        if malformed:
            door.metrics.rejections.labels(str(status), "malformed").inc()
            # aiohttp's parser enforced a [relay] key (serve.py passes them to it).
            if isinstance(exc, LineTooLong):  # its max_line_size or max_field_size
                door.metrics.limit_hit("max_head_line_size")
            elif isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
                door.metrics.limit_hit("max_headers")
            # The exception's class says what was wrong; its text quotes the peer's bytes.
            door.note("bad_request", status=status, reason=type(exc).__name__, peer=self._peer)
        else:  # 504: a handler's TimeoutError escaped (the middleware logged it)
            door.metrics.rejections.labels(str(status), "timeout").inc()
        response = web.Response(status=status)
        response.force_close()
        return response


class FrontDoorSite(web.TCPSite):
    """A TCPSite whose connections get :class:`FrontDoorProtocol` and a TLS handshake deadline.

    ``TCPSite`` uses the runner's ``Server`` as the protocol factory and asyncio's
    default 60 s TLS handshake timeout; both are set here, the rest is TCPSite's.
    """

    __slots__ = ("_front_door", "_upgrade")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        front_door: FrontDoor,
        upgrade: UpgradeHook | None = None,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
    ) -> None:
        super().__init__(
            runner,
            host,
            port,
            ssl_context=ssl_context,
            backlog=backlog,
            reuse_address=reuse_address,
            reuse_port=reuse_port,
        )
        self._front_door = front_door
        self._upgrade = upgrade

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        if server is None:
            raise RuntimeError("the runner must be set up before its site starts")
        door = self._front_door
        upgrade = self._upgrade
        # The keyword arguments AppRunner gave its Server (debug, access log, timeouts).
        handler_args = server._kwargs  # private, but aiohttp keeps them nowhere else

        def protocol() -> FrontDoorProtocol:
            return FrontDoorProtocol(
                server, loop=loop, front_door=door, upgrade=upgrade, **handler_args
            )

        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=door.settings.handshake_timeout if self._ssl_context else None,
        )
        sockets = self._server.sockets
        if handler_args.get("tcp_keepalive", True):
            # aiohttp's per-connection SO_KEEPALIVE (tcp_keepalive=True, its default), set
            # once here: accepted connections inherit it (FrontDoorProtocol._start).
            for sock in sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Charge each further request on a keep-alive connection to its source's bucket.

    Sits inside ``error_middleware``, which answers the RateLimitedError (429).
    """
    protocol = request.protocol
    if isinstance(protocol, FrontDoorProtocol):
        refusal = protocol.admit_request(request.content)
        if refusal is not None:
            raise RateLimitedError(
                "too many requests from this address",
                limit=refusal.limit,
                retry_after=refusal.retry_after,
            )
    return await handler(request)
