"""The agent's reconnect policy: core full-jitter backoff bounded by a share of the outage."""

from __future__ import annotations

import random

import pytest

from hybridrelay.listener.supervisor import AgentBackoff


class _Ceiling(random.Random):
    """Always the top of the jitter range, so tests see the ceiling itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _backoff(clock: _Clock) -> AgentBackoff:
    return AgentBackoff(rng=_Ceiling(), clock=clock)


def test_short_outage_waits_at_most_the_floor() -> None:
    clock = _Clock()
    b = _backoff(clock)
    b.succeeded(0.0)
    clock.now = 10.0
    b.failed(10.0)
    delays = []
    while clock.now < 15.0:  # a relay down for 5 s
        delay = b.next_delay()
        delays.append(delay)
        clock.now += delay
    # Waits grow to the floor and stay under it while the outage is short.
    assert delays == pytest.approx([0.5, 1.0, 1.5, 1.5, 1.5])


def test_long_outage_reaches_the_cap_and_not_beyond() -> None:
    clock = _Clock()
    b = _backoff(clock)
    for _ in range(10):  # failures at 0 start the outage; the exponent grows
        b.next_delay()
    clock.now = 20.0
    assert b.next_delay() == 0.3 * 20.0
    clock.now = 500.0
    assert b.next_delay() == 30.0
    assert b.at_cap() >= 15.0


def test_flapping_keeps_the_outage_clock() -> None:
    clock = _Clock()
    b = _backoff(clock)
    b.next_delay()  # outage starts at 0
    for _ in range(20):  # up for 1 s, down again: not stable, the outage goes on
        clock.now += 1.0
        b.succeeded(clock.now)
        clock.now += 1.0
        b.failed(clock.now)
        b.next_delay()
    clock.now += 1.0
    assert b.next_delay() == min(30.0, 0.3 * clock.now)


def test_stable_session_restarts_outage_and_attempts() -> None:
    clock = _Clock()
    b = _backoff(clock)
    for _ in range(10):
        b.next_delay()
    clock.now = 1000.0
    b.succeeded(1000.0)
    clock.now = 1100.0
    b.failed(1100.0)
    assert b.attempts == 0
    assert b.next_delay() == 0.5


def test_session_bookkeeping() -> None:
    events: list[bool] = []
    b = AgentBackoff(rng=_Ceiling())
    b.notify = lambda: events.append(b.up)
    b.next_delay()  # a failed attempt
    b.succeeded(1.0)
    b.failed(2.0)
    b.next_delay()  # the wait after a session is not an attempt
    assert b.ended == 2
    assert events == [False, True, False, False]
