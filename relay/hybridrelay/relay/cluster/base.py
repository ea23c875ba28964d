"""ClusterState: which listeners exist and where work for them goes.

One small Protocol so that the single-process default (``memory.py``) and the
Redis-backed cluster of a later issue are interchangeable. The relay never
holds a listener's control channel directly when it picks a listener: it asks
the cluster state, which knows whether the listener lives on this node.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final, Protocol

from hybridrelay.protocol.messages import Accept, Request
from hybridrelay.relay.pending import ListenerHandle, PendingConnect, PendingRequest

__all__ = [
    "MAX_NODE_HCS",
    "ClusterState",
    "DrainRequested",
    "ListenerGone",
    "ListenerHandle",
    "ListenerPort",
    "NodeSummary",
    "Pending",
    "Summarize",
]


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


MAX_NODE_HCS: Final = 100  # hybrid connections named per node summary (the most held first)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSummary:
    """One relay node as the cluster sees it: ``GET /$mgmt/v1/nodes``, the dashboard.

    Each node writes its own with every heartbeat (``seen_at`` is its clock); a summary
    not renewed within a few heartbeats is a node gone.
    """

    node_id: str
    address: str  # its public URL (listeners' and senders' way in)
    listeners: int  # control channels it holds
    streams: int  # spliced streams it carries
    pending: int  # senders waiting for a listener's rendezvous
    draining: bool
    started_at: float  # unix seconds
    seen_at: float  # unix seconds of this summary
    # (hybrid connection, listeners held here), the most first, MAX_NODE_HCS at most.
    hybrid_connections: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.node_id,
            "address": self.address,
            "listeners": self.listeners,
            "streams": self.streams,
            "pendingRendezvous": self.pending,
            "draining": self.draining,
            "startedAt": self.started_at,
            "seenAt": self.seen_at,
            "hybridConnections": [
                {"name": name, "listeners": count} for name, count in self.hybrid_connections
            ],
        }

    @classmethod
    def from_json(cls, doc: object) -> NodeSummary | None:
        """The summary ``doc`` holds, or None when it is not one (another version, noise)."""
        if not isinstance(doc, dict):
            return None
        ints = [doc.get(k) for k in ("listeners", "streams", "pendingRendezvous")]
        times = [doc.get(k) for k in ("startedAt", "seenAt")]
        node_id, address, draining = doc.get("id"), doc.get("address"), doc.get("draining")
        hcs = doc.get("hybridConnections")
        if not (
            isinstance(node_id, str)
            and isinstance(address, str)
            and isinstance(draining, bool)
            and all(isinstance(n, int) and not isinstance(n, bool) for n in ints)
            and all(isinstance(t, int | float) and not isinstance(t, bool) for t in times)
            and isinstance(hcs, list)
        ):
            return None
        held: list[tuple[str, int]] = []
        for item in hcs[:MAX_NODE_HCS]:
            if isinstance(item, dict):
                name, count = item.get("name"), item.get("listeners")
                if isinstance(name, str) and isinstance(count, int):
                    held.append((name, count))
        return cls(
            node_id=node_id,
            address=address,
            listeners=int(ints[0]),  # type: ignore[arg-type]
            streams=int(ints[1]),  # type: ignore[arg-type]
            pending=int(ints[2]),  # type: ignore[arg-type]
            draining=draining,
            started_at=float(times[0]),  # type: ignore[arg-type]
            seen_at=float(times[1]),  # type: ignore[arg-type]
            hybrid_connections=tuple(held),
        )


Summarize = Callable[[], NodeSummary]
# Called with True to drain (POST /nodes/{id}/drain), False to serve again (.../undrain).
DrainRequested = Callable[[bool], None]


class ClusterState(Protocol):
    node_id: str

    def summarize_with(self, summarize: Summarize) -> None:
        """How to describe this node; a cluster shares it with every heartbeat."""
        ...

    async def nodes(self) -> list[NodeSummary]:
        """Every live node, this one first (its summary fresh).

        Raises:
            UnavailableError: the cluster's shared state cannot be read.
        """
        ...

    def on_drain_requested(self, callback: DrainRequested) -> None:
        """Call ``callback`` when someone asks this node to drain (:meth:`request_drain`)."""
        ...

    async def request_drain(self, node_id: str, *, drain: bool = True) -> bool:
        """Ask the node ``node_id`` to drain (or, ``drain=False``, to serve again); False
        when no such node answers.

        Raises:
            UnavailableError: the cluster's shared state cannot be reached.
        """
        ...

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
