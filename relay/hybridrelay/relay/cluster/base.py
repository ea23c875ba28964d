"""ClusterState: which listeners exist and where work for them goes.

One small Protocol so that the single-process default (``memory.py``) and the
Redis-backed cluster of a later issue are interchangeable. The relay never
holds a listener's control channel directly when it picks a listener: it asks
the cluster state, which knows whether the listener lives on this node.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

from hybridrelay.protocol.messages import Accept, Request
from hybridrelay.relay.pending import ListenerHandle, PendingConnect, PendingRequest

__all__ = ["ClusterState", "ListenerGone", "ListenerHandle", "ListenerPort", "Pending"]


Pending = PendingConnect | PendingRequest

# (hybrid connection, listener id): a listener elsewhere that this node sent work to is gone.
ListenerGone = Callable[[str, str], None]


class ListenerPort(Protocol):
    """What the cluster state needs from a live control channel on this node."""

    @property
    def listener_id(self) -> str: ...

    @property
    def hc_name(self) -> str: ...

    async def deliver(self, message: Accept | Request, body: bytes | None = None) -> None:
        """Send one control message (and a body right after it); ConnectionClosedError if gone."""
        ...

    def abort(self) -> None:
        """Drop the channel at once (it was taken over or its node is going away)."""
        ...


class ClusterState(Protocol):
    node_id: str

    def unavailable_reason(self) -> str | None:
        """Why this node cannot see the cluster right now (Redis down), or None."""
        ...

    def on_listener_gone(self, callback: ListenerGone) -> None:
        """Hear of listeners on other nodes going away after this node sent them work.

        Listeners of this node are the relay's own business (it sees them close).
        """
        ...

    async def attach(
        self, channel: ListenerPort, *, max_listeners: int, takeover: bool = True
    ) -> None:
        """Register a control channel; QuotaExceededError past ``max_listeners``.

        A channel whose listener id is already connected replaces the old one when
        ``takeover`` is on (a restarted agent must not wait out its own stale binding);
        otherwise ListenerConflictError.
        """
        ...

    async def detach(self, channel: ListenerPort) -> None: ...

    async def pick(
        self,
        hc_name: str,
        *,
        allowed: Collection[str] | None = None,
        disallowed: Collection[str] | None = None,
    ) -> ListenerHandle | None:
        """Choose a listener for new work (fewest active streams, random tie-break)."""
        ...

    async def deliver(
        self, handle: ListenerHandle, message: Accept | Request, body: bytes | None = None
    ) -> None:
        """Send a control message (and its body) to the chosen listener, wherever it is."""
        ...

    def stream_started(self, handle: ListenerHandle) -> None: ...

    def stream_ended(self, handle: ListenerHandle) -> None: ...

    async def listener_count(self, hc_name: str) -> int: ...

    def add_pending(self, pending: Pending, *, ttl: float | None = None) -> str:
        """Register a waiting sender or request; returns its unguessable rendezvous key.

        Raises UnavailableError when too many wait at once.
        """
        ...

    def claim_pending(self, key: str) -> Pending | None:
        """Take what waits at ``key`` (once); None when unknown, used or expired."""
        ...

    def find_pending(self, key: str) -> Pending | None:
        """Look at what waits at ``key`` without taking it (HTTP requests allow several dials)."""
        ...

    def discard_pending(self, key: str) -> None: ...

    def pending_count(self) -> int: ...

    async def close(self) -> None: ...
