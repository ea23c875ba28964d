"""ClusterState: which listeners exist and where work for them goes.

One small Protocol so that the single-process default (``memory.py``) and the
Redis-backed cluster of a later issue are interchangeable. The relay never
holds a listener's control channel directly when it picks a listener: it asks
the cluster state, which knows whether the listener lives on this node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from hybridrelay.protocol.messages import Accept, Request
from hybridrelay.relay.splice import Splice

__all__ = ["ClusterState", "ListenerHandle", "ListenerPort", "PendingConnect"]


@dataclass(eq=False, slots=True)
class PendingConnect:
    """A sender waiting for its listener to dial the rendezvous address.

    The address always points at the node holding the sender (HC §2.4), so
    pending senders are looked up on the node that registered them.
    """

    hc_name: str
    # Resolves to the listener's chosen sub-protocol (str or None) or a rejection.
    future: asyncio.Future[object]
    splice: Splice


class ListenerPort(Protocol):
    """What the cluster state needs from a live control channel on this node."""

    @property
    def listener_id(self) -> str: ...

    @property
    def hc_name(self) -> str: ...

    async def deliver(self, message: Accept | Request) -> None:
        """Send one control message to the listener; raises ConnectionClosedError if gone."""
        ...


@dataclass(frozen=True, slots=True)
class ListenerHandle:
    """A chosen listener: enough to deliver to it and to account for its streams."""

    hc_name: str
    listener_id: str
    node_id: str


class ClusterState(Protocol):
    async def attach(self, channel: ListenerPort, *, max_listeners: int) -> None:
        """Register a control channel; QuotaExceededError past ``max_listeners``."""
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

    async def deliver(self, handle: ListenerHandle, message: Accept | Request) -> None:
        """Send a control message to the chosen listener, wherever it is connected."""
        ...

    def stream_started(self, handle: ListenerHandle) -> None: ...

    def stream_ended(self, handle: ListenerHandle) -> None: ...

    async def listener_count(self, hc_name: str) -> int: ...

    def add_pending(self, pending: PendingConnect) -> str:
        """Register a waiting sender; returns its unguessable rendezvous key.

        Raises UnavailableError when too many senders wait at once.
        """
        ...

    def claim_pending(self, key: str) -> PendingConnect | None:
        """Take a waiting sender once; None when the key is unknown, used or expired."""
        ...

    def discard_pending(self, key: str) -> None: ...

    def pending_count(self) -> int: ...

    async def close(self) -> None: ...
