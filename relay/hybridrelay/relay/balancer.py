"""Listener choice, pure: fewest active streams, random tie-break (HC §9).

Also honours the optional routing headers ``Microsoft-Relay-AllowedListeners``
and ``-DisallowedListeners`` (comma-separated listener ids, HC §2.3).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["ListenerLoad", "choose_listener", "parse_listener_filter"]


@dataclass(frozen=True, slots=True)
class ListenerLoad:
    listener_id: str
    active: int


def parse_listener_filter(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset(part.strip().lower() for part in value.split(",") if part.strip())


def choose_listener(
    candidates: Sequence[ListenerLoad],
    *,
    rng: random.Random,
    allowed: Collection[str] | None = None,
    disallowed: Collection[str] | None = None,
) -> ListenerLoad | None:
    """Return the least-loaded eligible listener, ties broken at random, or None."""
    best: list[ListenerLoad] = []
    low = -1
    for c in candidates:
        lid = c.listener_id.lower()
        if allowed is not None and lid not in allowed:
            continue
        if disallowed is not None and lid in disallowed:
            continue
        if not best or c.active < low:
            best = [c]
            low = c.active
        elif c.active == low:
            best.append(c)
    if not best:
        return None
    return best[0] if len(best) == 1 else rng.choice(best)
