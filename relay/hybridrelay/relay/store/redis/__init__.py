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

One class per aggregate on the shared engine (``engine.py``): ``hybrid_connections.py``
(with rules and the config import), ``devices.py``, ``certificates.py``.
:class:`RedisStore` is all of them: the :class:`~hybridrelay.relay.store.base.Store`
the relay uses.
"""

from __future__ import annotations

import secrets
import time

from hybridrelay.relay.config import RelayConfig
from hybridrelay.relay.store.records import Clock, Minter, RandomBytes
from hybridrelay.relay.store.redis.certificates import RedisCertificates
from hybridrelay.relay.store.redis.devices import RedisDevices
from hybridrelay.relay.store.redis.engine import REPLY_TIMEOUT, check_name
from hybridrelay.relay.store.redis.hybrid_connections import RedisHybridConnections
from hybridrelay.relay.store.redis_adapter import RedisAdapter

__all__ = ["RedisStore"]


class RedisStore(RedisHybridConnections, RedisDevices, RedisCertificates):
    """:class:`~hybridrelay.relay.store.base.Store` on Redis; open with :meth:`open`."""

    def __init__(self, redis: RedisAdapter, *, prefix: str, minter: Minter, node_id: str) -> None:
        super().__init__(redis, prefix=prefix, minter=minter, node_id=node_id)
        self._init_hybrid_connections()
        self._init_devices()
        self._config: RelayConfig | None = None  # re-imported after Redis comes back

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
        check_name("prefix", prefix)
        check_name("node_id", node)
        store = cls(
            RedisAdapter.from_url(
                url, client_name=f"hybridrelay-{node}", socket_timeout=REPLY_TIMEOUT
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

    async def _resync(self) -> None:
        # A Redis that restarted empty gets the config's entities back (idempotent).
        if self._config is not None:
            await self.import_config(self._config)
