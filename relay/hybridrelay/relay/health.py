"""``/healthz`` (the process answers) and ``/readyz`` (it takes new work), plus ``/metrics``.

They are routes of the relay's public application; with ``[relay] metrics_listen``,
:func:`metrics_app` serves all three on that address instead (``/metrics`` leaves the
public port, the probes stay on both: balancers probe the public one).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hybridrelay.relay.lifecycle import LIFECYCLE, NodeLifecycle
from hybridrelay.relay.state import STATE, RelayState

__all__ = ["healthz", "metrics", "metrics_app", "readyz"]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[LIFECYCLE].draining:
        return web.json_response({"status": "draining"}, status=503)
    state = request.app[STATE]
    reason = state.cluster.unavailable_reason()
    if reason is not None:
        # Open streams and this node's own listeners still work; work for listeners on
        # other nodes does not, so a balancer should prefer nodes that see the cluster.
        return web.json_response(
            {"status": "degraded", "reason": f"cluster state unavailable: {reason}"}, status=503
        )
    return web.json_response({"status": "ready", "public_url": state.public_url})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = generate_latest(state.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app(state: RelayState, lifecycle: NodeLifecycle) -> web.Application:
    """The small application of the metrics address: ``/metrics``, ``/healthz``, ``/readyz``."""
    # GET only, no bodies read: the smallest client_max_size aiohttp allows is plenty.
    app = web.Application(client_max_size=1024)
    app[STATE] = state
    app[LIFECYCLE] = lifecycle  # the public application's: /readyz answers as it does there
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
