"""Last-known answers of the Redis store, served only while Redis cannot be reached.

Normally every lookup is a round trip (a change on one node is visible on all at
once). When Redis is down, a node should still admit senders whose listener is
connected to it (issue 6), so the answers read last are kept, bounded, and handed
out instead of failing; every successful read replaces them. After a failure the
store stops asking Redis for ``retry_after`` seconds (a :class:`Breaker` shared by its
caches), so a Redis that hangs costs senders its timeout once, not on every request.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

from hybridrelay.errors import UnavailableError
from hybridrelay.logs import RELAY

__all__ = ["Breaker", "LastKnown"]

log = logging.getLogger(RELAY)
T = TypeVar("T")
_DEFAULT_LIMIT: Final = 10_000


class Breaker:
    """Remembers that Redis failed a moment ago, so callers skip it for a while."""

    def __init__(self, *, retry_after: float = 1.0, now: Callable[[], float] = time.monotonic):
        self._retry_after = retry_after
        self._now = now
        self._open_until = 0.0
        self.reason = ""

    def is_open(self) -> bool:
        return self._now() < self._open_until

    def reset(self) -> None:
        """Redis answers again: ask it from now on."""
        self._open_until = 0.0

    def trip(self, error: UnavailableError) -> None:
        self._open_until = self._now() + self._retry_after
        self.reason = str(error)


class LastKnown(Generic[T]):
    """A bounded LRU of the last successful answer per key."""

    def __init__(
        self, name: str, *, limit: int = _DEFAULT_LIMIT, breaker: Breaker | None = None
    ) -> None:
        self._name = name
        self._limit = limit
        self._breaker = breaker or Breaker()
        self._answers: OrderedDict[str, T] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    async def read(self, key: str, fetch: Callable[[], Awaitable[T]]) -> T:
        """``fetch()``, remembered under ``key``; the remembered answer if Redis is down.

        Raises:
            UnavailableError: Redis is down and nothing is remembered for ``key``.
        """
        if self._breaker.is_open():
            return self._fallback(key, UnavailableError(self._breaker.reason))
        try:
            answer = await fetch()
        except UnavailableError as exc:
            self._breaker.trip(exc)
            return self._fallback(key, exc)
        self._answers[key] = answer
        self._answers.move_to_end(key)
        if len(self._answers) > self._limit:
            self._answers.popitem(last=False)
        return answer

    def _fallback(self, key: str, error: UnavailableError) -> T:
        if key not in self._answers:
            raise error
        log.info("store_served_last_known", extra={"what": self._name})
        self._answers.move_to_end(key)
        return self._answers[key]

    def forget(self, key: str) -> None:
        self._answers.pop(key, None)

    def clear(self) -> None:
        self._answers.clear()
