"""``/healthz`` (the process answers) and ``/readyz`` (it takes new work), plus ``/metrics``."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hybridrelay.relay.state import STATE

__all__ = ["healthz", "metrics", "readyz"]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining:
        return web.json_response({"status": "draining"}, status=503)
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
