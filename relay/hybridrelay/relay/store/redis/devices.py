"""Device identities in the Redis store.

``hr:P:dev:{id}`` holds the device's JSON document and etag, and apart from them its
connection state (``cs``, ``cst``) and last activity (``lat``), so those never change
the etag; ``hr:P:devs`` is the listing index. ``lastActivityTime`` is written at most
once a second per device by this node, and only moves forward.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Final

from hybridrelay.errors import ConflictError, ValidationError
from hybridrelay.relay.store.checks import check_device_write, is_device_id
from hybridrelay.relay.store.device_query import (
    DEFAULT_SCAN_LIMIT,
    ID_END,
    DeviceQuery,
    ScanResult,
)
from hybridrelay.relay.store.last_known import LastKnown
from hybridrelay.relay.store.models import ChangeEvent, Device, Page
from hybridrelay.relay.store.records import (
    device_change_detail,
    new_device,
    next_page_token,
    page_start,
    replaced_device,
)
from hybridrelay.relay.store.redis.engine import ChangedError, RedisEngine, decode_failure
from hybridrelay.relay.store.redis_adapter import Script

__all__ = ["RedisDevices"]

_TOUCH_INTERVAL: Final = 1.0
_SEARCH_CHUNK: Final = 500  # ids read from the index per round trip of a search

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


def _time(text: str | None) -> float | None:
    return None if text is None else float(text)


class RedisDevices(RedisEngine):
    """Device identities, their connection state and last activity."""

    def _init_devices(self) -> None:
        self._dev_index = f"{self._base}devs"
        self._set_state: Script = self._redis.script(_SET_STATE)
        self._touch: Script = self._redis.script(_TOUCH)
        # Served only while Redis is unreachable (last_known.py).
        self._last_devices: LastKnown[Device | None] = LastKnown("device", breaker=self._down)
        self._last_touch: dict[str, float] = {}

    def _dev_hash(self, device_id: str) -> str:
        return f"{self._base}dev:{{{device_id}}}"

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
            raise decode_failure(hash_key, exc) from exc

    async def get_device(self, device_id: str) -> Device | None:
        if not is_device_id(device_id):
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
            current = check_device_write(
                await self.get_device(device.device_id), device.device_id, if_match
            )
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
                raise ChangedError
            return record

        return await self._retrying(attempt)

    async def delete_device(self, device_id: str, *, if_match: str) -> Device:
        async def attempt() -> Device:
            current = check_device_write(await self.get_device(device_id), device_id, if_match)
            event = ChangeEvent(kind="device", op="deleted", name=device_id)
            status = await self._delete_doc(
                [self._dev_hash(device_id)], [current.etag, self._channel, self._message(event)]
            )
            if status != "ok":
                raise ChangedError
            await self._redis.zrem(self._dev_index, device_id)
            self._last_touch.pop(device_id, None)
            self._emit(event)
            return current

        return await self._retrying(attempt)

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
            return await self._search_devices(limit, after, query, scan_limit)
        members = await self._redis.zrange_after(self._dev_index, after, limit + 1)
        keys = [self._dev_hash(m) for m in members[:limit]]
        items = [
            device
            for key, fields in zip(keys, await self._redis.hgetall_many(keys), strict=True)
            if (device := self._decode_device(key, fields)) is not None
        ]
        return Page(items=tuple(items), continuation=next_page_token(members, limit))

    async def _search_devices(
        self, limit: int, after: str, query: DeviceQuery, scan_limit: int
    ) -> Page[Device]:
        # The index holds ids only: prefix narrows the range read, the other conditions
        # need each candidate's hash, read a chunk at a time (pipelined) until a page
        # fills or scan_limit ids were examined.
        low = f"({after}" if after else "-"
        high = "+"
        if query.prefix:
            if not after or after < query.prefix:
                low = f"[{query.prefix}"
            high = f"({query.prefix}{ID_END}"
        result = ScanResult(limit=limit, scan_limit=scan_limit, matched=[])
        found: list[Device] = []
        while True:
            # One id past the budget tells "more left" from "done".
            want = min(_SEARCH_CHUNK, scan_limit - result.examined + 1)
            members = await self._redis.zrange_between(self._dev_index, low, high, want)
            keys = [self._dev_hash(m) for m in members if query.id_matches(m)]
            devices: dict[str, Device] = {}
            if keys:
                for key, fields in zip(keys, await self._redis.hgetall_many(keys), strict=True):
                    device = self._decode_device(key, fields)
                    if device is not None:
                        devices[device.device_id] = device
            for member in members:
                if result.budget_spent():
                    break
                device = devices.get(member)
                matches = device is not None and query.matches(device)
                result.examine(member, matches)
                if device is not None and matches:
                    found.append(device)
                    if result.full():
                        break
            if result.full() or result.more or len(members) < want:
                break
            low = f"({members[-1]}"
        return Page(items=tuple(found[:limit]), continuation=result.continuation())

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
