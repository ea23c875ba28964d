"""create_app(): the relay's services, routes, middleware and cleanup; no protocol logic.

Every service that owns live state is built here, with its dependencies passed to its
constructor, and stored under its own typed key (defined next to its class): handlers
import the keys they need, never a shared bag.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

from aiohttp import web

from hybridrelay.protocol.codes import CloseCode
from hybridrelay.relay import dashboard, nodes
from hybridrelay.relay.admission import rate_limit_middleware
from hybridrelay.relay.auth import TOKENS, TokenCache
from hybridrelay.relay.cluster.base import ClusterState
from hybridrelay.relay.cluster.memory import MemoryClusterState
from hybridrelay.relay.config import RelayConfig
from hybridrelay.relay.device_timeline import TIMELINES, DeviceTimelines
from hybridrelay.relay.devices import DEVICES, DeviceRegistry
from hybridrelay.relay.hc_endpoints import handle_hc, is_hc_path, shutdown_connections
from hybridrelay.relay.health import healthz, metrics, readyz
from hybridrelay.relay.http_mode import drop_invented_headers, handle_http
from hybridrelay.relay.inspector import inspect_http
from hybridrelay.relay.lifecycle import LIFECYCLE, NodeLifecycle
from hybridrelay.relay.listeners import LISTENERS, ListenerRegistry
from hybridrelay.relay.metrics import RelayMetrics
from hybridrelay.relay.mgmt import (
    add_routes as add_mgmt_routes,
    inspector as mgmt_inspector,
    jobs as mgmt_jobs,
)
from hybridrelay.relay.mgmt.events import EVENTS, EventHub
from hybridrelay.relay.middleware import METRICS_KEY, error_middleware
from hybridrelay.relay.pending import PENDING, PendingWork
from hybridrelay.relay.reactions import REACTIONS, Reactions, reactions_ctx
from hybridrelay.relay.remote_listeners import watch_remote_listeners
from hybridrelay.relay.sources import REFUSED_SOURCES, TopSources
from hybridrelay.relay.splices import SPLICES, SpliceRegistry
from hybridrelay.relay.state import STATE, RelayState
from hybridrelay.relay.store.base import Store
from hybridrelay.relay.traffic import TRAFFIC, TrafficHistory, traffic_ctx

__all__ = ["create_app"]


async def _dispatch(request: web.Request) -> web.StreamResponse:
    if is_hc_path(request.raw_path):
        return await handle_hc(request)
    return await inspect_http(request, handle_http)  # records only what is inspected


def create_app(
    config: RelayConfig,
    *,
    store: Store,
    cluster: ClusterState | None = None,
    metrics_: RelayMetrics | None = None,
) -> web.Application:
    """Build the relay's aiohttp application from a completed config."""
    # rate_limit_middleware raises inside error_middleware, which answers its 429.
    relay = config.relay
    # Management bodies are read by mgmt/json_body.read_body, which refuses (413) and counts
    # at this size; client_max_size is aiohttp's backstop for any request.read() to come.
    app = web.Application(
        middlewares=[error_middleware, rate_limit_middleware],
        client_max_size=relay.max_management_body_size,
    )
    m = metrics_ or RelayMetrics(max_hc_labels=relay.max_metrics_hc_labels)
    state = RelayState(
        config=config,
        store=store,
        cluster=cluster
        or MemoryClusterState(
            rendezvous_ttl=config.relay.rendezvous_timeout,
            max_pending=config.relay.max_pending_rendezvous,
        ),
        metrics=m,
        rng=random.Random(),  # noqa: S311 - load spreading only
    )
    app[STATE] = state
    app[LIFECYCLE] = NodeLifecycle()
    tokens = app[TOKENS] = TokenCache(relay.token_cache_size)
    listeners = app[LISTENERS] = ListenerRegistry()
    splices = app[SPLICES] = SpliceRegistry()
    pending = app[PENDING] = PendingWork(relay.max_pending_per_hc)
    timelines = app[TIMELINES] = DeviceTimelines(
        entries=relay.device_timeline_entries, devices=relay.device_timeline_devices
    )
    app[DEVICES] = DeviceRegistry(store, state.now, timelines)
    app[EVENTS] = EventHub(
        history=relay.event_history,
        queue_size=relay.event_subscriber_queue,
        limit_hit=m.limit_hit,
    )
    m.cluster_available = lambda: state.cluster.unavailable_reason() is None
    watch_remote_listeners(state.cluster, pending)
    app[METRICS_KEY] = m
    app[REFUSED_SOURCES] = TopSources()  # counted by the error middleware (GET /stats)
    app[REACTIONS] = Reactions(store, tokens=tokens, listeners=listeners, splices=splices)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if relay.metrics_listen is None:  # else only on that address (serve.py)
        app.router.add_get("/metrics", metrics)
    add_mgmt_routes(app.router)  # /$mgmt/v1: before the catch-all
    dashboard.install(app)  # /$dashboard/: before the catch-all
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    app.cleanup_ctx.append(_lifecycle)
    app.cleanup_ctx.append(reactions_ctx)  # torn down before _lifecycle closes the store
    app[TRAFFIC] = TrafficHistory()
    app.cleanup_ctx.append(traffic_ctx)  # the last 15 minutes of traffic (GET /stats)
    # After _lifecycle: each stops watching the store before the store closes.
    app.cleanup_ctx.append(_watch_devices)
    app.cleanup_ctx.append(_publish_events)
    mgmt_jobs.install(app)  # after _lifecycle: jobs are cancelled before the store closes
    nodes.install(app)  # after _lifecycle: describes this node while the cluster is open
    mgmt_inspector.install(app)  # the HTTP inspector's rings and its replays' client
    app.on_shutdown.append(_on_shutdown)
    app.on_response_prepare.append(drop_invented_headers)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    yield
    await state.cluster.close()
    await state.store.close()


async def _watch_devices(app: web.Application) -> AsyncIterator[None]:
    # Revocations come from the reactions (registered before this entry) when there are.
    async with app[DEVICES].watch(app.get(REACTIONS)):
        yield


async def _publish_events(app: web.Application) -> AsyncIterator[None]:
    hub, state = app[EVENTS], app[STATE]
    await hub.start(
        state.store,
        hub_name=lambda: state.via_name,
        webhooks=state.config.webhooks,
        rng=state.rng,
    )
    yield
    await hub.stop()


async def _on_shutdown(app: web.Application) -> None:
    app[EVENTS].close_subscribers()  # no event stream waits for its heartbeat
    app[LIFECYCLE].stop()
    await shutdown_connections(app, CloseCode.GOING_AWAY, "relay shutting down")
