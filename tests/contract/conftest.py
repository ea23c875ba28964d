"""Fixtures of the store contract suite: one factory, parametrized over [sqlite, redis].

``open_store()`` opens a store on the test's own file (SQLite) or key prefix (Redis);
calling it again opens a second store on the same data: a restart after closing the
first, or a second relay node while both are open (Redis). Everything opened is
closed in reverse order.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest
from tests.contract.stores import Clock, StoreFactory, make_config
from tests.harness.redis import unique_prefix

from hybridrelay.relay.config import RelayConfig
from hybridrelay.relay.store.base import Store
from hybridrelay.relay.store.redis import RedisStore
from hybridrelay.relay.store.redis_adapter import RedisAdapter
from hybridrelay.relay.store.sqlite import SqliteStore


@pytest.fixture
def clock() -> Clock:
    return Clock()


class _Factory:
    def __init__(self, kind: str, opener: _Opener) -> None:
        self.kind = kind
        self._opener = opener
        self.opened: list[Store] = []

    async def __call__(self, config: RelayConfig | None = None) -> Store:
        store = await self._opener(config or make_config())
        self.opened.append(store)
        return store


class _Opener(Protocol):
    async def __call__(self, config: RelayConfig) -> Store: ...


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def open_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[StoreFactory]:
    kind: str = request.param
    cleanup: list[str] = []
    if kind == "sqlite":
        path = tmp_path / "store.sqlite3"

        async def open_sqlite(config: RelayConfig) -> Store:
            return await SqliteStore.open(config, path=path, now=clock, rng=secrets.token_bytes)

        factory = _Factory(kind, open_sqlite)
    else:
        url: str = request.getfixturevalue("redis_url")
        prefix = unique_prefix()
        cleanup.append(prefix)

        async def open_redis(config: RelayConfig) -> Store:
            return await RedisStore.open(
                url, config, prefix=prefix, now=clock, rng=secrets.token_bytes
            )

        factory = _Factory(kind, open_redis)
    yield factory
    for store in reversed(factory.opened):
        await store.close()
    for prefix in cleanup:
        # Only this test's keys: a shared REDIS_URL server keeps everything else.
        adapter = RedisAdapter.from_url(request.getfixturevalue("redis_url"))
        try:
            await adapter.delete_prefix(f"hr:{prefix}:")
        finally:
            await adapter.aclose()
