"""The splice registry: the relayed WebSocket streams of this node (one service).

A splice outlives the handler that started it (``hc_endpoints._accept`` returns once
both 101s are sent), so this registry is what holds it: the management API lists
live streams from it, traffic sampling reads its counters, reactions shut those of a
deleted hybrid connection and shutdown waits for (then cuts) the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from aiohttp import web

from hybridrelay.relay.splice import Splice

__all__ = ["SPLICES", "SpliceRegistry"]


class SpliceRegistry:
    """The live splices of this node."""

    def __init__(self) -> None:
        self._splices: set[Splice] = set()

    def add(self, splice: Splice) -> None:
        self._splices.add(splice)

    def discard(self, splice: Splice) -> None:
        self._splices.discard(splice)

    def __contains__(self, splice: object) -> bool:
        return splice in self._splices

    def __iter__(self) -> Iterator[Splice]:
        """A snapshot: splices end (and leave) while callers iterate."""
        return iter(list(self._splices))

    def __len__(self) -> int:
        return len(self._splices)

    def __bool__(self) -> bool:
        return bool(self._splices)


SPLICES: Final = web.AppKey("hybridrelay_splices", SpliceRegistry)
