"""The embedded default store: one SQLite file under the data dir (stdlib ``sqlite3``).

One class per aggregate, each on the shared engine (``engine.py``: the worker thread,
transactions, schema migrations, change events):

- ``hybrid_connections.py``: hybrid connections, their rules, the namespace rules and
  the config import;
- ``devices.py``: device identities, connection state, last activity;
- ``certificates.py``: CA certificates.

:class:`SqliteStore` is all of them over one file: the
:class:`~hybridrelay.relay.store.base.Store` the relay uses.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

from hybridrelay.relay.config import RelayConfig
from hybridrelay.relay.store.records import Clock, Minter, RandomBytes
from hybridrelay.relay.store.sqlite.certificates import SqliteCertificates
from hybridrelay.relay.store.sqlite.devices import SqliteDevices
from hybridrelay.relay.store.sqlite.engine import DEFAULT_FILE
from hybridrelay.relay.store.sqlite.hybrid_connections import SqliteHybridConnections

__all__ = ["DEFAULT_FILE", "SqliteStore"]


class SqliteStore(SqliteHybridConnections, SqliteDevices, SqliteCertificates):
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
        super().__init__(path, minter=minter, loop=loop)
        self._init_hybrid_connections(max_listeners_default=max_listeners_default)
        self._init_devices(device_cache_size=device_cache_size)

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

    # --- worker: the file's life ----------------------------------------------------------

    def _db_open(self) -> None:
        fresh = self._db_connect()
        if fresh:
            self._db_import_legacy(self._conn())
        self._db_load_hybrid_connections()
        self._devices = {}

    def _db_close(self) -> None:
        if self._db is not None:
            self._db_flush_activity()  # last activity collected but not yet written
        super()._db_close()
