"""Deadlines sharing one loop timer (hybridrelay.deadlines): what fires, in what order."""

from __future__ import annotations

import asyncio

from hybridrelay.deadlines import Deadline, Deadlines


def _fired(fut: asyncio.Future[str]) -> None:
    pass


async def test_an_armed_deadline_calls_back_with_its_argument() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()
    deadline = deadlines.arm(0.01, done.set_result, "late")
    before = deadline.expired
    assert await done == "late"
    assert (before, deadline.expired) == (False, True)
    assert len(deadlines) == 0
    deadlines.disarm(deadline)  # after expiry: a no-op
    assert len(deadlines) == 0


async def test_a_disarmed_deadline_never_fires() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    calls: list[str] = []
    first = deadlines.arm(0.01, calls.append, "first")
    done: asyncio.Future[None] = loop.create_future()
    # Due after the first one: once it ran, the first would have run before it.
    deadlines.arm(0.03, lambda _: done.set_result(None), None)
    deadlines.disarm(first)
    deadlines.disarm(first)  # twice: still one disarm
    assert len(deadlines) == 1
    await done
    assert calls == []
    assert not first.expired


async def test_a_shorter_delay_armed_later_fires_first() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    order: list[str] = []
    done: asyncio.Future[None] = loop.create_future()

    def record(name: str) -> None:
        order.append(name)
        if len(order) == 3:
            done.set_result(None)

    deadlines.arm(0.05, record, "long")
    deadlines.arm(0.01, record, "short")
    deadlines.arm(0.05, record, "long again")
    await done
    assert order == ["short", "long", "long again"]


async def test_disarmed_deadlines_behind_a_held_head_are_swept() -> None:
    deadlines = Deadlines()
    held = deadlines.arm(60.0, _fired, None)  # a long request at the head of the FIFO
    for _ in range(1000):
        deadlines.disarm(deadlines.arm(60.0, _fired, None))
    assert len(deadlines) == 1
    assert deadlines._queued <= 2 * 1 + 64  # memory follows what is armed
    deadlines.disarm(held)
    assert len(deadlines) == 0
    assert deadlines._queued == 0


async def test_a_callback_may_disarm_a_deadline_due_with_it() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    calls: list[str] = []
    done: asyncio.Future[None] = loop.create_future()
    later: list[Deadline] = []

    def first(_: object) -> None:
        calls.append("first")
        deadlines.disarm(later[0])

    # Same delay, set one after the other: due in the same timer callback (well within
    # its clock tick of each other), the first first.
    deadlines.arm(0.01, first, None)
    second = deadlines.arm(0.01, calls.append, "second")
    later.append(second)
    deadlines.arm(0.05, lambda _: done.set_result(None), None)
    await done
    assert calls == ["first"]
    assert not second.expired


def test_a_new_loop_starts_afresh() -> None:
    deadlines = Deadlines()

    async def once(value: str) -> str:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        deadlines.arm(0.01, done.set_result, value)
        deadlines.arm(60.0, _fired, None)  # left armed when this loop ends
        return await done

    assert asyncio.run(once("a")) == "a"
    assert asyncio.run(once("b")) == "b"
    assert len(deadlines) == 1  # the second loop's, not the first's


def test_a_deadline_dropped_with_its_loop_is_not_disarmed_on_the_next() -> None:
    """Disarming a deadline of an ended loop must not uncount one armed on the new loop
    (the count would go negative: len() raising, a sweep on every disarm)."""
    deadlines = Deadlines()

    async def arm_on_old_loop() -> Deadline:
        return deadlines.arm(60.0, _fired, None)

    old = asyncio.run(arm_on_old_loop())

    async def on_new_loop() -> int:
        new = deadlines.arm(60.0, _fired, None)
        deadlines.disarm(old)  # dropped with its loop: a no-op
        armed = len(deadlines)
        deadlines.disarm(new)
        return armed

    assert asyncio.run(on_new_loop()) == 1
    assert len(deadlines) == 0
