"""Deadlines that share one loop timer: the per-request limits of HTTP mode.

Every HTTP-mode request arms a limit and disarms it again, almost always long before it
expires: the listener's ``request_timeout`` around its handler, a target's read timeout
around each wait for the target, the relay's ``request_timeout`` around the wait for the
listener's answer. ``loop.call_at()`` costs a timer handle and a libuv timer each time
(about 2.5 µs with uvloop; ``asyncio.timeout()`` 6 µs in all), a visible share of a
small request's CPU.

Deadlines set with the same delay come due in the order they were set (the loop clock
is monotonic), so each delay gets a FIFO and one loop timer, armed for the earliest head,
serves them all: arming is an append, disarming clears a field, and the timer fires
about once per delay while requests come and go. An expired deadline's callback runs
from that timer, as a ``call_at`` callback would, at most one clock tick late.

Disarmed deadlines leave their FIFO from the head, or, should one long request hold
the head, in a sweep once they outnumber the armed ones: memory stays proportional to
what is armed.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Final

__all__ = ["Deadline", "Deadlines"]

# Disarmed deadlines tolerated behind a held head before a sweep (then: more than armed).
_SWEEP_SLACK: Final = 64


class Deadline:
    """One armed limit; ``expired`` once its callback has run."""

    __slots__ = ("_arg", "_callback", "_fifo", "expired", "when")

    def __init__(
        self,
        when: float,
        callback: Callable[[Any], object],
        arg: object,
        fifo: collections.deque[Deadline],
    ) -> None:
        self.when = when  # loop time
        self._callback: Callable[[Any], object] | None = callback  # None: disarmed or run
        self._arg = arg
        self._fifo = fifo  # the FIFO of its delay, which it leaves from the head
        self.expired = False


class Deadlines:
    """Deadlines on the running loop; one timer for all (see the module docstring).

    Bound to the loop of the first :meth:`arm`; a later arm on another loop (tests, a
    restarted service) starts afresh there, and what was armed on the old one is dropped.
    """

    __slots__ = ("_armed", "_fifos", "_loop", "_queued", "_timer", "_timer_when")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fifos: dict[float, collections.deque[Deadline]] = {}
        self._armed = 0  # armed deadlines
        self._queued = 0  # deadlines in the FIFOs, armed or not
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    def __len__(self) -> int:
        """The deadlines armed."""
        return self._armed

    def arm(self, delay: float, callback: Callable[[Any], object], arg: object) -> Deadline:
        """Call ``callback(arg)`` ``delay`` seconds from now, unless disarmed first."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._rebind(loop)
        fifo = self._fifos.get(delay)
        if fifo is None:
            fifo = self._fifos[delay] = collections.deque()
        deadline = Deadline(loop.time() + delay, callback, arg, fifo)
        fifo.append(deadline)
        self._armed += 1
        self._queued += 1
        if self._timer is None or deadline.when < self._timer_when:
            self._set_timer(deadline.when)
        return deadline

    def disarm(self, deadline: Deadline) -> None:
        """Forget ``deadline`` (a no-op once it expired or was disarmed)."""
        if deadline._callback is None:
            return
        deadline._callback = deadline._arg = None
        self._armed -= 1
        # Requests mostly end in the order they came: the head is usually this one.
        fifo = deadline._fifo
        while fifo and fifo[0]._callback is None:
            fifo.popleft()
            self._queued -= 1
        if self._queued > 2 * self._armed + _SWEEP_SLACK:
            self._sweep()

    def _sweep(self) -> None:
        """Drop the disarmed deadlines held up behind a long-armed head."""
        queued = 0
        for fifo in self._fifos.values():
            armed = [d for d in fifo if d._callback is not None]
            fifo.clear()  # in place: armed deadlines keep their FIFO
            fifo.extend(armed)
            queued += len(armed)
        self._queued = queued

    def _rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for fifo in self._fifos.values():
            for deadline in fifo:  # dropped: disarming one later must not uncount a new one
                deadline._callback = deadline._arg = None
        self._loop = loop
        self._fifos = {}
        self._armed = self._queued = 0
        self._timer = None

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None  # noqa: S101 - bound by arm()
        self._timer = self._loop.call_at(when, self._expire)
        self._timer_when = when

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None  # noqa: S101 - the timer was set on it
        # What a call_at() for the same time would run now: the loop clock has 1 ms ticks.
        now = loop.time() + 0.001
        due: list[Deadline] = []
        earliest: float | None = None
        for delay, fifo in list(self._fifos.items()):
            while fifo and (fifo[0]._callback is None or fifo[0].when <= now):
                deadline = fifo.popleft()
                self._queued -= 1
                if deadline._callback is not None:
                    due.append(deadline)
            if not fifo:
                del self._fifos[delay]
            elif earliest is None or fifo[0].when < earliest:
                earliest = fifo[0].when
        if earliest is not None:
            self._set_timer(earliest)
        for deadline in due:
            callback, arg = deadline._callback, deadline._arg
            if callback is None:
                continue  # disarmed by a callback that ran just before
            deadline._callback = deadline._arg = None
            deadline.expired = True
            self._armed -= 1
            callback(arg)
