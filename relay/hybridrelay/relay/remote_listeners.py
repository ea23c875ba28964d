"""What a node does when a listener on another node, that it sent work to, goes away.

The same as for a listener of its own (hc_endpoints): senders whose accept went there
are re-dispatched after a grace (a listener that stops gracefully still dials the
accepts it holds), and HTTP requests it owed an answer fail fast with 502.
"""

from __future__ import annotations

import asyncio
from typing import Final

from hybridrelay.errors import BadGatewayError
from hybridrelay.relay.cluster.base import ClusterState
from hybridrelay.relay.pending import PendingWork

__all__ = ["watch_remote_listeners"]

_GRACE_S: Final = 2.0  # as for a listener of this node


def watch_remote_listeners(cluster: ClusterState, pending_work: PendingWork) -> None:
    """Subscribe ``pending_work`` to the cluster's notices of listeners leaving other nodes."""

    def gone(hc: str, listener_id: str) -> None:
        loop = asyncio.get_running_loop()
        for pending in list(pending_work.waiting):
            mine = pending.hc_name.lower() == hc and pending.listener_id == listener_id
            if mine and not pending.future.done():
                loop.call_later(_GRACE_S, pending.listener_gone)
        error = BadGatewayError("the listener disconnected")
        for request in list(pending_work.requests.values()):
            mine = request.hc_name.lower() == hc and request.listener_id == listener_id
            if mine and not request.header.done() and not request.sockets:
                request.fail(error)

    cluster.on_listener_gone(gone)
