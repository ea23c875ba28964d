"""Outage reports: the first failure of a streak, a summary while it lasts, one on recovery.

A listener retrying a relay that is down, or a forwarder whose local clients keep
arriving, fails many times in a row for one cause. One warning per attempt (26 in a
10 s outage) buries everything else; one line when it starts, a reminder every
``every`` seconds, and one when it ends ("relay unreachable for 10.2 s, 26 attempts")
say the same. Sans-I/O: the caller passes the clock and logs what it is told.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Outage", "OutageReport"]


@dataclass(frozen=True, slots=True)
class Outage:
    """A streak of failures: how long it lasted (so far) and how many attempts failed."""

    seconds: float
    attempts: int


@dataclass
class OutageReport:
    every: float = 60.0
    _since: float | None = None
    _attempts: int = 0
    _reported: float = 0.0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, now: float) -> tuple[Literal["first", "summary", "quiet"], Outage]:
        """One more failure: ``first`` (log it), ``summary`` (log a reminder) or ``quiet``."""
        if self._since is None:
            self._since = self._reported = now
            self._attempts = 1
            return "first", Outage(0.0, 1)
        self._attempts += 1
        outage = Outage(now - self._since, self._attempts)
        if now - self._reported >= self.every:
            self._reported = now
            return "summary", outage
        return "quiet", outage

    def succeeded(self, now: float) -> Outage | None:
        """The streak that just ended (to log), or None when there was none."""
        if self._since is None:
            return None
        outage = Outage(now - self._since, self._attempts)
        self._since = None
        self._attempts = 0
        return outage
