"""RendezvousTable with an injected clock and key source: single use, expiry, limit (HC §2.4)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator

import pytest

from hybridrelay.relay.rendezvous import RendezvousTable, TableFullError

TTL = 30.0


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def counting_keys() -> Callable[[], str]:
    counter: Iterator[int] = itertools.count()
    return lambda: f"key-{next(counter)}"


def make(
    clock: FakeClock, *, limit: int = 100, new_key: Callable[[], str] | None = None
) -> RendezvousTable[str]:
    return RendezvousTable[str](now=clock, ttl=TTL, limit=limit, new_key=new_key or counting_keys())


def test_create_returns_the_injected_key_and_claim_is_single_use() -> None:
    clock = FakeClock()
    table = make(clock)
    key = table.create("sender-a")
    assert key == "key-0"
    assert len(table) == 1
    assert table.claim(key) == "sender-a"
    assert len(table) == 0
    assert table.claim(key) is None


def test_each_key_claims_its_own_value() -> None:
    table = make(FakeClock())
    keys = {table.create(v): v for v in ("a", "b", "c")}
    assert list(keys) == ["key-0", "key-1", "key-2"]
    assert table.claim("key-1") == "b"
    assert table.claim("key-0") == "a"
    assert table.claim("key-2") == "c"


def test_claim_of_an_unknown_key_is_none() -> None:
    table = make(FakeClock())
    table.create("a")
    assert table.claim("nope") is None
    assert table.claim("") is None
    assert len(table) == 1


def test_claim_up_to_the_deadline_works() -> None:
    clock = FakeClock()
    table = make(clock)
    key = table.create("a")
    clock.advance(TTL)
    assert table.claim(key) == "a"


def test_claim_after_ttl_is_none_even_without_a_sweep() -> None:
    clock = FakeClock()
    table = make(clock)
    key = table.create("a")
    clock.advance(TTL + 0.001)
    assert table.claim(key) is None
    assert len(table) == 0  # the stale entry is gone too
    assert table.claim(key) is None


def test_sweep_returns_expired_values_in_creation_order() -> None:
    clock = FakeClock()
    table = make(clock)
    table.create("first")
    clock.advance(1)
    table.create("second")
    clock.advance(1)
    table.create("third")
    clock.advance(10)
    live = table.create("fresh")
    assert table.sweep() == []
    clock.advance(TTL - 10.5)  # at 1031.5: first (1030) and second (1031) expired, third (1032) not
    assert table.sweep() == ["first", "second"]
    assert len(table) == 2
    clock.advance(1)
    assert table.sweep() == ["third"]
    assert table.sweep() == []
    assert table.claim(live) == "fresh"


def test_sweep_skips_claimed_and_discarded_entries() -> None:
    clock = FakeClock()
    table = make(clock)
    a = table.create("a")
    b = table.create("b")
    table.create("c")
    table.claim(a)
    table.discard(b)
    clock.advance(TTL + 1)
    assert table.sweep() == ["c"]
    assert len(table) == 0


def test_limit_raises_table_full() -> None:
    table = make(FakeClock(), limit=3)
    keys = [table.create(v) for v in "abc"]
    with pytest.raises(TableFullError):
        table.create("d")
    assert len(table) == 3
    # A claim frees a slot.
    table.claim(keys[0])
    table.create("d")
    with pytest.raises(TableFullError):
        table.create("e")


def test_expired_entries_do_not_count_against_the_limit() -> None:
    clock = FakeClock()
    table = make(clock, limit=2)
    table.create("a")
    table.create("b")
    clock.advance(TTL + 1)
    key = table.create("c")  # create sweeps first
    assert len(table) == 1
    assert table.claim(key) == "c"


def test_discard() -> None:
    table = make(FakeClock())
    key = table.create("a")
    table.discard(key)
    assert table.claim(key) is None
    assert len(table) == 0
    table.discard(key)  # idempotent
    table.discard("never-existed")


def test_a_repeated_key_from_the_source_is_never_reused() -> None:
    source = iter(["same", "same", "other"])
    table = RendezvousTable[str](now=FakeClock(), ttl=TTL, limit=10, new_key=lambda: next(source))
    assert table.create("a") == "same"
    assert table.create("b") == "other"
    assert table.claim("same") == "a"
    assert table.claim("other") == "b"


def test_default_keys_are_unique_long_and_urlsafe() -> None:
    table = RendezvousTable[int](now=FakeClock(), ttl=TTL, limit=10_000)
    keys = [table.create(i) for i in range(2000)]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert len(key) >= 32
        assert re.fullmatch(r"[A-Za-z0-9_-]+", key), key
    assert table.claim(keys[1234]) == 1234
