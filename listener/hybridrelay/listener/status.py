"""The agent's local status endpoint: ``/status`` (JSON), ``/metrics`` (Prometheus), ``/healthz``.

Read-only and meant for the gateway itself (the address is loopback unless the
config allows otherwise). Every request reads a fresh :class:`AgentStatus`
snapshot; the Prometheus registry belongs to this server (no module globals) and
its one collector turns the snapshot into per-mapping series at scrape time.

``GET /status``::

    {"agent_id": "gw-17", "ready": true, "reloads": 0, "reload_failures": 0,
     "mappings": [{"hc": "mqtt", "target": "tcp://127.0.0.1:1883", "state": "online",
                   "connections": 2, "connections_online": 2, "attempts": 2,
                   "connects": 2, "reconnects": 0, "active_streams": 1, "accepted": 5,
                   "rejected": 0, "requests": 0, "bytes_up": 1024, "bytes_down": 2048,
                   "error": null}]}

``state`` is ``connecting``, ``online`` (at least one control channel open),
``failed`` (404, see ``error``; the next reload retries) or ``stopped`` (removed by a
reload, still draining). ``GET /healthz`` answers 200 while the agent runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hybridrelay.listener.supervisor import AgentStatus, MappingState

__all__ = ["AgentCollector", "StatusSource", "create_status_app", "serve_status"]

StatusSource = Callable[[], AgentStatus]

_SOURCE: Final = web.AppKey[StatusSource]("status_source")
_REGISTRY: Final = web.AppKey("status_registry", CollectorRegistry)
_STATES: Final[tuple[MappingState, ...]] = ("connecting", "online", "failed", "stopped")
_LABELS: Final = ("hc", "target")
_COUNTERS: Final = (
    ("attempts", "hybridrelay_agent_connection_attempts", "Control channel connection attempts"),
    ("connects", "hybridrelay_agent_connects", "Control channels opened"),
    ("reconnects", "hybridrelay_agent_reconnects", "Connection attempts after each first one"),
    ("accepted", "hybridrelay_agent_streams_accepted", "Relayed connections accepted"),
    ("rejected", "hybridrelay_agent_streams_rejected", "Relayed connections rejected"),
    ("requests", "hybridrelay_agent_http_requests", "HTTP-mode requests received"),
    ("bytes_up", "hybridrelay_agent_bytes_up", "Bytes from senders to the target (closed streams)"),
    (
        "bytes_down",
        "hybridrelay_agent_bytes_down",
        "Bytes from the target to senders (closed streams)",
    ),
)


class AgentCollector(Collector):
    """Per-mapping series from a status snapshot taken at scrape time."""

    def __init__(self, source: StatusSource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        status = self._source()
        up = GaugeMetricFamily(
            "hybridrelay_agent_mapping_up",
            "1 while at least one control channel of the mapping is open",
            labels=_LABELS,
        )
        state = GaugeMetricFamily(
            "hybridrelay_agent_mapping_state",
            "1 for the mapping's current state",
            labels=(*_LABELS, "state"),
        )
        online = GaugeMetricFamily(
            "hybridrelay_agent_connections_online", "Control channels open", labels=_LABELS
        )
        configured = GaugeMetricFamily(
            "hybridrelay_agent_connections", "Control channels configured", labels=_LABELS
        )
        active = GaugeMetricFamily(
            "hybridrelay_agent_active_streams", "Relayed streams open now", labels=_LABELS
        )
        counters = {
            field: CounterMetricFamily(name, text, labels=_LABELS)
            for field, name, text in _COUNTERS
        }
        for m in status.mappings:
            labels = [m.hc, m.target]
            up.add_metric(labels, 1.0 if m.state == "online" else 0.0)
            for name in _STATES:
                state.add_metric([*labels, name], 1.0 if m.state == name else 0.0)
            online.add_metric(labels, m.connections_online)
            configured.add_metric(labels, m.connections)
            active.add_metric(labels, m.active_streams)
            for field, family in counters.items():
                family.add_metric(labels, getattr(m, field))
        reloads = CounterMetricFamily(
            "hybridrelay_agent_reloads", "Config reloads, by result", labels=("result",)
        )
        reloads.add_metric(["applied"], status.reloads)
        reloads.add_metric(["rejected"], status.reload_failures)
        yield from (up, state, online, configured, active, *counters.values(), reloads)


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[_SOURCE]().to_json())


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    status = request.app[_SOURCE]()
    return web.json_response({"status": "ok", "ready": status.ready})


def create_status_app(source: StatusSource) -> web.Application:
    """The status routes over ``source``, with a registry of their own."""
    app = web.Application()
    registry = CollectorRegistry()
    registry.register(AgentCollector(source))
    app[_SOURCE] = source
    app[_REGISTRY] = registry
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


@contextlib.asynccontextmanager
async def serve_status(source: StatusSource, host: str, port: int) -> AsyncIterator[int]:
    """Serve the status routes on ``host:port`` while the context is open.

    Yields:
        The bound port (``port`` 0 picks a free one).

    Raises:
        OSError: The address cannot be bound.
    """
    runner = web.AppRunner(create_status_app(source), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
