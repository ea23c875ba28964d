"""What the relay does at once when the store changes (issue 5, "Effects").

:class:`Reactions` subscribes to the store's change events (from this node's
writes and, with a shared store, every other node's) for the lifetime of the app
(:func:`reactions_ctx`, an aiohttp cleanup context) and applies them to this
node's live state:

- A rule created, changed, regenerated or deleted, a hybrid connection written or
  deleted, a device written or deleted, or a ``reset``: the verified-token cache
  (``auth.TokenCache``) is cleared, so the next handshake with a token signed by
  a regenerated-away key is checked again and refused (401).
- A hybrid connection deleted or disabled: its control channels on this node are
  closed with 1001 and its open relayed streams are shut with 1001 (the splices carry their
  hybrid connection's name). A ``reset`` (events may have been missed) does the
  same for every hybrid connection with channels here that no longer exists.
- A device disabled or deleted: the callbacks registered with
  :meth:`Reactions.on_device_revoked` (reach it as ``request.app[REACTIONS]``) are
  called with a :class:`DeviceRevoked`. This module does not know which
  connections belong to a device; code that does can register here instead of
  subscribing to the store itself (``devices.DeviceRegistry`` does, and closes the
  device's connections with 1008). A ``reset`` calls them with
  ``device_id=None``: re-check every device you hold.

Callbacks run on the event loop, must not block and should not raise (an exception
is logged and the next callback still runs).

Control channels re-read their hybrid connection and rules on every token renewal
(``hc_endpoints._listen``), so a regenerated key refuses the next renewal too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal, assert_never

from aiohttp import web

from hybridrelay.logs import RELAY
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.relay.auth import TokenCache
from hybridrelay.relay.listeners import ListenerRegistry
from hybridrelay.relay.splices import SpliceRegistry
from hybridrelay.relay.store.base import Store
from hybridrelay.relay.store.models import ChangeEvent

__all__ = [
    "REACTIONS",
    "DeviceRevoked",
    "DeviceRevokedCallback",
    "Reactions",
    "reactions_ctx",
]

log = logging.getLogger(RELAY)

DELETED_CODE: Final = CloseCode.GOING_AWAY  # "going away" (RFC 6455 §7.4.1): the endpoint is gone
RevokeReason = Literal["disabled", "deleted", "reset"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRevoked:
    """A device may no longer connect: close what it has open, refuse what comes next.

    ``device_id`` is None only with ``reason="reset"``: events may have been missed,
    so every device with live connections must be looked up again.
    """

    device_id: str | None
    reason: RevokeReason


DeviceRevokedCallback = Callable[[DeviceRevoked], None]


class Reactions:
    """Applies store change events to one relay node's live state."""

    def __init__(
        self,
        store: Store,
        *,
        tokens: TokenCache,
        listeners: ListenerRegistry,
        splices: SpliceRegistry,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._listeners = listeners
        self._splices = splices
        self._device_hooks: list[DeviceRevokedCallback] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = self._store.subscribe(self.on_change)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- the device authentication hook ---------------------------------------------------

    def on_device_revoked(self, callback: DeviceRevokedCallback) -> Callable[[], None]:
        """Call ``callback`` whenever a device is disabled or deleted.

        Returns:
            A function that unregisters ``callback`` (idempotent).
        """
        self._device_hooks.append(callback)

        def unregister() -> None:
            if callback in self._device_hooks:
                self._device_hooks.remove(callback)

        return unregister

    def _revoke(self, event: DeviceRevoked) -> None:
        for callback in list(self._device_hooks):
            try:
                callback(event)
            except Exception:  # one hook's bug must not keep the others from running
                log.exception("device_revoked_hook_failed", extra={"device": event.device_id})

    # --- store events ---------------------------------------------------------------------

    def on_change(self, event: ChangeEvent) -> None:
        """The store callback: runs on the loop, never blocks; slow work goes to tasks."""
        # Every kind can invalidate a cached verification: keys and rules (rule), the
        # rules that vanish with a hybrid connection (hybridConnection), device tokens
        # cached by the device authentication (device), anything (reset).
        self._tokens.clear()
        match event.kind:
            case "rule":
                pass
            case "hybridConnection":
                if event.op == "deleted":
                    self.close_hybrid_connection(event.name, "hybrid connection deleted")
                else:
                    self._spawn(
                        functools.partial(self._check_hybrid_connection, event.name), "hc-check"
                    )
            case "device":
                if event.op == "deleted":
                    self._revoke(DeviceRevoked(device_id=event.name, reason="deleted"))
                elif event.op == "updated" and self._device_hooks:
                    self._spawn(functools.partial(self._check_device, event.name), "device-check")
            case "certificate":
                pass  # CA trust follows these itself (ca_trust.py)
            case "reset":
                self._revoke(DeviceRevoked(device_id=None, reason="reset"))
                self._spawn(self._check_hybrid_connections, "reset-check")
            case _:
                assert_never(event.kind)

    def close_hybrid_connection(self, name: str, reason: str) -> int:
        """Shut this node's open streams and control channels of ``name`` (1001).

        Returns:
            How many control channels are being closed.
        """
        wanted = name.strip("/").lower()
        shut = 0
        for splice in self._splices:
            if splice.hc_name is not None and splice.hc_name.strip("/").lower() == wanted:
                splice.shutdown(DELETED_CODE, reason)
                shut += 1
        channels = self._listeners.on(name)
        for channel in channels:
            self._spawn(
                functools.partial(channel.close, DELETED_CODE, reason),
                f"close:{channel.listener_id}",
            )
        if channels or shut:
            log.info(
                "hybrid_connection_closed",
                extra={"hc": name, "listeners": len(channels), "streams": shut, "reason": reason},
            )
        return len(channels)

    async def _check_device(self, device_id: str) -> None:
        device = await self._store.get_device(device_id)
        if device is None:
            self._revoke(DeviceRevoked(device_id=device_id, reason="deleted"))
        elif device.status == "disabled":
            self._revoke(DeviceRevoked(device_id=device_id, reason="disabled"))

    async def _check_hybrid_connection(self, name: str) -> None:
        hc = await self._store.get(name)
        if hc is None:
            self.close_hybrid_connection(name, "hybrid connection deleted")
        elif hc.status == "disabled":
            self.close_hybrid_connection(name, "hybrid connection disabled")

    async def _check_hybrid_connections(self) -> None:
        names = {c.hc_name for c in self._listeners}
        names.update(s.hc_name for s in self._splices if s.hc_name is not None)
        for name in sorted(names):
            if await self._store.get(name) is None:
                self.close_hybrid_connection(name, "hybrid connection deleted")

    # --- owned tasks ----------------------------------------------------------------------

    def _spawn(self, work: Callable[[], Awaitable[None]], name: str) -> None:
        # A factory, not a coroutine object: a task cancelled before it starts (at
        # stop()) then leaves no never-awaited coroutine behind.
        task = asyncio.create_task(self._guard(work), name=f"reactions:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except Exception:  # top level of a task we own: log our bug, keep reacting
            log.exception("reaction_failed")


REACTIONS: Final = web.AppKey("hybridrelay_reactions", Reactions)


async def reactions_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: subscribe at startup, unsubscribe and finish at cleanup."""
    reactions = app[REACTIONS]
    reactions.start()
    yield
    await reactions.stop()
