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
import functools
import math
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Final, Self

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

__all__ = [
    "HC_OTHER",
    "LIMIT_HC_LABELS",
    "Counter",
    "Gauge",
    "HcStats",
    "Histogram",
    "RelayMetrics",
    "build_version",
]

# The hc label value shared by the hybrid connections beyond the cap.
HC_OTHER: Final = "_other"
# The [relay] key that caps the hc label values (docs/security.md's limits table).
LIMIT_HC_LABELS: Final = "max_metrics_hc_labels"
DEFAULT_MAX_HC_LABELS: Final = 100
# Statuses the relay answers refusals with keep their own status label per hybrid
# connection; any other (a listener may reject with any 4xx or 5xx) counts as "4xx" or
# "5xx", so a listener cannot multiply its entity's series.
_HC_STATUS_LABELS: Final = {
    code: str(code)
    for code in (400, 401, 403, 404, 405, 408, 409, 412, 413, 429, 431, 500, 502, 503, 504)
}


@functools.cache  # reading the package metadata takes milliseconds
def build_version() -> str:
    """The installed hybridrelay's version ("unknown" when run from a bare source tree)."""
    try:
        return version("hybridrelay")
    except PackageNotFoundError:
        return "unknown"


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

    def remove(self, *values: str) -> None:
        """Drop the child for these label values (its sample disappears from the exposition)."""
        self._children.pop(values, None)

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


class HcStats:
    """One hybrid connection's numbers (or those of every entity beyond the cap)."""

    __slots__ = (
        "active_connections",
        "bytes_down",
        "bytes_up",
        "connections",
        "http_requests",
        "listener_connects",
        "listener_rejections",
        "listeners",
        "rejections",
    )

    def __init__(self) -> None:
        self.listeners = 0
        self.listener_connects = 0  # control channels opened (Azure's ListenerConnections)
        self.active_connections = 0
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.http_requests = 0
        self.rejections: dict[str, int] = {}  # by HTTP status
        self.listener_rejections: dict[str, int] = {}  # of those, listen requests


class _Collector(Collector):
    def __init__(self, metrics: RelayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.collect()


@dataclass(eq=False)
class RelayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # Hybrid connections with their own hc label; further ones share HC_OTHER's.
    max_hc_labels: int = DEFAULT_MAX_HC_LABELS

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
        self.build_info = Gauge(
            "hybridrelay_build_info",
            "The running relay's version and Python (value 1)",
            ["version", "python"],
        )
        self.build_info.labels(build_version(), platform.python_version()).set(1)
        self.tls_certificate_expiry = Gauge(
            "hybridrelay_tls_certificate_expiry_seconds",
            "Earliest notAfter (unix time) of the certificates in each loaded TLS file, "
            "by its [relay] key",
            ["certificate"],
        )
        self.tls_reloads = Counter(
            "hybridrelay_tls_reloads",
            "Reloads of the TLS certificate, key and client CA files, by result (ok, failed)",
            ["result"],
        )
        self._up = self.bytes_relayed.labels("sender_to_listener")
        self._down = self.bytes_relayed.labels("listener_to_sender")
        self._metrics: tuple[Counter | Gauge | Histogram, ...] = (
            self.build_info,
            self.listeners,
            self.active_connections,
            self.connections,
            self.bytes_relayed,
            self.rendezvous_seconds,
            self.http_requests,
            self.http_seconds,
            self.rejections,
            self.limit_refusals,
            self.tls_certificate_expiry,
            self.tls_reloads,
        )
        self._hcs: dict[str, HcStats] = {}
        self._hc_other: HcStats | None = None
        # Whether the shared cluster state (Redis) answers, asked at scrape time; the
        # application sets it (always true for a single node).
        self.cluster_available: Callable[[], bool] | None = None
        self.registry.register(_Collector(self))
        # process_resident_memory_bytes, process_open_fds, ... (read from /proc per scrape).
        ProcessCollector(registry=self.registry)

    def limit_hit(self, limit: str) -> None:
        """Count one refusal by the limit named ``limit`` (a key of docs/security.md's table)."""
        self.limit_refusals.labels(limit).value += 1

    # -- per hybrid connection --------------------------------------------------------

    def hc(self, name: str) -> HcStats:
        """The numbers of the hybrid connection ``name`` (an existing entity's name)."""
        stats = self._hcs.get(name)
        if stats is None:
            stats = self._new_hc(name)
        return stats

    def hc_numbers(self, name: str) -> HcStats | None:
        """The numbers kept for the entity ``name``, without giving it a label (None: none)."""
        return self._hcs.get(name)

    def _new_hc(self, name: str) -> HcStats:
        if len(self._hcs) < self.max_hc_labels:
            stats = self._hcs[name] = HcStats()
            return stats
        self.limit_hit(LIMIT_HC_LABELS)
        if self._hc_other is None:
            self._hc_other = HcStats()
        return self._hc_other

    def stream_started(self, hc_name: str) -> HcStats:
        """A relayed WebSocket connection opened; hand the result to :meth:`stream_finished`."""
        self.connections.value += 1
        self.active_connections.value += 1
        stats = self._hcs.get(hc_name) or self._new_hc(hc_name)
        stats.connections += 1
        stats.active_connections += 1
        return stats

    def stream_finished(self, stats: HcStats, up: int, down: int) -> None:
        self.active_connections.value -= 1
        self._up.value += up
        self._down.value += down
        stats.active_connections -= 1
        stats.bytes_up += up
        stats.bytes_down += down

    def listener_connected(self, hc_name: str) -> HcStats:
        """A control channel opened; hand the result to :meth:`listener_disconnected`."""
        self.listeners.value += 1
        stats = self.hc(hc_name)
        stats.listeners += 1
        stats.listener_connects += 1
        return stats

    def listener_disconnected(self, stats: HcStats) -> None:
        self.listeners.value -= 1
        stats.listeners -= 1

    def http_answered(self, hc_name: str, status: int) -> None:
        """A listener answered an HTTP-mode request with ``status``."""
        self.http_requests.labels(str(status)).value += 1
        self.hc(hc_name).http_requests += 1

    def rejected(self, status: int, action: str, hc_name: str | None) -> None:
        """The relay refused a request; ``hc_name`` once it named an existing entity."""
        self.rejections.labels(str(status), action).value += 1
        if hc_name is not None:
            code = _HC_STATUS_LABELS.get(status) or f"{status // 100}xx"
            stats = self.hc(hc_name)
            stats.rejections[code] = stats.rejections.get(code, 0) + 1
            if action == "listen":
                by_status = stats.listener_rejections
                by_status[code] = by_status.get(code, 0) + 1

    # -- exposition ---------------------------------------------------------------------

    def collect(self) -> list[Metric]:
        families = [metric.collect() for metric in self._metrics]
        if self.cluster_available is not None:
            families.append(
                GaugeMetricFamily(
                    "hybridrelay_cluster_state_available",
                    "1 when the shared cluster state (Redis) answers, 0 while it does not "
                    "(/readyz says degraded); always 1 for a single node",
                    value=1 if self.cluster_available() else 0,
                )
            )
        families.extend(self._collect_hcs())
        return families

    def _collect_hcs(self) -> list[Metric]:
        cells = list(self._hcs.items())
        if self._hc_other is not None:
            cells.append((HC_OTHER, self._hc_other))
        labelled = GaugeMetricFamily(
            "hybridrelay_hc_labels",
            f"Hybrid connections with their own hc label (at most {LIMIT_HC_LABELS})",
            value=len(self._hcs),
        )
        listeners = GaugeMetricFamily(
            "hybridrelay_hc_listeners", "Connected listener control channels", labels=["hc"]
        )
        active = GaugeMetricFamily(
            "hybridrelay_hc_active_connections",
            "Relayed WebSocket connections open now",
            labels=["hc"],
        )
        connections = CounterMetricFamily(
            "hybridrelay_hc_connections", "Relayed WebSocket connections established", labels=["hc"]
        )
        bytes_relayed = CounterMetricFamily(
            "hybridrelay_hc_bytes_relayed",
            "Payload bytes relayed over WebSocket connections (counted when one closes)",
            labels=["hc", "direction"],
        )
        http = CounterMetricFamily(
            "hybridrelay_hc_http_requests",
            "HTTP-mode requests answered by listeners",
            labels=["hc"],
        )
        rejections = CounterMetricFamily(
            "hybridrelay_hc_rejections",
            "Requests for an existing hybrid connection the relay refused, by HTTP status",
            labels=["hc", "status"],
        )
        for name, stats in cells:
            listeners.add_metric([name], stats.listeners)
            active.add_metric([name], stats.active_connections)
            connections.add_metric([name], stats.connections)
            bytes_relayed.add_metric([name, "sender_to_listener"], stats.bytes_up)
            bytes_relayed.add_metric([name, "listener_to_sender"], stats.bytes_down)
            http.add_metric([name], stats.http_requests)
            for status, count in sorted(stats.rejections.items()):
                rejections.add_metric([name, status], count)
        return [labelled, listeners, active, connections, bytes_relayed, http, rejections]
