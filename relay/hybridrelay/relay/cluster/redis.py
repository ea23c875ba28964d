"""ClusterState on Redis: listener presence shared by relay nodes, work routed by pub/sub.

Layout under ``hr:{prefix}:`` (the ``{...}`` is a Redis Cluster hash tag, so each
hybrid connection's presence lives in one slot and every script touches one key):

    hr:P:ls:{hc}      hash: l:<listener id> = "<node>|<deadline ms>" (Redis clock),
                      a:<listener id> = active streams of that listener, cluster-wide
    hr:P:node:<node>  pub/sub channel of one node: deliveries, their acks, notices
    hr:P:nodes        hash: <node> = that node's summary (JSON, NodeSummary), rewritten
                      with every heartbeat; one not renewed in 3 * ttl is a node gone

A node keeps its control channels and its waiting senders to itself (the rendezvous
address points at the sender's node; data never crosses Redis or another node). Every
``ttl / 3`` it rewrites the deadlines of its listeners, so a crashed node's listeners
stop being chosen ``ttl`` seconds after its last heartbeat without any cleanup job; the
scripts drop expired entries as they meet them.

A sender on node B whose chosen listener lives on node A: B publishes the control
message on A's channel; A writes it to the listener and publishes an ack on B's. A
PUBLISH that nobody receives means A is gone: B skips A's listeners until they show a
newer deadline. When Redis cannot be reached the node keeps serving what it can alone:
streams already open are untouched, listeners of this node still get new work, and
work for listeners elsewhere fails with 503 until the heartbeat reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import sys
import time
from collections.abc import Collection, Coroutine
from typing import Any, Final

from hybridrelay.backoff import Backoff
from hybridrelay.errors import (
    ConnectionClosedError,
    HybridRelayError,
    ListenerConflictError,
    QuotaExceededError,
    UnavailableError,
)
from hybridrelay.logs import RELAY
from hybridrelay.protocol.codes import RENDEZVOUS_TIMEOUT_S, CloseCode
from hybridrelay.protocol.messages import Accept, Request, decode, encode
from hybridrelay.relay.balancer import ListenerLoad, choose_listener
from hybridrelay.relay.cluster.base import (
    DrainRequested,
    ListenerGone,
    ListenerHandle,
    ListenerPort,
    NodeSummary,
    Pending,
    Summarize,
)
from hybridrelay.relay.cluster.memory import MemoryClusterState
from hybridrelay.relay.store.redis_adapter import RedisAdapter, Script

__all__ = ["RedisClusterState"]

log = logging.getLogger(RELAY)

_DELIVER_TIMEOUT: Final = 3.0  # a node that does not ack within this is treated as gone
_REDIS_TIMEOUT: Final = 2.0  # per reply: a hung Redis must not hold senders
_POLL: Final = 1.0
_COUNT_FRESH_S: Final = 0.5  # a listener count read this recently is still good enough

# KEYS[1] presence hash. ARGV: listener id, node, ttl ms, max listeners, takeover (1/0).
# Returns "ok", "full", "conflict" or "moved:<node>" (taken over from another node).
_ATTACH: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = 0
local previous = nil
for i = 1, #all, 2 do
  local f = all[i]
  if string.sub(f, 1, 2) == 'l:' then
    local v = all[i + 1]
    local sep = string.find(v, '|', 1, true)
    local lid = string.sub(f, 3)
    if tonumber(string.sub(v, sep + 1)) < now then
      redis.call('HDEL', KEYS[1], f, 'a:' .. lid)
    else
      live = live + 1
      if lid == ARGV[1] then previous = string.sub(v, 1, sep - 1) end
    end
  end
end
if previous then
  if ARGV[5] ~= '1' then return 'conflict' end
  live = live - 1
end
if live >= tonumber(ARGV[4]) then return 'full' end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'l:' .. ARGV[1], ARGV[2] .. '|' .. (now + ttl), 'a:' .. ARGV[1], 0)
redis.call('PEXPIRE', KEYS[1], ttl * 3)
if previous and previous ~= ARGV[2] then return 'moved:' .. previous end
return 'ok'
"""

# KEYS[1] presence hash. ARGV: listener id, node. Only the owner removes an entry.
_DETACH: Final = """
local v = redis.call('HGET', KEYS[1], 'l:' .. ARGV[1])
if v and string.sub(v, 1, string.len(ARGV[2]) + 1) == ARGV[2] .. '|' then
  redis.call('HDEL', KEYS[1], 'l:' .. ARGV[1], 'a:' .. ARGV[1])
  return 'ok'
end
return 'not-mine'
"""

# KEYS[1] presence hash. ARGV: node, ttl ms, listener ids... Renews this node's entries
# (re-adding any Redis lost); returns the ids another node has taken over meanwhile.
_HEARTBEAT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local value = ARGV[1] .. '|' .. (now + ttl)
local lost = {}
for i = 3, #ARGV do
  local f = 'l:' .. ARGV[i]
  local v = redis.call('HGET', KEYS[1], f)
  if v and string.sub(v, 1, string.len(ARGV[1]) + 1) ~= ARGV[1] .. '|' then
    local sep = string.find(v, '|', 1, true)
    if tonumber(string.sub(v, sep + 1)) >= now then
      table.insert(lost, ARGV[i])
    else
      redis.call('HSET', KEYS[1], f, value)
    end
  else
    redis.call('HSET', KEYS[1], f, value)
    redis.call('HSETNX', KEYS[1], 'a:' .. ARGV[i], 0)
  end
end
redis.call('PEXPIRE', KEYS[1], ttl * 3)
return lost
"""

# KEYS[1] presence hash. Returns id, node, deadline ms, active for every live listener;
# drops the expired ones it meets.
_LIVE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local active = {}
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'a:' then active[string.sub(all[i], 3)] = all[i + 1] end
end
local out = {}
for i = 1, #all, 2 do
  local f = all[i]
  if string.sub(f, 1, 2) == 'l:' then
    local v = all[i + 1]
    local sep = string.find(v, '|', 1, true)
    local lid = string.sub(f, 3)
    local deadline = string.sub(v, sep + 1)
    if tonumber(deadline) < now then
      redis.call('HDEL', KEYS[1], f, 'a:' .. lid)
    else
      table.insert(out, lid)
      table.insert(out, string.sub(v, 1, sep - 1))
      table.insert(out, deadline)
      table.insert(out, active[lid] or '0')
    end
  end
end
return out
"""


class _Remote:
    """A listener on another node, as the presence hash reports it."""

    __slots__ = ("active", "deadline", "listener_id", "node")

    def __init__(self, listener_id: str, node: str, deadline: int, active: int) -> None:
        self.listener_id = listener_id
        self.node = node
        self.deadline = deadline
        self.active = active


class RedisClusterState:
    """Implements :class:`~hybridrelay.relay.cluster.base.ClusterState` over Redis."""

    def __init__(
        self,
        redis: RedisAdapter,
        *,
        prefix: str,
        node_id: str,
        ttl: float = 10.0,
        rng: random.Random | None = None,
        rendezvous_ttl: float = RENDEZVOUS_TIMEOUT_S,
        max_pending: int = 10_000,
    ) -> None:
        self.node_id = node_id
        self._redis = redis
        self._ttl_ms = int(ttl * 1000)
        self._heartbeat_every = ttl / 3
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not security
        self._base = f"hr:{prefix}:"
        self._local = MemoryClusterState(
            node_id=node_id, rng=self._rng, rendezvous_ttl=rendezvous_ttl, max_pending=max_pending
        )
        self._attach_script: Script = redis.script(_ATTACH)
        self._detach_script: Script = redis.script(_DETACH)
        self._heartbeat_script: Script = redis.script(_HEARTBEAT)
        self._live_script: Script = redis.script(_LIVE)
        self._unavailable: str | None = None
        self._recovered = asyncio.Event()
        self._recovered.set()
        self._acks: dict[str, asyncio.Future[bool]] = {}
        # Nodes whose PUBLISH reached nobody, with the newest deadline seen for them then:
        # their entries count again once a heartbeat writes a later one.
        self._gone_nodes: dict[str, int] = {}
        self._seen_deadline: dict[str, int] = {}  # newest deadline read per node
        # Per listener of this node: the nodes that sent it work (to tell them it left).
        self._senders: dict[tuple[str, str], set[str]] = {}
        self._deltas: dict[tuple[str, str], int] = {}
        self._counted: dict[str, tuple[float, int]] = {}  # hc -> (when, listeners) last read
        self._flush_wanted = asyncio.Event()
        self._gone_callbacks: list[ListenerGone] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscribed = asyncio.Event()
        self._closed = False
        self._summarize: Summarize | None = None
        self._node_ttl_s = 3 * ttl  # a summary older than this is a node gone

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        prefix: str,
        node_id: str,
        ttl: float = 10.0,
        rendezvous_ttl: float = RENDEZVOUS_TIMEOUT_S,
        max_pending: int = 10_000,
    ) -> RedisClusterState:
        """Connect, subscribe to this node's channel and start the heartbeat.

        Raises:
            UnavailableError: Redis cannot be reached.
        """
        adapter = RedisAdapter.from_url(
            url, client_name=f"hybridrelay-cluster-{node_id}", socket_timeout=_REDIS_TIMEOUT
        )
        state = cls(
            adapter,
            prefix=prefix,
            node_id=node_id,
            ttl=ttl,
            rendezvous_ttl=rendezvous_ttl,
            max_pending=max_pending,
        )
        try:
            await adapter.ping()
            state._spawn(state._listen(), "hybridrelay-cluster-channel")
            state._spawn(state._heartbeat(), "hybridrelay-cluster-heartbeat")
            state._spawn(state._flush_counts(), "hybridrelay-cluster-counts")
            async with asyncio.timeout(5.0):
                await state._subscribed.wait()
        except BaseException:
            await state.close()
            raise
        return state

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _presence(self, hc: str) -> str:
        return f"{self._base}ls:{{{hc.lower()}}}"

    def _channel(self, node: str) -> str:
        return f"{self._base}node:{node}"

    @property
    def _nodes_key(self) -> str:
        return f"{self._base}nodes"

    # --- nodes: summaries and drain requests --------------------------------------------------

    def summarize_with(self, summarize: Summarize) -> None:
        self._summarize = summarize

    async def nodes(self) -> list[NodeSummary]:
        own = self._summarize() if self._summarize is not None else None
        entries = await self._redis.hgetall(self._nodes_key)
        now = time.time()
        live: list[NodeSummary] = []
        gone: list[str] = []
        for node, text in entries.items():
            if node == self.node_id:
                continue
            try:
                summary = NodeSummary.from_json(json.loads(text))
            except ValueError:
                summary = None
            if summary is None or summary.seen_at < now - self._node_ttl_s:
                gone.append(node)  # stopped, crashed, or not a summary at all
            else:
                live.append(summary)
        await self._redis.hdel(self._nodes_key, *gone)
        live.sort(key=lambda n: n.node_id)
        return ([own] if own is not None else []) + live

    def on_drain_requested(self, callback: DrainRequested) -> None:
        self._local.on_drain_requested(callback)

    async def request_drain(self, node_id: str, *, drain: bool = True) -> bool:
        if node_id == self.node_id:
            self._local.drain_requested(drain)
            return True
        # A PUBLISH nobody receives: no such node, or it is gone. "n": drain, "u": undrain
        # (a node from before undrain existed logs "u" as undecodable and stays draining).
        message = json.dumps({"t": "n" if drain else "u"})
        return await self._redis.publish(self._channel(node_id), message) > 0

    # --- health ---------------------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        return self._unavailable

    def _lost_redis(self, exc: UnavailableError) -> None:
        if self._unavailable is None:
            log.warning("cluster_redis_unavailable", extra={"error": str(exc)})
        self._unavailable = str(exc)
        self._recovered.clear()

    def _regained_redis(self) -> None:
        if self._unavailable is not None:
            log.info("cluster_redis_recovered")
        self._unavailable = None
        self._recovered.set()

    def on_listener_gone(self, callback: ListenerGone) -> None:
        self._gone_callbacks.append(callback)

    # --- listeners of this node -----------------------------------------------------------

    async def attach(
        self, channel: ListenerPort, *, max_listeners: int, takeover: bool = True
    ) -> None:
        hc, lid = channel.hc_name.lower(), channel.listener_id
        registered = False
        if self._unavailable is None:
            try:
                outcome = await self._attach_script(
                    [self._presence(hc)],
                    [
                        lid,
                        self.node_id,
                        str(self._ttl_ms),
                        str(max_listeners),
                        "1" if takeover else "0",
                    ],
                )
            except UnavailableError as exc:
                # Alone for now: the heartbeat registers the listener once Redis is back.
                self._lost_redis(exc)
            else:
                if outcome == "full":
                    raise QuotaExceededError(
                        f"QuotaExceeded: MaximumListenersPerEndpoint ({max_listeners}) reached",
                        limit="max_listeners_per_hc",
                    )
                if outcome == "conflict":
                    raise ListenerConflictError(
                        f"a listener with sb-hc-id {lid!r} is already connected"
                    )
                registered = True
                if outcome.startswith("moved:"):
                    await self._notify(outcome[6:], {"t": "x", "h": hc, "l": lid})
        self._counted.pop(hc, None)
        try:
            await self._local.attach(channel, max_listeners=max_listeners, takeover=takeover)
        except HybridRelayError:
            if registered:
                await self._remove_entry(hc, lid)
            raise

    async def detach(self, channel: ListenerPort) -> None:
        hc, lid = channel.hc_name.lower(), channel.listener_id
        if self._local.find(hc, lid) is not channel:
            return
        await self._local.detach(channel)
        self._counted.pop(hc, None)
        self._deltas.pop((hc, lid), None)
        senders = self._senders.pop((hc, lid), set())
        await self._remove_entry(hc, lid)
        for node in senders:
            await self._notify(node, {"t": "g", "h": hc, "l": lid})

    async def _remove_entry(self, hc: str, lid: str) -> None:
        if self._unavailable is not None:
            return  # the entry expires by itself
        try:
            await self._detach_script([self._presence(hc)], [lid, self.node_id])
        except UnavailableError as exc:
            self._lost_redis(exc)

    async def _notify(self, node: str, message: dict[str, str | bool]) -> None:
        try:
            await self._redis.publish(self._channel(node), json.dumps(message))
        except UnavailableError as exc:
            self._lost_redis(exc)

    # --- choosing and delivering ----------------------------------------------------------

    async def _remote_listeners(self, hc: str) -> list[_Remote]:
        reply = await self._live_script.call_list([self._presence(hc)], [])
        listeners: list[_Remote] = []
        for i in range(0, len(reply) - 3, 4):
            try:
                entry = _Remote(reply[i], reply[i + 1], int(reply[i + 2]), int(reply[i + 3]))
            except ValueError:
                continue
            if entry.deadline > self._seen_deadline.get(entry.node, 0):
                self._seen_deadline[entry.node] = entry.deadline
            gone_at = self._gone_nodes.get(entry.node)
            if gone_at is not None:
                if entry.deadline <= gone_at:
                    continue
                del self._gone_nodes[entry.node]  # it heartbeats again
            listeners.append(entry)
        ids = {entry.listener_id for entry in listeners}
        ids.update(self._local.local_loads(hc))
        self._counted[hc.lower()] = (time.monotonic(), len(ids))
        return listeners

    async def pick(
        self,
        hc_name: str,
        *,
        allowed: Collection[str] | None = None,
        disallowed: Collection[str] | None = None,
    ) -> ListenerHandle | None:
        # Interned: the handle lives as long as the stream it is for, and every stream of
        # this hybrid connection can share the one string.
        hc = sys.intern(hc_name.lower())
        if self._unavailable is None:
            try:
                remote = await self._remote_listeners(hc)
            except UnavailableError as exc:
                self._lost_redis(exc)
            else:
                return self._choose(hc, remote, allowed, disallowed)
        handle = await self._local.pick(hc, allowed=allowed, disallowed=disallowed)
        if handle is None:
            raise UnavailableError(
                "the relay cluster's Redis is unreachable and no listener of this hybrid "
                "connection is connected to this node; try again shortly"
            )
        return handle

    def _choose(
        self,
        hc: str,
        remote: list[_Remote],
        allowed: Collection[str] | None,
        disallowed: Collection[str] | None,
    ) -> ListenerHandle | None:
        nodes: dict[str, str] = {}
        loads: list[ListenerLoad] = []
        for entry in remote:
            if entry.node == self.node_id and self._local.find(hc, entry.listener_id) is None:
                continue  # left this node a moment ago
            nodes[entry.listener_id] = entry.node
            loads.append(ListenerLoad(entry.listener_id, max(entry.active, 0)))
        # Listeners of this node that Redis has not heard of yet (attached while it was down).
        for lid, (_channel, active) in self._local.local_loads(hc).items():
            if lid not in nodes:
                nodes[lid] = self.node_id
                loads.append(ListenerLoad(lid, active))
        chosen = choose_listener(loads, rng=self._rng, allowed=allowed, disallowed=disallowed)
        if chosen is None:
            return None
        return ListenerHandle(hc, chosen.listener_id, nodes[chosen.listener_id])

    async def deliver(
        self, handle: ListenerHandle, message: Accept | Request, body: bytes | None = None
    ) -> None:
        if handle.node_id == self.node_id:
            await self._local.deliver(handle, message, body)
            return
        if body is not None:
            # Bodies never cross nodes: a request for a listener elsewhere goes rendezvous-only.
            raise ValueError("a body cannot be delivered to a listener on another node")
        if self._unavailable is not None:
            raise UnavailableError(
                f"the relay cluster's Redis is unreachable ({self._unavailable}); "
                "the chosen listener is on another node"
            )
        request_id = secrets.token_hex(8)
        ack: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._acks[request_id] = ack
        text = json.dumps(
            {
                "t": "d",
                "r": request_id,
                "f": self.node_id,
                "h": handle.hc_name,
                "l": handle.listener_id,
                "m": encode(message),
            }
        )
        try:
            try:
                receivers = await self._redis.publish(self._channel(handle.node_id), text)
            except UnavailableError as exc:
                self._lost_redis(exc)
                raise
            if receivers == 0:
                self._node_gone(handle.node_id)
                raise ConnectionClosedError(
                    CloseCode.GOING_AWAY, f"relay node {handle.node_id} is gone"
                )
            try:
                async with asyncio.timeout(_DELIVER_TIMEOUT):
                    delivered = await ack
            except TimeoutError as exc:
                self._node_gone(handle.node_id)
                raise ConnectionClosedError(
                    CloseCode.INTERNAL_ERROR, f"relay node {handle.node_id} did not answer"
                ) from exc
        finally:
            self._acks.pop(request_id, None)
        if not delivered:
            raise ConnectionClosedError(CloseCode.GOING_AWAY, "listener went away")

    def _node_gone(self, node: str) -> None:
        # Its entries stay skipped until one carries a deadline newer than any read so
        # far, i.e. until the node heartbeats again (deadlines are all Redis's clock).
        self._gone_nodes[node] = self._seen_deadline.get(node, 0)
        log.warning("cluster_node_unreachable", extra={"node": node})

    def stream_started(self, handle: ListenerHandle) -> None:
        self._local.stream_started(handle)
        self._count(handle, 1)

    def stream_ended(self, handle: ListenerHandle) -> None:
        self._local.stream_ended(handle)
        self._count(handle, -1)

    def _count(self, handle: ListenerHandle, delta: int) -> None:
        key = (handle.hc_name.lower(), handle.listener_id)
        self._deltas[key] = self._deltas.get(key, 0) + delta
        self._flush_wanted.set()

    async def listener_count(self, hc_name: str) -> int:
        local = len(self._local.local_loads(hc_name))
        if self._unavailable is not None:
            if local:
                return local
            raise UnavailableError(
                "the relay cluster's Redis is unreachable and no listener of this hybrid "
                "connection is connected to this node; try again shortly"
            )
        counted = self._counted.get(hc_name.lower())
        if counted is not None and time.monotonic() - counted[0] < _COUNT_FRESH_S:
            # Under load every pick refreshes this, so a sender's "any listener?" check
            # costs no round trip of its own.
            return counted[1]
        try:
            await self._remote_listeners(hc_name)
        except UnavailableError as exc:
            self._lost_redis(exc)
            return await self.listener_count(hc_name)
        return self._counted[hc_name.lower()][1]

    # --- the pending table is per node ----------------------------------------------------

    def add_pending(self, pending: Pending, *, ttl: float | None = None) -> str:
        return self._local.add_pending(pending, ttl=ttl)

    def claim_pending(self, key: str) -> Pending | None:
        return self._local.claim_pending(key)

    def find_pending(self, key: str) -> Pending | None:
        return self._local.find_pending(key)

    def discard_pending(self, key: str) -> None:
        self._local.discard_pending(key)

    def pending_count(self) -> int:
        return self._local.pending_count()

    # --- background work ------------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0, stable_after=30.0)
        while not self._closed:
            try:
                async with self._redis.subscription(self._channel(self.node_id)) as subscription:
                    backoff.succeeded(time.monotonic())
                    self._subscribed.set()
                    while True:
                        text = await subscription.get(_POLL)
                        if text is not None:
                            self._on_message(text)
            except UnavailableError as exc:
                self._lost_redis(exc)
                backoff.failed(time.monotonic())
                await asyncio.sleep(backoff.next_delay())

    def _on_message(self, text: str) -> None:
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            log.warning("cluster_message_undecodable")
            return
        kind = doc.get("t")
        if kind in ("n", "u"):
            log.info("drain_requested_by_a_peer" if kind == "n" else "undrain_requested_by_a_peer")
            self._local.drain_requested(kind == "n")
            return
        if kind == "a":
            ack = self._acks.get(str(doc.get("r")))
            if ack is not None and not ack.done():
                ack.set_result(doc.get("ok") is True)
            return
        hc, lid = doc.get("h"), doc.get("l")
        if not isinstance(hc, str) or not isinstance(lid, str):
            log.warning("cluster_message_undecodable")
            return
        if kind == "d":
            self._spawn(self._deliver_for(doc, hc, lid), "hybridrelay-cluster-deliver")
        elif kind == "g":
            for callback in list(self._gone_callbacks):
                try:
                    callback(hc, lid)
                except Exception:  # the top of a callback we don't own: log, keep serving
                    log.exception("listener_gone_callback_failed")
        elif kind == "x":
            channel = self._local.find(hc, lid)
            if channel is not None:
                log.info("listener_taken_over_elsewhere", extra={"hc": hc, "listener": lid})
                channel.abort()

    async def _deliver_for(self, doc: dict[str, object], hc: str, lid: str) -> None:
        sender, request_id, text = doc.get("f"), doc.get("r"), doc.get("m")
        if not isinstance(sender, str) or not isinstance(request_id, str):
            return
        ok = False
        try:
            message = decode(text) if isinstance(text, str) else None
            if isinstance(message, Accept | Request):
                await self._local.deliver(ListenerHandle(hc, lid, self.node_id), message)
                self._senders.setdefault((hc.lower(), lid), set()).add(sender)
                ok = True
        except ConnectionClosedError:
            pass
        except HybridRelayError as exc:
            log.warning("cluster_delivery_invalid", extra={"error": str(exc)})
        await self._notify(sender, {"t": "a", "r": request_id, "ok": ok})

    async def _heartbeat(self) -> None:
        backoff = Backoff(base=0.2, cap=5.0, stable_after=30.0)
        while not self._closed:
            try:
                await self._beat()
            except UnavailableError as exc:
                self._lost_redis(exc)
                backoff.failed(time.monotonic())
                await asyncio.sleep(min(backoff.next_delay(), self._heartbeat_every))
                continue
            backoff.succeeded(time.monotonic())
            self._regained_redis()
            await asyncio.sleep(self._heartbeat_every)

    async def _beat(self) -> None:
        by_hc: dict[str, list[ListenerPort]] = {}
        for channel in self._local.listeners():
            by_hc.setdefault(channel.hc_name.lower(), []).append(channel)
        if self._summarize is not None:
            summary = json.dumps(self._summarize().to_json())
            await self._redis.hset(self._nodes_key, self.node_id, summary)
        elif not by_hc:
            await self._redis.ping()
        if not by_hc:
            return
        ttl = str(self._ttl_ms)
        for hc, channels in by_hc.items():
            lost = await self._heartbeat_script.call_list(
                [self._presence(hc)], [self.node_id, ttl, *(c.listener_id for c in channels)]
            )
            for lid in lost:
                taken = self._local.find(hc, lid)
                if taken is not None:
                    log.info("listener_taken_over_elsewhere", extra={"hc": hc, "listener": lid})
                    taken.abort()

    async def _flush_counts(self) -> None:
        while not self._closed:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            await self._recovered.wait()
            deltas, self._deltas = self._deltas, {}
            updates = [(self._presence(hc), f"a:{lid}", d) for (hc, lid), d in deltas.items() if d]
            try:
                await self._redis.hincrby_many(updates)
            except UnavailableError as exc:
                self._lost_redis(exc)
                for key, delta in deltas.items():  # keep them for when Redis is back
                    self._deltas[key] = self._deltas.get(key, 0) + delta
                self._flush_wanted.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for ack in self._acks.values():
            if not ack.done():
                ack.cancel()
        await self._local.close()
        with contextlib.suppress(UnavailableError):
            # Gone from the node list at once, not a few heartbeats later.
            await self._redis.hdel(self._nodes_key, self.node_id)
        with contextlib.suppress(UnavailableError):
            await self._redis.aclose()
