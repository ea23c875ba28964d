"""Device identities in the SQLite store: a bounded cache, and activity written in bursts.

``get_device`` hits are served from a bounded cache on the loop side (misses are
cached too). Connection state is written at once; ``lastActivityTime`` at most once
a second per device, collected on the worker and flushed in one transaction per burst.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import replace
from typing import Final

from hybridrelay.errors import ConflictError
from hybridrelay.logs import RELAY
from hybridrelay.relay.store.checks import check_device_write, compact_json, is_device_id
from hybridrelay.relay.store.device_query import (
    DEFAULT_SCAN_LIMIT,
    ID_END,
    DeviceQuery,
    ScanResult,
)
from hybridrelay.relay.store.models import (
    Authentication,
    ConnectionState,
    Device,
    Grants,
    Page,
)
from hybridrelay.relay.store.records import (
    device_change_detail,
    new_device,
    next_page_token,
    page_start,
    replaced_device,
)
from hybridrelay.relay.store.sqlite.engine import SqliteEngine

__all__ = ["SqliteDevices", "insert_devices", "search_sql"]

log = logging.getLogger(RELAY)

_TOUCH_INTERVAL: Final = 1.0  # lastActivityTime resolution, seconds
_MISS: Final = object()

_SELECT_DEVICES: Final = (
    "SELECT device_id, generation_id, etag, status, status_reason, status_update_time, "
    "authentication, grants, connection_state, connection_state_updated_time, "
    "last_activity_time, check_in_interval FROM devices"
)
_INSERT_DEVICE: Final = (
    "INSERT INTO devices (device_id, generation_id, etag, status, status_reason, "
    "status_update_time, authentication, grants, connection_state, "
    "connection_state_updated_time, last_activity_time, check_in_interval) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
        check_in_interval=row["check_in_interval"],
    )


def _device_params(d: Device) -> tuple[object, ...]:
    return (
        d.device_id,
        d.generation_id,
        d.etag,
        d.status,
        d.status_reason,
        d.status_update_time,
        compact_json(d.authentication.to_json()),
        compact_json(d.grants.to_json()),
        d.connection_state,
        d.connection_state_updated_time,
        d.last_activity_time,
        d.check_in_interval,
    )


def insert_devices(db: sqlite3.Connection, devices: Iterable[Device]) -> int:
    """Write device rows as they are, in one transaction, into a store file not in use.

    For benchmarks and tests that need a registry of 100,000 devices in a second
    (``create_device`` commits one at a time). Nothing is checked or stamped: the
    devices must be complete (etag, keys) and their ids new. Returns how many rows.
    """
    with db:
        cursor = db.executemany(_INSERT_DEVICE, (_device_params(d) for d in devices))
    return cursor.rowcount


def search_sql(after: str, query: DeviceQuery, scan_limit: int) -> tuple[str, tuple[object, ...]]:
    """The statement a search steps through: the ids one index range holds, in id order.

    One condition drives it (an index range); the others are checked on each row read,
    so ``LIMIT scan_limit + 1`` bounds the rows read whatever matches. A connected device
    is rarer than an enabled one, so ``connectionState=connected`` drives first.
    """
    # One lower bound only: given two (after the page start, at the prefix), SQLite may
    # start the range at the lower one and step through every id before the prefix.
    if query.prefix and after < query.prefix:
        where, params = ["device_id >= ?"], [query.prefix]
    else:
        where, params = ["device_id > ?"], [after]
    if query.connection_state == "connected" or (
        query.connection_state is not None and query.status is None
    ):
        where.insert(0, "connection_state = ?")
        params.insert(0, query.connection_state)
    elif query.status is not None:
        where.insert(0, "status = ?")
        params.insert(0, query.status)
    if query.prefix:
        where.append("device_id < ?")
        params.append(query.prefix + ID_END)
    sql = f"{_SELECT_DEVICES} WHERE {' AND '.join(where)} ORDER BY device_id LIMIT ?"
    return sql, (*params, scan_limit + 1)  # one past the budget: "more left" or "done"


class SqliteDevices(SqliteEngine):
    """Device identities, their connection state and last activity."""

    def _init_devices(self, *, device_cache_size: int) -> None:
        # Worker-owned; the loop reads the cache with single dict lookups only.
        self._devices: dict[str, Device | None] = {}
        self._device_cache_size = device_cache_size
        self._pending_activity: dict[str, float] = {}
        self._flush_scheduled = False
        self._last_touch: dict[str, float] = {}  # loop-owned

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

    def _cache_device(self, device_id: str, device: Device | None) -> None:
        self._devices[device_id] = device
        while len(self._devices) > self._device_cache_size:
            del self._devices[next(iter(self._devices))]

    async def get_device(self, device_id: str) -> Device | None:
        hit = self._devices.get(device_id, _MISS)
        if isinstance(hit, Device) or hit is None:
            return hit
        if not is_device_id(device_id):
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
            current = check_device_write(
                self._read_device(tx, device.device_id), device.device_id, if_match
            )
            record = replaced_device(current, device, self._minter)
            # The connection fields and lastActivityTime are not the identity's: kept as stored.
            tx.execute(
                "UPDATE devices SET etag = ?, status = ?, status_reason = ?, "
                "status_update_time = ?, authentication = ?, grants = ?, check_in_interval = ? "
                "WHERE device_id = ?",
                (
                    record.etag,
                    record.status,
                    record.status_reason,
                    record.status_update_time,
                    compact_json(record.authentication.to_json()),
                    compact_json(record.grants.to_json()),
                    record.check_in_interval,
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
            current = check_device_write(self._read_device(tx, device_id), device_id, if_match)
            tx.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))
        self._pending_activity.pop(device_id, None)
        self._cache_device(device_id, None)
        self._publish("device", "deleted", device_id)
        return current

    async def list_devices(
        self,
        *,
        limit: int = 1000,
        continuation: str | None = None,
        query: DeviceQuery | None = None,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
    ) -> Page[Device]:
        after = page_start(limit, continuation)
        if query is not None and query.narrows:
            return await self._run(
                functools.partial(self._db_search_devices, limit, after, query, scan_limit)
            )
        return await self._run(functools.partial(self._db_list_devices, limit, after))

    def _db_search_devices(
        self, limit: int, after: str, query: DeviceQuery, scan_limit: int
    ) -> Page[Device]:
        sql, params = search_sql(after, query, scan_limit)
        result = ScanResult(limit=limit, scan_limit=scan_limit, matched=[])
        rows: list[sqlite3.Row] = []
        cursor = self._conn().execute(sql, params)
        try:
            # Rows are stepped one by one: a page that fills early reads no further.
            for row in cursor:
                if result.budget_spent():
                    break
                device_id = row["device_id"]
                matches = query.id_matches(device_id) and query.fields_match(
                    row["status"], row["connection_state"]
                )
                result.examine(device_id, matches)
                if matches:
                    rows.append(row)
                    if result.full():
                        break
        finally:
            cursor.close()
        items = tuple(self._with_activity(_device_from_row(row)) for row in rows[:limit])
        return Page(items=items, continuation=result.continuation())

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
        keys = [row["device_id"] for row in rows]
        return Page(items=items, continuation=next_page_token(keys, limit))

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
