"""The embedded default store: one SQLite file under the data dir (stdlib ``sqlite3``).

Every blocking call runs on ONE dedicated worker thread, so the event loop never
waits on the disk and writes are serialised without locks: an If-Match
read-compare-write is atomic because nothing else runs on that thread meanwhile.
The worker also owns the in-process caches; the loop only reads them (a single
``dict.get``), so the hot path (``resolve``, ``get``, ``namespace_rules``,
``get_device`` hits) never leaves the loop, and a write's cache update happens on
the worker right after its commit, even when the awaiting coroutine was cancelled.

The file is in WAL mode, its schema is versioned (``schema_version``), and the
migrations below run in order when the store opens. One relay process owns a file:
the caches do not see writes made by another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Final, TypeVar

from hybridrelay.errors import (
    ConfigError,
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
from hybridrelay.relay.private_files import open_private, private_dir, tighten
from hybridrelay.relay.store.base import ChangeCallback
from hybridrelay.relay.store.certificates import CaCertificate, stored_certificate
from hybridrelay.relay.store.models import (
    MAX_RULES_PER_SCOPE,
    Authentication,
    ChangeDetail,
    ChangeEvent,
    ChangeKind,
    ChangeOp,
    ConnectionState,
    Device,
    Grants,
    HybridConnection,
    KeyKind,
    Page,
    Rule,
    check_rule_name,
    rights_to_json,
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

__all__ = ["DEFAULT_FILE", "SqliteStore"]

log = logging.getLogger(RELAY)
T = TypeVar("T")

DEFAULT_FILE: Final = "hybridrelay.sqlite3"
_LEGACY_STATE_FILE: Final = "hybrid_connections.json"  # MemoryStore's auto-created names
_NAMESPACE: Final = ""  # the rules table's scope for namespace rules
_TOUCH_INTERVAL: Final = 1.0  # lastActivityTime resolution, seconds
_MISS: Final = object()

# Versioned migrations: _MIGRATIONS[n] takes the schema from version n to n + 1.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE hybrid_connections (
            name_key TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            requires_client_authorization INTEGER NOT NULL,
            http INTEGER,
            max_listeners INTEGER NOT NULL,
            request_timeout REAL,
            user_metadata TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            etag TEXT NOT NULL,
            config_owned INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE rules (
            scope TEXT NOT NULL,
            name_key TEXT NOT NULL,
            name TEXT NOT NULL,
            primary_key TEXT NOT NULL,
            secondary_key TEXT,
            rights TEXT NOT NULL,
            config_owned INTEGER NOT NULL,
            PRIMARY KEY (scope, name_key)
        ) WITHOUT ROWID""",
        # BINARY collation: deviceIds are case-sensitive and list in byte order.
        """CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            generation_id TEXT NOT NULL,
            etag TEXT NOT NULL,
            status TEXT NOT NULL,
            status_reason TEXT,
            status_update_time REAL,
            authentication TEXT NOT NULL,
            grants TEXT NOT NULL,
            connection_state TEXT NOT NULL,
            connection_state_updated_time REAL,
            last_activity_time REAL
        ) WITHOUT ROWID""",
    ),
    # v2: hybrid connections can be disabled (issue 5).
    ("ALTER TABLE hybrid_connections ADD COLUMN status TEXT NOT NULL DEFAULT 'enabled'",),
    # v3: CA certificates for X.509 devices (issue 5; store/certificates.py).
    ("CREATE TABLE ca_certificates (name TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID",),
)

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
_SELECT_DEVICES: Final = (
    "SELECT device_id, generation_id, etag, status, status_reason, status_update_time, "
    "authentication, grants, connection_state, connection_state_updated_time, "
    "last_activity_time FROM devices"
)
_INSERT_DEVICE: Final = (
    "INSERT INTO devices (device_id, generation_id, etag, status, status_reason, "
    "status_update_time, authentication, grants, connection_state, "
    "connection_state_updated_time, last_activity_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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


def _device_from_row(row: sqlite3.Row) -> Device:
    return Device(
        device_id=row["device_id"],
        generation_id=row["generation_id"],
        etag=row["etag"],
        status="disabled" if row["status"] == "disabled" else "enabled",
        status_reason=row["status_reason"],
        status_update_time=row["status_update_time"],
        connection_state="connected" if row["connection_state"] == "connected" else "disconnected",
        connection_state_updated_time=row["connection_state_updated_time"],
        last_activity_time=row["last_activity_time"],
        authentication=Authentication.from_json(json.loads(row["authentication"])),
        grants=Grants.from_json(json.loads(row["grants"])),
    )


def _json(doc: dict[str, object]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _device_params(d: Device) -> tuple[object, ...]:
    return (
        d.device_id,
        d.generation_id,
        d.etag,
        d.status,
        d.status_reason,
        d.status_update_time,
        _json(d.authentication.to_json()),
        _json(d.grants.to_json()),
        d.connection_state,
        d.connection_state_updated_time,
        d.last_activity_time,
    )


def _valid_device_id(device_id: str) -> bool:
    try:
        validate_device_id(device_id)
    except ValidationError:
        return False
    return True


class SqliteStore:
    """:class:`~hybridrelay.relay.store.base.Store` on one SQLite file; open with :meth:`open`."""

    def __init__(
        self,
        path: str,
        *,
        minter: Minter,
        loop: asyncio.AbstractEventLoop,
        device_cache_size: int,
        max_listeners_default: int,
    ) -> None:
        self._path = path
        self._minter = minter
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybridrelay-store")
        self._max_listeners_default = max_listeners_default
        self._closed = False
        # Worker-owned state; the loop reads the caches with single dict lookups only.
        self._db: sqlite3.Connection | None = None
        self._hcs: dict[str, HybridConnection] = {}
        self._ns_rules: tuple[Rule, ...] = ()
        self._devices: dict[str, Device | None] = {}
        self._device_cache_size = device_cache_size
        self._pending_activity: dict[str, float] = {}
        self._flush_scheduled = False
        # Loop-owned state.
        self._subscribers: list[ChangeCallback] = []
        self._last_touch: dict[str, float] = {}

    @classmethod
    async def open(
        cls,
        config: RelayConfig,
        *,
        path: str | Path | None = None,
        now: Clock = time.time,
        rng: RandomBytes = secrets.token_bytes,
        device_cache_size: int = 10_000,
    ) -> SqliteStore:
        """Open (or create) the store file, migrate it and import the config.

        Args:
            config: The relay config; its hybrid connections and rules become config-owned.
            path: The database file; default ``{data_dir}/hybridrelay.sqlite3``.
                ``":memory:"`` keeps everything in memory (tests, throwaway relays).
            now: The clock for createdAt/updatedAt/statusUpdateTime.
            rng: The byte source for etags, generationIds and generated keys.
            device_cache_size: How many device lookups the cache keeps.

        Raises:
            ConfigError: The file cannot be opened, or its schema is newer than this relay.
        """
        target = str(path) if path is not None else str(Path(config.relay.data_dir) / DEFAULT_FILE)
        store = cls(
            target,
            minter=Minter(now=now, rng=rng),
            loop=asyncio.get_running_loop(),
            device_cache_size=device_cache_size,
            max_listeners_default=config.relay.max_listeners_per_hc,
        )
        try:
            await store._run(store._db_open)
            await store.import_config(config)
        except BaseException:
            await store.close()
            raise
        return store

    # --- plumbing -------------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise UnavailableError("the store is closed")
        try:
            return await self._loop.run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise UnavailableError(f"store error: {exc}") from exc

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise UnavailableError("the store is closed")
        return self._db

    def _publish(
        self,
        kind: ChangeKind,
        op: ChangeOp,
        name: str,
        scope: str | None = None,
        detail: ChangeDetail | None = None,
    ) -> None:
        # Called on the worker after a commit; subscribers run on the loop, in order.
        event = ChangeEvent(kind=kind, op=op, name=name, scope=scope, detail=detail)
        self._loop.call_soon_threadsafe(self._emit, event)

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

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self._run(self._db_close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    # --- worker: open, migrate, load ------------------------------------------------------

    def _db_open(self) -> None:
        if self._path != ":memory:":
            path = Path(self._path)
            try:
                private_dir(path.parent)
                # Keys live in this file: 0600 before SQLite writes a byte, and SQLite
                # gives its -wal and -shm files the database file's mode.
                open_private(path, "r+b").close()
                for suffix in ("-wal", "-shm", "-journal"):
                    tighten(path.with_name(path.name + suffix))  # left by an older version
            except OSError as exc:
                raise ConfigError(
                    self._path, "", f"cannot create the store in its data dir: {exc}"
                ) from exc
        try:
            db = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(self._path, "", f"cannot open the store: {exc}") from exc
        db.row_factory = sqlite3.Row
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
        db.execute("PRAGMA busy_timeout=5000")
        fresh = self._db_migrate(db)
        if fresh:
            self._db_import_legacy(db)
        self._db_load_all()

    def _db_migrate(self, db: sqlite3.Connection) -> bool:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        current = int(row[0]) if row is not None else 0
        if current > len(_MIGRATIONS):
            raise ConfigError(
                self._path,
                "",
                f"store schema version {current} is newer than this relay "
                f"(it knows up to {len(_MIGRATIONS)})",
            )
        if 0 < current < len(_MIGRATIONS):
            self._db_keep_before_migrating(db, current)
        for version in range(current, len(_MIGRATIONS)):
            with self._tx() as tx:
                for statement in _MIGRATIONS[version]:
                    tx.execute(statement)
                tx.execute("DELETE FROM schema_version")
                tx.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
            log.info("store_migrated", extra={"path": self._path, "version": version + 1})
        return current == 0

    def _db_keep_before_migrating(self, db: sqlite3.Connection, version: int) -> None:
        # The way back from an upgrade: an older relay refuses the migrated file, so keep
        # the file as it was (a consistent copy, 0600: it holds every key) next to it.
        if self._path == ":memory:":
            return
        path = Path(self._path)
        copy = path.with_name(f"{path.name}.v{version}.bak")
        try:
            open_private(copy, "wb").close()
            with contextlib.closing(sqlite3.connect(copy)) as target:
                db.backup(target)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                str(copy), "", f"cannot keep a copy of the store before migrating it: {exc}"
            ) from exc
        log.info("store_kept_before_migration", extra={"path": str(copy), "version": version})

    def _db_import_legacy(self, db: sqlite3.Connection) -> None:
        # The names MemoryStore persisted for auto-created hybrid connections.
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

    def _db_load_all(self) -> None:
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
        self._devices = {}

    def _db_close(self) -> None:
        if self._db is None:
            return
        self._db_flush_activity()
        self._db.close()
        self._db = None

    # --- worker: reads --------------------------------------------------------------------

    def _read_hc(self, db: sqlite3.Connection, key: str) -> HybridConnection | None:
        row = db.execute(_SELECT_HC + " WHERE name_key = ?", (key,)).fetchone()
        if row is None:
            return None
        return _hc_from_row(row, self._read_rules(db, key))

    def _read_rules(self, db: sqlite3.Connection, scope: str) -> tuple[Rule, ...]:
        rows = db.execute(_SELECT_RULES + " WHERE scope = ? ORDER BY name_key", (scope,))
        return tuple(_rule_from_row(row) for row in rows)

    def _read_device(self, db: sqlite3.Connection, device_id: str) -> Device | None:
        row = db.execute(_SELECT_DEVICES + " WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else self._with_activity(_device_from_row(row))

    def _with_activity(self, device: Device) -> Device:
        pending = self._pending_activity.get(device.device_id)
        if pending is not None and (
            device.last_activity_time is None or pending > device.last_activity_time
        ):
            return replace(device, last_activity_time=pending)
        return device

    def _refresh_scope(self, db: sqlite3.Connection, scope: str) -> None:
        if scope == _NAMESPACE:
            self._ns_rules = self._read_rules(db, _NAMESPACE)
            return
        hc = self._read_hc(db, scope)
        if hc is None:
            self._hcs.pop(scope, None)
        else:
            self._hcs[scope] = hc

    def _cache_device(self, device_id: str, device: Device | None) -> None:
        self._devices[device_id] = device
        while len(self._devices) > self._device_cache_size:
            del self._devices[next(iter(self._devices))]

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
        self._db_load_all()
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
            existing = self._read_hc(tx, key)
            if existing is None:
                raise EntityNotFoundError(f"hybrid connection {name!r} does not exist")
            if existing.config_owned:
                raise ConflictError(
                    f"hybrid connection {existing.name!r} is owned by the config file"
                )
            if if_match is not None and not etag_matches(existing.etag, if_match):
                raise PreconditionFailedError("the etag does not match")
            tx.execute("DELETE FROM rules WHERE scope = ?", (key,))
            tx.execute("DELETE FROM hybrid_connections WHERE name_key = ?", (key,))
            self._hcs.pop(key, None)
        self._publish("hybridConnection", "deleted", existing.name)
        return existing

    async def list_hybrid_connections(
        self, *, limit: int = 100, continuation: str | None = None
    ) -> Page[HybridConnection]:
        check_limit(limit)
        after = decode_continuation(continuation) if continuation is not None else ""
        return await self._run(functools.partial(self._db_list_hcs, limit, after))

    def _db_list_hcs(self, limit: int, after: str) -> Page[HybridConnection]:
        rows = self._conn().execute(
            "SELECT name_key FROM hybrid_connections WHERE name_key > ? ORDER BY name_key LIMIT ?",
            (after, limit + 1),
        )
        keys = [row["name_key"] for row in rows]
        items = tuple(self._hcs[k] for k in keys[:limit])
        more = len(keys) > limit
        return Page(
            items=items, continuation=encode_continuation(keys[limit - 1]) if more else None
        )

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
        check_rule_name(name)
        if not rights:
            raise ValidationError("rights", "must list at least one of Listen, Send, Manage")
        return await self._run(functools.partial(self._db_put_rule, scope, name, rights))

    def _db_put_rule(self, scope: str | None, name: str, rights: Rights) -> tuple[Rule, bool]:
        with self._tx() as tx:
            scope_key, scope_name = self._scope(tx, scope)
            rules = self._read_rules(tx, scope_key)
            current = next((r for r in rules if r.name.lower() == name.lower()), None)
            if current is not None:
                if current.config_owned:
                    raise ConflictError(f"rule {current.name!r} is owned by the config file")
                rule = replace(current, name=name, rights=rights)
            else:
                if len(rules) >= MAX_RULES_PER_SCOPE:
                    raise QuotaExceededError(
                        f"at most {MAX_RULES_PER_SCOPE} rules per scope",
                        limit="max_rules_per_scope",
                    )
                rule = Rule(
                    name=name,
                    primary_key=self._minter.key(),
                    secondary_key=self._minter.key(),
                    rights=rights,
                )
            self._upsert_rule(tx, scope_key, rule)
            self._refresh_scope(tx, scope_key)
        self._publish("rule", "created" if current is None else "updated", name, scope_name)
        return rule, current is None

    async def delete_rule(self, scope: str | None, name: str) -> Rule:
        return await self._run(functools.partial(self._db_delete_rule, scope, name))

    def _db_delete_rule(self, scope: str | None, name: str) -> Rule:
        with self._tx() as tx:
            scope_key, scope_name = self._scope(tx, scope)
            current = self._rule_or_404(tx, scope_key, name)
            if current.config_owned:
                raise ConflictError(f"rule {current.name!r} is owned by the config file")
            tx.execute(
                "DELETE FROM rules WHERE scope = ? AND name_key = ?", (scope_key, name.lower())
            )
            self._refresh_scope(tx, scope_key)
        self._publish("rule", "deleted", current.name, scope_name)
        return current

    def _rule_or_404(self, tx: sqlite3.Connection, scope_key: str, name: str) -> Rule:
        row = tx.execute(
            _SELECT_RULES + " WHERE scope = ? AND name_key = ?",
            (scope_key, name.lower()),
        ).fetchone()
        if row is None:
            raise EntityNotFoundError(f"rule {name!r} does not exist")
        return _rule_from_row(row)

    async def regenerate_key(
        self, scope: str | None, name: str, which: KeyKind, *, key: str | None = None
    ) -> Rule:
        if which not in ("primary", "secondary"):
            raise ValidationError("keyType", "must be primary or secondary")
        if key is not None and len(key) < 16:
            raise ValidationError("key", "must be at least 16 characters")
        return await self._run(functools.partial(self._db_regenerate, scope, name, which, key))

    def _db_regenerate(self, scope: str | None, name: str, which: KeyKind, key: str | None) -> Rule:
        with self._tx() as tx:
            scope_key, scope_name = self._scope(tx, scope)
            current = self._rule_or_404(tx, scope_key, name)
            if current.config_owned:
                raise ConflictError(f"rule {current.name!r} is owned by the config file")
            fresh = key if key is not None else self._minter.key()
            rule = (
                replace(current, primary_key=fresh)
                if which == "primary"
                else replace(current, secondary_key=fresh)
            )
            self._upsert_rule(tx, scope_key, rule)
            self._refresh_scope(tx, scope_key)
        self._publish("rule", "updated", rule.name, scope_name, detail="keys")
        return rule

    # --- devices --------------------------------------------------------------------------

    async def get_device(self, device_id: str) -> Device | None:
        hit = self._devices.get(device_id, _MISS)
        if isinstance(hit, Device) or hit is None:
            return hit
        if not _valid_device_id(device_id):
            return None
        return await self._run(functools.partial(self._db_get_device, device_id))

    def _db_get_device(self, device_id: str) -> Device | None:
        device = self._read_device(self._conn(), device_id)
        self._cache_device(device_id, device)
        return device

    async def create_device(self, device: Device) -> Device:
        return await self._run(functools.partial(self._db_create_device, device))

    def _db_create_device(self, device: Device) -> Device:
        with self._tx() as tx:
            if self._read_device(tx, device.device_id) is not None:
                raise ConflictError(f"device {device.device_id!r} exists")
            record = new_device(device, self._minter)
            tx.execute(
                _INSERT_DEVICE,
                _device_params(record),
            )
        self._pending_activity.pop(record.device_id, None)
        self._cache_device(record.device_id, record)
        self._publish("device", "created", record.device_id)
        return record

    async def replace_device(self, device: Device, *, if_match: str) -> Device:
        return await self._run(functools.partial(self._db_replace_device, device, if_match))

    def _db_replace_device(self, device: Device, if_match: str) -> Device:
        with self._tx() as tx:
            current = self._read_device(tx, device.device_id)
            if current is None:
                raise EntityNotFoundError(f"device {device.device_id!r} does not exist")
            if not etag_matches(current.etag, if_match):
                raise PreconditionFailedError("the etag does not match")
            record = replaced_device(current, device, self._minter)
            # The connection fields and lastActivityTime are not the identity's: kept as stored.
            tx.execute(
                "UPDATE devices SET etag = ?, status = ?, status_reason = ?, "
                "status_update_time = ?, authentication = ?, grants = ? WHERE device_id = ?",
                (
                    record.etag,
                    record.status,
                    record.status_reason,
                    record.status_update_time,
                    _json(record.authentication.to_json()),
                    _json(record.grants.to_json()),
                    record.device_id,
                ),
            )
        self._cache_device(record.device_id, record)
        self._publish(
            "device", "updated", record.device_id, detail=device_change_detail(current, record)
        )
        return record

    async def delete_device(self, device_id: str, *, if_match: str) -> Device:
        deleted = await self._run(functools.partial(self._db_delete_device, device_id, if_match))
        self._last_touch.pop(device_id, None)  # a re-created device starts unthrottled
        return deleted

    def _db_delete_device(self, device_id: str, if_match: str) -> Device:
        with self._tx() as tx:
            current = self._read_device(tx, device_id)
            if current is None:
                raise EntityNotFoundError(f"device {device_id!r} does not exist")
            if not etag_matches(current.etag, if_match):
                raise PreconditionFailedError("the etag does not match")
            tx.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))
        self._pending_activity.pop(device_id, None)
        self._cache_device(device_id, None)
        self._publish("device", "deleted", device_id)
        return current

    async def list_devices(
        self, *, limit: int = 1000, continuation: str | None = None
    ) -> Page[Device]:
        check_limit(limit)
        after = decode_continuation(continuation) if continuation is not None else ""
        return await self._run(functools.partial(self._db_list_devices, limit, after))

    def _db_list_devices(self, limit: int, after: str) -> Page[Device]:
        rows = (
            self._conn()
            .execute(
                _SELECT_DEVICES + " WHERE device_id > ? ORDER BY device_id LIMIT ?",
                (after, limit + 1),
            )
            .fetchall()
        )
        items = tuple(self._with_activity(_device_from_row(row)) for row in rows[:limit])
        more = len(rows) > limit
        token = encode_continuation(items[-1].device_id) if more else None
        return Page(items=items, continuation=token)

    async def set_connection_state(self, device_id: str, connected: bool, now: float) -> None:
        await self._run(
            functools.partial(self._db_connection_state, device_id, connected, round(now, 6))
        )

    def _db_connection_state(self, device_id: str, connected: bool, now: float) -> None:
        state: ConnectionState = "connected" if connected else "disconnected"
        cursor = self._conn().execute(
            "UPDATE devices SET connection_state = ?, connection_state_updated_time = ? "
            "WHERE device_id = ?",
            (state, now, device_id),
        )
        cached = self._devices.get(device_id)
        if cursor.rowcount and cached is not None:
            self._cache_device(
                device_id,
                replace(cached, connection_state=state, connection_state_updated_time=now),
            )

    async def touch_activity(self, device_id: str, now: float) -> None:
        # Cheap: at most one call per device per second reaches the worker, which only
        # records the time; one flush job writes a burst of touches in one transaction.
        last = self._last_touch.get(device_id)
        if last is not None and 0 <= now - last < _TOUCH_INTERVAL:
            return
        if len(self._last_touch) > 100_000:
            self._last_touch.clear()
        self._last_touch[device_id] = now
        await self._run(functools.partial(self._db_touch, device_id, round(now, 6)))

    def _db_touch(self, device_id: str, now: float) -> None:
        if self._db is None:
            return
        previous = self._pending_activity.get(device_id)
        if previous is None or now > previous:
            self._pending_activity[device_id] = now
        cached = self._devices.get(device_id)
        if cached is not None:
            self._cache_device(device_id, self._with_activity(cached))
        if not self._flush_scheduled:
            # Runs after the jobs already queued, so a burst shares one transaction. The
            # executor owns the job; close() flushes whatever is still pending itself.
            self._flush_scheduled = True
            self._executor.submit(self._db_flush_activity)

    def _db_flush_activity(self) -> None:
        self._flush_scheduled = False
        if self._db is None or not self._pending_activity:
            return
        batch, self._pending_activity = self._pending_activity, {}
        try:
            with self._tx() as tx:
                tx.executemany(
                    "UPDATE devices SET last_activity_time = ? WHERE device_id = ? "
                    "AND (last_activity_time IS NULL OR last_activity_time < ?)",
                    [(t, device_id, t) for device_id, t in batch.items()],
                )
        except sqlite3.Error:
            log.exception("store_activity_flush_failed", extra={"devices": len(batch)})

    # --- CA certificates ------------------------------------------------------------------

    def _read_certificate(self, db: sqlite3.Connection, name: str) -> CaCertificate | None:
        row = db.execute("SELECT doc FROM ca_certificates WHERE name = ?", (name,)).fetchone()
        return CaCertificate.from_json(json.loads(row[0])) if row is not None else None

    def _write_certificate(self, db: sqlite3.Connection, cert: CaCertificate) -> None:
        db.execute(
            "INSERT OR REPLACE INTO ca_certificates (name, doc) VALUES (?, ?)",
            (cert.name, _json(cert.to_json())),
        )

    async def put_certificate(self, cert: CaCertificate) -> tuple[CaCertificate, bool]:
        return await self._run(functools.partial(self._db_put_certificate, cert))

    def _db_put_certificate(self, cert: CaCertificate) -> tuple[CaCertificate, bool]:
        with self._tx() as tx:
            existing = self._read_certificate(tx, cert.name)
            record = stored_certificate(
                cert, existing, etag=self._minter.etag(), now=self._minter.now()
            )
            self._write_certificate(tx, record)
        self._publish("certificate", "created" if existing is None else "updated", cert.name)
        return record, existing is None

    async def get_certificate(self, name: str) -> CaCertificate | None:
        return await self._run(lambda: self._read_certificate(self._conn(), name))

    async def list_certificates(self) -> tuple[CaCertificate, ...]:
        def read() -> tuple[CaCertificate, ...]:
            rows = self._conn().execute("SELECT doc FROM ca_certificates ORDER BY name")
            return tuple(CaCertificate.from_json(json.loads(row[0])) for row in rows)

        return await self._run(read)

    async def delete_certificate(self, name: str) -> CaCertificate:
        return await self._run(functools.partial(self._db_delete_certificate, name))

    def _db_delete_certificate(self, name: str) -> CaCertificate:
        with self._tx() as tx:
            current = self._read_certificate(tx, name)
            if current is None:
                raise EntityNotFoundError(f"certificate {name!r} does not exist")
            tx.execute("DELETE FROM ca_certificates WHERE name = ?", (name,))
        self._publish("certificate", "deleted", name)
        return current

    async def set_verification_code(self, name: str, code: str) -> CaCertificate:
        return await self._run(
            functools.partial(self._db_update_certificate, name, None, verification_code=code)
        )

    async def mark_verified(self, name: str, *, thumbprint: str) -> CaCertificate:
        return await self._run(
            functools.partial(self._db_update_certificate, name, thumbprint, is_verified=True)
        )

    def _db_update_certificate(
        self, name: str, thumbprint: str | None, **changes: object
    ) -> CaCertificate:
        with self._tx() as tx:
            current = self._read_certificate(tx, name)
            if current is None:
                raise EntityNotFoundError(f"certificate {name!r} does not exist")
            if thumbprint is not None and current.thumbprint != thumbprint:
                raise PreconditionFailedError("the certificate was replaced meanwhile")
            record = replace(current, etag=self._minter.etag(), **changes)  # type: ignore[arg-type]
            self._write_certificate(tx, record)
        detail: ChangeDetail = "verified" if changes.get("is_verified") else "verificationCode"
        self._publish("certificate", "updated", name, detail=detail)
        return record
