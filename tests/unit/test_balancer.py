"""choose_listener: fewest active wins, seeded random tie-break, id filters (HC §2.3, §9)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from hybridrelay.relay.balancer import ListenerLoad, choose_listener, parse_listener_filter


def loads(*pairs: tuple[str, int]) -> list[ListenerLoad]:
    return [ListenerLoad(listener_id=lid, active=n) for lid, n in pairs]


def test_empty_is_none() -> None:
    assert choose_listener([], rng=random.Random(0)) is None


def test_single_candidate() -> None:
    only = loads(("a", 7))
    assert choose_listener(only, rng=random.Random(0)) == only[0]


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_fewest_active_wins(order: int) -> None:
    candidates = loads(("a", 3), ("b", 1), ("c", 2), ("d", 5))
    rotated = candidates[order:] + candidates[:order]
    for seed in range(20):
        chosen = choose_listener(rotated, rng=random.Random(seed))
        assert chosen is not None
        assert chosen.listener_id == "b"


def test_zero_active_beats_everything() -> None:
    chosen = choose_listener(loads(("a", 1), ("b", 0)), rng=random.Random(0))
    assert chosen is not None
    assert chosen.listener_id == "b"


def test_tie_is_deterministic_for_a_seed() -> None:
    candidates = loads(("a", 1), ("b", 1), ("c", 1), ("busy", 9))
    first = [choose_listener(candidates, rng=random.Random(42)) for _ in range(5)]
    assert len(set(first)) == 1
    rng1, rng2 = random.Random(7), random.Random(7)
    seq1 = [choose_listener(candidates, rng=rng1) for _ in range(50)]
    seq2 = [choose_listener(candidates, rng=rng2) for _ in range(50)]
    assert seq1 == seq2


def test_tie_break_uses_the_injected_rng_and_reaches_every_tied_candidate() -> None:
    candidates = loads(("a", 2), ("b", 2), ("busy", 3))
    rng = random.Random(1234)
    picks: Counter[str] = Counter()
    for _ in range(400):
        chosen = choose_listener(candidates, rng=rng)
        assert chosen is not None
        picks[chosen.listener_id] += 1
    assert set(picks) == {"a", "b"}
    assert min(picks.values()) > 100  # roughly fair, never starved


def test_no_tie_does_not_consume_randomness() -> None:
    rng = random.Random(5)
    state = rng.getstate()
    choose_listener(loads(("a", 1), ("b", 2)), rng=rng)
    assert rng.getstate() == state


def test_allowed_filter_is_case_insensitive() -> None:
    candidates = loads(("Alpha", 0), ("BETA", 5), ("gamma", 1))
    allowed = parse_listener_filter("beta, GAMMA")
    chosen = choose_listener(candidates, rng=random.Random(0), allowed=allowed)
    assert chosen is not None
    assert chosen.listener_id == "gamma"


def test_disallowed_filter_is_case_insensitive() -> None:
    candidates = loads(("Alpha", 0), ("BETA", 5), ("gamma", 1))
    disallowed = parse_listener_filter("ALPHA,Gamma")
    chosen = choose_listener(candidates, rng=random.Random(0), disallowed=disallowed)
    assert chosen is not None
    assert chosen.listener_id == "BETA"


def test_allowed_and_disallowed_together() -> None:
    candidates = loads(("a", 0), ("b", 1), ("c", 2))
    chosen = choose_listener(
        candidates,
        rng=random.Random(0),
        allowed=parse_listener_filter("a,b,c"),
        disallowed=parse_listener_filter("a"),
    )
    assert chosen is not None
    assert chosen.listener_id == "b"


def test_filters_that_exclude_everyone_give_none() -> None:
    candidates = loads(("a", 0), ("b", 1))
    rng = random.Random(0)
    assert choose_listener(candidates, rng=rng, allowed=parse_listener_filter("zzz")) is None
    assert choose_listener(candidates, rng=rng, disallowed=parse_listener_filter("A,B")) is None
    assert choose_listener(candidates, rng=rng, allowed=frozenset()) is None


def test_tie_among_the_allowed_only() -> None:
    candidates = loads(("a", 1), ("b", 1), ("c", 1))
    rng = random.Random(99)
    allowed = parse_listener_filter("a,c")
    seen = set()
    for _ in range(200):
        chosen = choose_listener(candidates, rng=rng, allowed=allowed)
        assert chosen is not None
        seen.add(chosen.listener_id)
    assert seen == {"a", "c"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", frozenset()),
        ("   ", frozenset()),
        (",,", frozenset()),
        ("abc", frozenset({"abc"})),
        (" A , b,,C ", frozenset({"a", "b", "c"})),
        (
            "6F9619FF-8B86-D011-B42D-00C04FC964FF,6f9619ff-8b86-d011-b42d-00c04fc964ff",
            frozenset({"6f9619ff-8b86-d011-b42d-00c04fc964ff"}),
        ),
    ],
)
def test_parse_listener_filter(value: str | None, expected: frozenset[str] | None) -> None:
    assert parse_listener_filter(value) == expected
