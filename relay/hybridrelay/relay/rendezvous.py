"""Pending rendezvous, sans-I/O: unguessable single-use keys that expire (HC §2.4).

The accept address handed to a listener carries no token; the address itself
is the credential. So each key is 192 random bits, a claim removes it (single
use), and it stops working after ``ttl`` seconds even if nobody swept the
table. The clock and the key source are injected for tests.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["RendezvousTable", "TableFullError"]

T = TypeVar("T")


class TableFullError(Exception):
    """Too many rendezvous are pending at once."""


_KEY_BYTES = 24
_KEYS_PER_READ = 128


class _KeySource:
    """``secrets.token_urlsafe(24)``, with the random bytes fetched 128 keys at a time.

    One getrandom() system call per 128 rendezvous instead of one per rendezvous; the
    bytes come from the same CSPRNG and each is used once.
    """

    __slots__ = ("_pool",)

    def __init__(self) -> None:
        self._pool: list[bytes] = []

    def reset(self) -> None:
        self._pool = []

    def __call__(self) -> str:
        if not self._pool:
            raw = secrets.token_bytes(_KEY_BYTES * _KEYS_PER_READ)
            self._pool = [raw[i : i + _KEY_BYTES] for i in range(0, len(raw), _KEY_BYTES)]
        return base64.urlsafe_b64encode(self._pool.pop()).decode("ascii")


_new_key = _KeySource()
# A forked child must not hand out the keys its parent will hand out too.
os.register_at_fork(after_in_child=_new_key.reset)


class RendezvousTable(Generic[T]):
    """Maps rendezvous keys to what waits on them (a pending sender or HTTP request)."""

    def __init__(
        self,
        *,
        now: Callable[[], float],
        ttl: float,
        limit: int,
        new_key: Callable[[], str] = _new_key,
    ) -> None:
        self._now = now
        self._ttl = ttl
        self._limit = limit
        self._new_key = new_key
        # Insertion order is expiry order for entries of the default ttl; longer-lived ones
        # (HTTP requests) are discarded by their owners and only delay the sweep.
        self._entries: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def create(self, value: T, *, ttl: float | None = None) -> str:
        """Register ``value`` for ``ttl`` seconds (default: the table's); returns its key.

        Raises TableFullError at the limit.
        """
        self.sweep()
        if len(self._entries) >= self._limit:
            raise TableFullError("too many pending rendezvous")
        key = self._new_key()
        while key in self._entries:  # pragma: no cover - 192 random bits
            key = self._new_key()
        self._entries[key] = (self._now() + (self._ttl if ttl is None else ttl), value)
        return key

    def get(self, key: str) -> T | None:
        """The value for ``key`` without taking it; None when unknown or expired."""
        entry = self._entries.get(key)
        if entry is None or entry[0] < self._now():
            return None
        return entry[1]

    def claim(self, key: str) -> T | None:
        """Take the value for ``key`` once; None when unknown, used or expired."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        deadline, value = entry
        if deadline < self._now():
            return None
        return value

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def sweep(self) -> list[T]:
        """Drop expired entries and return their values."""
        now = self._now()
        expired: list[T] = []
        while self._entries:
            key, (deadline, value) = next(iter(self._entries.items()))
            if deadline >= now:
                break
            del self._entries[key]
            expired.append(value)
        return expired
