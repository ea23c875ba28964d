"""Which source addresses the relay refuses most (the dashboard's "top refused sources").

A bounded count per address (the Space-Saving algorithm): at most :data:`CAPACITY`
addresses are kept; a new address beyond that takes the place of the least counted one
and inherits its count plus one, so a heavy hitter is never lost and memory stays fixed
however many addresses a spray comes from. Counts of the lightest entries may be high by
what they inherited (``error`` says by how much at most).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web

__all__ = ["CAPACITY", "REFUSED_SOURCES", "SourceCount", "TopSources"]

CAPACITY: Final = 1000


@dataclass(frozen=True, slots=True)
class SourceCount:
    address: str
    count: int
    error: int  # the count may be this much too high (inherited from an evicted address)


class TopSources:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._counts: dict[str, tuple[int, int]] = {}  # address -> (count, error)

    def add(self, address: str) -> None:
        entry = self._counts.get(address)
        if entry is not None:
            self._counts[address] = (entry[0] + 1, entry[1])
        elif len(self._counts) < self._capacity:
            self._counts[address] = (1, 0)
        else:
            # O(capacity), only for an address not yet kept once the table is full.
            victim = min(self._counts, key=lambda a: self._counts[a][0])
            floor = self._counts.pop(victim)[0]
            self._counts[address] = (floor + 1, floor)

    def top(self, n: int = 10) -> list[SourceCount]:
        ranked = sorted(self._counts.items(), key=lambda item: (-item[1][0], item[0]))
        return [SourceCount(address, count, error) for address, (count, error) in ranked[:n]]


REFUSED_SOURCES: Final = web.AppKey("hybridrelay_refused_sources", TopSources)
