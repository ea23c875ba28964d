"""The SQLite store's engine: one file, one worker thread, versioned schema, change events.

Every blocking call runs on ONE dedicated worker thread, so the event loop never
waits on the disk and writes are serialised without locks: an If-Match
read-compare-write is atomic because nothing else runs on that thread meanwhile.
The worker also owns the aggregates' caches; the loop only reads them (a single
``dict.get``), so the hot path never leaves the loop, and a write's cache update
happens on the worker right after its commit, even when the awaiting coroutine was
cancelled.

The file is in WAL mode, its schema is versioned (``schema_version``), and the
migrations below run in order when the store opens. One relay process owns a file:
the caches do not see writes made by another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from hybridrelay.errors import ConfigError, UnavailableError
from hybridrelay.logs import RELAY
from hybridrelay.relay.private_files import open_private, private_dir, tighten
from hybridrelay.relay.store.base import ChangeCallback
from hybridrelay.relay.store.events import ChangeHub
from hybridrelay.relay.store.models import ChangeDetail, ChangeEvent, ChangeKind, ChangeOp
from hybridrelay.relay.store.records import Minter

__all__ = ["DEFAULT_FILE", "SqliteEngine"]

log = logging.getLogger(RELAY)
T = TypeVar("T")

DEFAULT_FILE: Final = "hybridrelay.sqlite3"

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
    # v4: device search by status and connection state over 100k devices in id order
    # (store/device_query.py): an index per condition, the id second for the order.
    (
        "CREATE INDEX devices_by_status ON devices (status, device_id)",
        "CREATE INDEX devices_by_connection ON devices (connection_state, device_id)",
        # The expected check-in interval (seconds; NULL: none), Device.check_in_interval.
        "ALTER TABLE devices ADD COLUMN check_in_interval INTEGER",
    ),
)


class SqliteEngine:
    """The file, its worker thread and its transactions; the aggregates build on it."""

    def __init__(self, path: str, *, minter: Minter, loop: asyncio.AbstractEventLoop) -> None:
        self._path = path
        self._minter = minter
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybridrelay-store")
        self._closed = False
        self._db: sqlite3.Connection | None = None  # worker-owned
        self._hub = ChangeHub()  # loop-owned

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
        self._hub.emit(event)

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        return self._hub.subscribe(callback)

    def _db_close(self) -> None:
        """Close the file (on the worker); an aggregate with unwritten work flushes first."""
        if self._db is None:
            return
        self._db.close()
        self._db = None

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self._run(self._db_close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    # --- worker: open and migrate ---------------------------------------------------------

    def _db_connect(self) -> bool:
        """Open and migrate the file (on the worker); True when it was new."""
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
        return self._db_migrate(db)

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
