"""The listener registry: the control channels connected to this node (one service).

``hc_endpoints._listen`` adds a channel once its 101 is sent and removes it when the
channel ends; the management API lists them, reactions close those of a deleted hybrid
connection and shutdown closes them all. Which listener gets a sender is the cluster
state's business (``cluster/``), not this registry's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from aiohttp import web

from hybridrelay.relay.control import ControlChannel

__all__ = ["LISTENERS", "ListenerRegistry"]


class ListenerRegistry:
    """The live control channels of this node."""

    def __init__(self) -> None:
        self._channels: set[ControlChannel] = set()

    def add(self, channel: ControlChannel) -> None:
        self._channels.add(channel)

    def discard(self, channel: ControlChannel) -> None:
        self._channels.discard(channel)

    def __contains__(self, channel: object) -> bool:
        return channel in self._channels

    def __iter__(self) -> Iterator[ControlChannel]:
        """A snapshot: callers may close channels (which removes them) while iterating."""
        return iter(list(self._channels))

    def __len__(self) -> int:
        return len(self._channels)

    def on(self, hc_name: str) -> list[ControlChannel]:
        """The channels listening on ``hc_name`` (names compare ignoring case and slashes)."""
        wanted = hc_name.strip("/").lower()
        return [c for c in self._channels if c.hc_name.strip("/").lower() == wanted]


LISTENERS: Final = web.AppKey("hybridrelay_listeners", ListenerRegistry)
