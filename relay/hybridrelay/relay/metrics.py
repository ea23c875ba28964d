"""Prometheus collectors of one relay, in one registry that is passed around (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RelayMetrics"]


@dataclass
class RelayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.listeners = Gauge(
            "hybridrelay_listeners", "Connected listener control channels", registry=r
        )
        self.active_connections = Gauge(
            "hybridrelay_active_connections", "Relayed WebSocket connections open now", registry=r
        )
        self.connections = Counter(
            "hybridrelay_connections", "Relayed WebSocket connections established", registry=r
        )
        self.bytes_relayed = Counter(
            "hybridrelay_bytes_relayed",
            "Payload bytes relayed",
            ["direction"],
            registry=r,
        )
        self.rendezvous_seconds = Histogram(
            "hybridrelay_rendezvous_seconds",
            "Sender arrival to listener rendezvous handshake",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
            registry=r,
        )
        self.http_requests = Counter(
            "hybridrelay_http_requests",
            "HTTP-mode requests answered by listeners, by status",
            ["status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "hybridrelay_http_response_seconds",
            "HTTP-mode request arrival to the listener's response header",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 60),
            registry=r,
        )
        self.rejections = Counter(
            "hybridrelay_rejections",
            "Requests the relay refused, by HTTP status",
            ["status", "action"],
            registry=r,
        )

    def count_bytes(self, up: int, down: int) -> None:
        self.bytes_relayed.labels("sender_to_listener").inc(up)
        self.bytes_relayed.labels("listener_to_sender").inc(down)
