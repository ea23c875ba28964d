"""ClusterState contract: the single-node memory state and the Redis one behave alike,
and Redis nodes see each other's listeners (issue 6). Real Redis, fake control channels.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from tests.harness.redis import unique_prefix
from tests.harness.timing import seconds

from hybridrelay.errors import (
    ConnectionClosedError,
    ListenerConflictError,
    QuotaExceededError,
)
from hybridrelay.protocol.messages import Accept, Request
from hybridrelay.relay.cluster.base import ClusterState, ListenerHandle
from hybridrelay.relay.cluster.memory import MemoryClusterState
from hybridrelay.relay.cluster.redis import RedisClusterState

ACCEPT = Accept(
    address="ws://relay/$hc/hc?sb-hc-action=accept&sb-hc-id=1",
    id="1",
    connect_headers={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
)


@dataclass(eq=False)
class FakeChannel:
    hc_name: str
    listener_id: str
    received: list[Accept | Request] = field(default_factory=list)
    aborted: bool = False
    fail: bool = False

    async def deliver(self, message: Accept | Request, body: bytes | None = None) -> None:
        if self.fail or self.aborted:
            raise ConnectionClosedError(1011, "gone")
        self.received.append(message)

    def abort(self) -> None:
        self.aborted = True


Opener = Callable[[str], Awaitable[ClusterState]]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def open_node(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Opener]:
    """Open a node's cluster state; Redis nodes opened by one test share a key prefix."""
    prefix = unique_prefix()
    opened: list[ClusterState] = []

    async def open_(node_id: str) -> ClusterState:
        state: ClusterState
        if request.param == "memory":
            state = MemoryClusterState(node_id=node_id, rng=random.Random(7))
        else:
            state = await RedisClusterState.open(redis_url, prefix=prefix, node_id=node_id, ttl=2.0)
        opened.append(state)
        return state

    yield open_
    for state in reversed(opened):
        await state.close()


@pytest.fixture
async def redis_nodes(redis_url: str) -> AsyncIterator[Callable[..., Awaitable[RedisClusterState]]]:
    prefix = unique_prefix()
    opened: list[RedisClusterState] = []

    async def open_(node_id: str, ttl: float = 2.0) -> RedisClusterState:
        state = await RedisClusterState.open(redis_url, prefix=prefix, node_id=node_id, ttl=ttl)
        opened.append(state)
        return state

    yield open_
    for state in reversed(opened):
        await state.close()


# --- both kinds ---------------------------------------------------------------------------


async def test_attach_pick_deliver_detach(open_node: Opener) -> None:
    node = await open_node("a")
    channel = FakeChannel("HC", "l1")
    await node.attach(channel, max_listeners=25)
    assert await node.listener_count("hc") == 1
    handle = await node.pick("hc")
    assert handle == ListenerHandle("hc", "l1", "a")
    await node.deliver(handle, ACCEPT)
    assert channel.received == [ACCEPT]
    await node.detach(channel)
    assert await node.listener_count("hc") == 0
    assert await node.pick("hc") is None


async def test_cap_conflict_and_takeover(open_node: Opener) -> None:
    node = await open_node("a")
    first, second = FakeChannel("hc", "l1"), FakeChannel("hc", "l2")
    await node.attach(first, max_listeners=2)
    await node.attach(second, max_listeners=2)
    with pytest.raises(QuotaExceededError):
        await node.attach(FakeChannel("hc", "l3"), max_listeners=2)
    with pytest.raises(ListenerConflictError):
        await node.attach(FakeChannel("hc", "l1"), max_listeners=2, takeover=False)
    replacement = FakeChannel("hc", "l1")
    await node.attach(replacement, max_listeners=2)  # same id: takes the slot over
    assert first.aborted
    assert await node.listener_count("hc") == 2


async def test_fewest_active_streams_win(open_node: Opener) -> None:
    node = await open_node("a")
    busy, idle = FakeChannel("hc", "busy"), FakeChannel("hc", "idle")
    await node.attach(busy, max_listeners=25)
    await node.attach(idle, max_listeners=25)
    handle = ListenerHandle("hc", "busy", "a")
    node.stream_started(handle)
    node.stream_started(handle)
    await _counts_landed(node)
    for _ in range(20):
        handle_ = await node.pick("hc")
        assert handle_ is not None
        assert handle_.listener_id == "idle"
    node.stream_ended(handle)
    node.stream_ended(handle)


async def _counts_landed(node: ClusterState) -> None:
    # Redis counts are flushed by a background task: poll (bounded) until a pick sees them.
    async with asyncio.timeout(seconds(5)):
        while True:
            handle = await node.pick("hc")
            assert handle is not None
            if handle.listener_id == "idle":
                return
            await asyncio.sleep(0.01)


# --- Redis only: several nodes ------------------------------------------------------------


@pytest.mark.redis
async def test_nodes_see_each_others_listeners_and_deliver_across(redis_nodes) -> None:
    a, b = await redis_nodes("a"), await redis_nodes("b")
    channel = FakeChannel("hc", "l1")
    await a.attach(channel, max_listeners=25)
    assert await b.listener_count("hc") == 1
    handle = await b.pick("hc")
    assert handle == ListenerHandle("hc", "l1", "a")
    await b.deliver(handle, ACCEPT)
    assert channel.received == [ACCEPT]
    with pytest.raises(ValueError, match="body"):
        await b.deliver(handle, ACCEPT, b"no bodies across nodes")


@pytest.mark.redis
async def test_cap_is_cluster_wide_and_takeover_moves_across_nodes(redis_nodes) -> None:
    a, b = await redis_nodes("a"), await redis_nodes("b")
    on_a = FakeChannel("hc", "l1")
    await a.attach(on_a, max_listeners=2)
    await b.attach(FakeChannel("hc", "l2"), max_listeners=2)
    with pytest.raises(QuotaExceededError):
        await b.attach(FakeChannel("hc", "l3"), max_listeners=2)
    # The same listener id on B replaces A's channel: A is told to drop it.
    await b.attach(FakeChannel("hc", "l1"), max_listeners=2)
    async with asyncio.timeout(seconds(5)):
        while not on_a.aborted:
            await asyncio.sleep(0.01)  # the notice travels over pub/sub; bounded poll
    handle = await b.pick("hc", allowed={"l1"})
    assert handle is not None
    assert handle.node_id == "b"


@pytest.mark.redis
async def test_a_listener_that_left_fails_delivery_fast(redis_nodes) -> None:
    a, b = await redis_nodes("a"), await redis_nodes("b")
    channel = FakeChannel("hc", "l1", fail=True)
    await a.attach(channel, max_listeners=25)
    handle = await b.pick("hc")
    assert handle is not None
    with pytest.raises(ConnectionClosedError):
        await b.deliver(handle, ACCEPT)  # A answers "not delivered" at once


@pytest.mark.redis
async def test_closed_node_is_skipped_and_its_presence_expires(redis_nodes) -> None:
    a, b = await redis_nodes("a", ttl=1.0), await redis_nodes("b", ttl=1.0)
    await a.attach(FakeChannel("hc", "on-a"), max_listeners=25)
    await b.attach(FakeChannel("hc", "on-b"), max_listeners=25)
    await a.close()  # like a crash: its entry stays in Redis until its deadline
    gone: list[str] = []
    for _ in range(10):
        handle = await b.pick("hc")
        assert handle is not None
        if handle.node_id == "a":
            with pytest.raises(ConnectionClosedError):
                await b.deliver(handle, ACCEPT)  # nobody receives on A's channel
            gone.append(handle.listener_id)
        else:
            assert handle.listener_id == "on-b"
    assert len(gone) <= 1  # after one failed PUBLISH, A's listeners are skipped
    async with asyncio.timeout(seconds(3)):
        while await b.listener_count("hc") != 1:
            await asyncio.sleep(0.05)  # the 1 s presence TTL runs out; bounded poll


@pytest.mark.redis
async def test_listener_gone_notice_reaches_the_sending_node(redis_nodes) -> None:
    a, b = await redis_nodes("a"), await redis_nodes("b")
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    b.on_listener_gone(lambda hc, lid: heard.put_nowait((hc, lid)))
    channel = FakeChannel("HC", "l1")
    await a.attach(channel, max_listeners=25)
    handle = await b.pick("hc")
    assert handle is not None
    await b.deliver(handle, ACCEPT)
    await a.detach(channel)
    assert await asyncio.wait_for(heard.get(), seconds(5)) == ("hc", "l1")
