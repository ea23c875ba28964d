"""Lifecycle notifications (issue 5): ``GET /$mgmt/v1/events`` and ``[[webhooks]]``.

:class:`EventHub` (one per relay node, ``app[EVENTS]``) turns what happens into
events and fans them out:

- Every change of the store (:data:`STORE_OP_TYPES`): devices (``createDeviceIdentity``,
  ``updateDeviceIdentity``, ``disableDeviceIdentity``, ``enableDeviceIdentity``,
  ``regenerateDeviceKeys``, ``deleteDeviceIdentity``), hybrid connections
  (``create``/``update``/``disable``/``enable``/``deleteHybridConnection``), SAS rules
  (``create``/``update``/``deleteAuthorizationRule``, ``regenerateAuthorizationRuleKey``)
  and CA certificates (``create``/``update``/``deleteCertificate``,
  ``generateCertificateVerificationCode``, ``verifyCertificate``). The store says what an
  update was (``ChangeEvent.detail``); a plain update is ``update...``. The body is the
  entity as ``GET`` answers it, re-read when the event is published (a deletion's body is
  the last device document this hub saw, else ``{"deviceId"}`` / ``{"name"}``). With a
  shared store (Redis) every node hears of every change, so each node publishes it:
  a subscriber of any node sees the whole cluster's changes.
- Listeners of this node (``hc_endpoints._listen``): ``listenerOnline`` after the 101
  and ``listenerOffline`` when the control channel ends.
- Bulk jobs of this node (``jobs.py``): ``startJob``, then ``completeJob`` or ``failJob``
  (the job document without its error list).

Every event is ``{"sequenceNumber", "properties", "body"}``. ``properties`` has IoT
Hub's names: ``opType``, ``hubName``, ``deviceId`` (absent when no device is
involved) and ``operationTimestamp`` (ISO 8601 UTC, when it happened), plus
``hybridConnection``, ``ruleName``, ``certificateName`` or ``jobId`` naming the entity.
``hubName`` is the relay's public host (``RelayState.via_name``), as IoT Hub puts its
hub's name there; for listener events it is the hybrid connection's name and
``listenerId`` names the listener (``deviceId`` is the device whose token opened it).
No event carries a secret: device bodies have the symmetric key values replaced by null,
rule bodies have no keys, certificate bodies no verification code (events reach webhooks).

``sequenceNumber`` increases by one per event on this node and starts at 1 when the
process starts; events are published in the order they happened on this node. The
last ``[relay] event_history`` events (default :data:`HISTORY`) are kept for resuming.
Sequence numbers are a node's own: resume on the node that numbered them.

Delivery:

- ``GET /$mgmt/v1/events`` (Manage right) with ``Accept: text/event-stream``:
  Server-Sent Events, ``id:`` = sequenceNumber, ``event:`` = opType, ``data:`` = the
  event as JSON, a ``: heartbeat`` comment every 15 s. ``Last-Event-ID`` (or
  ``?lastEventId=``) replays the kept events after it; an id ahead of this node's
  sequence (the node restarted) replays everything kept. ``?since=`` (an ISO 8601 time
  with a zone) replays the kept events that happened at or after it; given both, an
  event must pass both. Live events follow the replay. Without that ``Accept``
  header the answer is 406 (a plain HTTP client would otherwise wait for ever).
- The same URL as a WebSocket upgrade: one JSON text message per event.
- Each subscriber has a bounded queue (``[relay] event_subscriber_queue``, default
  :data:`SUBSCRIBER_QUEUE`). A subscriber that falls that far behind is dropped: it
  gets one final ``error`` event (``{"error": {"code": "SubscriberTooSlow", ...}}``)
  and the stream ends; it may reconnect with ``Last-Event-ID``. One that stops reading
  what it is sent is cut after ``body_idle_timeout`` (a write that long pending). A
  subscriber sends nothing: a WebSocket message over 4 KiB closes it with 1009, and a
  WebSocket subscriber that does not answer a heartbeat ping within half a heartbeat
  is closed (aiohttp's heartbeat, 1006 on our side).
- A stream lasts only as long as the token that opened it would still be accepted
  (``access.until_revoked``): when its rule or key is regenerated, changed or deleted,
  or the token expires, the subscriber gets a final ``error`` event (code
  ``AuthorizationRevoked``; a WebSocket is then closed with 1008) within a second.
- Webhooks: each ``[[webhooks]]`` entry gets the events its ``events`` filter lets
  through, POSTed one by one as JSON in order, through a bounded queue (a full queue
  drops the event with a log line).
- Every drop and cut above is counted by ``limit_hit`` (docs/security.md): the
  subscriber queue, a write stalled past ``body_idle_timeout``, the WebSocket message
  size (``event_stream_message_size``) and heartbeat (``event_stream_heartbeat``), the
  webhook queue (``webhooks.queue_size``)
  and this hub's inbox (``event_inbox``, :data:`INBOX` occurrences waiting to become
  events). A 2xx is delivered; a connection error, timeout,
  408, 429 or 5xx is retried with full-jitter exponential backoff up to
  ``max_attempts``; other answers and the last failed attempt give up with a
  ``webhook_gave_up`` log line. The relay's URL of the event is never logged with
  a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import WebSocketError, WSMsgType, web

from hybridrelay.backoff import Backoff
from hybridrelay.errors import HybridRelayError, ValidationError
from hybridrelay.logs import RELAY, redact_url
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.relay.config import WebhookConfig
from hybridrelay.relay.handshake import is_websocket
from hybridrelay.relay.mgmt.access import authorize_manage, until_revoked
from hybridrelay.relay.middleware import ACTION_KEY, error_response
from hybridrelay.relay.state import STATE
from hybridrelay.relay.store.base import Store
from hybridrelay.relay.store.models import ChangeEvent, Device, format_time, parse_time

__all__ = [
    "EVENTS",
    "HEARTBEAT_S",
    "HISTORY",
    "INBOX",
    "JOB_OP_TYPES",
    "LISTENER_OP_TYPES",
    "STORE_OP_TYPES",
    "SUBSCRIBER_QUEUE",
    "Event",
    "EventHub",
    "Subscription",
    "handle_events",
]

log = logging.getLogger(RELAY)

HISTORY: Final = 1000
SUBSCRIBER_QUEUE: Final = 256
HEARTBEAT_S: Final = 15.0
INBOX: Final = 10_000  # occurrences waiting to become events (device re-reads are async)
# A subscriber sends nothing (its close ends the stream): a message this big is hostile.
_SUBSCRIBER_MESSAGE: Final = 4096
_DOC_CACHE: Final = 10_000  # last known device documents, for the bodies of deletions
_MAX_EVENT_ID: Final = 2**63

# A store change (kind, op, detail) -> its opType; a detail the table does not know falls
# back to (kind, op, None). Device names are IoT Hub's; the rest follow the same pattern.
STORE_OP_TYPES: Final[dict[tuple[str, str, str | None], str]] = {
    ("device", "created", None): "createDeviceIdentity",
    ("device", "updated", None): "updateDeviceIdentity",
    ("device", "updated", "disabled"): "disableDeviceIdentity",
    ("device", "updated", "enabled"): "enableDeviceIdentity",
    ("device", "updated", "keys"): "regenerateDeviceKeys",
    ("device", "deleted", None): "deleteDeviceIdentity",
    ("hybridConnection", "created", None): "createHybridConnection",
    ("hybridConnection", "updated", None): "updateHybridConnection",
    ("hybridConnection", "updated", "disabled"): "disableHybridConnection",
    ("hybridConnection", "updated", "enabled"): "enableHybridConnection",
    ("hybridConnection", "deleted", None): "deleteHybridConnection",
    ("rule", "created", None): "createAuthorizationRule",
    ("rule", "updated", None): "updateAuthorizationRule",
    ("rule", "updated", "keys"): "regenerateAuthorizationRuleKey",
    ("rule", "deleted", None): "deleteAuthorizationRule",
    ("certificate", "created", None): "createCertificate",
    ("certificate", "updated", None): "updateCertificate",
    ("certificate", "updated", "verificationCode"): "generateCertificateVerificationCode",
    ("certificate", "updated", "verified"): "verifyCertificate",
    ("certificate", "deleted", None): "deleteCertificate",
}
LISTENER_OP_TYPES: Final = ("listenerOnline", "listenerOffline")
JOB_OP_TYPES: Final[dict[str, str]] = {
    "running": "startJob",
    "completed": "completeJob",
    "failed": "failJob",
}
# The job fields an event carries (not the error list: it may be 1,000 entries long).
_JOB_FIELDS: Final = (
    "jobId",
    "type",
    "status",
    "progress",
    "startTime",
    "endTime",
    "deviceCount",
    "failureReason",
    "succeeded",
    "failed",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One published event; ``data`` is its JSON text (what every transport sends)."""

    sequence: int
    op_type: str
    data: str
    at: float = 0.0  # when it happened (operationTimestamp), for ``since`` replays


@dataclass(frozen=True, slots=True)
class _Occurrence:
    op_type: str
    hub_name: str
    device_id: str | None
    at: float
    listener_id: str | None = None
    change: ChangeEvent | None = None  # a store change: its body is read when published
    body: dict[str, object] | None = None  # a ready body (jobs)


_TOO_SLOW: Final = "SubscriberTooSlow"
_REVOKED: Final = "AuthorizationRevoked"
_MESSAGES: Final = {
    _TOO_SLOW: "the subscriber fell too far behind; reconnect with Last-Event-ID",
    _REVOKED: "the token that opened this stream is no longer valid",
}


class _Closed:
    """The end of a subscription: the hub stopped, the subscriber was too slow, or the
    token that opened it no longer would (``error`` names which; ``reason`` says why)."""

    __slots__ = ("error", "reason")

    def __init__(self, error: str | None, reason: str = "") -> None:
        self.error = error
        self.reason = reason


class Subscription:
    """One subscriber: replayed events first, then live ones; ``None`` from get() ends it."""

    def __init__(self, replay: list[Event], size: int) -> None:
        self._replay = deque(replay)
        self._queue: asyncio.Queue[Event | _Closed] = asyncio.Queue(maxsize=size + 1)
        self._size = size
        self.closed: _Closed | None = None

    def _offer(self, event: Event) -> bool:
        """Queue ``event``; False when the subscriber is too far behind (then it is closed)."""
        if self.closed is not None:
            return True
        if self._queue.qsize() >= self._size:
            self._close(_TOO_SLOW)
            return False
        self._queue.put_nowait(event)
        return True

    def _close(self, error: str | None, reason: str = "") -> None:
        if self.closed is not None:
            return
        self.closed = _Closed(error, reason)
        # What is queued is dropped: the subscriber resumes with Last-Event-ID.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(self.closed)

    async def get(self) -> Event | _Closed:
        if self._replay:
            return self._replay.popleft()
        return await self._queue.get()


class _Webhook:
    """One ``[[webhooks]]`` target: a bounded queue and one delivering task."""

    def __init__(
        self,
        config: WebhookConfig,
        rng: random.Random,
        limit_hit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.config = config
        self._rng = rng
        self._limit_hit = limit_hit
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=config.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._where = redact_url(config.url)

    def wants(self, event: Event) -> bool:
        return not self.config.events or event.op_type in self.config.events

    def offer(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._limit_hit("webhooks.queue_size")
            log.warning(
                "webhook_queue_full",
                extra={"url": self._where, "sequence": event.sequence, "event": event.op_type},
            )

    def start(self, session: aiohttp.ClientSession) -> None:
        self._task = asyncio.create_task(self._run(session), name=f"webhook:{self._where}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._deliver(session, event)
            except Exception:  # top level of a task we own: log our bug, keep delivering
                log.exception("webhook_failed", extra={"url": self._where})

    async def _deliver(self, session: aiohttp.ClientSession, event: Event) -> None:
        cfg = self.config
        headers = {"Content-Type": "application/json", "X-HybridRelay-Event": event.op_type}
        if cfg.header_name is not None and cfg.header_value is not None:
            headers[cfg.header_name] = cfg.header_value.value
        backoff = Backoff(base=cfg.retry_base_delay, cap=cfg.retry_max_delay, rng=self._rng)
        why = ""
        for attempt in range(1, cfg.max_attempts + 1):
            try:
                async with session.post(
                    cfg.url,
                    data=event.data.encode("utf-8"),
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=cfg.timeout),
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = type(exc).__name__
            else:
                if 200 <= status < 300:
                    return
                why = f"HTTP {status}"
                if not (status in (408, 429) or status >= 500):
                    break
            if attempt < cfg.max_attempts:
                log.info(
                    "webhook_retry",
                    extra={"url": self._where, "sequence": event.sequence, "why": why},
                )
                await asyncio.sleep(backoff.next_delay())
        log.warning(
            "webhook_gave_up",
            extra={
                "url": self._where,
                "sequence": event.sequence,
                "event": event.op_type,
                "why": why,
            },
        )


def _redacted(doc: dict[str, object]) -> dict[str, object]:
    auth = doc.get("authentication")
    if isinstance(auth, dict) and isinstance(auth.get("symmetricKey"), dict):
        doc = {
            **doc,
            "authentication": {**auth, "symmetricKey": {"primaryKey": None, "secondaryKey": None}},
        }
    return doc


class EventHub:
    """This node's lifecycle events: sequence, history, subscribers and webhooks."""

    def __init__(
        self,
        *,
        history: int = HISTORY,
        queue_size: int = SUBSCRIBER_QUEUE,
        heartbeat: float = HEARTBEAT_S,
        now: Callable[[], float] = time.time,
        limit_hit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.heartbeat = heartbeat
        self.limit_hit = limit_hit
        self._queue_size = queue_size
        self._now = now
        self._sequence = 0
        self._history: deque[Event] = deque(maxlen=history)
        self._subscribers: set[Subscription] = set()
        self._webhooks: list[_Webhook] = []
        self._docs: OrderedDict[str, dict[str, object]] = OrderedDict()
        self._inbox: asyncio.Queue[_Occurrence] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._store: Store | None = None  # set by start()
        self._hub_name: Callable[[], str] = lambda: ""

    @property
    def sequence(self) -> int:
        """The sequence number of the last published event (0: none yet)."""
        return self._sequence

    # --- lifecycle ------------------------------------------------------------------------

    async def start(
        self,
        store: Store,
        *,
        hub_name: Callable[[], str],
        webhooks: Sequence[WebhookConfig] = (),
        rng: random.Random,
    ) -> None:
        """Publish the store's changes (and this node's own events) until :meth:`stop`.

        Args:
            store: Whose change events become events, and where their bodies are read.
            hub_name: The relay's public host (``RelayState.via_name``), read per event:
                it is only known once the relay is bound.
            webhooks: Where events are POSTed.
            rng: For the webhooks' retry jitter.
        """
        if self._worker is not None:
            return
        self._store = store
        self._hub_name = hub_name
        self._inbox = asyncio.Queue(maxsize=INBOX)
        self._worker = asyncio.create_task(self._work(self._inbox), name="events:publish")
        self._unsubscribe = store.subscribe(self.on_change)
        self._webhooks = [_Webhook(w, rng, self.limit_hit) for w in webhooks]
        if self._webhooks:
            self._session = aiohttp.ClientSession()
            for webhook in self._webhooks:
                webhook.start(self._session)

    def close_subscribers(self) -> None:
        """End every stream (at shutdown, so that no handler waits for its heartbeat)."""
        for subscription in list(self._subscribers):
            subscription._close(None)
        self._subscribers.clear()

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.close_subscribers()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for webhook in self._webhooks:
            await webhook.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._inbox = None

    # --- what happens ---------------------------------------------------------------------

    def on_change(self, event: ChangeEvent) -> None:
        """The store callback: every change of an entity becomes an event (a reset does not)."""
        if self._store is None:
            return
        op = STORE_OP_TYPES.get((event.kind, event.op, event.detail)) or STORE_OP_TYPES.get(
            (event.kind, event.op, None)
        )
        if op is None:
            return  # "reset": events were missed, there is nothing to name
        device_id = event.name if event.kind == "device" else None
        self._enqueue(_Occurrence(op, self._hub_name(), device_id, self._now(), change=event))

    def publish_job(self, job: dict[str, object]) -> None:
        """A bulk job of this node started, completed or failed (``job``: its document)."""
        op = JOB_OP_TYPES.get(str(job.get("status")))
        if op is None or self._store is None:
            return
        body: dict[str, object] = {k: job[k] for k in _JOB_FIELDS if k in job}
        self._enqueue(_Occurrence(op, self._hub_name(), None, self._now(), body=body))

    def publish_listener(
        self, online: bool, hc_name: str, listener_id: str, device: Device | None = None
    ) -> None:
        """A listener of this node came online (after the 101) or went offline."""
        self._enqueue(
            _Occurrence(
                "listenerOnline" if online else "listenerOffline",
                hc_name,
                device.device_id if device is not None else None,
                self._now(),
                listener_id,
            )
        )

    def _enqueue(self, occurrence: _Occurrence) -> None:
        if self._inbox is None:
            return  # not started (or stopped): nobody can receive it
        try:
            self._inbox.put_nowait(occurrence)
        except asyncio.QueueFull:
            self.limit_hit("event_inbox")
            log.warning("event_dropped", extra={"event": occurrence.op_type})

    # --- publishing -----------------------------------------------------------------------

    async def _work(self, inbox: asyncio.Queue[_Occurrence]) -> None:
        while True:
            occurrence = await inbox.get()
            try:
                await self._handle(occurrence)
            except Exception:  # top level of a task we own: log our bug, keep publishing
                log.exception("event_failed", extra={"event": occurrence.op_type})

    async def _device_doc(self, device_id: str) -> dict[str, object] | None:
        if self._store is None:
            return None
        device = await self._store.get_device(device_id)
        if device is None:
            self._docs.pop(device_id, None)
            return None
        doc = _redacted(device.to_json())
        self._docs[device_id] = doc
        self._docs.move_to_end(device_id)
        while len(self._docs) > _DOC_CACHE:
            self._docs.popitem(last=False)
        return doc

    async def _store_body(self, change: ChangeEvent) -> dict[str, object]:
        """The entity as it is now (deletions: as last seen), without a key or code."""
        name, store = change.name, self._store
        if change.kind == "device":
            if change.op == "deleted":
                return self._docs.pop(name, {}) or {"deviceId": name}
            return await self._device_doc(name) or {"deviceId": name}
        if change.op == "deleted" or store is None:
            return {"name": name}
        if change.kind == "hybridConnection":
            hc = await store.get(name)
            return hc.to_json() if hc is not None else {"name": name}
        if change.kind == "rule":
            for rule in await store.list_rules(change.scope):
                if rule.name.lower() == name.lower():
                    return rule.to_json(include_keys=False)
            return {"name": name}
        cert = await store.get_certificate(name)
        if cert is None:
            return {"name": name}
        # The proof-of-possession code goes to the admin who asked for it, not to webhooks.
        return {**cert.to_json(), "verificationCode": None}

    async def _handle(self, o: _Occurrence) -> None:
        body: dict[str, object]
        properties: dict[str, object] = {"opType": o.op_type, "hubName": o.hub_name}
        change = o.change
        if change is not None:
            try:
                body = await self._store_body(change)
            except HybridRelayError:  # the store is unreachable: the event still goes out
                body = {"deviceId" if change.kind == "device" else "name": change.name}
            if change.kind == "hybridConnection":
                properties["hybridConnection"] = change.name
            elif change.kind == "rule":
                properties["ruleName"] = change.name
                if change.scope is not None:
                    properties["hybridConnection"] = change.scope
            elif change.kind == "certificate":
                properties["certificateName"] = change.name
        elif o.body is not None:
            body = o.body
            properties["jobId"] = o.body.get("jobId")
        else:
            body = {"hybridConnection": o.hub_name, "listenerId": o.listener_id}
        if o.device_id is not None:
            properties["deviceId"] = o.device_id
        properties["operationTimestamp"] = format_time(o.at)
        if o.listener_id is not None:
            properties["listenerId"] = o.listener_id
        self.publish(o.op_type, properties, body, at=o.at)

    def publish(
        self, op_type: str, properties: dict[str, object], body: object, *, at: float | None = None
    ) -> Event:
        """Number an event, keep it in the history and hand it to every subscriber."""
        self._sequence += 1
        doc = {"sequenceNumber": self._sequence, "properties": properties, "body": body}
        data = json.dumps(doc, separators=(",", ":"))
        event = Event(self._sequence, op_type, data, self._now() if at is None else at)
        self._history.append(event)
        for subscription in list(self._subscribers):
            if not subscription._offer(event):
                self._subscribers.discard(subscription)
                self.limit_hit("event_subscriber_queue")
                log.warning("event_subscriber_dropped", extra={"sequence": event.sequence})
        for webhook in self._webhooks:
            if webhook.wants(event):
                webhook.offer(event)
        return event

    # --- subscribers ----------------------------------------------------------------------

    def subscribe(
        self, last_event_id: int | None = None, since: float | None = None
    ) -> Subscription:
        """A new subscriber; the kept events after ``last_event_id`` and at or after
        ``since`` (a Unix time) come first, when either is given."""
        replay: list[Event] = []
        if last_event_id is not None or since is not None:
            after = last_event_id or 0
            if after > self._sequence:  # this node restarted: its numbers began again
                after = 0
            oldest = since if since is not None else float("-inf")
            replay = [e for e in self._history if e.sequence > after and e.at >= oldest]
        subscription = Subscription(replay, self._queue_size)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        subscription._close(None)

    def revoke(self, subscription: Subscription, reason: str) -> None:
        """End a subscription whose authorization lapsed; its last event says so."""
        self._subscribers.discard(subscription)
        subscription._close(_REVOKED, reason)


# --- GET /$mgmt/v1/events ----------------------------------------------------------------------


EVENTS: Final = web.AppKey("hybridrelay_events", EventHub)


def _last_event_id(request: web.Request) -> int | None:
    text = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
    if text is None or not text.strip():
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        raise ValidationError("Last-Event-ID", "must be the sequenceNumber of an event")
    value = int(text)
    if value >= _MAX_EVENT_ID:
        raise ValidationError("Last-Event-ID", "must be the sequenceNumber of an event")
    return value


def _since(request: web.Request) -> float | None:
    text = request.query.get("since")
    if text is None or not text.strip():
        return None
    if len(text) > 64:
        raise ValidationError("since", "must be an ISO 8601 time with a zone")
    return parse_time("since", text.strip())


def _sse_frame(event: Event) -> bytes:
    return f"id: {event.sequence}\nevent: {event.op_type}\ndata: {event.data}\n\n".encode()


def _error_doc(closed: _Closed) -> str:
    code = closed.error or ""
    message = _MESSAGES.get(code, "")
    if closed.reason:
        message = f"{message}: {closed.reason}"
    return json.dumps({"error": {"code": code, "message": message}})


async def _next(hub: EventHub, subscription: Subscription) -> Event | _Closed | None:
    """The next event or end; None when a heartbeat is due."""
    try:
        async with asyncio.timeout(hub.heartbeat):
            return await subscription.get()
    except TimeoutError:
        return None


async def _write(
    request: web.Request, hub: EventHub, idle: float, write: Awaitable[object]
) -> None:
    """One write to a subscriber; one that stops reading is cut after ``idle`` seconds.

    Without it the handler would wait for ever on a full socket buffer (the queue
    behind it only drops the subscriber, it cannot unblock the write).
    """
    try:
        async with asyncio.timeout(idle):
            await write
    except TimeoutError as exc:
        hub.limit_hit("body_idle_timeout")
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("the subscriber stopped reading") from exc


async def _serve_sse(
    request: web.Request, hub: EventHub, subscription: Subscription, write_timeout: float
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        await _write(request, hub, write_timeout, response.write(b": connected\n\n"))
        while True:
            item = await _next(hub, subscription)
            if item is None:
                await _write(request, hub, write_timeout, response.write(b": heartbeat\n\n"))
            elif isinstance(item, _Closed):
                if item.error is not None:
                    frame = f"event: error\ndata: {_error_doc(item)}\n\n".encode()
                    await _write(request, hub, write_timeout, response.write(frame))
                break
            else:
                await _write(request, hub, write_timeout, response.write(_sse_frame(item)))
    return response


async def _serve_websocket(
    request: web.Request, hub: EventHub, subscription: Subscription, write_timeout: float
) -> web.StreamResponse:
    ws = web.WebSocketResponse(
        heartbeat=hub.heartbeat, compress=False, max_msg_size=_SUBSCRIBER_MESSAGE
    )
    await ws.prepare(request)

    async def read() -> None:
        # Nothing is expected from the subscriber; its close ends the subscription.
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                error = ws.exception()
                if isinstance(error, WebSocketError) and error.code == CloseCode.MESSAGE_TOO_BIG:
                    hub.limit_hit("event_stream_message_size")
                elif isinstance(error, TimeoutError):  # no pong for half a heartbeat
                    hub.limit_hit("event_stream_heartbeat")
        hub.unsubscribe(subscription)

    reader = asyncio.create_task(read(), name="events:ws-read")
    code, reason = CloseCode.NORMAL, b""
    try:
        while not ws.closed:
            item = await _next(hub, subscription)
            if item is None:
                continue  # aiohttp's heartbeat pings
            if isinstance(item, _Closed):
                if item.error is not None:
                    await _write(request, hub, write_timeout, ws.send_str(_error_doc(item)))
                if item.error == _REVOKED:
                    # RFC 6455 §7.4.1: 1008, the policy (this token) no longer allows it.
                    code, reason = CloseCode.POLICY_VIOLATION, item.reason.encode("utf-8")[:120]
                break
            await _write(request, hub, write_timeout, ws.send_str(item.data))
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(ConnectionError):
            await _write(request, hub, write_timeout, ws.close(code=code, message=reason))
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return ws


async def handle_events(request: web.Request) -> web.StreamResponse:
    """``/$mgmt/v1/events``: Server-Sent Events or a WebSocket (Manage right)."""
    request[ACTION_KEY] = "mgmt"
    if request.method != "GET":
        refusal = error_response(405, "MethodNotAllowed", f"{request.method} is not allowed here")
        refusal.headers["Allow"] = "GET"
        return refusal
    state = request.app[STATE]
    manager = await authorize_manage(request, state)
    last = _last_event_id(request)
    since = _since(request)
    upgrade = is_websocket(request.headers.get("Upgrade", ""))
    if not upgrade and "text/event-stream" not in request.headers.get("Accept", "").lower():
        return error_response(
            406,
            "NotAcceptable",
            "this is an event stream: send Accept: text/event-stream, or upgrade to a WebSocket",
        )
    hub = request.app[EVENTS]
    subscription = hub.subscribe(last, since)

    async def guard() -> None:
        # Authorized once above, but a stream may last for days: end it when its
        # token would no longer be accepted (access.until_revoked).
        try:
            reason = await until_revoked(request, state, manager)
        except Exception:  # the top of a task we own; fail closed: a stream unchecked ends
            log.exception("event_stream_recheck_failed", extra={"who": manager.who})
            reason = "the authorization could not be checked again"
        log.info("event_stream_revoked", extra={"who": manager.who, "reason": reason})
        hub.revoke(subscription, reason)

    watch = asyncio.create_task(guard(), name="events:authorization")
    try:
        # A subscriber that stops reading is cut like an HTTP-mode sender that does.
        write_timeout = state.config.relay.body_idle_timeout
        if upgrade:
            return await _serve_websocket(request, hub, subscription, write_timeout)
        return await _serve_sse(request, hub, subscription, write_timeout)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        hub.unsubscribe(subscription)
