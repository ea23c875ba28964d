"""The last 15 minutes of traffic (``GET /$mgmt/v1/stats``, the dashboard's charts).

Every :data:`INTERVAL` seconds the relay samples its running totals (bytes each way,
finished streams' and open ones' together, and streams started) and this keeps the
rate over each interval: :data:`POINTS` of them, the oldest dropped first, so the
buffer's size is fixed whatever the traffic. :class:`TrafficHistory` is the plain ring
buffer; :func:`traffic_ctx` is its sampling task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from hybridrelay.relay.metrics import RelayMetrics
from hybridrelay.relay.splices import SPLICES, SpliceRegistry
from hybridrelay.relay.state import STATE

__all__ = ["INTERVAL", "POINTS", "TRAFFIC", "Point", "Totals", "TrafficHistory", "totals"]

INTERVAL: Final = 5.0  # seconds between samples
POINTS: Final = 180  # 15 minutes of them


@dataclass(frozen=True, slots=True)
class Totals:
    bytes_up: int  # sender -> listener
    bytes_down: int  # listener -> sender
    connections: int


@dataclass(frozen=True, slots=True)
class Point:
    time: float  # the end of the interval (wall clock)
    bytes_up_per_s: float
    bytes_down_per_s: float
    connects_per_s: float

    def to_json(self) -> dict[str, object]:
        return {
            "time": round(self.time, 3),
            "bytesUpPerSecond": round(self.bytes_up_per_s, 1),
            "bytesDownPerSecond": round(self.bytes_down_per_s, 1),
            "connectsPerSecond": round(self.connects_per_s, 3),
        }


class TrafficHistory:
    def __init__(self, points: int = POINTS) -> None:
        self._points: deque[Point] = deque(maxlen=points)
        self._last: tuple[float, Totals] | None = None

    def sample(self, now: float, current: Totals) -> None:
        """Record the totals at ``now``; the first sample only sets the baseline."""
        last = self._last
        self._last = (now, current)
        if last is None:
            return
        then, before = last
        elapsed = now - then
        if elapsed <= 0:
            return
        self._points.append(
            Point(
                time=now,
                # Totals only grow; max() keeps a restart of a counter from going negative.
                bytes_up_per_s=max(0, current.bytes_up - before.bytes_up) / elapsed,
                bytes_down_per_s=max(0, current.bytes_down - before.bytes_down) / elapsed,
                connects_per_s=max(0, current.connections - before.connections) / elapsed,
            )
        )

    def points(self) -> list[Point]:
        return list(self._points)


def totals(m: RelayMetrics, splices: SpliceRegistry) -> Totals:
    """Bytes relayed so far, open streams' included, and streams started."""
    counted = dict(m.bytes_relayed.counts())
    up = int(counted.get(("sender_to_listener",), 0))
    down = int(counted.get(("listener_to_sender",), 0))
    for splice in splices:
        up += splice.sender.bytes_in
        down += splice.listener.bytes_in
    return Totals(bytes_up=up, bytes_down=down, connections=int(m.connections.value))


TRAFFIC: Final = web.AppKey("hybridrelay_traffic", TrafficHistory)


async def traffic_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: sample every INTERVAL seconds while the relay runs."""
    state = app[STATE]
    history = app[TRAFFIC]
    splices = app[SPLICES]

    async def sampler() -> None:
        while True:
            history.sample(state.now(), totals(state.metrics, splices))
            await asyncio.sleep(INTERVAL)

    task = asyncio.create_task(sampler(), name="dashboard:traffic")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
