"""Prometheus collectors of one relay, in one registry that is passed around (no module globals).

The values are plain numbers kept here and turned into metric families only when
``/metrics`` is scraped. prometheus_client's own metric objects take a lock on every
update and look label children up on every ``labels()`` call; the relay updates its
metrics from its one event loop, per relayed connection and per HTTP request, so a
plain addition is enough (issue 7: no per-connection cost beyond counters). The
exposition is the one prometheus_client's Counter, Gauge and Histogram produce.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Self

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

__all__ = ["Counter", "Gauge", "Histogram", "RelayMetrics"]


class _Family:
    """A metric with optional labels; ``labels(...)`` gives the child for those values."""

    __slots__ = ("_children", "created", "doc", "labelnames", "name", "value")

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.value = 0.0
        self.created = time.time()
        self._children: dict[tuple[str, ...], Self] = {}

    def labels(self, *values: str) -> Self:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[values] = type(self)(self.name, self.doc)
        return child

    def counts(self) -> list[tuple[tuple[str, ...], float]]:
        """Each label combination with its value (the management API's ``/stats``)."""
        return [(values, cell.value) for values, cell in self._cells()]

    def _cells(self) -> Iterable[tuple[tuple[str, ...], Self]]:
        if self.labelnames:
            return self._children.items()
        return (((), self),)


class Counter(_Family):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, cell in self._cells():
            family.add_metric(values, cell.value, created=cell.created)
        return family


class Gauge(_Family):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value

    def collect(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, cell in self._cells():
            family.add_metric(values, cell.value)
        return family


class Histogram:
    """An unlabelled histogram: one count per bucket (cumulated when scraped) and a sum."""

    __slots__ = ("_bounds", "_counts", "created", "doc", "name", "sum")

    def __init__(self, name: str, doc: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.doc = doc
        self._bounds = [float(b) for b in buckets]
        if self._bounds[-1] != math.inf:
            self._bounds.append(math.inf)
        self._counts = [0] * len(self._bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        # Buckets are "less than or equal": the first bound >= amount.
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1

    def collect(self) -> Metric:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(self._bounds, self._counts, strict=True):
            cumulative += count
            # prometheus_client's spelling of the bounds used here ("0.0005", "1.0", "+Inf").
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        family = HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=self.sum)
        family.samples.append(Sample(self.name + "_created", {}, self.created))
        return family


class _Collector(Collector):
    def __init__(self, metrics: Sequence[Counter | Gauge | Histogram]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return [metric.collect() for metric in self._metrics]


@dataclass(eq=False)
class RelayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.listeners = Gauge("hybridrelay_listeners", "Connected listener control channels")
        self.active_connections = Gauge(
            "hybridrelay_active_connections", "Relayed WebSocket connections open now"
        )
        self.connections = Counter(
            "hybridrelay_connections", "Relayed WebSocket connections established"
        )
        self.bytes_relayed = Counter(
            "hybridrelay_bytes_relayed", "Payload bytes relayed", ["direction"]
        )
        self.rendezvous_seconds = Histogram(
            "hybridrelay_rendezvous_seconds",
            "Sender arrival to listener rendezvous handshake",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
        )
        self.http_requests = Counter(
            "hybridrelay_http_requests",
            "HTTP-mode requests answered by listeners, by status",
            ["status"],
        )
        self.http_seconds = Histogram(
            "hybridrelay_http_response_seconds",
            "HTTP-mode request arrival to the listener's response header",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 60),
        )
        self.rejections = Counter(
            "hybridrelay_rejections",
            "Requests the relay refused, by HTTP status",
            ["status", "action"],
        )
        self.limit_refusals = Counter(
            "hybridrelay_limit_refusals",
            "Connections, requests and frames refused or cut by a limit against hostile peers, "
            "by limit (docs/security.md)",
            ["limit"],
        )
        self._up = self.bytes_relayed.labels("sender_to_listener")
        self._down = self.bytes_relayed.labels("listener_to_sender")
        self.registry.register(
            _Collector(
                (
                    self.listeners,
                    self.active_connections,
                    self.connections,
                    self.bytes_relayed,
                    self.rendezvous_seconds,
                    self.http_requests,
                    self.http_seconds,
                    self.rejections,
                    self.limit_refusals,
                )
            )
        )

    def limit_hit(self, limit: str) -> None:
        """Count one refusal by the limit named ``limit`` (a key of docs/security.md's table)."""
        self.limit_refusals.labels(limit).value += 1

    def count_bytes(self, up: int, down: int) -> None:
        self._up.value += up
        self._down.value += down
