"""DatagramBridge against an in-memory stream: batching, bounded queues, every way a flow ends."""

from __future__ import annotations

import asyncio

import pytest
from tests.harness.timing import seconds

from hybridrelay.datagram_bridge import DatagramBridge, DatagramStats
from hybridrelay.datagrams import MAX_DATAGRAM, DatagramDecoder, encode, encode_many
from hybridrelay.errors import ConnectionClosedError


class MemoryStream:
    """The BridgeStream surface, in memory: ``feed`` what the peer sends, read ``sent``."""

    auto_close_echo = False

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.sent: list[bytes] = []
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed: tuple[int, str] | None = None
        self.aborted = False
        self.close_code: int | None = None
        self.close_reason = ""

    def feed(self, item: bytes | BaseException | None) -> None:
        self.incoming.put_nowait(item)  # None: the peer's close frame (1000)

    def datagrams(self) -> list[bytes]:
        return DatagramDecoder().feed(b"".join(self.sent))

    async def read(self) -> bytes:
        item = await self.incoming.get()
        if item is None:
            self.close_code = 1000
            return b""
        if isinstance(item, BaseException):
            self.close_code = 1006
            raise item
        return item

    async def write(self, data: bytes) -> None:
        await self.writable.wait()
        if self.closed is not None or self.aborted:
            raise ConnectionClosedError(1006, "gone")
        self.sent.append(data)

    async def close_write(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed is None:
            self.closed = (code, reason)

    def abort(self) -> None:
        self.aborted = True


async def run_until(bridge: DatagramBridge, stream: MemoryStream) -> asyncio.Task[DatagramStats]:
    task = asyncio.create_task(bridge.run(stream))
    await asyncio.sleep(0)
    return task


async def test_both_directions_and_batching() -> None:
    delivered: list[bytes] = []

    def deliver(datagram: bytes) -> bool:
        delivered.append(datagram)
        return True

    bridge = DatagramBridge(deliver, idle_timeout=None)
    stream = MemoryStream()
    for i in range(5):  # queued before the stream exists: sent as one batch
        bridge.push(bytes([i]) * 100)
    task = await run_until(bridge, stream)
    await asyncio.sleep(0)
    assert stream.sent == [encode_many([bytes([i]) * 100 for i in range(5)])]
    frames = encode(b"a") + encode(b"bc")
    stream.feed(frames[:3])  # any split
    stream.feed(frames[3:])
    stream.feed(None)
    stats = await asyncio.wait_for(task, seconds(5))
    assert delivered == [b"a", b"bc"]
    assert stream.closed == (1000, "")  # answered the peer's close
    assert (stats.outcome, stats.datagrams_up, stats.datagrams_down) == ("peer_closed", 5, 2)
    assert stats.close_code == 1000


async def test_batches_stay_under_64_kib() -> None:
    bridge = DatagramBridge(lambda d: True, idle_timeout=None, queue_bytes=1 << 20)
    for _ in range(10):
        bridge.push(b"x" * 20_000)
    stream = MemoryStream()
    task = await run_until(bridge, stream)
    await asyncio.sleep(0.01)
    assert all(len(message) <= 64 * 1024 for message in stream.sent)
    assert stream.datagrams() == [b"x" * 20_000] * 10
    bridge.stop()
    await task


async def test_full_queue_drops_the_oldest() -> None:
    bridge = DatagramBridge(lambda d: True, idle_timeout=None, queue_limit=3)
    stream = MemoryStream()
    stream.writable.clear()  # the relay is slower than the peer
    task = await run_until(bridge, stream)
    bridge.push(b"0")  # taken by the sender, stuck in write()
    await asyncio.sleep(0)
    for i in range(1, 7):
        bridge.push(str(i).encode())
    stream.writable.set()
    await asyncio.sleep(0.01)
    assert stream.datagrams() == [b"0", b"4", b"5", b"6"]
    assert bridge.stats.dropped_up == 3
    bridge.stop()
    await task


async def test_oversized_and_late_datagrams_are_dropped() -> None:
    bridge = DatagramBridge(lambda d: True, idle_timeout=None)
    bridge.push(b"x" * (MAX_DATAGRAM + 1))
    bridge.stop()
    bridge.push(b"late")
    assert bridge.stats.dropped_up == 2


async def test_undeliverable_datagrams_are_counted() -> None:
    bridge = DatagramBridge(lambda d: d != b"full", idle_timeout=None)
    stream = MemoryStream()
    task = await run_until(bridge, stream)
    stream.feed(encode_many([b"ok", b"full", b"ok"]))
    stream.feed(None)
    stats = await task
    assert (stats.datagrams_down, stats.dropped_down) == (2, 1)


async def test_idle_flow_closes_with_1000() -> None:
    bridge = DatagramBridge(lambda d: True, idle_timeout=0.05)
    stream = MemoryStream()
    stats = await asyncio.wait_for(bridge.run(stream), seconds(5))
    assert stats.outcome == "idle"
    assert stream.closed == (1000, "idle timeout")


async def test_bad_framing_closes_with_1002() -> None:
    bridge = DatagramBridge(lambda d: True, idle_timeout=None)
    stream = MemoryStream()
    stream.feed(b"\xff\xff")
    stats = await asyncio.wait_for(bridge.run(stream), seconds(5))
    assert stats.outcome == "protocol"
    assert stream.closed == (1002, "invalid datagram framing")


async def test_lost_stream_is_aborted_and_queue_counted() -> None:
    bridge = DatagramBridge(lambda d: True, idle_timeout=None)
    stream = MemoryStream()
    stream.writable.clear()
    task = await run_until(bridge, stream)
    bridge.push(b"in flight")
    await asyncio.sleep(0)
    bridge.push(b"queued")
    stream.feed(ConnectionClosedError(1006, "lost"))
    stats = await asyncio.wait_for(task, seconds(5))
    assert stats.outcome == "lost"
    assert stream.aborted
    assert stats.dropped_up == 2  # "queued", and "in flight" whose write never finished


async def test_stop_closes_with_the_given_code() -> None:
    bridge = DatagramBridge(lambda d: True, idle_timeout=None)
    stream = MemoryStream()
    task = await run_until(bridge, stream)
    bridge.stop(1001, "going away")
    stats = await asyncio.wait_for(task, seconds(5))
    assert stats.outcome == "stopped"
    assert stream.closed == (1001, "going away")
    assert bridge.ended


async def test_cancel_aborts_the_stream() -> None:
    bridge = DatagramBridge(lambda d: True, idle_timeout=None)
    stream = MemoryStream()
    task = await run_until(bridge, stream)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.aborted


async def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="queue_limit"):
        DatagramBridge(lambda d: True, queue_limit=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        DatagramBridge(lambda d: True, idle_timeout=0)
