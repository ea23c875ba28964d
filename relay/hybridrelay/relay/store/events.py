"""Change events to subscribers on this node, the same way in every store.

A store calls :meth:`ChangeHub.emit` on the event loop after a write committed (and,
for Redis, when another node's event arrives); subscribers run in order, and one that
raises is logged and does not stop the others.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from hybridrelay.logs import RELAY
from hybridrelay.relay.store.base import ChangeCallback
from hybridrelay.relay.store.models import ChangeEvent

__all__ = ["ChangeHub"]

log = logging.getLogger(RELAY)


class ChangeHub:
    """The subscribers of one store and the fan-out of its change events."""

    def __init__(self) -> None:
        self._subscribers: list[ChangeCallback] = []

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback`` for every change from now on; returns the unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, event: ChangeEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("store_subscriber_failed", extra={"kind": event.kind})
