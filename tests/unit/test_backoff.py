"""Backoff with a seeded rng: full-jitter delays under the cap, reset after a stable period."""

from __future__ import annotations

import random

import pytest

from hybridrelay.backoff import Backoff


def make(
    seed: int = 0,
    *,
    base: float = 0.5,
    factor: float = 2.0,
    cap: float = 30.0,
    stable_after: float = 60.0,
) -> Backoff:
    return Backoff(
        base=base, factor=factor, cap=cap, stable_after=stable_after, rng=random.Random(seed)
    )


@pytest.mark.parametrize("seed", range(5))
def test_delays_stay_within_the_full_jitter_bound(seed: int) -> None:
    b = make(seed, base=0.5, factor=2.0, cap=30.0)
    for n in range(40):
        assert b.attempts == n
        delay = b.next_delay()
        assert 0.0 <= delay <= min(30.0, 0.5 * 2.0**n)


def test_delays_grow_on_average() -> None:
    # Mean of uniform(0, c) is c/2; sample many sequences and compare attempt 0 with attempt 5.
    first, sixth = [], []
    for seed in range(300):
        b = make(seed)
        seq = [b.next_delay() for _ in range(6)]
        first.append(seq[0])
        sixth.append(seq[5])
    assert sum(first) / len(first) < 0.5
    assert 5.0 < sum(sixth) / len(sixth) < 11.0  # ceiling 16


def test_same_seed_same_delays() -> None:
    a, b = make(7), make(7)
    assert [a.next_delay() for _ in range(20)] == [b.next_delay() for _ in range(20)]


def test_never_above_cap() -> None:
    b = make(3, base=1.0, factor=3.0, cap=5.0)
    delays = [b.next_delay() for _ in range(200)]
    assert all(0.0 <= d <= 5.0 for d in delays)
    assert max(delays) > 4.0  # the cap is actually reached once the ceiling saturates


def test_never_above_cap_after_very_many_attempts() -> None:
    # A listener "never gives up on its own": after hours of failures the attempt
    # count passes 1024, where factor**attempts no longer fits in a float.
    b = make(11)
    for _ in range(1100):
        assert 0.0 <= b.next_delay() <= b.cap


def test_huge_attempt_count_still_gives_a_capped_delay() -> None:
    b = make(12, base=0.5, factor=2.0, cap=30.0)
    b.attempts = 5000
    assert 0.0 <= b.next_delay() <= 30.0


@pytest.mark.parametrize("seed", range(5))
def test_at_cap_is_in_the_upper_half(seed: int) -> None:
    b = make(seed, cap=30.0)
    for n in range(50):
        delay = b.at_cap()
        assert 15.0 <= delay <= 30.0
        assert b.attempts == n + 1


def test_at_cap_spreads_out() -> None:
    b = make(2, cap=10.0)
    delays = [b.at_cap() for _ in range(200)]
    assert min(delays) < 6.0
    assert max(delays) > 9.0


def test_failure_after_a_stable_period_resets_attempts() -> None:
    b = make(1, base=1.0, factor=2.0, cap=1000.0, stable_after=60.0)
    for _ in range(6):
        b.next_delay()
    assert b.attempts == 6
    b.succeeded(100.0)
    b.failed(160.0)  # exactly stable_after later
    assert b.attempts == 0
    assert b.next_delay() <= 1.0  # back to the base ceiling


def test_failure_before_the_stable_period_keeps_attempts() -> None:
    b = make(1, stable_after=60.0)
    for _ in range(6):
        b.next_delay()
    b.succeeded(100.0)
    b.failed(159.999)
    assert b.attempts == 6


def test_failure_without_a_success_keeps_attempts() -> None:
    b = make(1, stable_after=60.0)
    for _ in range(3):
        b.next_delay()
    b.failed(1_000_000.0)
    assert b.attempts == 3


def test_a_success_counts_only_for_the_next_failure() -> None:
    b = make(1, stable_after=60.0)
    for _ in range(4):
        b.next_delay()
    b.succeeded(0.0)
    b.failed(10.0)  # short-lived connection: no reset, and the success is used up
    assert b.attempts == 4
    b.failed(500.0)
    assert b.attempts == 4


def test_the_latest_success_is_what_counts() -> None:
    b = make(1, stable_after=60.0)
    for _ in range(4):
        b.next_delay()
    b.succeeded(0.0)
    b.succeeded(50.0)
    b.failed(100.0)  # up since 50: only 50 s
    assert b.attempts == 4


def test_defaults() -> None:
    b = Backoff()
    assert (b.base, b.factor, b.cap, b.stable_after, b.attempts) == (0.5, 2.0, 30.0, 60.0, 0)
    assert 0.0 <= b.next_delay() <= 0.5


def test_reconnect_policy_waits_at_most_the_floor_in_a_short_outage() -> None:
    # The listener's policy whatever started it (flags, agent config, code): a relay
    # restart of a few seconds is followed by a wait of at most 1.5 s.
    from hybridrelay.backoff import ReconnectBackoff

    now = [0.0]

    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    b = ReconnectBackoff(rng=Top(), clock=lambda: now[0])
    b.succeeded(0.0)
    now[0] = 100.0
    b.failed(100.0)
    delays = []
    while now[0] < 110.0:  # a relay down for 10 s
        delay = b.next_delay()
        delays.append(delay)
        now[0] += delay
    assert max(delays) <= 0.3 * 10.0
    assert all(d <= 1.5 for d in delays[:4])
