"""The Redis store's engine: keys, conditional writes, retries, the change channel.

Writes are optimistic: read, decide in Python, then a Lua script compares the etag
(or the rule's stored JSON) it read and writes only if nothing changed meanwhile,
publishing the change event in the same script; :meth:`RedisEngine._retrying` reads
again when the script saw a change. Events from other nodes arrive on the
``hr:P:changes`` channel and go to this node's subscribers.

The aggregates (hybrid_connections.py, devices.py, certificates.py) build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Final, Literal, TypeVar

from hybridrelay.backoff import Backoff
from hybridrelay.errors import ConflictError, UnavailableError, ValidationError
from hybridrelay.logs import RELAY
from hybridrelay.relay.store.base import ChangeCallback
from hybridrelay.relay.store.checks import compact_json
from hybridrelay.relay.store.events import ChangeHub
from hybridrelay.relay.store.last_known import Breaker
from hybridrelay.relay.store.models import (
    CHANGE_DETAILS,
    ChangeDetail,
    ChangeEvent,
    ChangeKind,
    ChangeOp,
)
from hybridrelay.relay.store.records import Minter
from hybridrelay.relay.store.redis_adapter import RedisAdapter, Script

__all__ = ["REPLY_TIMEOUT", "ChangedError", "RedisEngine", "check_name", "decode_failure"]

log = logging.getLogger(RELAY)
T = TypeVar("T")

_PREFIX: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_ATTEMPTS: Final = 64
_POLL: Final = 1.0  # pub/sub read timeout; lets the loop notice a dead link
_READY_TIMEOUT: Final = 5.0
REPLY_TIMEOUT: Final = 3.0  # a Redis that hangs fails requests in this, not never
_KINDS: Final[dict[str, ChangeKind]] = {
    "hybridConnection": "hybridConnection",
    "rule": "rule",
    "device": "device",
    "certificate": "certificate",
}
_OPS: Final[dict[str, ChangeOp]] = {
    "created": "created",
    "updated": "updated",
    "deleted": "deleted",
}
_DETAILS: Final[dict[str, ChangeDetail]] = {d: d for d in CHANGE_DETAILS}

# KEYS[1] entity hash. ARGV: mode (create|update), expected etag ("" = none), doc, etag,
# channel, event ("" = publish nothing).
_PUT_DOC: Final = """
local cur = redis.call('HGET', KEYS[1], 'etag')
if ARGV[1] == 'create' and cur then return 'exists' end
if ARGV[1] == 'update' and not cur then return 'missing' end
if ARGV[1] == 'update' and cur ~= ARGV[2] then return 'changed' end
redis.call('HSET', KEYS[1], 'doc', ARGV[3], 'etag', ARGV[4])
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return 'ok'
"""

# KEYS[1] entity hash. ARGV: expected etag, channel, event.
_DELETE_DOC: Final = """
if redis.call('HGET', KEYS[1], 'etag') ~= ARGV[1] then return 'changed' end
redis.call('DEL', KEYS[1])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 'ok'
"""


class ChangedError(Exception):
    """The entity changed between our read and our conditional write: read again."""


def check_name(field: str, value: str) -> None:
    """Refuse a key prefix or node id that could break the hash tags or CLIENT SETNAME."""
    # No '{' or '}' (they would break the hash tags) and nothing CLIENT SETNAME refuses.
    if not _PREFIX.match(value):
        raise ValidationError(field, "1-64 letters, digits, '.', '_' or '-'")


def decode_failure(hash_key: str, exc: Exception) -> UnavailableError:
    """The error for a record this relay cannot read (written by something else)."""
    return UnavailableError(f"store: unreadable record {hash_key}: {exc}")


class RedisEngine:
    """One Redis connection, the conditional-write scripts, and change events both ways."""

    def __init__(self, redis: RedisAdapter, *, prefix: str, minter: Minter, node_id: str) -> None:
        check_name("prefix", prefix)
        self._redis = redis
        self._minter = minter
        self._node = node_id
        self._base = f"hr:{prefix}:"
        self._channel = f"{self._base}changes"
        self._put_doc: Script = redis.script(_PUT_DOC)
        self._delete_doc: Script = redis.script(_DELETE_DOC)
        self._hub = ChangeHub()
        # Open while Redis is unreachable: the aggregates serve last-known answers.
        self._down = Breaker()
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._redis.aclose()

    async def _resync(self) -> None:
        """Called when the change channel is back after an outage, before the reset event."""

    # --- events, retries, conditional writes ----------------------------------------------

    def _message(self, event: ChangeEvent) -> str:
        doc: dict[str, object] = {
            "o": self._node,
            "k": event.kind,
            "p": event.op,
            "n": event.name,
            "s": event.scope,
        }
        if event.detail is not None:  # absent, not null: what older nodes sent
            doc["d"] = event.detail
        return compact_json(doc)

    def _emit(self, event: ChangeEvent) -> None:
        self._hub.emit(event)

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        return self._hub.subscribe(callback)

    def _on_message(self, text: str) -> None:
        try:
            doc = json.loads(text)
        except ValueError:
            log.warning("store_event_undecodable")
            return
        if not isinstance(doc, dict) or doc.get("o") == self._node:
            return  # our own change: subscribers here heard of it when the write returned
        kind = _KINDS.get(str(doc.get("k")))
        op = _OPS.get(str(doc.get("p")))
        name = doc.get("n")
        scope = doc.get("s")
        if kind is None or op is None or not isinstance(name, str):
            log.warning("store_event_undecodable")
            return
        self._emit(
            ChangeEvent(
                kind=kind,
                op=op,
                name=name,
                scope=scope if isinstance(scope, str) else None,
                detail=_DETAILS.get(str(doc.get("d"))),  # unknown or absent: a plain update
            )
        )

    async def _start_listener(self) -> None:
        ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(ready), name="hybridrelay-store-events")
        waiter = asyncio.create_task(ready.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, self._listener},
                timeout=_READY_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if self._listener in done:
            self._listener.result()  # re-raises what stopped it
        if not ready.is_set():
            raise UnavailableError("redis: the change channel did not subscribe in time")

    async def _listen(self, ready: asyncio.Event) -> None:
        # Owned by the store: started in open(), cancelled in close().
        backoff = Backoff(base=0.1, cap=5.0, stable_after=30.0)
        while True:
            try:
                async with self._redis.subscription(self._channel) as subscription:
                    backoff.succeeded(time.monotonic())
                    self._down.reset()  # reachable again: no more last-known answers
                    if ready.is_set():
                        # A Redis that restarted empty gets the config's entities back
                        # (idempotent when they are there).
                        await self._resync()
                        # Events published while we were away are lost: caches must go.
                        self._emit(ChangeEvent(kind="reset", op="updated", name=""))
                    ready.set()
                    while True:
                        text = await subscription.get(_POLL)
                        if text is not None:
                            self._on_message(text)
            except UnavailableError as exc:
                backoff.failed(time.monotonic())
                delay = backoff.next_delay()
                log.warning(
                    "store_events_disconnected", extra={"error": str(exc), "retry_in": delay}
                )
                await asyncio.sleep(delay)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        for _ in range(_MAX_ATTEMPTS):
            try:
                return await attempt()
            except ChangedError:
                continue
        raise ConflictError("too many concurrent changes to the same entity; try again")

    async def _write_doc(
        self,
        hash_key: str,
        *,
        mode: Literal["create", "update"],
        expected: str,
        doc: dict[str, object],
        etag: str,
        event: ChangeEvent,
    ) -> str:
        status = await self._put_doc(
            [hash_key],
            [mode, expected, compact_json(doc), etag, self._channel, self._message(event)],
        )
        if status == "ok":
            self._emit(event)
        return status
