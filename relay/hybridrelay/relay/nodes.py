"""This node's summary for the cluster (``GET /$mgmt/v1/nodes``) and draining on request.

``POST /$mgmt/v1/nodes/{id}/drain`` asks a node (this one, or another through the
cluster's channel) to do what SIGTERM starts, without stopping: it refuses new listeners
and senders (503, ``/readyz`` answers 503 so balancers move on), closes its listeners'
control channels with 1001 so their agents reconnect elsewhere, and lets its open streams
run to their end. The operator stops the process once its streams are gone (the
dashboard's cluster page shows them). ``POST /$mgmt/v1/nodes/{id}/undrain`` takes a drain
back (a node drained by mistake, or after maintenance that did not need a restart): it
serves new listeners and senders again, ``/readyz`` answers 200. A node that is stopping
(SIGTERM) stays closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator

from aiohttp import web

from hybridrelay.logs import RELAY
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.relay.cluster.base import MAX_NODE_HCS, NodeSummary
from hybridrelay.relay.hc_endpoints import shutdown_connections
from hybridrelay.relay.lifecycle import LIFECYCLE, NodeLifecycle
from hybridrelay.relay.listeners import LISTENERS, ListenerRegistry
from hybridrelay.relay.mgmt.views import NODE
from hybridrelay.relay.splices import SPLICES, SpliceRegistry
from hybridrelay.relay.state import STATE, RelayState

__all__ = ["drain_here", "install", "node_json", "summarize", "undrain_here"]

log = logging.getLogger(RELAY)


def summarize(
    state: RelayState,
    lifecycle: NodeLifecycle,
    listeners: ListenerRegistry,
    splices: SpliceRegistry,
    started_at: float,
) -> NodeSummary:
    """What this node holds right now."""
    held = Counter(channel.hc_name for channel in listeners)
    return NodeSummary(
        node_id=state.cluster.node_id,
        address=state.public_url,
        listeners=len(listeners),
        streams=len(splices),
        pending=state.cluster.pending_count(),
        draining=lifecycle.draining,
        started_at=started_at,
        seen_at=time.time(),
        hybrid_connections=tuple(held.most_common(MAX_NODE_HCS)),
    )


def node_json(node: NodeSummary) -> dict[str, object]:
    """A node as ``GET /$mgmt/v1/nodes`` answers it (times as ISO 8601, like the API's;
    ``node.to_json`` is the cluster's wire format)."""
    return NODE.encode(node)


async def drain_here(app: web.Application) -> None:
    """Refuse new work and send this node's listeners elsewhere; streams run on."""
    state = app[STATE]
    if not app[LIFECYCLE].drain():
        return
    log.warning(
        "node_draining", extra={"node": state.cluster.node_id, "streams": len(app[SPLICES])}
    )
    await shutdown_connections(app, CloseCode.GOING_AWAY, "relay draining", include_streams=False)


def undrain_here(lifecycle: NodeLifecycle, node_id: str) -> None:
    """Serve new listeners and senders again, unless this process is stopping."""
    if lifecycle.stopping:
        log.warning("node_undrain_ignored_stopping", extra={"node": node_id})
    elif lifecycle.undrain():
        log.warning("node_undrained", extra={"node": node_id})


async def _nodes_ctx(app: web.Application) -> AsyncIterator[None]:
    state, lifecycle = app[STATE], app[LIFECYCLE]
    started_at = time.time()
    drains: set[asyncio.Task[None]] = set()

    def drain_requested(drain: bool) -> None:
        if not drain:
            undrain_here(lifecycle, state.cluster.node_id)
            return
        task = asyncio.create_task(drain_here(app), name="node drain")
        drains.add(task)
        task.add_done_callback(drains.discard)

    listeners, splices = app[LISTENERS], app[SPLICES]
    state.cluster.summarize_with(
        lambda: summarize(state, lifecycle, listeners, splices, started_at)
    )
    state.cluster.on_drain_requested(drain_requested)
    yield
    for task in list(drains):
        task.cancel()
    for task in list(drains):
        with contextlib.suppress(asyncio.CancelledError):
            await task


def install(app: web.Application) -> None:
    """Describe this node to the cluster and drain on request (after the store opens)."""
    app.cleanup_ctx.append(_nodes_ctx)
