"""Last-known answers of the Redis store, served only while Redis cannot be reached.

Normally every lookup is a round trip (a change on one node is visible on all at
once). When Redis is down, a node should still admit senders whose listener is
connected to it (issue 6), so the answers read last are kept, bounded, and handed
out instead of failing; every successful read replaces them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

from hybridrelay.errors import UnavailableError
from hybridrelay.logs import RELAY

__all__ = ["LastKnown"]

log = logging.getLogger(RELAY)
T = TypeVar("T")
_DEFAULT_LIMIT: Final = 10_000


class LastKnown(Generic[T]):
    """A bounded LRU of the last successful answer per key."""

    def __init__(self, name: str, *, limit: int = _DEFAULT_LIMIT) -> None:
        self._name = name
        self._limit = limit
        self._answers: OrderedDict[str, T] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    async def read(self, key: str, fetch: Callable[[], Awaitable[T]]) -> T:
        """``fetch()``, remembered under ``key``; the remembered answer if Redis is down.

        Raises:
            UnavailableError: Redis is down and nothing is remembered for ``key``.
        """
        try:
            answer = await fetch()
        except UnavailableError:
            if key not in self._answers:
                raise
            log.info("store_served_last_known", extra={"what": self._name})
            self._answers.move_to_end(key)
            return self._answers[key]
        self._answers[key] = answer
        self._answers.move_to_end(key)
        if len(self._answers) > self._limit:
            self._answers.popitem(last=False)
        return answer

    def forget(self, key: str) -> None:
        self._answers.pop(key, None)

    def clear(self) -> None:
        self._answers.clear()
