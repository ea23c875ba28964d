"""Reconnect delays: exponential with full jitter, capped, reset after a stable period.

Pure and injectable (websockets' ``backoff()`` generator is the model), so the
listener, the forwarder and later the relay's Redis link share one policy and
tests need no clock or randomness patching.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Full-jitter exponential backoff (AWS architecture blog's "full jitter").

    ``next_delay()`` returns a random delay in ``[0, min(cap, base * factor**n)]``;
    ``succeeded(now)`` marks a connection as up, and ``failed(now)`` resets the
    attempt count when the last connection stayed up for ``stable_after`` seconds.
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    stable_after: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0
    _up_since: float | None = None

    def next_delay(self) -> float:
        # Clamp the exponent: factor**attempts overflows a float long before attempts wraps.
        ceiling = min(self.cap, self.base * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return self.rng.uniform(0, ceiling)

    def at_cap(self) -> float:
        """A delay for failures that retrying soon cannot fix (401/403): jitter near the cap."""
        self.attempts += 1
        return self.rng.uniform(self.cap / 2, self.cap)

    def succeeded(self, now: float) -> None:
        self._up_since = now

    def failed(self, now: float) -> None:
        if self._up_since is not None and now - self._up_since >= self.stable_after:
            self.attempts = 0
        self._up_since = None
