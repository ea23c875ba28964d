"""What waits at a rendezvous address: a WebSocket sender or an HTTP-mode request.

The address handed to a listener (HC §2.4, §2.6) carries no token; its key is
the capability. A sender's key is single use. An HTTP request's key serves
every dial for that request until its response is complete, because listeners
may dial once to fetch a large request and again to upload a large response
(hyco-https does, Part 2 §5.2).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from hybridrelay.deadlines import Deadlines
from hybridrelay.errors import HybridRelayError
from hybridrelay.protocol.messages import Request, Response
from hybridrelay.relay.admission import PendingShare
from hybridrelay.relay.handshake import ClientHandshake
from hybridrelay.relay.splice import Splice

__all__ = [
    "LISTENER_GONE",
    "PENDING",
    "SPLICED",
    "BodyPipe",
    "ListenerHandle",
    "PendingConnect",
    "PendingRequest",
    "PendingWork",
    "TrackingIds",
]


def _is_path(dialled: str, entity: str, suffix: str) -> bool:
    """Whether a dial's decoded path is the one the relay put in the rendezvous address.

    Listeners dial the address verbatim (HC §2.4, §2.6): the entity as registered
    (compared ignoring case, as every entity name is) and the sender's suffix exactly.
    A prefix is not enough: the key of ``hc1`` must not open a dial to ``hc10``.
    """
    n = len(entity)
    return dialled[:n].casefold() == entity.casefold() and dialled[n:] == suffix


@dataclass(frozen=True, slots=True)
class ListenerHandle:
    """A listener the cluster state chose: enough to deliver to it and count its streams."""

    hc_name: str
    listener_id: str
    node_id: str


# PendingConnect outcomes: the listener holding the accept vanished without dialling;
# the listener dialled, both legs have their 101 and the splice runs.
LISTENER_GONE: Final = object()
SPLICED: Final = object()


@dataclass(eq=False, slots=True)
class PendingConnect:
    """A sender waiting for its listener to dial the rendezvous address.

    The listener's dial completes the rendezvous on its own: it answers both legs'
    101 and starts the splice in one step (``hc_endpoints._accept``), so it needs the
    sender's request and handshake; the sender's handler only learns the outcome.
    """

    hc_name: str
    # Resolves to SPLICED, a rejection, an error, or LISTENER_GONE.
    future: asyncio.Future[object]
    splice: Splice
    sender: web.Request  # its 101 is written by the listener's dial
    handshake: ClientHandshake  # the sender's
    started: float  # loop time the sender arrived
    suffix: str = ""  # the sender's path after the entity, kept in the accept address
    listener_id: str = ""  # the listener the accept went to
    handle: ListenerHandle | None = None

    def dialled_at(self, path: str) -> bool:
        """Whether a dial to ``path`` (decoded, after ``/$hc/``) is to this accept address."""
        return _is_path(path, self.hc_name, self.suffix)

    def chosen(self, handle: ListenerHandle) -> None:
        self.listener_id = handle.listener_id
        self.handle = handle

    def listener_gone(self) -> None:
        if not self.future.done():
            self.future.set_result(LISTENER_GONE)


class BodyPipe:
    """One response body flowing from a listener to an HTTP sender, bounded by bytes.

    The producer (a control channel or a rendezvous socket) feeds chunks from
    protocol callbacks; the sender's handler reads them. Above ``high`` bytes the
    producer is paused (its transport stops reading) until the reader drained half.
    """

    __slots__ = (
        "_chunks",
        "_eof",
        "_error",
        "_high",
        "_pause",
        "_paused",
        "_resume",
        "_size",
        "_waiter",
    )

    def __init__(self, *, high: int = 256 * 1024) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._high = high
        self._eof = False
        self._error: HybridRelayError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._pause: Callable[[], None] | None = None
        self._resume: Callable[[], None] | None = None

    @property
    def finished(self) -> bool:
        return self._eof or self._error is not None

    def set_flow_control(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause = pause
        self._resume = resume

    def feed(self, chunk: bytes) -> None:
        if self.finished or not chunk:
            return
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > self._high and not self._paused and self._pause is not None:
            self._paused = True
            self._pause()
        self._wake()

    def feed_eof(self) -> None:
        if not self.finished:
            self._eof = True
            self._wake()

    def take_all(self) -> bytes | None:
        """The whole body if it has fully arrived already, else None (keep streaming)."""
        if not self._eof or self._error is not None:
            return None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data

    def fail(self, error: HybridRelayError) -> None:
        if not self.finished:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        """Next chunk; b"" at the end; raises the producer's failure."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._paused and self._size <= self._high // 2 and self._resume is not None:
            self._paused = False
            self._resume()
        return chunk


@dataclass(eq=False, slots=True)
class PendingRequest:
    """An HTTP-mode request waiting for (or receiving) its listener's response."""

    hc_name: str
    request_id: str
    listener_id: str
    message: Request  # the full inline-form request
    sender: web.Request  # the HTTP request whose body a rendezvous dial streams
    inline: bool
    header: asyncio.Future[Response] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    body: BodyPipe = field(default_factory=BodyPipe)
    delivered: bool = False  # the listener has the request (inline, or sent on a rendezvous)
    closed: bool = False  # the sender's handler is done with it
    sockets: set[object] = field(default_factory=set)  # open rendezvous sockets for it
    # The body, when the relay read it whole for an inline delivery that went elsewhere
    # (a listener on another node gets the request over its rendezvous socket instead).
    prefetched: bytes | None = None

    def dialled_at(self, path: str) -> bool:
        """Whether a dial to ``path`` is to this request's address (the entity, no suffix)."""
        return _is_path(path, self.hc_name, "")

    def deliver_header(self, response: Response) -> bool:
        """Record the response header; False if one arrived already."""
        if self.header.done():
            return False
        self.header.set_result(response)
        if not response.body:
            self.body.feed_eof()
        return True

    def fail(self, error: HybridRelayError) -> None:
        if not self.header.done():
            self.header.set_exception(error)
            # Retrieved by the sender's handler; mark it so an abandoned one stays quiet.
            self.header.exception()
        self.body.fail(error)


class TrackingIds:
    """Tracking ids the relay makes up, for senders that bring none and for every HTTP-mode
    request: GUID-shaped (version 4, RFC 4122 variant).

    74 random bits per instance plus a counter: unique, and no getrandom() per connect or
    request (uuid4() was 4% of the relay's samples under bench.http); not a secret (the
    rendezvous key is).
    """

    __slots__ = ("_head", "_ids")

    def __init__(self) -> None:
        random = uuid.uuid4().hex
        variant = "89ab"[int(random[16], 16) & 3] + random[17:20]
        self._head = f"{random[:8]}-{random[8:12]}-4{random[13:16]}-{variant}-"
        self._ids = itertools.count(int(random[20:], 16) & 0xFFFFFFFF)

    def new(self) -> str:
        return f"{self._head}{next(self._ids) & 0xFFFFFFFFFFFF:012x}"


class PendingWork:
    """The work of this node waiting on listeners (one service, ``app[PENDING]``).

    Attributes:
        requests: HTTP-mode requests by request id, until their response is complete
            (the control channel resolves them; a rendezvous dial finds them by id).
        waiting: Senders waiting for their listener to dial (``hc_endpoints._connect``).
        share: How much of both each hybrid connection holds (``max_pending_per_hc``).
        tracking_ids: Where senders that bring no tracking id get one.
        deadlines: The HTTP-mode requests' ``request_timeout``, on one shared timer.
    """

    def __init__(self, max_pending_per_hc: int) -> None:
        self.requests: dict[str, PendingRequest] = {}
        self.deadlines = Deadlines()
        self.waiting: set[PendingConnect] = set()
        self.share = PendingShare(max_pending_per_hc)
        self.tracking_ids = TrackingIds()


PENDING: Final = web.AppKey("hybridrelay_pending", PendingWork)
