"""Datagram bridge: UDP datagrams over one relayed stream, for udp:// targets and UDP bindings.

One :class:`DatagramBridge` serves one *flow* (one local UDP peer on the forwarder,
one connected UDP socket on the listener). Datagrams are framed with
:mod:`hybridrelay.datagrams` and sent as binary WebSocket messages:

- Local side → stream: :meth:`DatagramBridge.push` (called from a
  ``DatagramProtocol.datagram_received``) appends to a bounded queue; one task sends
  what is queued, batching several frames into one message. When the relay is
  slower than the local peer the *oldest* queued datagrams are dropped and counted
  (``dropped_up``): UDP semantics, no unbounded buffering.
- Stream → local side: the stream's bytes go through an incremental
  :class:`~hybridrelay.datagrams.DatagramDecoder`, which accepts any split, and every
  whole datagram is handed to ``deliver``. ``deliver`` returns False when it had to
  drop the datagram (the socket's send buffer is full); that is counted
  (``dropped_down``).

The flow ends, and the stream is closed, when no datagram moved either way for
``idle_timeout`` seconds (close 1000 "idle timeout"), when the peer closes the
stream (we answer its close), when the stream is lost (aborted), when the peer
breaks the framing (close 1002), or on :meth:`DatagramBridge.stop`.

Empty datagrams are valid frames and are carried, but asyncio before Python 3.13
neither sends nor reports zero-length UDP datagrams, so on such versions they do
not reach the other side's socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from hybridrelay.bridge import BridgeStream
from hybridrelay.datagrams import MAX_DATAGRAM, DatagramDecoder, encode_many
from hybridrelay.errors import ConnectionClosedError, ProtocolError
from hybridrelay.logs import BRIDGE
from hybridrelay.protocol.codes import CloseCode

__all__ = ["DatagramBridge", "DatagramStats", "Outcome"]

logger = logging.getLogger(BRIDGE)

# Why a flow ended.
Outcome: TypeAlias = Literal["idle", "peer_closed", "lost", "protocol", "stopped"]

_BATCH_LIMIT: Final = 64 * 1024


@dataclass(slots=True)
class DatagramStats:
    """What one flow carried.

    Attributes:
        datagrams_up: Datagrams from the local side sent on the stream.
        datagrams_down: Datagrams received on the stream and delivered locally.
        bytes_up: Payload bytes of ``datagrams_up`` (without framing).
        bytes_down: Payload bytes of ``datagrams_down``.
        dropped_up: Local datagrams dropped: the queue was full (the oldest go first),
            the datagram was over the size limit, or the flow had ended.
        dropped_down: Datagrams from the stream that ``deliver`` could not send.
        outcome: Why the flow ended (None while it runs).
        close_code: The stream peer's close code (1006 if lost), once ended.
    """

    datagrams_up: int = 0
    datagrams_down: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_up: int = 0
    dropped_down: int = 0
    outcome: Outcome | None = None
    close_code: int | None = None


class DatagramBridge:
    """Carries one flow's datagrams over a relayed stream.

    Args:
        deliver: Sends one datagram that came from the stream to the local side;
            returns False when it dropped it. Called synchronously, in order.
        idle_timeout: End the flow when no datagram moved either way for this long
            (None: never).
        queue_limit: Most datagrams waiting to be sent on the stream.
        queue_bytes: Most payload bytes waiting to be sent on the stream.
    """

    def __init__(
        self,
        deliver: Callable[[bytes], bool],
        *,
        idle_timeout: float | None = 60.0,
        queue_limit: int = 256,
        queue_bytes: int = 1 << 20,
    ) -> None:
        if queue_limit < 1 or queue_bytes < MAX_DATAGRAM:
            raise ValueError(f"queue_limit must be >= 1 and queue_bytes >= {MAX_DATAGRAM}")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self._deliver = deliver
        self._idle_timeout = idle_timeout
        self._queue_limit = queue_limit
        self._queue_bytes_limit = queue_bytes
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stop_close: tuple[int, str] = (CloseCode.NORMAL, "")
        self._ended = False
        self._running = False
        self._in_flight = 0
        self._decoder = DatagramDecoder()
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self.stats = DatagramStats()

    @property
    def ended(self) -> bool:
        """True once :meth:`run` has returned (or :meth:`stop` was called)."""
        return self._ended

    @property
    def last_activity(self) -> float:
        """Loop time of the last datagram in either direction."""
        return self._last_activity

    def push(self, datagram: bytes) -> None:
        """Queue a local datagram for the stream; never blocks.

        Works before :meth:`run` (the datagrams wait while the stream is being
        opened). When the queue is full the oldest datagrams are dropped.
        """
        if self._ended or len(datagram) > MAX_DATAGRAM:
            self.stats.dropped_up += 1
            return
        queue = self._queue
        while queue and (
            len(queue) >= self._queue_limit
            or self._queued_bytes + len(datagram) > self._queue_bytes_limit
        ):
            self._queued_bytes -= len(queue.popleft())
            self.stats.dropped_up += 1
        queue.append(datagram)
        self._queued_bytes += len(datagram)
        self._wakeup.set()

    def stop(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """End the flow: :meth:`run` closes the stream with ``code`` and returns."""
        if not self._stopping.is_set():
            self._stop_close = (code, reason)
            self._stopping.set()
        self._ended = True  # later pushes are dropped
        if not self._running:  # nothing will send what is queued
            self._drop_queue()

    def _drop_queue(self) -> None:
        self.stats.dropped_up += len(self._queue) + self._in_flight
        self._in_flight = 0
        self._queue.clear()
        self._queued_bytes = 0

    async def run(self, ws: BridgeStream) -> DatagramStats:
        """Carry datagrams both ways over ``ws`` until the flow ends; then close ``ws``.

        Args:
            ws: The relayed stream (or a wrapper offering the same surface).

        Returns:
            The flow's counters, with ``outcome`` and the peer's ``close_code``. Stream
            errors end the flow normally; they are not raised.

        Raises:
            asyncio.CancelledError: The flow was cancelled; ``ws`` is aborted first.
        """
        if self._running:
            raise RuntimeError("DatagramBridge.run() is already running")
        self._running = True
        self._last_activity = self._loop.time()
        try:
            outcome = await self._pump(ws)
            self.stats.outcome = outcome
            self._ended = True
            await self._finish(ws, outcome)
        except BaseException:
            self._ended = True
            ws.abort()
            raise
        finally:
            self._running = False
            self._drop_queue()
        self.stats.close_code = ws.close_code
        return self.stats

    async def _pump(self, ws: BridgeStream) -> Outcome:
        tasks = {
            asyncio.create_task(self._stream_to_local(ws)),
            asyncio.create_task(self._local_to_stream(ws)),
            asyncio.create_task(self._watchdog()),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        # Several may finish in one loop step; a failure of the stream outranks the rest.
        outcomes = {task.result() for task in done}
        for outcome in ("lost", "protocol", "peer_closed", "stopped", "idle"):
            if outcome in outcomes:
                return outcome
        raise AssertionError(f"unexpected outcomes {outcomes}")  # pragma: no cover

    async def _finish(self, ws: BridgeStream, outcome: Outcome) -> None:
        if outcome == "lost":
            ws.abort()
        elif outcome == "protocol":
            await ws.close(CloseCode.PROTOCOL_ERROR, "invalid datagram framing")
        elif outcome == "idle":
            logger.debug("%% datagram flow idle for %ss, closing", self._idle_timeout)
            await ws.close(CloseCode.NORMAL, "idle timeout")
        elif outcome == "stopped":
            await ws.close(*self._stop_close)
        else:  # peer_closed: answer its close
            await ws.close()

    def _touch(self) -> None:
        self._last_activity = self._loop.time()

    async def _local_to_stream(self, ws: BridgeStream) -> Outcome:
        queue = self._queue
        while True:
            if not queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [queue.popleft()]
            size = len(batch[0])
            while queue and size + len(queue[0]) + 2 * (len(batch) + 1) <= _BATCH_LIMIT:
                datagram = queue.popleft()
                batch.append(datagram)
                size += len(datagram)
            self._queued_bytes -= size
            self._in_flight = len(batch)  # dropped, if the flow ends before the write does
            try:
                await ws.write(encode_many(batch))
            except ConnectionClosedError:
                return "lost"
            self._in_flight = 0
            self.stats.datagrams_up += len(batch)
            self.stats.bytes_up += size
            self._touch()

    async def _stream_to_local(self, ws: BridgeStream) -> Outcome:
        while True:
            try:
                data = await ws.read()
            except ConnectionClosedError:
                return "lost"
            if not data:
                return "peer_closed"
            try:
                datagrams = self._decoder.feed(data)
            except ProtocolError as exc:
                logger.warning("! datagram flow: %s", exc)
                return "protocol"
            for datagram in datagrams:
                if self._deliver(datagram):
                    self.stats.datagrams_down += 1
                    self.stats.bytes_down += len(datagram)
                else:
                    self.stats.dropped_down += 1
            if datagrams:
                self._touch()

    async def _watchdog(self) -> Outcome:
        while True:
            timeout: float | None = None
            if self._idle_timeout is not None:
                timeout = self._last_activity + self._idle_timeout - self._loop.time()
                if timeout <= 0:
                    return "idle"
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._stopping.wait()
                    return "stopped"
