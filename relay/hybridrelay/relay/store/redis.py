"""The store on Redis, shared by several relay nodes (redis-py asyncio behind one adapter).

Layout under ``hr:{prefix}:`` (``{...}`` after ``hc:``/``dev:`` is a Redis Cluster hash
tag, so each entity lives in one slot and every script touches exactly one key):

    hr:P:hc:{name}   hash: doc (JSON), etag, r:<rule> (JSON) per rule of the HC
    hr:P:ns          hash: r:<rule> per namespace rule
    hr:P:hcs         sorted set, score 0: lower-cased HC names (the listing index)
    hr:P:dev:{id}    hash: doc (JSON), etag, cs, cst, lat (connection state, its time,
                     last activity: kept apart so they never change the etag)
    hr:P:devs        sorted set, score 0: deviceIds
    hr:P:cert:{name} hash: doc (JSON), etag: a CA certificate (store/certificates.py)
    hr:P:certs       sorted set, score 0: CA certificate names
    hr:P:changes     pub/sub channel of change events

Writes are optimistic: read, decide in Python, then a Lua script compares the etag
(or the rule's stored JSON) it read and writes only if nothing changed meanwhile,
publishing the change event in the same script. Of two concurrent If-Match writes
exactly one passes; the other re-reads and fails with 412. Index entries are added
before an entity and removed after it, so a listing can meet a dangling name (skipped)
but never misses an entity.

Nothing is cached for normal operation: every lookup is one round trip (``resolve``
pipelines its candidates), so a change is visible to every node at once. The last
answers read are kept only to be served while Redis is unreachable (last_known.py).
Change events still go to subscribers on every node, for the relay's own caches and
open connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Final, Literal, TypeVar

from hybridrelay.backoff import Backoff
from hybridrelay.errors import (
    ConflictError,
    EntityNotFoundError,
    PreconditionFailedError,
    QuotaExceededError,
    UnavailableError,
    ValidationError,
)
from hybridrelay.logs import RELAY
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.config import RelayConfig
from hybridrelay.relay.store.base import ChangeCallback
from hybridrelay.relay.store.certificates import CaCertificate, stored_certificate
from hybridrelay.relay.store.last_known import Breaker, LastKnown
from hybridrelay.relay.store.models import (
    CHANGE_DETAILS,
    MAX_RULES_PER_SCOPE,
    ChangeDetail,
    ChangeEvent,
    ChangeKind,
    ChangeOp,
    Device,
    HybridConnection,
    KeyKind,
    Page,
    Rule,
    check_hybrid_connection,
    check_rule_name,
    validate_device_id,
)
from hybridrelay.relay.store.records import (
    Clock,
    Minter,
    RandomBytes,
    check_limit,
    config_hybrid_connections,
    config_namespace_rules,
    decode_continuation,
    device_change_detail,
    encode_continuation,
    etag_matches,
    hc_key,
    new_device,
    replaced_device,
    same_settings,
    status_detail,
    stored_hybrid_connection,
)
from hybridrelay.relay.store.redis_adapter import RedisAdapter, Script

__all__ = ["RedisStore"]

log = logging.getLogger(RELAY)
T = TypeVar("T")

_PREFIX: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_ATTEMPTS: Final = 64
_TOUCH_INTERVAL: Final = 1.0
_POLL: Final = 1.0  # pub/sub read timeout; lets the loop notice a dead link
_READY_TIMEOUT: Final = 5.0
_REPLY_TIMEOUT: Final = 3.0  # a Redis that hangs fails requests in this, not never
_MAX_NAME: Final = 260
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

# KEYS[1] scope hash. ARGV: field, expected JSON ("" = absent), new JSON ("" = delete),
# quota (0 = none), needs doc ("1": the hash must hold a hybrid connection), channel, event.
_PUT_RULE: Final = """
if ARGV[5] == '1' and redis.call('HEXISTS', KEYS[1], 'doc') == 0 then return 'missing' end
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if cur ~= ARGV[2] then return 'changed' end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  local quota = tonumber(ARGV[4])
  if cur == '' and quota > 0 then
    local n = 0
    for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
      if string.sub(f, 1, 2) == 'r:' then n = n + 1 end
    end
    if n >= quota then return 'quota' end
  end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
return 'ok'
"""

# KEYS[1] device hash. ARGV: connection state, its time. Unknown devices stay unknown.
_SET_STATE: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
redis.call('HSET', KEYS[1], 'cs', ARGV[1], 'cst', ARGV[2])
return 'ok'
"""

# KEYS[1] device hash. ARGV: time; lastActivityTime only moves forward.
_TOUCH: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local cur = tonumber(redis.call('HGET', KEYS[1], 'lat') or '0')
if tonumber(ARGV[1]) > cur then redis.call('HSET', KEYS[1], 'lat', ARGV[1]) end
return 'ok'
"""


class _ChangedError(Exception):
    """The entity changed between our read and our conditional write: read again."""


def _json(doc: dict[str, object]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _check_name(field: str, value: str) -> None:
    # No '{' or '}' (they would break the hash tags) and nothing CLIENT SETNAME refuses.
    if not _PREFIX.match(value):
        raise ValidationError(field, "1-64 letters, digits, '.', '_' or '-'")


def _config_owned(doc: str) -> bool:
    try:
        parsed = json.loads(doc)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("configOwned") is True


def _time(text: str | None) -> float | None:
    return None if text is None else float(text)


class RedisStore:
    """:class:`~hybridrelay.relay.store.base.Store` on Redis; open with :meth:`open`."""

    def __init__(self, redis: RedisAdapter, *, prefix: str, minter: Minter, node_id: str) -> None:
        _check_name("prefix", prefix)
        self._redis = redis
        self._minter = minter
        self._node = node_id
        base = f"hr:{prefix}:"
        self._base = base
        self._ns = f"{base}ns"
        self._hc_index = f"{base}hcs"
        self._dev_index = f"{base}devs"
        self._channel = f"{base}changes"
        self._put_doc: Script = redis.script(_PUT_DOC)
        self._delete_doc: Script = redis.script(_DELETE_DOC)
        self._put_rule_script: Script = redis.script(_PUT_RULE)
        self._set_state: Script = redis.script(_SET_STATE)
        self._touch: Script = redis.script(_TOUCH)
        self._subscribers: list[ChangeCallback] = []
        # Served only while Redis is unreachable (last_known.py).
        self._down = down = Breaker()
        self._last_resolved: LastKnown[tuple[HybridConnection, str] | None] = LastKnown(
            "resolve", breaker=down
        )
        self._last_hc: LastKnown[HybridConnection | None] = LastKnown(
            "hybrid connection", breaker=down
        )
        self._last_rules: LastKnown[tuple[Rule, ...]] = LastKnown(
            "namespace rules", limit=1, breaker=down
        )
        self._last_devices: LastKnown[Device | None] = LastKnown("device", breaker=down)
        self._last_touch: dict[str, float] = {}
        self._listener: asyncio.Task[None] | None = None
        self._config: RelayConfig | None = None  # re-imported after Redis comes back
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        config: RelayConfig,
        *,
        prefix: str = "default",
        now: Clock = time.time,
        rng: RandomBytes = secrets.token_bytes,
        node_id: str | None = None,
    ) -> RedisStore:
        """Connect, start listening for change events and import the config.

        Args:
            url: ``redis://``, ``rediss://`` or ``unix://`` URL (``redis.asyncio.Redis.from_url``).
            config: The relay config; its hybrid connections and rules become config-owned.
            prefix: Separates relays (or tests) sharing one Redis: keys are ``hr:{prefix}:...``.
            now: The clock for createdAt/updatedAt/statusUpdateTime.
            rng: The byte source for etags, generationIds and generated keys.
            node_id: Names this node in change events (default: random).

        Raises:
            UnavailableError: Redis cannot be reached.
        """
        node = node_id or secrets.token_hex(8)
        _check_name("prefix", prefix)
        _check_name("node_id", node)
        store = cls(
            RedisAdapter.from_url(
                url, client_name=f"hybridrelay-{node}", socket_timeout=_REPLY_TIMEOUT
            ),
            prefix=prefix,
            minter=Minter(now=now, rng=rng),
            node_id=node,
        )
        store._config = config
        try:
            await store._redis.ping()
            await store._start_listener()
            await store.import_config(config)
        except BaseException:
            await store.close()
            raise
        return store

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

    # --- keys, events, retries ------------------------------------------------------------

    def _hc_hash(self, key: str) -> str:
        return f"{self._base}hc:{{{key}}}"

    def _dev_hash(self, device_id: str) -> str:
        return f"{self._base}dev:{{{device_id}}}"

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
        return _json(doc)

    def _emit(self, event: ChangeEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("store_subscriber_failed", extra={"kind": event.kind})

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

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
                        if self._config is not None:
                            await self.import_config(self._config)
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
            except _ChangedError:
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
            [hash_key], [mode, expected, _json(doc), etag, self._channel, self._message(event)]
        )
        if status == "ok":
            self._emit(event)
        return status

    async def _write_rule(
        self,
        hash_key: str,
        *,
        name: str,
        expected: str,
        rule: Rule | None,
        quota: int,
        needs_doc: bool,
        event: ChangeEvent,
    ) -> str:
        status = await self._put_rule_script(
            [hash_key],
            [
                f"r:{name.lower()}",
                expected,
                _json(rule.to_json(include_keys=True)) if rule is not None else "",
                str(quota),
                "1" if needs_doc else "0",
                self._channel,
                self._message(event),
            ],
        )
        if status == "ok":
            self._emit(event)
        return status

    # --- decoding -------------------------------------------------------------------------

    def _decode_hc(self, hash_key: str, fields: dict[str, str]) -> HybridConnection | None:
        doc = fields.get("doc")
        if doc is None:
            return None
        try:
            hc = HybridConnection.from_json(json.loads(doc))
            rules = [Rule.from_json(json.loads(v)) for f, v in fields.items() if f[:2] == "r:"]
        except (ValueError, ValidationError) as exc:
            raise UnavailableError(f"store: unreadable record {hash_key}: {exc}") from exc
        return replace(hc, rules=tuple(sorted(rules, key=lambda r: r.name.lower())))

    def _decode_rules(self, hash_key: str, fields: dict[str, str]) -> tuple[Rule, ...]:
        try:
            rules = [Rule.from_json(json.loads(v)) for f, v in fields.items() if f[:2] == "r:"]
        except (ValueError, ValidationError) as exc:
            raise UnavailableError(f"store: unreadable record {hash_key}: {exc}") from exc
        return tuple(sorted(rules, key=lambda r: r.name.lower()))

    def _decode_device(self, hash_key: str, fields: dict[str, str]) -> Device | None:
        doc = fields.get("doc")
        if doc is None:
            return None
        try:
            device = Device.from_json(json.loads(doc))
            return replace(
                device,
                connection_state="connected" if fields.get("cs") == "connected" else "disconnected",
                connection_state_updated_time=_time(fields.get("cst")),
                last_activity_time=_time(fields.get("lat")),
            )
        except (ValueError, ValidationError) as exc:
            raise UnavailableError(f"store: unreadable record {hash_key}: {exc}") from exc

    # --- hot path -------------------------------------------------------------------------

    async def resolve(self, path: str) -> tuple[HybridConnection, str] | None:
        return await self._last_resolved.read(path, lambda: self._resolve(path))

    async def _resolve(self, path: str) -> tuple[HybridConnection, str] | None:
        # Longest match first: "a/b/c" tries "a/b/c", "a/b", "a" (HC §2.1), in one round trip.
        ends: list[int] = []
        end = len(path)
        while end > 0:
            if end <= _MAX_NAME:
                ends.append(end)
            end = path.rfind("/", 0, end)
        keys = [self._hc_hash(path[:e].lower()) for e in ends]
        for e, key, fields in zip(ends, keys, await self._redis.hgetall_many(keys), strict=True):
            hc = self._decode_hc(key, fields)
            if hc is not None:
                return hc, path[e:]
        return None

    async def get(self, name: str) -> HybridConnection | None:
        key = self._hc_hash(hc_key(name))

        async def fetch() -> HybridConnection | None:
            return self._decode_hc(key, await self._redis.hgetall(key))

        return await self._last_hc.read(key, fetch)

    async def namespace_rules(self) -> tuple[Rule, ...]:
        async def fetch() -> tuple[Rule, ...]:
            return self._decode_rules(self._ns, await self._redis.hgetall(self._ns))

        return await self._last_rules.read(self._ns, fetch)

    async def create(self, hc: HybridConnection) -> HybridConnection:
        async def attempt() -> HybridConnection:
            existing = await self.get(hc.name)
            if existing is not None:
                return existing
            record = stored_hybrid_connection(hc, existing=None, minter=self._minter)
            key = hc_key(record.name)
            await self._redis.zadd(self._hc_index, key)
            status = await self._write_doc(
                self._hc_hash(key),
                mode="create",
                expected="",
                doc=record.to_json(),
                etag=record.etag,
                event=ChangeEvent(kind="hybridConnection", op="created", name=record.name),
            )
            if status != "ok":
                raise _ChangedError
            log.info("hybrid_connection_created", extra={"hc": record.name})
            return record

        return await self._retrying(attempt)

    # --- config import --------------------------------------------------------------------

    async def import_config(self, config: RelayConfig) -> None:
        await self._import_rules(self._ns, None, config_namespace_rules(config))
        wanted: set[str] = set()
        for hc in config_hybrid_connections(config):
            wanted.add(hc_key(hc.name))
            await self._retrying(functools.partial(self._import_hc, hc))
            await self._import_rules(self._hc_hash(hc_key(hc.name)), hc.name, hc.rules)
        after = ""
        while members := await self._redis.zrange_after(self._hc_index, after, 500):
            after = members[-1]
            stale = [m for m in members if m not in wanted]
            docs = await self._redis.hget_many([self._hc_hash(m) for m in stale], "doc")
            for member, doc in zip(stale, docs, strict=True):
                if doc is not None and _config_owned(doc):
                    await self._retrying(functools.partial(self._drop_config_hc, member))

    async def _import_hc(self, hc: HybridConnection) -> None:
        existing = await self.get(hc.name)
        if existing is not None and same_settings(existing, hc):
            return
        record = stored_hybrid_connection(
            hc, existing=existing, minter=self._minter, config_owned=True
        )
        await self._write_hc(record, existing)

    async def _write_hc(self, record: HybridConnection, existing: HybridConnection | None) -> None:
        """Store a stamped hybrid connection over ``existing`` (etag-checked); announce it."""
        key = hc_key(record.name)
        if existing is None:
            await self._redis.zadd(self._hc_index, key)
        status = await self._write_doc(
            self._hc_hash(key),
            mode="create" if existing is None else "update",
            expected=existing.etag if existing is not None else "",
            doc=record.to_json(),
            etag=record.etag,
            event=ChangeEvent(
                kind="hybridConnection",
                op="created" if existing is None else "updated",
                name=record.name,
                detail=status_detail(existing.status, record.status) if existing else None,
            ),
        )
        if status != "ok":
            raise _ChangedError

    async def _drop_config_hc(self, key: str) -> None:
        existing = await self.get(key)
        if existing is None or not existing.config_owned:
            return
        await self._delete_hc_record(key, existing)

    async def _import_rules(
        self, hash_key: str, scope_name: str | None, desired: Sequence[Rule]
    ) -> None:
        current = self._decode_rules(hash_key, await self._redis.hgetall(hash_key))
        by_key = {r.name.lower(): r for r in current}
        for rule in desired:
            if by_key.get(rule.name.lower()) != rule:
                await self._retrying(
                    functools.partial(self._force_rule, hash_key, scope_name, rule.name, rule)
                )
        wanted = {r.name.lower() for r in desired}
        for key, rule in by_key.items():
            if rule.config_owned and key not in wanted:
                await self._retrying(
                    functools.partial(self._force_rule, hash_key, scope_name, rule.name, None)
                )

    async def _force_rule(
        self, hash_key: str, scope_name: str | None, name: str, rule: Rule | None
    ) -> None:
        # Config wins: no quota, no config-owned check; only a concurrent change retries.
        current = await self._redis.hget(hash_key, f"r:{name.lower()}")
        if rule is None and current is None:
            return
        op: ChangeOp = "deleted" if rule is None else "created" if current is None else "updated"
        status = await self._write_rule(
            hash_key,
            name=name,
            expected=current or "",
            rule=rule,
            quota=0,
            needs_doc=False,
            event=ChangeEvent(kind="rule", op=op, name=name, scope=scope_name),
        )
        if status != "ok":
            raise _ChangedError

    # --- hybrid connections ---------------------------------------------------------------

    async def put_hybrid_connection(
        self, hc: HybridConnection, *, if_match: str | None = None
    ) -> tuple[HybridConnection, bool]:
        check_hybrid_connection(hc)

        async def attempt() -> tuple[HybridConnection, bool]:
            existing = await self.get(hc.name)
            if existing is None and if_match is not None:
                raise PreconditionFailedError(f"hybrid connection {hc.name!r} does not exist")
            if existing is not None:
                if existing.config_owned:
                    raise ConflictError(
                        f"hybrid connection {existing.name!r} is owned by the config file"
                    )
                if if_match is not None and not etag_matches(existing.etag, if_match):
                    raise PreconditionFailedError("the etag does not match")
            record = stored_hybrid_connection(hc, existing=existing, minter=self._minter)
            await self._write_hc(record, existing)
            return record, existing is None

        return await self._retrying(attempt)

    async def delete_hybrid_connection(
        self, name: str, *, if_match: str | None = None
    ) -> HybridConnection:
        async def attempt() -> HybridConnection:
            existing = await self.get(name)
            if existing is None:
                raise EntityNotFoundError(f"hybrid connection {name!r} does not exist")
            if existing.config_owned:
                raise ConflictError(
                    f"hybrid connection {existing.name!r} is owned by the config file"
                )
            if if_match is not None and not etag_matches(existing.etag, if_match):
                raise PreconditionFailedError("the etag does not match")
            await self._delete_hc_record(hc_key(name), existing)
            return existing

        return await self._retrying(attempt)

    async def _delete_hc_record(self, key: str, existing: HybridConnection) -> None:
        event = ChangeEvent(kind="hybridConnection", op="deleted", name=existing.name)
        status = await self._delete_doc(
            [self._hc_hash(key)], [existing.etag, self._channel, self._message(event)]
        )
        if status != "ok":
            raise _ChangedError
        await self._redis.zrem(self._hc_index, key)
        self._emit(event)

    async def list_hybrid_connections(
        self, *, limit: int = 100, continuation: str | None = None
    ) -> Page[HybridConnection]:
        check_limit(limit)
        after = decode_continuation(continuation) if continuation is not None else ""
        members = await self._redis.zrange_after(self._hc_index, after, limit + 1)
        keys = [self._hc_hash(m) for m in members[:limit]]
        items = [
            hc
            for key, fields in zip(keys, await self._redis.hgetall_many(keys), strict=True)
            if (hc := self._decode_hc(key, fields)) is not None
        ]
        more = len(members) > limit
        token = encode_continuation(members[limit - 1]) if more else None
        return Page(items=tuple(items), continuation=token)

    # --- rules ----------------------------------------------------------------------------

    async def _scope(self, scope: str | None) -> tuple[str, str | None]:
        if scope is None:
            return self._ns, None
        hc = await self.get(scope)
        if hc is None:
            raise EntityNotFoundError(f"hybrid connection {scope!r} does not exist")
        return self._hc_hash(hc_key(scope)), hc.name

    async def _read_rule(self, hash_key: str, name: str) -> tuple[str, Rule | None]:
        text = await self._redis.hget(hash_key, f"r:{name.lower()}")
        if text is None:
            return "", None
        try:
            return text, Rule.from_json(json.loads(text))
        except (ValueError, ValidationError) as exc:
            raise UnavailableError(f"store: unreadable rule {name!r}: {exc}") from exc

    def _scope_status(self, status: str, scope: str | None) -> None:
        if status == "missing":
            raise EntityNotFoundError(f"hybrid connection {scope!r} does not exist")
        if status == "quota":
            raise QuotaExceededError(
                f"at most {MAX_RULES_PER_SCOPE} rules per scope", limit="max_rules_per_scope"
            )
        if status != "ok":
            raise _ChangedError

    async def list_rules(self, scope: str | None) -> tuple[Rule, ...]:
        if scope is None:
            return await self.namespace_rules()
        hc = await self.get(scope)
        if hc is None:
            raise EntityNotFoundError(f"hybrid connection {scope!r} does not exist")
        return hc.rules

    async def put_rule(self, scope: str | None, name: str, rights: Rights) -> tuple[Rule, bool]:
        check_rule_name(name)
        if not rights:
            raise ValidationError("rights", "must list at least one of Listen, Send, Manage")

        async def attempt() -> tuple[Rule, bool]:
            hash_key, scope_name = await self._scope(scope)
            text, current = await self._read_rule(hash_key, name)
            if current is not None and current.config_owned:
                raise ConflictError(f"rule {current.name!r} is owned by the config file")
            rule = (
                replace(current, name=name, rights=rights)
                if current is not None
                else Rule(
                    name=name,
                    primary_key=self._minter.key(),
                    secondary_key=self._minter.key(),
                    rights=rights,
                )
            )
            status = await self._write_rule(
                hash_key,
                name=name,
                expected=text,
                rule=rule,
                quota=MAX_RULES_PER_SCOPE,
                needs_doc=scope is not None,
                event=ChangeEvent(
                    kind="rule",
                    op="created" if current is None else "updated",
                    name=name,
                    scope=scope_name,
                ),
            )
            self._scope_status(status, scope)
            return rule, current is None

        return await self._retrying(attempt)

    async def delete_rule(self, scope: str | None, name: str) -> Rule:
        async def attempt() -> Rule:
            hash_key, scope_name = await self._scope(scope)
            text, current = await self._read_rule(hash_key, name)
            if current is None:
                raise EntityNotFoundError(f"rule {name!r} does not exist")
            if current.config_owned:
                raise ConflictError(f"rule {current.name!r} is owned by the config file")
            status = await self._write_rule(
                hash_key,
                name=name,
                expected=text,
                rule=None,
                quota=0,
                needs_doc=scope is not None,
                event=ChangeEvent(kind="rule", op="deleted", name=current.name, scope=scope_name),
            )
            self._scope_status(status, scope)
            return current

        return await self._retrying(attempt)

    async def regenerate_key(
        self, scope: str | None, name: str, which: KeyKind, *, key: str | None = None
    ) -> Rule:
        if which not in ("primary", "secondary"):
            raise ValidationError("keyType", "must be primary or secondary")
        if key is not None and len(key) < 16:
            raise ValidationError("key", "must be at least 16 characters")

        async def attempt() -> Rule:
            hash_key, scope_name = await self._scope(scope)
            text, current = await self._read_rule(hash_key, name)
            if current is None:
                raise EntityNotFoundError(f"rule {name!r} does not exist")
            if current.config_owned:
                raise ConflictError(f"rule {current.name!r} is owned by the config file")
            fresh = key if key is not None else self._minter.key()
            rule = (
                replace(current, primary_key=fresh)
                if which == "primary"
                else replace(current, secondary_key=fresh)
            )
            status = await self._write_rule(
                hash_key,
                name=current.name,
                expected=text,
                rule=rule,
                quota=0,
                needs_doc=scope is not None,
                event=ChangeEvent(
                    kind="rule", op="updated", name=current.name, scope=scope_name, detail="keys"
                ),
            )
            self._scope_status(status, scope)
            return rule

        return await self._retrying(attempt)

    # --- devices --------------------------------------------------------------------------

    async def get_device(self, device_id: str) -> Device | None:
        try:
            validate_device_id(device_id)
        except ValidationError:
            return None
        key = self._dev_hash(device_id)

        async def fetch() -> Device | None:
            return self._decode_device(key, await self._redis.hgetall(key))

        return await self._last_devices.read(key, fetch)

    async def create_device(self, device: Device) -> Device:
        record = new_device(device, self._minter)
        await self._redis.zadd(self._dev_index, record.device_id)
        status = await self._write_doc(
            self._dev_hash(record.device_id),
            mode="create",
            expected="",
            doc=record.to_json(),
            etag=record.etag,
            event=ChangeEvent(kind="device", op="created", name=record.device_id),
        )
        if status != "ok":
            raise ConflictError(f"device {record.device_id!r} exists")
        return record

    async def replace_device(self, device: Device, *, if_match: str) -> Device:
        async def attempt() -> Device:
            current = await self.get_device(device.device_id)
            if current is None:
                raise EntityNotFoundError(f"device {device.device_id!r} does not exist")
            if not etag_matches(current.etag, if_match):
                raise PreconditionFailedError("the etag does not match")
            record = replaced_device(current, device, self._minter)
            status = await self._write_doc(
                self._dev_hash(record.device_id),
                mode="update",
                expected=current.etag,
                doc=record.to_json(),
                etag=record.etag,
                event=ChangeEvent(
                    kind="device",
                    op="updated",
                    name=record.device_id,
                    detail=device_change_detail(current, record),
                ),
            )
            if status != "ok":
                raise _ChangedError
            return record

        return await self._retrying(attempt)

    async def delete_device(self, device_id: str, *, if_match: str) -> Device:
        async def attempt() -> Device:
            current = await self.get_device(device_id)
            if current is None:
                raise EntityNotFoundError(f"device {device_id!r} does not exist")
            if not etag_matches(current.etag, if_match):
                raise PreconditionFailedError("the etag does not match")
            event = ChangeEvent(kind="device", op="deleted", name=device_id)
            status = await self._delete_doc(
                [self._dev_hash(device_id)], [current.etag, self._channel, self._message(event)]
            )
            if status != "ok":
                raise _ChangedError
            await self._redis.zrem(self._dev_index, device_id)
            self._last_touch.pop(device_id, None)
            self._emit(event)
            return current

        return await self._retrying(attempt)

    async def list_devices(
        self, *, limit: int = 1000, continuation: str | None = None
    ) -> Page[Device]:
        check_limit(limit)
        after = decode_continuation(continuation) if continuation is not None else ""
        members = await self._redis.zrange_after(self._dev_index, after, limit + 1)
        keys = [self._dev_hash(m) for m in members[:limit]]
        items = [
            device
            for key, fields in zip(keys, await self._redis.hgetall_many(keys), strict=True)
            if (device := self._decode_device(key, fields)) is not None
        ]
        more = len(members) > limit
        token = encode_continuation(members[limit - 1]) if more else None
        return Page(items=tuple(items), continuation=token)

    async def set_connection_state(self, device_id: str, connected: bool, now: float) -> None:
        if not device_id:
            return
        state = "connected" if connected else "disconnected"
        await self._set_state([self._dev_hash(device_id)], [state, repr(round(now, 6))])

    async def touch_activity(self, device_id: str, now: float) -> None:
        last = self._last_touch.get(device_id)
        if not device_id or (last is not None and 0 <= now - last < _TOUCH_INTERVAL):
            return
        if len(self._last_touch) > 100_000:
            self._last_touch.clear()
        self._last_touch[device_id] = now
        await self._touch([self._dev_hash(device_id)], [repr(round(now, 6))])

    # --- CA certificates ------------------------------------------------------------------

    def _cert_hash(self, name: str) -> str:
        return f"{self._base}cert:{{{name}}}"

    def _decode_certificate(self, key: str, fields: dict[str, str]) -> CaCertificate | None:
        doc = fields.get("doc")
        if doc is None:
            return None
        try:
            return CaCertificate.from_json(json.loads(doc))
        except (ValueError, ValidationError) as exc:
            raise UnavailableError(f"store: unreadable record {key}: {exc}") from exc

    async def get_certificate(self, name: str) -> CaCertificate | None:
        key = self._cert_hash(name)
        return self._decode_certificate(key, await self._redis.hgetall(key))

    async def list_certificates(self) -> tuple[CaCertificate, ...]:
        names = await self._redis.zrange_after(f"{self._base}certs", "", 100_000)
        keys = [self._cert_hash(n) for n in names]
        return tuple(
            cert
            for key, fields in zip(keys, await self._redis.hgetall_many(keys), strict=True)
            if (cert := self._decode_certificate(key, fields)) is not None
        )

    async def put_certificate(self, cert: CaCertificate) -> tuple[CaCertificate, bool]:
        async def attempt() -> tuple[CaCertificate, bool]:
            existing = await self.get_certificate(cert.name)
            record = stored_certificate(
                cert, existing, etag=self._minter.etag(), now=self._minter.now()
            )
            if existing is None:
                await self._redis.zadd(f"{self._base}certs", cert.name)
            op: ChangeOp = "created" if existing is None else "updated"
            status = await self._write_doc(
                self._cert_hash(cert.name),
                mode="create" if existing is None else "update",
                expected=existing.etag if existing is not None else "",
                doc=record.to_json(),
                etag=record.etag,
                event=ChangeEvent(kind="certificate", op=op, name=cert.name),
            )
            if status != "ok":
                raise _ChangedError
            return record, existing is None

        return await self._retrying(attempt)

    async def delete_certificate(self, name: str) -> CaCertificate:
        async def attempt() -> CaCertificate:
            current = await self.get_certificate(name)
            if current is None:
                raise EntityNotFoundError(f"certificate {name!r} does not exist")
            event = ChangeEvent(kind="certificate", op="deleted", name=name)
            status = await self._delete_doc(
                [self._cert_hash(name)], [current.etag, self._channel, self._message(event)]
            )
            if status != "ok":
                raise _ChangedError
            await self._redis.zrem(f"{self._base}certs", name)
            self._emit(event)
            return current

        return await self._retrying(attempt)

    async def set_verification_code(self, name: str, code: str) -> CaCertificate:
        return await self._update_certificate(name, None, verification_code=code)

    async def mark_verified(self, name: str, *, thumbprint: str) -> CaCertificate:
        return await self._update_certificate(name, thumbprint, is_verified=True)

    async def _update_certificate(
        self, name: str, thumbprint: str | None, **changes: object
    ) -> CaCertificate:
        async def attempt() -> CaCertificate:
            current = await self.get_certificate(name)
            if current is None:
                raise EntityNotFoundError(f"certificate {name!r} does not exist")
            if thumbprint is not None and current.thumbprint != thumbprint:
                raise PreconditionFailedError("the certificate was replaced meanwhile")
            record = replace(current, etag=self._minter.etag(), **changes)  # type: ignore[arg-type]
            detail: ChangeDetail = "verified" if changes.get("is_verified") else "verificationCode"
            status = await self._write_doc(
                self._cert_hash(name),
                mode="update",
                expected=current.etag,
                doc=record.to_json(),
                etag=record.etag,
                event=ChangeEvent(kind="certificate", op="updated", name=name, detail=detail),
            )
            if status != "ok":
                raise _ChangedError
            return record

        return await self._retrying(attempt)
