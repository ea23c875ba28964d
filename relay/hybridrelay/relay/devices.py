"""The device registry: each device's live connections on this node (one service, issue 5).

The handlers register each device's control channels, relayed streams and HTTP
requests here (:meth:`DeviceRegistry.tracked`, :meth:`DeviceRegistry.request_started`),
which drives the device's ``connectionState`` (connected while it has at least one
control channel or relayed WebSocket stream; HTTP requests only touch
``lastActivityTime``, as in IoT Hub) and lets :meth:`DeviceRegistry.close_device_connections`
cut them. :meth:`DeviceRegistry.watch` (an ``app.cleanup_ctx`` entry, see ``app.py``)
hooks into ``Reactions.on_device_revoked`` (``reactions.py``, fed by the store's change
events from every node) so that disabling or deleting a device closes its control
channels and streams with 1008 within a second, and re-reads updated devices to cut
connections whose grant was removed. Its next connect is refused with 401 because
every handshake reads the device afresh (device principals are never cached).

A relayed stream belongs to its listener's device as much as to its sender's: the
listener's accept dial carries no token (the rendezvous key is its credential), so the
stream is attributed to the device that owns the control channel the accept went to
(:meth:`DeviceRegistry.listener_owner`), and disabling that device cuts it too.
Limitation: with a cluster, only when that control channel is on the node that holds
the stream (the sender's node); a device listener's streams spliced on other nodes
last until they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from aiohttp import web

from hybridrelay.errors import AuthError
from hybridrelay.logs import RELAY
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.sas import Rights, parse_device_token
from hybridrelay.relay.control import ControlChannel
from hybridrelay.relay.device_timeline import DeviceTimelines, TimelineEntry
from hybridrelay.relay.reactions import DeviceRevoked, Reactions
from hybridrelay.relay.splice import Splice
from hybridrelay.relay.store.base import Store
from hybridrelay.relay.store.models import ChangeEvent, Device

__all__ = ["CLOSE_CODE", "DEVICES", "DeviceRegistry", "ListenerOwner"]

log = logging.getLogger(RELAY)

CLOSE_CODE: Final = CloseCode.POLICY_VIOLATION  # the identity may no longer connect
_REASONS: Final = {
    "disabled": "the device is disabled",
    "deleted": "the device was deleted",
}
_GRANT_REVOKED: Final = "the device's grants no longer cover this hybrid connection"

Connection = ControlChannel | Splice | web.Request


@dataclass(eq=False, slots=True)
class _Entry:
    connection: Connection
    hc_name: str
    right: Rights
    counts: bool  # keeps the device "connected" (control channels, WebSocket streams)
    device_id: str
    # How and why the relay cut it (for the device's timeline): the close code the peer
    # echoes may be another.
    cut_code: int | None = None
    cut_reason: str | None = None

    def cut(self, code: int, reason: str, tasks: set[asyncio.Task[None]]) -> None:
        self.cut_code, self.cut_reason = code, reason
        conn = self.connection
        if isinstance(conn, ControlChannel):
            task = asyncio.create_task(conn.close(code, reason), name="device-close")
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif isinstance(conn, Splice):
            conn.shutdown(code, reason)
        elif conn.transport is not None:  # an HTTP request: nothing to close politely
            conn.transport.abort()


def _listener_key(hc_name: str, listener_id: str) -> tuple[str, str]:
    return hc_name.strip("/").lower(), listener_id


_REQUEST_ENTRY: Final = web.RequestKey("hybridrelay_device_request", _Entry)


@dataclass(frozen=True, slots=True)
class ListenerOwner:
    """The device that owns a listener's control channel (a principal for ``tracked``)."""

    device_id: str
    device: Device | None


class _Principal(Protocol):  # what is used of auth.Principal
    @property
    def device_id(self) -> str | None: ...


class DeviceRegistry:
    """Live connections per device on this node, and what revoking a device cuts."""

    def __init__(self, store: Store, now: Callable[[], float], timelines: DeviceTimelines) -> None:
        self._store = store
        self._now = now
        self._timelines = timelines  # connects and disconnects, per device
        self._entries: dict[str, set[_Entry]] = {}
        self._devices: dict[str, Device] = {}  # latest identity, for renewals
        self._recorded: set[str] = set()  # devices last written as connected
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # (hc, listener id) -> the control channel entry of a device listening there, so
        # the streams spliced to that listener can be attributed to its device.
        self._listeners: dict[tuple[str, str], _Entry] = {}

    # --- the table ------------------------------------------------------------------------

    def _add(self, device_id: str, entry: _Entry, device: Device | None) -> None:
        self._entries.setdefault(device_id, set()).add(entry)
        if device is not None and device.device_id == device_id:
            self._devices[device_id] = device
        if isinstance(entry.connection, ControlChannel):
            channel = entry.connection
            self._listeners[_listener_key(channel.hc_name, channel.listener_id)] = entry

    def _remove(self, device_id: str, entry: _Entry) -> None:
        if isinstance(entry.connection, ControlChannel):
            channel = entry.connection
            key = _listener_key(channel.hc_name, channel.listener_id)
            if self._listeners.get(key) is entry:  # not a channel that took its place
                del self._listeners[key]
        live = self._entries.get(device_id)
        if live is None:
            return
        live.discard(entry)
        if not live:
            del self._entries[device_id]
            self._devices.pop(device_id, None)

    def _connected(self, device_id: str) -> bool:
        return any(e.counts for e in self._entries.get(device_id, ()))

    @property
    def busy(self) -> bool:
        """Whether a re-check or a close started by a change event is still running."""
        return bool(self._tasks)

    def live_devices(self) -> dict[str, int]:
        """DeviceIds with live connections on this node, and how many each has."""
        return {device_id: len(entries) for device_id, entries in self._entries.items()}

    def listener_owner(self, hc_name: str, listener_id: str) -> ListenerOwner | None:
        """The device listening on ``hc_name`` as ``listener_id`` on this node, if it is one.

        A stream spliced to that listener is the device's stream as well: hold it with
        ``tracked(owner, splice, hc_name=..., right=Rights.LISTEN)`` so that disabling
        or deleting the device, or taking its Listen grant away, cuts it.
        """
        entry = self._listeners.get(_listener_key(hc_name, listener_id))
        if entry is None:
            return None
        return ListenerOwner(entry.device_id, self._devices.get(entry.device_id))

    def known_device(self, token_text: str) -> Device | None:
        """The current identity of the device a renewal token names, if it is connected here.

        A listener renewing with a device token (``renewToken``) is checked against this
        (the renewal callback is synchronous); it is kept current by the change events.
        """
        try:
            parsed = parse_device_token(token_text)
        except AuthError:
            return None
        if parsed is None:
            return None
        devices = self._devices
        return next((devices[i] for i in parsed.candidate_ids if i in devices), None)

    # --- bookkeeping in the store ---------------------------------------------------------

    async def _record_state(self, device_id: str) -> None:
        """Write connectionState when it differs from what this node last wrote (serialised)."""
        async with self._write_lock:
            connected = self._connected(device_id)
            if connected == (device_id in self._recorded):
                return
            try:
                await self._store.set_connection_state(device_id, connected, self._now())
            except Exception as exc:  # noqa: BLE001 - bookkeeping must never fail a connection
                log.warning(
                    "device_state_not_recorded", extra={"device": device_id, "error": str(exc)}
                )
                return
            if connected:
                self._recorded.add(device_id)
            else:
                self._recorded.discard(device_id)

    async def _touch(self, device_id: str) -> None:
        try:
            await self._store.touch_activity(device_id, self._now())
        except Exception as exc:  # noqa: BLE001 - bookkeeping must never fail a request
            log.warning(
                "device_activity_not_recorded", extra={"device": device_id, "error": str(exc)}
            )

    # --- what the handlers register -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def tracked(
        self,
        principal: _Principal,
        connection: ControlChannel | Splice,
        *,
        hc_name: str,
        right: Rights,
        device: Device | None = None,
    ) -> AsyncIterator[None]:
        """Hold a device's control channel or relayed stream as live while the block runs.

        The first one makes the device ``connected``, the end of the last one
        ``disconnected``; ``lastActivityTime`` is touched at the start. A principal that
        is not a device (``device_id`` None) is not tracked.

        Args:
            principal: From ``authorize()``.
            connection: The channel (Listen) or splice (Send).
            hc_name: The hybrid connection, to re-check the grants when the device changes.
            right: Listen for a control channel, Send for a stream.
            device: The identity as authorized (kept for token renewals).
        """
        device_id = principal.device_id
        if device_id is None:
            yield
            return
        entry = _Entry(connection, hc_name, right, counts=True, device_id=device_id)
        self._add(device_id, entry, device)
        self._on_timeline(entry, "connected")
        try:
            await self._touch(device_id)
            await self._cut_if_revoked(entry)
            await self._record_state(device_id)
            yield
        finally:
            self._remove(device_id, entry)
            self._on_timeline(entry, "disconnected")
            await self._record_state(device_id)

    def _on_timeline(self, entry: _Entry, kind: Literal["connected", "disconnected"]) -> None:
        conn = entry.connection
        if isinstance(conn, ControlChannel):
            role, code = "listener", entry.cut_code or conn.close_code
        elif entry.right == Rights.LISTEN:
            # A stream spliced to the device's control channel: a busy gateway has
            # thousands, which would push its own connects and refusals out of its
            # bounded timeline.
            return
        else:
            role, code = "sender", entry.cut_code
        reason = ""
        if kind == "disconnected":
            reason = entry.cut_reason or ("closed" if isinstance(conn, ControlChannel) else "ended")
        self._timelines.record(
            entry.device_id,
            TimelineEntry(
                at=self._now(),
                kind=kind,
                hybrid_connection=entry.hc_name,
                role=role,
                reason=reason,
                code=code if kind == "disconnected" else None,
            ),
        )

    async def _cut_if_revoked(self, entry: _Entry) -> None:
        """Close the gap between authorize() and registration (a rendezvous can take seconds).

        A device disabled, deleted or stripped of the grant in that window raised its
        change event before the connection was registered; reading it again catches that.
        """
        try:
            current = await self._store.get_device(entry.device_id)
        except Exception as exc:  # noqa: BLE001 - the change events still apply
            log.warning(
                "device_recheck_failed", extra={"device": entry.device_id, "error": str(exc)}
            )
            return
        if current is None:
            reason = _REASONS["deleted"]
        elif current.status != "enabled":
            reason = _REASONS["disabled"]
        elif not current.grants.allows(entry.hc_name, entry.right):
            reason = _GRANT_REVOKED
        else:
            return
        entry.cut(CLOSE_CODE, reason, self._tasks)

    async def request_started(
        self,
        principal: _Principal,
        request: web.Request,
        *,
        hc_name: str,
        device: Device | None = None,
    ) -> None:
        """Register a device's HTTP request and touch its ``lastActivityTime``.

        Call :meth:`request_finished` in a ``finally`` (safe when nothing was registered).
        Disabling the device aborts the request; it does not change ``connectionState``.
        """
        device_id = principal.device_id
        if device_id is None:
            return
        entry = _Entry(request, hc_name, Rights.SEND, counts=False, device_id=device_id)
        self._add(device_id, entry, device)
        request[_REQUEST_ENTRY] = entry
        await self._touch(device_id)

    def request_finished(self, request: web.Request) -> None:
        """The request :meth:`request_started` registered is over."""
        entry = request.get(_REQUEST_ENTRY)
        if entry is not None:
            self._remove(entry.device_id, entry)

    # --- revocation -----------------------------------------------------------------------

    async def close_device_connections(
        self,
        device_id: str,
        *,
        code: int = CLOSE_CODE,
        reason: str = "the device is disabled",
    ) -> int:
        """Close a device's control channels and streams on this node and abort its requests.

        For the management API (or anything else that revokes a device): control channels
        and relayed streams get ``code`` (1008 by default), HTTP requests are cut. The
        registry entries go when the handlers finish; connectionState follows. Other nodes
        do the same when they see the store's change event (see :meth:`watch`).

        Returns:
            How many connections were closed.
        """
        entries = list(self._entries.get(device_id, ()))
        closing: set[asyncio.Task[None]] = set()
        for entry in entries:
            entry.cut(code, reason, closing)
        if entries:
            log.info(
                "device_connections_closed",
                extra={"device": device_id, "count": len(entries), "reason": reason},
            )
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)
        return len(entries)

    async def _recheck(self, device_id: str, *, deleted: bool, revoke: bool) -> None:
        """A device changed: keep its identity current, cut what its grants no longer cover.

        With ``revoke``, a disabled or deleted device's connections are cut here too (when
        nobody else reports revocations, see :meth:`watch`).
        """
        if device_id not in self._entries:
            return
        device = None if deleted else await self._store.get_device(device_id)
        live = self._entries.get(device_id)
        if live is None:
            return
        if device is None:
            self._devices.pop(device_id, None)  # renewals now fail: unknown device
        else:
            self._devices[device_id] = device  # renewals now see its status and keys
        if device is None or device.status != "enabled":
            if revoke:
                reason = _REASONS["deleted" if device is None else "disabled"]
                await self.close_device_connections(device_id, reason=reason)
            return
        revoked = [e for e in live if not device.grants.allows(e.hc_name, e.right)]
        closing: set[asyncio.Task[None]] = set()
        for entry in revoked:
            entry.cut(CLOSE_CODE, _GRANT_REVOKED, closing)
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

    def _spawn(self, work: Callable[[], Awaitable[object]], name: str) -> None:
        async def guarded() -> None:
            try:
                await work()
            except Exception:  # the top of a task we own: log, keep watching
                log.exception("device_watch_failed", extra={"task": name})

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _recheck_later(
        self, device_ids: Iterable[str], *, revoke: bool, deleted: bool = False
    ) -> None:
        for device_id in device_ids:
            self._spawn(
                functools.partial(self._recheck, device_id, deleted=deleted, revoke=revoke),
                f"device-recheck:{device_id}",
            )

    def on_change(self, event: ChangeEvent, *, revoke: bool) -> None:
        """Store events: ``updated`` devices always; deletions and resets only with ``revoke``."""
        live = self._entries
        if event.kind == "device" and event.name in live:
            if event.op == "updated" or revoke:
                self._recheck_later([event.name], revoke=revoke, deleted=event.op == "deleted")
        elif event.kind == "reset" and revoke:
            self._recheck_later(list(live), revoke=True)

    def on_revoked(self, event: DeviceRevoked) -> None:
        """``Reactions.on_device_revoked``: close a revoked device's connections on this node."""
        live = self._entries
        if event.device_id is None:  # a reset: events may have been missed
            self._recheck_later(list(live), revoke=True)
        elif event.device_id in live:
            self._devices.pop(event.device_id, None)  # renewals now fail
            reason = _REASONS.get(event.reason, "the device was revoked")
            self._spawn(
                functools.partial(self.close_device_connections, event.device_id, reason=reason),
                f"device-close:{event.device_id}",
            )

    @contextlib.asynccontextmanager
    async def watch(self, reactions: Reactions | None) -> AsyncIterator[None]:
        """Cut devices' connections when they are disabled, deleted or lose a grant.

        Revocations (disabled, deleted, a store ``reset``) come from
        ``reactions.on_device_revoked`` when there are reactions, else from the store's
        change events directly; ``updated`` devices are always re-read here to refresh
        the identity that token renewals are checked against and to cut connections
        whose grant was removed. ``app.py`` enters this after the store opens and leaves
        it before the store closes.
        """
        undo: list[Callable[[], None]] = []
        if reactions is not None:
            undo.append(reactions.on_device_revoked(self.on_revoked))
        revoke = reactions is None
        undo.append(self._store.subscribe(lambda event: self.on_change(event, revoke=revoke)))
        try:
            yield
        finally:
            for unsubscribe in undo:
                unsubscribe()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)


DEVICES: Final = web.AppKey("hybridrelay_devices", DeviceRegistry)
