"""Reconnect delays: exponential with full jitter, capped, reset after a stable period.

Pure and injectable (websockets' ``backoff()`` generator is the model), so the
listener, the forwarder and later the relay's Redis link share one policy and
tests need no clock or randomness patching. :class:`ReconnectBackoff` is the
listener's control-channel policy, whether the listener was started from flags,
from an agent config or from code: one policy, so one promise in the README.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff", "ReconnectBackoff"]


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


@dataclass
class ReconnectBackoff(Backoff):
    """:class:`Backoff` whose ceiling is also bounded by a share of the outage so far.

    The ceiling is ``max(floor, outage_share * outage)``, where the outage started when
    the connection was lost after a stable session (or first failed). The wait after a
    relay comes back is then at most ``floor`` for short outages (a relay restart, a
    deploy) and a fixed share of the outage for long ones, while the attempt rate still
    falls off: one attempt per ``floor / 2`` s on average at first, then ``outage *
    outage_share / 2`` s apart, the 30 s cap after ``cap / outage_share`` s. A flapping
    relay (sessions shorter than ``stable_after``) does not restart the outage clock, so
    it gets backed off the same way. 401/403 (``at_cap``) still wait near the cap.
    """

    floor: float = 1.5
    outage_share: float = 0.3
    clock: Callable[[], float] = time.monotonic
    _outage_since: float | None = None

    def next_delay(self) -> float:
        now = self.clock()
        if self._outage_since is None:
            self._outage_since = now
        bound = max(self.floor, self.outage_share * (now - self._outage_since))
        # Backoff.next_delay's ceiling, with the outage bound applied.
        ceiling = min(self.cap, bound, self.base * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return self.rng.uniform(0, ceiling)

    def failed(self, now: float) -> None:
        stable = self._up_since is not None and now - self._up_since >= self.stable_after
        super().failed(now)
        if stable or self._outage_since is None:
            self._outage_since = now
