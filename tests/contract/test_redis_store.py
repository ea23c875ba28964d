"""What only the Redis store promises: its key layout and recovery of the change channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from tests.contract.stores import make_config
from tests.harness.redis import unique_prefix
from tests.harness.timing import seconds

from hybridrelay.errors import UnavailableError, ValidationError
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.store.models import ChangeEvent, Device, HybridConnection
from hybridrelay.relay.store.redis import RedisStore
from hybridrelay.relay.store.redis_adapter import RedisAdapter

pytestmark = pytest.mark.redis


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    value = unique_prefix()
    yield value
    adapter = RedisAdapter.from_url(redis_url)
    try:
        await adapter.delete_prefix(f"hr:{value}:")
    finally:
        await adapter.aclose()


async def test_the_test_redis_is_never_the_machines_default(redis_url: str) -> None:
    import os

    if not os.environ.get("REDIS_URL"):
        assert ":6379" not in redis_url


async def test_keys_are_namespaced_and_hash_tagged(redis_url: str, prefix: str) -> None:
    store = await RedisStore.open(redis_url, make_config(hybrid_connections=()), prefix=prefix)
    try:
        await store.put_hybrid_connection(HybridConnection(name="Orders/EU"))
        await store.put_rule("orders/eu", "send", Rights.SEND)
        await store.create_device(Device(device_id="dev-1"))
        adapter = RedisAdapter.from_url(redis_url)
        try:
            hc = await adapter.hgetall(f"hr:{prefix}:hc:{{orders/eu}}")
            assert set(hc) == {"doc", "etag", "r:send"}
            device = await adapter.hgetall(f"hr:{prefix}:dev:{{dev-1}}")
            assert set(device) == {"doc", "etag"}
            assert await adapter.zrange_after(f"hr:{prefix}:hcs", "", 10) == ["orders/eu"]
            assert await adapter.zrange_after(f"hr:{prefix}:devs", "", 10) == ["dev-1"]
            assert set(await adapter.hgetall(f"hr:{prefix}:ns")) == {"r:rootmanagesharedaccesskey"}
        finally:
            await adapter.aclose()
    finally:
        await store.close()


async def test_bad_prefix_is_refused(redis_url: str) -> None:
    with pytest.raises(ValidationError, match="prefix"):
        await RedisStore.open(redis_url, make_config(), prefix="{tag}")


async def test_unreachable_redis_is_unavailable() -> None:
    with pytest.raises(UnavailableError):
        await RedisStore.open("redis://127.0.0.1:1/0", make_config())


async def test_change_channel_recovers_and_says_reset(redis_url: str, prefix: str) -> None:
    a = await RedisStore.open(redis_url, make_config(), prefix=prefix, node_id="node-a")
    b = await RedisStore.open(redis_url, make_config(), prefix=prefix, node_id="node-b")
    queue: asyncio.Queue[ChangeEvent] = asyncio.Queue()
    a.subscribe(queue.put_nowait)
    admin = Redis.from_url(redis_url, decode_responses=True)
    try:
        clients = await admin.client_list(_type="pubsub")
        ours = [c["id"] for c in clients if c.get("name") == "hybridrelay-node-a"]
        assert len(ours) == 1
        await admin.client_kill_filter(_id=ours[0])
        async with asyncio.timeout(seconds(5)):
            event = await queue.get()
        assert event.kind == "reset"
        await b.create_device(Device(device_id="after-reset"))
        async with asyncio.timeout(seconds(1)):
            event = await queue.get()
        assert (event.kind, event.op, event.name) == ("device", "created", "after-reset")
    finally:
        await admin.aclose()
        await b.close()
        await a.close()
