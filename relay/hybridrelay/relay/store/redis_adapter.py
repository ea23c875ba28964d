"""The store's typed face of redis-py asyncio: the one store module that touches ``Any``.

redis-py's results are loosely typed (``ResponseT = Awaitable[Any] | Any``, pub/sub
messages are dicts), so every result is checked and narrowed here, and every
redis error becomes :class:`~hybridrelay.errors.UnavailableError` (503): callers
see only ``str``, ``dict[str, str]`` and ``list[str]`` (style §1, redis-py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from hybridrelay.errors import UnavailableError
from hybridrelay.logs import RELAY

__all__ = ["RedisAdapter", "Script", "Subscription"]

log = logging.getLogger(RELAY)
_SUBSCRIBE_TIMEOUT: Final = 5.0


def _unavailable(exc: RedisError) -> UnavailableError:
    return UnavailableError(f"redis: {type(exc).__name__}: {exc}")


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, int):
        return str(value)
    raise UnavailableError(f"redis: unexpected reply {type(value).__name__}")


def _str_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise UnavailableError(f"redis: unexpected reply {type(value).__name__}")
    return {_str(k): _str(v) for k, v in value.items()}


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        raise UnavailableError(f"redis: unexpected reply {type(value).__name__}")
    return [_str(v) for v in value]


class Script:
    """A registered Lua script that answers with one status string."""

    __slots__ = ("_script",)

    def __init__(self, script: Any) -> None:
        self._script = script

    async def __call__(self, keys: Sequence[str], args: Sequence[str]) -> str:
        try:
            result: Any = await self._script(keys=list(keys), args=list(args))
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return _str(result)

    async def call_list(self, keys: Sequence[str], args: Sequence[str]) -> list[str]:
        """Run the script when it answers with an array of strings."""
        try:
            result: Any = await self._script(keys=list(keys), args=list(args))
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return _str_list(result)


class Subscription:
    """One pub/sub channel; :meth:`get` waits for the next message's text."""

    __slots__ = ("_pubsub",)

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub

    async def get(self, poll: float) -> str | None:
        """Return the next message, or None when ``poll`` seconds pass without one.

        Raises:
            UnavailableError: The connection failed.
        """
        try:
            message: Any = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=poll
            )
        except RedisError as exc:
            raise _unavailable(exc) from exc
        except OSError as exc:  # a reset socket can surface unwrapped
            raise UnavailableError(f"redis: {exc}") from exc
        if not isinstance(message, dict) or message.get("type") != "message":
            return None
        return _str(message.get("data"))


class RedisAdapter:
    """The few Redis operations the store uses, typed."""

    __slots__ = ("_client",)

    def __init__(self, client: Redis) -> None:
        self._client = client

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        client_name: str | None = None,
        max_connections: int = 64,
        pool_timeout: float = 10.0,
        socket_timeout: float | None = None,
    ) -> RedisAdapter:
        """Connect lazily to ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        The pool *waits* up to ``pool_timeout`` for a free connection when all
        ``max_connections`` are busy (redis-py's default pool fails at once with "Too many
        connections"), so a burst of work queues instead of failing. ``client_name``
        shows in ``CLIENT LIST``, so an operator can tell relay nodes apart.
        ``socket_timeout`` bounds every reply (and connecting), so a Redis that hangs
        fails fast instead of holding callers.
        """
        pool = BlockingConnectionPool.from_url(
            url,
            decode_responses=True,
            health_check_interval=15,
            client_name=client_name,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
        )
        return cls(Redis.from_pool(pool))  # the client owns the pool and closes it

    async def aclose(self) -> None:
        try:
            await self._client.aclose()
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def publish(self, channel: str, message: str) -> int:
        """PUBLISH; returns how many subscribers received it."""
        try:
            value: Any = await self._client.publish(channel, message)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return int(value)

    async def hincrby_many(self, key_fields: Sequence[tuple[str, str, int]]) -> None:
        """HINCRBY of several (key, field, delta) in one round trip (not atomic)."""
        if not key_fields:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, field, delta in key_fields:
                    _ = pipe.hincrby(key, field, delta)  # queued; executed below
                await pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from exc

    def script(self, source: str) -> Script:
        return Script(self._client.register_script(source))

    async def hget(self, key: str, field: str) -> str | None:
        try:
            value: Any = await self._client.hget(key, field)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return None if value is None else _str(value)

    async def hset(self, key: str, field: str, value: str) -> None:
        try:
            await self._client.hset(key, field, value)
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def hdel(self, key: str, *fields: str) -> None:
        if not fields:
            return
        try:
            await self._client.hdel(key, *fields)
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def hgetall(self, key: str) -> dict[str, str]:
        try:
            value: Any = await self._client.hgetall(key)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return _str_dict(value)

    async def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """HGETALL of several keys in one round trip (not atomic across keys)."""
        if not keys:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    _ = pipe.hgetall(key)  # queued; the reply comes from execute()
                replies: Any = await pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return [_str_dict(reply) for reply in replies]

    async def hget_many(self, keys: Sequence[str], field: str) -> list[str | None]:
        """HGET of one field of several keys in one round trip."""
        if not keys:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    _ = pipe.hget(key, field)  # queued; the reply comes from execute()
                replies: Any = await pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return [None if reply is None else _str(reply) for reply in replies]

    async def zadd(self, key: str, member: str) -> None:
        """Add ``member`` with score 0 (a lexicographic index)."""
        try:
            await self._client.zadd(key, {member: 0})
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def zrem(self, key: str, member: str) -> None:
        try:
            await self._client.zrem(key, member)
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def zrange_after(self, key: str, after: str, count: int) -> list[str]:
        """Up to ``count`` members greater than ``after`` in byte order ("" = from the start)."""
        low = f"({after}" if after else "-"
        try:
            value: Any = await self._client.zrangebylex(key, low, "+", start=0, num=count)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return _str_list(value)

    async def zrange_between(self, key: str, low: str, high: str, count: int) -> list[str]:
        """Up to ``count`` members in byte order from ``low`` to ``high``, both in
        ZRANGEBYLEX's spelling (``(x`` excludes x, ``[x`` includes it, ``-``/``+``)."""
        try:
            value: Any = await self._client.zrangebylex(key, low, high, start=0, num=count)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return _str_list(value)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key that starts with ``prefix`` (SCAN, so the server keeps serving)."""
        deleted = 0
        try:
            batch: list[str] = []
            async for key in self._client.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(_str(key))
                if len(batch) >= 500:
                    deleted += int(await self._client.delete(*batch))
                    batch = []
            if batch:
                deleted += int(await self._client.delete(*batch))
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return deleted

    @asynccontextmanager
    async def subscription(self, channel: str) -> AsyncIterator[Subscription]:
        """Subscribe to ``channel``; returns once the server has confirmed it.

        Raises:
            UnavailableError: Redis is unreachable or does not confirm in time.
        """
        pubsub = self._client.pubsub()
        try:
            try:
                await pubsub.subscribe(channel)
                async with asyncio.timeout(_SUBSCRIBE_TIMEOUT):
                    while True:
                        message: Any = await pubsub.get_message(timeout=_SUBSCRIBE_TIMEOUT)
                        if isinstance(message, dict) and message.get("type") == "subscribe":
                            break
            except RedisError as exc:
                raise _unavailable(exc) from exc
            except TimeoutError as exc:
                raise UnavailableError("redis: no subscribe confirmation") from exc
            yield Subscription(pubsub)
        finally:
            close: Any = pubsub.aclose  # unannotated in redis-py
            try:
                await close()
            except RedisError as exc:
                # Raising here would replace the exception (or cancellation) in flight.
                log.warning("redis_unsubscribe_failed", extra={"error": str(exc)})
