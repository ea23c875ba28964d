"""LastKnown: the Redis store's answers kept only for when Redis is unreachable."""

from __future__ import annotations

import pytest

from hybridrelay.errors import UnavailableError
from hybridrelay.relay.store.last_known import Breaker, LastKnown


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    def __init__(self) -> None:
        self.value: str | None = "v1"
        self.down = False
        self.calls = 0

    async def fetch(self) -> str | None:
        self.calls += 1
        if self.down:
            raise UnavailableError("redis: connection refused")
        return self.value


async def test_every_read_goes_to_the_source_while_it_answers() -> None:
    source, cache = Source(), LastKnown[str | None]("thing")
    assert await cache.read("k", source.fetch) == "v1"
    source.value = "v2"
    assert await cache.read("k", source.fetch) == "v2"  # never served stale when up
    source.value = None
    assert await cache.read("k", source.fetch) is None  # "gone" is an answer too
    assert source.calls == 3


async def test_the_last_answer_is_served_while_the_source_is_down() -> None:
    clock = Clock()
    source = Source()
    cache = LastKnown[str | None]("thing", breaker=Breaker(retry_after=1.0, now=clock))
    await cache.read("k", source.fetch)
    source.down = True
    assert await cache.read("k", source.fetch) == "v1"
    calls = source.calls
    # For a second after a failure the source is not asked at all (a hung Redis costs
    # its timeout once): remembered keys are served, others fail at once.
    assert await cache.read("k", source.fetch) == "v1"
    with pytest.raises(UnavailableError):
        await cache.read("never-read", source.fetch)
    assert source.calls == calls
    source.down, source.value = False, "v3"
    assert await cache.read("k", source.fetch) == "v1"
    clock.now += 1.0
    assert await cache.read("k", source.fetch) == "v3"


async def test_bounded_least_recently_used_first_out() -> None:
    source, cache = Source(), LastKnown[str | None]("thing", limit=2)
    for key in ("a", "b", "c"):
        await cache.read(key, source.fetch)
    assert len(cache) == 2
    source.down = True
    with pytest.raises(UnavailableError):
        await cache.read("a", source.fetch)  # evicted
    assert await cache.read("c", source.fetch) == "v1"
