"""Hybrid connections and their SAS rules (and the namespace rules) in the Redis store.

``hr:P:hc:{name}`` holds the hybrid connection's JSON document, its etag and one
``r:<rule>`` field per rule; ``hr:P:ns`` the namespace rules; ``hr:P:hcs`` the listing
index. A rule write compares the rule's stored JSON it read (``_PUT_RULE``), so two
concurrent writes to one rule cannot both pass.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from hybridrelay.errors import (
    EntityNotFoundError,
    QuotaExceededError,
    UnavailableError,
    ValidationError,
)
from hybridrelay.logs import RELAY
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.config import RelayConfig
from hybridrelay.relay.store.checks import (
    check_hc_delete,
    check_hc_put,
    check_key_request,
    check_rule_request,
    check_rule_writable,
    compact_json,
    put_rule_record,
    rekeyed_rule,
)
from hybridrelay.relay.store.last_known import LastKnown
from hybridrelay.relay.store.models import (
    MAX_RULES_PER_SCOPE,
    ChangeEvent,
    ChangeOp,
    HybridConnection,
    KeyKind,
    Page,
    Rule,
    check_hybrid_connection,
)
from hybridrelay.relay.store.records import (
    config_hybrid_connections,
    config_namespace_rules,
    hc_key,
    next_page_token,
    page_start,
    same_settings,
    status_detail,
    stored_hybrid_connection,
)
from hybridrelay.relay.store.redis.engine import ChangedError, RedisEngine, decode_failure
from hybridrelay.relay.store.redis_adapter import Script

__all__ = ["RedisHybridConnections"]

log = logging.getLogger(RELAY)

_MAX_NAME: Final = 260

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


def _config_owned(doc: str) -> bool:
    try:
        parsed = json.loads(doc)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("configOwned") is True


class RedisHybridConnections(RedisEngine):
    """Hybrid connections, their rules and the namespace rules; last-known answers kept."""

    def _init_hybrid_connections(self) -> None:
        self._ns = f"{self._base}ns"
        self._hc_index = f"{self._base}hcs"
        self._put_rule_script: Script = self._redis.script(_PUT_RULE)
        # Served only while Redis is unreachable (last_known.py).
        self._last_resolved: LastKnown[tuple[HybridConnection, str] | None] = LastKnown(
            "resolve", breaker=self._down
        )
        self._last_hc: LastKnown[HybridConnection | None] = LastKnown(
            "hybrid connection", breaker=self._down
        )
        self._last_rules: LastKnown[tuple[Rule, ...]] = LastKnown(
            "namespace rules", limit=1, breaker=self._down
        )

    def _hc_hash(self, key: str) -> str:
        return f"{self._base}hc:{{{key}}}"

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
                compact_json(rule.to_json(include_keys=True)) if rule is not None else "",
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
            raise decode_failure(hash_key, exc) from exc
        return replace(hc, rules=tuple(sorted(rules, key=lambda r: r.name.lower())))

    def _decode_rules(self, hash_key: str, fields: dict[str, str]) -> tuple[Rule, ...]:
        try:
            rules = [Rule.from_json(json.loads(v)) for f, v in fields.items() if f[:2] == "r:"]
        except (ValueError, ValidationError) as exc:
            raise decode_failure(hash_key, exc) from exc
        return tuple(sorted(rules, key=lambda r: r.name.lower()))

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
                raise ChangedError
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
            raise ChangedError

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
            raise ChangedError

    # --- hybrid connections ---------------------------------------------------------------

    async def put_hybrid_connection(
        self, hc: HybridConnection, *, if_match: str | None = None
    ) -> tuple[HybridConnection, bool]:
        check_hybrid_connection(hc)

        async def attempt() -> tuple[HybridConnection, bool]:
            existing = await self.get(hc.name)
            check_hc_put(existing, hc.name, if_match)
            record = stored_hybrid_connection(hc, existing=existing, minter=self._minter)
            await self._write_hc(record, existing)
            return record, existing is None

        return await self._retrying(attempt)

    async def delete_hybrid_connection(
        self, name: str, *, if_match: str | None = None
    ) -> HybridConnection:
        async def attempt() -> HybridConnection:
            existing = check_hc_delete(await self.get(name), name, if_match)
            await self._delete_hc_record(hc_key(name), existing)
            return existing

        return await self._retrying(attempt)

    async def _delete_hc_record(self, key: str, existing: HybridConnection) -> None:
        event = ChangeEvent(kind="hybridConnection", op="deleted", name=existing.name)
        status = await self._delete_doc(
            [self._hc_hash(key)], [existing.etag, self._channel, self._message(event)]
        )
        if status != "ok":
            raise ChangedError
        await self._redis.zrem(self._hc_index, key)
        self._emit(event)

    async def list_hybrid_connections(
        self, *, limit: int = 100, continuation: str | None = None
    ) -> Page[HybridConnection]:
        after = page_start(limit, continuation)
        members = await self._redis.zrange_after(self._hc_index, after, limit + 1)
        keys = [self._hc_hash(m) for m in members[:limit]]
        items = [
            hc
            for key, fields in zip(keys, await self._redis.hgetall_many(keys), strict=True)
            if (hc := self._decode_hc(key, fields)) is not None
        ]
        return Page(items=tuple(items), continuation=next_page_token(members, limit))

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
            raise ChangedError

    async def list_rules(self, scope: str | None) -> tuple[Rule, ...]:
        if scope is None:
            return await self.namespace_rules()
        hc = await self.get(scope)
        if hc is None:
            raise EntityNotFoundError(f"hybrid connection {scope!r} does not exist")
        return hc.rules

    async def put_rule(self, scope: str | None, name: str, rights: Rights) -> tuple[Rule, bool]:
        check_rule_request(name, rights)

        async def attempt() -> tuple[Rule, bool]:
            hash_key, scope_name = await self._scope(scope)
            text, current = await self._read_rule(hash_key, name)
            rule = put_rule_record(current, name, rights, self._minter)
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
            text, found = await self._read_rule(hash_key, name)
            current = check_rule_writable(found, name)
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
        check_key_request(which, key)

        async def attempt() -> Rule:
            hash_key, scope_name = await self._scope(scope)
            text, found = await self._read_rule(hash_key, name)
            current = check_rule_writable(found, name)
            rule = rekeyed_rule(current, which, key, self._minter)
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
