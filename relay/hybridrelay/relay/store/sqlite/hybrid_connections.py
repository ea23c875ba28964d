"""Hybrid connections and their SAS rules (and the namespace rules) in the SQLite store.

Every hybrid connection and every rule is cached on the loop side (``_hcs``,
``_ns_rules``): ``resolve``, ``get`` and ``namespace_rules`` never leave the loop.
The worker refreshes a scope's cache entry right after the commit that changed it.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from hybridrelay.errors import EntityNotFoundError, QuotaExceededError, ValidationError
from hybridrelay.logs import RELAY
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.config import RelayConfig
from hybridrelay.relay.store.checks import (
    check_hc_delete,
    check_hc_put,
    check_key_request,
    check_rule_request,
    check_rule_writable,
    put_rule_record,
    rekeyed_rule,
)
from hybridrelay.relay.store.models import (
    MAX_RULES_PER_SCOPE,
    ChangeKind,
    ChangeOp,
    HybridConnection,
    KeyKind,
    Page,
    Rule,
    rights_to_json,
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
from hybridrelay.relay.store.sqlite.engine import SqliteEngine

__all__ = ["SqliteHybridConnections"]

log = logging.getLogger(RELAY)

_LEGACY_STATE_FILE: Final = "hybrid_connections.json"  # the old in-memory store's names
_NAMESPACE: Final = ""  # the rules table's scope for namespace rules

# Whole statements, no string building: column lists spelled out once each.
_SELECT_HC: Final = (
    "SELECT name_key, name, requires_client_authorization, http, max_listeners, "
    "request_timeout, user_metadata, created_at, updated_at, etag, config_owned, status "
    "FROM hybrid_connections"
)
_UPSERT_HC: Final = (
    "INSERT OR REPLACE INTO hybrid_connections (name_key, name, requires_client_authorization, "
    "http, max_listeners, request_timeout, user_metadata, created_at, updated_at, etag, "
    "config_owned, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_RULES: Final = (
    "SELECT scope, name_key, name, primary_key, secondary_key, rights, config_owned FROM rules"
)
_UPSERT_RULE: Final = (
    "INSERT OR REPLACE INTO rules (scope, name_key, name, primary_key, secondary_key, rights, "
    "config_owned) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _rule_from_row(row: sqlite3.Row) -> Rule:
    return Rule(
        name=row["name"],
        primary_key=row["primary_key"],
        secondary_key=row["secondary_key"],
        rights=Rights.parse(row["rights"]),
        config_owned=bool(row["config_owned"]),
    )


def _rule_params(scope: str, rule: Rule) -> tuple[object, ...]:
    return (
        scope,
        rule.name.lower(),
        rule.name,
        rule.primary_key,
        rule.secondary_key,
        ",".join(rights_to_json(rule.rights)),
        int(rule.config_owned),
    )


def _hc_from_row(row: sqlite3.Row, rules: tuple[Rule, ...]) -> HybridConnection:
    http = row["http"]
    return HybridConnection(
        name=row["name"],
        requires_client_authorization=bool(row["requires_client_authorization"]),
        http=None if http is None else bool(http),
        max_listeners=row["max_listeners"],
        request_timeout=row["request_timeout"],
        rules=rules,
        config_owned=bool(row["config_owned"]),
        user_metadata=row["user_metadata"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        etag=row["etag"],
        status=row["status"],
    )


def _hc_params(hc: HybridConnection) -> tuple[object, ...]:
    return (
        hc_key(hc.name),
        hc.name,
        int(hc.requires_client_authorization),
        None if hc.http is None else int(hc.http),
        hc.max_listeners,
        hc.request_timeout,
        hc.user_metadata,
        hc.created_at,
        hc.updated_at,
        hc.etag,
        int(hc.config_owned),
        hc.status,
    )


class SqliteHybridConnections(SqliteEngine):
    """Hybrid connections, their rules and the namespace rules, cached for the hot path."""

    def _init_hybrid_connections(self, *, max_listeners_default: int) -> None:
        self._max_listeners_default = max_listeners_default
        # Worker-owned; the loop reads them with single dict lookups only.
        self._hcs: dict[str, HybridConnection] = {}
        self._ns_rules: tuple[Rule, ...] = ()

    # --- worker: legacy import, load, reads -----------------------------------------------

    def _db_import_legacy(self, db: sqlite3.Connection) -> None:
        # The names the old in-memory store persisted for auto-created hybrid connections.
        if self._path == ":memory:":
            return
        legacy = Path(self._path).parent / _LEGACY_STATE_FILE
        try:
            names = json.loads(legacy.read_text("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("legacy_state_unreadable", extra={"path": str(legacy), "error": str(exc)})
            return
        if not isinstance(names, list):
            return
        with self._tx() as tx:
            for name in names:
                if not isinstance(name, str) or self._read_hc(tx, hc_key(name)) is not None:
                    continue
                try:
                    record = stored_hybrid_connection(
                        HybridConnection(name=name, max_listeners=self._max_listeners_default),
                        existing=None,
                        minter=self._minter,
                    )
                except ValidationError:
                    continue
                tx.execute(
                    _UPSERT_HC,
                    _hc_params(record),
                )

    def _db_load_hybrid_connections(self) -> None:
        db = self._conn()
        rules: dict[str, list[Rule]] = {}
        for row in db.execute(_SELECT_RULES + " ORDER BY scope, name_key"):
            rules.setdefault(row["scope"], []).append(_rule_from_row(row))
        hcs: dict[str, HybridConnection] = {}
        for row in db.execute(_SELECT_HC):
            key = row["name_key"]
            hcs[key] = _hc_from_row(row, tuple(rules.get(key, ())))
        self._hcs = hcs
        self._ns_rules = tuple(rules.get(_NAMESPACE, ()))

    def _read_hc(self, db: sqlite3.Connection, key: str) -> HybridConnection | None:
        row = db.execute(_SELECT_HC + " WHERE name_key = ?", (key,)).fetchone()
        if row is None:
            return None
        return _hc_from_row(row, self._read_rules(db, key))

    def _read_rules(self, db: sqlite3.Connection, scope: str) -> tuple[Rule, ...]:
        rows = db.execute(_SELECT_RULES + " WHERE scope = ? ORDER BY name_key", (scope,))
        return tuple(_rule_from_row(row) for row in rows)

    def _refresh_scope(self, db: sqlite3.Connection, scope: str) -> None:
        if scope == _NAMESPACE:
            self._ns_rules = self._read_rules(db, _NAMESPACE)
            return
        hc = self._read_hc(db, scope)
        if hc is None:
            self._hcs.pop(scope, None)
        else:
            self._hcs[scope] = hc

    # --- hot path -------------------------------------------------------------------------

    async def resolve(self, path: str) -> tuple[HybridConnection, str] | None:
        # Longest match first: "a/b/c" tries "a/b/c", "a/b", "a" (HC §2.1).
        end = len(path)
        while end > 0:
            hc = self._hcs.get(path[:end].lower())
            if hc is not None:
                return hc, path[end:]
            end = path.rfind("/", 0, end)
        return None

    async def get(self, name: str) -> HybridConnection | None:
        return self._hcs.get(hc_key(name))

    async def namespace_rules(self) -> tuple[Rule, ...]:
        return self._ns_rules

    async def create(self, hc: HybridConnection) -> HybridConnection:
        existing = self._hcs.get(hc_key(hc.name))
        if existing is not None:
            return existing
        return await self._run(functools.partial(self._db_create_hc, hc))

    def _db_create_hc(self, hc: HybridConnection) -> HybridConnection:
        key = hc_key(hc.name)
        with self._tx() as tx:
            existing = self._read_hc(tx, key)
            if existing is not None:
                return existing
            record = stored_hybrid_connection(hc, existing=None, minter=self._minter)
            tx.execute(
                _UPSERT_HC,
                _hc_params(record),
            )
            self._refresh_scope(tx, key)
        self._publish("hybridConnection", "created", record.name)
        log.info("hybrid_connection_created", extra={"hc": record.name})
        return self._hcs[key]

    # --- config import --------------------------------------------------------------------

    async def import_config(self, config: RelayConfig) -> None:
        await self._run(functools.partial(self._db_import_config, config))

    def _db_import_config(self, config: RelayConfig) -> None:
        events: list[tuple[ChangeKind, ChangeOp, str, str | None]] = []
        with self._tx() as tx:
            self._import_rules(tx, _NAMESPACE, None, config_namespace_rules(config), events)
            wanted: set[str] = set()
            for hc in config_hybrid_connections(config):
                key = hc_key(hc.name)
                wanted.add(key)
                existing = self._read_hc(tx, key)
                if existing is None or not same_settings(existing, hc):
                    record = stored_hybrid_connection(
                        hc, existing=existing, minter=self._minter, config_owned=True
                    )
                    self._upsert_hc(tx, record)
                    events.append(
                        (
                            "hybridConnection",
                            "created" if existing is None else "updated",
                            hc.name,
                            None,
                        )
                    )
                self._import_rules(tx, key, hc.name, hc.rules, events)
            stale = tx.execute(
                "SELECT name_key, name FROM hybrid_connections WHERE config_owned = 1"
            ).fetchall()
            for row in stale:
                if row["name_key"] not in wanted:
                    tx.execute("DELETE FROM rules WHERE scope = ?", (row["name_key"],))
                    tx.execute(
                        "DELETE FROM hybrid_connections WHERE name_key = ?", (row["name_key"],)
                    )
                    events.append(("hybridConnection", "deleted", row["name"], None))
        self._db_load_hybrid_connections()
        for kind, op, name, scope in events:
            self._publish(kind, op, name, scope)

    def _import_rules(
        self,
        tx: sqlite3.Connection,
        scope_key: str,
        scope_name: str | None,
        desired: Sequence[Rule],
        events: list[tuple[ChangeKind, ChangeOp, str, str | None]],
    ) -> None:
        existing = {r.name.lower(): r for r in self._read_rules(tx, scope_key)}
        wanted = {r.name.lower() for r in desired}
        for rule in desired:
            current = existing.get(rule.name.lower())
            if current != rule:
                self._upsert_rule(tx, scope_key, rule)
                events.append(
                    ("rule", "created" if current is None else "updated", rule.name, scope_name)
                )
        for key, rule in existing.items():
            if rule.config_owned and key not in wanted:
                tx.execute("DELETE FROM rules WHERE scope = ? AND name_key = ?", (scope_key, key))
                events.append(("rule", "deleted", rule.name, scope_name))

    def _upsert_hc(self, tx: sqlite3.Connection, record: HybridConnection) -> None:
        tx.execute(
            _UPSERT_HC,
            _hc_params(record),
        )

    def _upsert_rule(self, tx: sqlite3.Connection, scope_key: str, rule: Rule) -> None:
        tx.execute(
            _UPSERT_RULE,
            _rule_params(scope_key, rule),
        )

    # --- hybrid connections ---------------------------------------------------------------

    async def put_hybrid_connection(
        self, hc: HybridConnection, *, if_match: str | None = None
    ) -> tuple[HybridConnection, bool]:
        return await self._run(functools.partial(self._db_put_hc, hc, if_match))

    def _db_put_hc(
        self, hc: HybridConnection, if_match: str | None
    ) -> tuple[HybridConnection, bool]:
        key = hc_key(hc.name)
        with self._tx() as tx:
            existing = self._read_hc(tx, key)
            check_hc_put(existing, hc.name, if_match)
            record = stored_hybrid_connection(hc, existing=existing, minter=self._minter)
            self._upsert_hc(tx, record)
            self._refresh_scope(tx, key)
        self._publish(
            "hybridConnection",
            "created" if existing is None else "updated",
            record.name,
            detail=status_detail(existing.status, record.status) if existing else None,
        )
        return self._hcs[key], existing is None

    async def delete_hybrid_connection(
        self, name: str, *, if_match: str | None = None
    ) -> HybridConnection:
        return await self._run(functools.partial(self._db_delete_hc, name, if_match))

    def _db_delete_hc(self, name: str, if_match: str | None) -> HybridConnection:
        key = hc_key(name)
        with self._tx() as tx:
            existing = check_hc_delete(self._read_hc(tx, key), name, if_match)
            tx.execute("DELETE FROM rules WHERE scope = ?", (key,))
            tx.execute("DELETE FROM hybrid_connections WHERE name_key = ?", (key,))
            self._hcs.pop(key, None)
        self._publish("hybridConnection", "deleted", existing.name)
        return existing

    async def list_hybrid_connections(
        self, *, limit: int = 100, continuation: str | None = None
    ) -> Page[HybridConnection]:
        after = page_start(limit, continuation)
        return await self._run(functools.partial(self._db_list_hcs, limit, after))

    def _db_list_hcs(self, limit: int, after: str) -> Page[HybridConnection]:
        rows = self._conn().execute(
            "SELECT name_key FROM hybrid_connections WHERE name_key > ? ORDER BY name_key LIMIT ?",
            (after, limit + 1),
        )
        keys = [row["name_key"] for row in rows]
        items = tuple(self._hcs[k] for k in keys[:limit])
        return Page(items=items, continuation=next_page_token(keys, limit))

    # --- rules ----------------------------------------------------------------------------

    def _scope(self, tx: sqlite3.Connection, scope: str | None) -> tuple[str, str | None]:
        """Return the scope's storage key and display name; raises EntityNotFoundError."""
        if scope is None:
            return _NAMESPACE, None
        hc = self._read_hc(tx, hc_key(scope))
        if hc is None:
            raise EntityNotFoundError(f"hybrid connection {scope!r} does not exist")
        return hc_key(scope), hc.name

    async def list_rules(self, scope: str | None) -> tuple[Rule, ...]:
        if scope is None:
            return self._ns_rules
        hc = self._hcs.get(hc_key(scope))
        if hc is None:
            raise EntityNotFoundError(f"hybrid connection {scope!r} does not exist")
        return hc.rules

    async def put_rule(self, scope: str | None, name: str, rights: Rights) -> tuple[Rule, bool]:
        check_rule_request(name, rights)
        return await self._run(functools.partial(self._db_put_rule, scope, name, rights))

    def _db_put_rule(self, scope: str | None, name: str, rights: Rights) -> tuple[Rule, bool]:
        with self._tx() as tx:
            scope_key, scope_name = self._scope(tx, scope)
            rules = self._read_rules(tx, scope_key)
            current = next((r for r in rules if r.name.lower() == name.lower()), None)
            if current is None and len(rules) >= MAX_RULES_PER_SCOPE:
                raise QuotaExceededError(
                    f"at most {MAX_RULES_PER_SCOPE} rules per scope",
                    limit="max_rules_per_scope",
                )
            rule = put_rule_record(current, name, rights, self._minter)
            self._upsert_rule(tx, scope_key, rule)
            self._refresh_scope(tx, scope_key)
        self._publish("rule", "created" if current is None else "updated", name, scope_name)
        return rule, current is None

    async def delete_rule(self, scope: str | None, name: str) -> Rule:
        return await self._run(functools.partial(self._db_delete_rule, scope, name))

    def _db_delete_rule(self, scope: str | None, name: str) -> Rule:
        with self._tx() as tx:
            scope_key, scope_name = self._scope(tx, scope)
            current = check_rule_writable(self._read_rule(tx, scope_key, name), name)
            tx.execute(
                "DELETE FROM rules WHERE scope = ? AND name_key = ?", (scope_key, name.lower())
            )
            self._refresh_scope(tx, scope_key)
        self._publish("rule", "deleted", current.name, scope_name)
        return current

    def _read_rule(self, tx: sqlite3.Connection, scope_key: str, name: str) -> Rule | None:
        row = tx.execute(
            _SELECT_RULES + " WHERE scope = ? AND name_key = ?",
            (scope_key, name.lower()),
        ).fetchone()
        return None if row is None else _rule_from_row(row)

    async def regenerate_key(
        self, scope: str | None, name: str, which: KeyKind, *, key: str | None = None
    ) -> Rule:
        check_key_request(which, key)
        return await self._run(functools.partial(self._db_regenerate, scope, name, which, key))

    def _db_regenerate(self, scope: str | None, name: str, which: KeyKind, key: str | None) -> Rule:
        with self._tx() as tx:
            scope_key, scope_name = self._scope(tx, scope)
            current = check_rule_writable(self._read_rule(tx, scope_key, name), name)
            rule = rekeyed_rule(current, which, key, self._minter)
            self._upsert_rule(tx, scope_key, rule)
            self._refresh_scope(tx, scope_key)
        self._publish("rule", "updated", rule.name, scope_name, detail="keys")
        return rule
