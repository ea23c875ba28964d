"""Single-node ClusterState: listeners of this process, in dicts."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection

from hybridrelay.errors import (
    ConnectionClosedError,
    ListenerConflictError,
    QuotaExceededError,
    UnavailableError,
)
from hybridrelay.protocol.codes import RENDEZVOUS_TIMEOUT_S, CloseCode
from hybridrelay.protocol.messages import Accept, Request
from hybridrelay.relay.balancer import ListenerLoad, choose_listener
from hybridrelay.relay.cluster.base import (
    DrainRequested,
    ListenerGone,
    ListenerHandle,
    ListenerPort,
    NodeSummary,
    Pending,
    Summarize,
)
from hybridrelay.relay.rendezvous import RendezvousTable, TableFullError

__all__ = ["MemoryClusterState"]


class MemoryClusterState:
    """Implements :class:`~hybridrelay.relay.cluster.base.ClusterState` for one node."""

    def __init__(
        self,
        *,
        node_id: str = "local",
        rng: random.Random | None = None,
        rendezvous_ttl: float = RENDEZVOUS_TIMEOUT_S,
        max_pending: int = 10_000,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not security
        self._channels: dict[str, dict[str, ListenerPort]] = {}
        self._active: dict[tuple[str, str], int] = {}
        # One handle per attached listener, handed to every stream it takes: a handle
        # lives as long as its stream (hc_endpoints._StreamEnd), and they are all equal.
        self._handles: dict[tuple[str, str], ListenerHandle] = {}
        self._pending = RendezvousTable[Pending](now=now, ttl=rendezvous_ttl, limit=max_pending)
        self._summarize: Summarize | None = None
        self._drain_callbacks: list[DrainRequested] = []

    def unavailable_reason(self) -> str | None:
        return None

    def summarize_with(self, summarize: Summarize) -> None:
        self._summarize = summarize

    async def nodes(self) -> list[NodeSummary]:
        """This node alone: without a cluster there is no other."""
        return [self._summarize()] if self._summarize is not None else []

    def on_drain_requested(self, callback: DrainRequested) -> None:
        self._drain_callbacks.append(callback)

    async def request_drain(self, node_id: str, *, drain: bool = True) -> bool:
        if node_id != self.node_id:
            return False
        self.drain_requested(drain)
        return True

    def drain_requested(self, drain: bool = True) -> None:
        """Tell this node's drain callbacks (the Redis cluster calls it for a peer's request)."""
        for callback in list(self._drain_callbacks):
            callback(drain)

    def on_listener_gone(self, callback: ListenerGone) -> None:
        """Every listener is local here: the relay sees each one close itself."""

    def listeners(self) -> list[ListenerPort]:
        return [channel for channels in self._channels.values() for channel in channels.values()]

    def local_loads(self, hc_name: str) -> dict[str, tuple[ListenerPort, int]]:
        """This node's listeners of ``hc_name`` with their active stream counts."""
        hc = hc_name.lower()
        return {
            lid: (channel, self._active.get((hc, lid), 0))
            for lid, channel in self._channels.get(hc, {}).items()
        }

    async def attach(
        self, channel: ListenerPort, *, max_listeners: int, takeover: bool = True
    ) -> None:
        hc = channel.hc_name.lower()
        channels = self._channels.setdefault(hc, {})
        old = channels.get(channel.listener_id)
        if old is not None:
            if not takeover:
                raise ListenerConflictError(
                    f"a listener with sb-hc-id {channel.listener_id!r} is already connected"
                )
            del channels[channel.listener_id]
            old.abort()
        if len(channels) >= max_listeners:
            raise QuotaExceededError(
                f"QuotaExceeded: MaximumListenersPerEndpoint ({max_listeners}) reached",
                limit="max_listeners_per_hc",
            )
        channels[channel.listener_id] = channel
        self._active.setdefault((hc, channel.listener_id), 0)
        self._handles[(hc, channel.listener_id)] = ListenerHandle(
            hc, channel.listener_id, self.node_id
        )

    async def detach(self, channel: ListenerPort) -> None:
        hc = channel.hc_name.lower()
        channels = self._channels.get(hc)
        if channels is None or channels.get(channel.listener_id) is not channel:
            return
        del channels[channel.listener_id]
        self._active.pop((hc, channel.listener_id), None)
        self._handles.pop((hc, channel.listener_id), None)
        if not channels:
            del self._channels[hc]

    def find(self, hc_name: str, listener_id: str) -> ListenerPort | None:
        return self._channels.get(hc_name.lower(), {}).get(listener_id)

    async def pick(
        self,
        hc_name: str,
        *,
        allowed: Collection[str] | None = None,
        disallowed: Collection[str] | None = None,
    ) -> ListenerHandle | None:
        hc = hc_name.lower()
        channels = self._channels.get(hc)
        if not channels:
            return None
        if len(channels) == 1 and allowed is None and not disallowed:
            # The usual: one listener, eligible, chosen whatever its load (per request).
            lid = next(iter(channels))
            return self._handles.get((hc, lid)) or ListenerHandle(hc, lid, self.node_id)
        loads = [ListenerLoad(lid, self._active.get((hc, lid), 0)) for lid in channels]
        chosen = choose_listener(loads, rng=self._rng, allowed=allowed, disallowed=disallowed)
        if chosen is None:
            return None
        key = (hc, chosen.listener_id)
        return self._handles.get(key) or ListenerHandle(hc, chosen.listener_id, self.node_id)

    async def deliver(
        self, handle: ListenerHandle, message: Accept | Request, body: bytes | None = None
    ) -> None:
        channel = self.find(handle.hc_name, handle.listener_id)
        if channel is None:
            raise ConnectionClosedError(CloseCode.GOING_AWAY, "listener went away")
        await channel.deliver(message, body)

    def stream_started(self, handle: ListenerHandle) -> None:
        key = (handle.hc_name, handle.listener_id)
        if key in self._active:
            self._active[key] += 1

    def stream_ended(self, handle: ListenerHandle) -> None:
        key = (handle.hc_name, handle.listener_id)
        if self._active.get(key, 0) > 0:
            self._active[key] -= 1

    async def listener_count(self, hc_name: str) -> int:
        return len(self._channels.get(hc_name.lower(), {}))

    def add_pending(self, pending: Pending, *, ttl: float | None = None) -> str:
        try:
            return self._pending.create(pending, ttl=ttl)
        except TableFullError as exc:
            raise UnavailableError(
                "too many senders are waiting for listeners",
                limit="max_pending_rendezvous",
                retry_after=1,
            ) from exc

    def claim_pending(self, key: str) -> Pending | None:
        return self._pending.claim(key)

    def find_pending(self, key: str) -> Pending | None:
        return self._pending.get(key)

    def discard_pending(self, key: str) -> None:
        self._pending.discard(key)

    def pending_count(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        self._channels.clear()
        self._active.clear()
