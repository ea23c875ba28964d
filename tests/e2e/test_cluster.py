"""Several relay nodes on one real Redis (issue 6): presence, cross-node work, failures.

Every node is a real relay process; listeners and senders are protocol-level peers, the
Python listener (HTTP mode) or the listener agent. Data never crosses Redis: a sender's
node hands the listener a rendezvous address on itself, through the listener's node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from tests.harness.cluster import Cluster, mgmt_call, running_cluster
from tests.harness.device_certs import device_sas_token
from tests.harness.listeners import running_listener
from tests.harness.peers import ROOT, RawListener, connect_url, send, token_for
from tests.harness.processes import CliProcess
from tests.harness.redis import RedisServer
from tests.harness.relay import ROOT_KEY, RelayProcess
from tests.harness.timing import seconds

from hybridrelay.errors import ConnectionClosedError, HandshakeError
from hybridrelay.listener import HttpTarget, Listener
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


async def listener_count(node: RelayProcess, hc: str) -> int:
    status, doc = await mgmt_call(node, "GET", f"/hybridconnections/{hc}")
    assert status == 200, doc
    count = doc["listenerCount"]
    assert isinstance(count, int)
    return count


async def wait_listeners(node: RelayProcess, hc: str, want: int, timeout: float) -> float:
    """Poll until ``node`` counts ``want`` listeners of ``hc``; returns the seconds taken."""
    started = time.monotonic()
    async with asyncio.timeout(seconds(timeout)):
        while await listener_count(node, hc) != want:
            await asyncio.sleep(0.05)  # polling the API, not synchronisation by delay
    return time.monotonic() - started


async def presence_deadline(cluster: Cluster, hc: str, listener_id: str) -> int | None:
    """The Redis-clock deadline (ms) of a listener's presence entry, None when it is gone."""
    redis = Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        value = await redis.hget(cluster.presence_key(hc), f"l:{listener_id}")
    finally:
        await redis.aclose()
    return None if value is None else int(str(value).rsplit("|", 1)[1])


async def echo_once(relay: str, hc: str, payload: bytes, **options: object) -> None:
    ws = await send(relay, hc, **options)  # type: ignore[arg-type] # send's keywords
    try:
        await ws.send(payload)
        assert await ws.recv() == payload
    finally:
        await ws.close()


@contextlib.asynccontextmanager
async def listening(*listeners: RawListener) -> AsyncIterator[None]:
    try:
        for listener in listeners:
            await listener.start()
        yield
    finally:
        for listener in listeners:
            await listener.stop()


def agent_config(path: Path, relays: list[str], echo: tuple[str, int], agent_id: str) -> Path:
    listed = ", ".join(f'"{r}"' for r in relays)
    path.write_text(
        f'relays = [{listed}]\nagent_id = "{agent_id}"\nping_interval = 5\n'
        f'[[mappings]]\nhc = "echo"\ntarget = "tcp://{echo[0]}:{echo[1]}"\n'
        f'key_name = "{ROOT}"\nkey = "{ROOT_KEY}"\n',
        "utf-8",
    )
    return path


# --- cross-node work ----------------------------------------------------------------------


async def test_listener_on_one_node_serves_websocket_and_http_senders_on_another(
    tmp_path: Path, redis_url: str
) -> None:
    async def echo_http(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path_qs,
                "sha": hashlib.sha256(body).hexdigest(),
            }
        )

    app = web.Application(client_max_size=4 << 20)
    app.router.add_route("*", "/{tail:.*}", echo_http)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with running_cluster(tmp_path, redis_url, 2) as cluster:
            a, b = cluster.nodes
            ws_listener = RawListener(a.url, "echo")
            http_listener = Listener(
                a.url,
                "web",
                token_provider=SasTokenProvider(ROOT, ROOT_KEY),
                http_handler=HttpTarget(str(server.make_url("/"))),
            )
            async with listening(ws_listener), running_listener(http_listener):
                await echo_once(b.url, "echo", b"across two nodes")
                accept = ws_listener.accepts.get_nowait()
                # The listener dialled the sender's node, not its own.
                assert str(accept["address"]).startswith(f"{b.url}/$hc/echo?")

                async with aiohttp.ClientSession() as session:
                    for method, size in (("GET", 0), ("POST", 10_000), ("POST", 300_000)):
                        body = os.urandom(size)
                        url = f"{b.http_url}/web/items?n={size}"
                        headers = {"ServiceBusAuthorization": token_for(url)}
                        async with session.request(method, url, data=body, headers=headers) as r:
                            assert r.status == 200, await r.text()
                            doc = await r.json()
                        assert doc == {
                            "method": method,
                            "path": f"/items?n={size}",
                            "sha": hashlib.sha256(body).hexdigest(),
                        }
                # A listener elsewhere always fetches the request from the sender's node.
                assert http_listener.stats.requests_rendezvous == 3
    finally:
        await server.close()


async def test_300_concurrent_cross_node_streams_sha256(tmp_path: Path, redis_url: str) -> None:
    async with running_cluster(tmp_path, redis_url, 2) as cluster:
        a, b = cluster.nodes
        async with listening(RawListener(a.url, "echo")):

            async def one(i: int) -> None:
                payload = os.urandom(16_384 + i * 97)
                ws = await send(b.url, "echo")
                try:
                    received = bytearray()
                    for start in range(0, len(payload), 4096):
                        await ws.send(payload[start : start + 4096])
                        chunk = await ws.recv()
                        assert isinstance(chunk, bytes)
                        received += chunk
                    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
                finally:
                    await ws.close()

            async with asyncio.timeout(seconds(60)):
                await asyncio.gather(*(one(i) for i in range(300)))


async def test_listener_cap_is_cluster_wide(tmp_path: Path, redis_url: str) -> None:
    async with running_cluster(tmp_path, redis_url, 2) as cluster:
        a, b = cluster.nodes
        async with listening(RawListener(a.url, "capped"), RawListener(b.url, "capped")):
            with pytest.raises(HandshakeError) as refused:
                await RawListener(a.url, "capped").start()
            assert refused.value.status == 403
            assert await listener_count(b, "capped") == 2


async def test_three_nodes_spread_900_connects_over_three_listeners(
    tmp_path: Path, redis_url: str
) -> None:
    async with running_cluster(tmp_path, redis_url, 3) as cluster:
        listeners = [RawListener(node.url, "echo") for node in cluster.nodes]
        async with listening(*listeners):
            gate = asyncio.Semaphore(10)

            async def one(i: int) -> None:
                async with gate:
                    await echo_once(cluster.nodes[i % 3].url, "echo", b"%d" % i)

            async with asyncio.timeout(seconds(120)):
                await asyncio.gather(*(one(i) for i in range(900)))
            counts = [listener.accepts.qsize() for listener in listeners]
        assert sum(counts) == 900
        assert min(counts) >= 200, counts


async def test_device_disabled_on_one_node_is_cut_on_another_within_a_second(
    tmp_path: Path, redis_url: str
) -> None:
    async with running_cluster(tmp_path, redis_url, 2) as cluster:
        a, b = cluster.nodes
        status, doc = await mgmt_call(a, "PUT", "/devices/sensor-9", {"grants": {"send": ["echo"]}})
        assert status == 201, doc
        key = doc["authentication"]["symmetricKey"]["primaryKey"]  # type: ignore[index]
        token = device_sas_token(urlsplit(b.url).netloc, "sensor-9", str(key))
        async with listening(RawListener(a.url, "echo")):
            ws = await send(b.url, "echo", token=token)
            await ws.send(b"before")
            assert await ws.recv() == b"before"
            status, doc = await mgmt_call(
                a, "PUT", "/devices/sensor-9", {"status": "disabled"}, headers={"If-Match": "*"}
            )
            assert status == 200, doc
            disabled_at = time.monotonic()
            with pytest.raises(ConnectionClosedError) as closed:
                async with asyncio.timeout(seconds(3)):
                    await ws.recv()
            assert closed.value.code == 1008
            assert time.monotonic() - disabled_at <= seconds(1.0)
            with pytest.raises(HandshakeError) as refused:
                await send(b.url, "echo", token=token)
            assert refused.value.status == 401


async def test_key_regenerated_and_entity_deleted_on_one_node_apply_on_another(
    tmp_path: Path, redis_url: str
) -> None:
    async with running_cluster(tmp_path, redis_url, 2) as cluster:
        a, b = cluster.nodes
        status, doc = await mgmt_call(a, "PUT", "/hybridconnections/made", {})
        assert status == 201, doc
        status, rule = await mgmt_call(
            a, "PUT", "/hybridconnections/made/rules/senders", {"rights": ["Send"]}
        )
        assert status == 201, rule
        url = connect_url(b.url, "made")
        old_token = token_for(url, "senders", str(rule["primaryKey"]))
        listener = RawListener(b.url, "made")
        async with listening(listener):
            await echo_once(b.url, "made", b"old key", token=old_token)  # now cached on B
            status, fresh = await mgmt_call(
                a,
                "POST",
                "/hybridconnections/made/rules/senders/regenerate",
                {"keyType": "primary"},
            )
            assert status == 200, fresh
            changed_at = time.monotonic()
            refused: HandshakeError | None = None
            async with asyncio.timeout(seconds(1)):
                while refused is None:  # B hears of it through Redis; polled, bounded by 1 s
                    try:
                        await echo_once(b.url, "made", b"old key", token=old_token)
                    except HandshakeError as exc:
                        refused = exc
            assert refused.status == 401
            assert time.monotonic() - changed_at <= seconds(1)
            await echo_once(
                b.url, "made", b"new", token=token_for(url, "senders", str(fresh["primaryKey"]))
            )

            status, _ = await mgmt_call(a, "DELETE", "/hybridconnections/made")
            assert status == 204
            code, _reason = await listener.wait_control_closed(seconds(1))
            assert code == 1001


# --- node failures ------------------------------------------------------------------------


async def test_killed_node_listeners_move_and_its_presence_expires(
    tmp_path: Path, redis_url: str, echo_server: tuple[str, int]
) -> None:
    async with running_cluster(tmp_path, redis_url, 2, presence_ttl=3) as cluster:
        a, b = cluster.nodes
        config = agent_config(tmp_path / "agent.toml", [a.url, b.url], echo_server, "gw")
        # A protocol-level listener on A that never fails over: its presence must expire.
        stranded = RawListener(a.url, "echo", listener_id="stranded")
        async with CliProcess(["listen", "--config", str(config)]) as agent, listening(stranded):
            await wait_listeners(b, "echo", 2, timeout=10)
            assert a.process is not None
            a.process.kill()  # kill -9: no goodbye to Redis, the agent or anyone
            killed_at = time.monotonic()
            await a.process.wait()

            # New connects through B succeed within 3 s (the agent moved to B at once).
            while True:
                try:
                    await echo_once(b.url, "echo", b"after the crash")
                    break
                except (HandshakeError, ConnectionClosedError):
                    assert time.monotonic() - killed_at < seconds(3), agent.output
                    await asyncio.sleep(0.05)  # retrying a connect, not synchronisation
            assert time.monotonic() - killed_at <= seconds(3)
            # A's stranded listener stops counting within the presence TTL, and its entry
            # in Redis is past its deadline then: no cleanup job needed.
            await wait_listeners(b, "echo", 1, timeout=3 + 2)
            deadline_ms = await presence_deadline(cluster, "echo", "stranded")
            redis = Redis.from_url(cluster.redis_url)
            try:
                async with asyncio.timeout(seconds(3 + 2)):
                    while True:
                        now_s, now_us = await redis.time()
                        if deadline_ms is None or now_s * 1000 + now_us // 1000 > deadline_ms:
                            break
                        await asyncio.sleep(0.05)  # polling Redis's clock, bounded
            finally:
                await redis.aclose()
            assert time.monotonic() - killed_at <= seconds(3 + 2)
            for _ in range(20):  # and is never chosen again
                await echo_once(b.url, "echo", b"x")
            assert stranded.accepts.empty()


async def test_sigterm_moves_listeners_at_once_and_drains_open_streams(
    tmp_path: Path, redis_url: str, echo_server: tuple[str, int]
) -> None:
    async with running_cluster(tmp_path, redis_url, 2, relay_extra="drain_timeout = 10") as cluster:
        a, b = cluster.nodes
        config = agent_config(tmp_path / "agent.toml", [a.url, b.url], echo_server, "gw")
        async with CliProcess(["listen", "--config", str(config)]) as agent:
            await wait_listeners(b, "echo", 1, timeout=10)
            open_stream = await send(a.url, "echo")
            await open_stream.send(b"before")
            assert await open_stream.recv() == b"before"

            a.signal(signal.SIGTERM)
            signalled = time.monotonic()
            # The agent's channel leaves A (1001) and comes back on B without a backoff.
            while True:
                try:
                    await echo_once(b.url, "echo", b"moved")
                    break
                except (HandshakeError, ConnectionClosedError):
                    assert time.monotonic() - signalled < seconds(3), agent.output
                    await asyncio.sleep(0.05)  # retrying a connect, not synchronisation
            # The stream opened on A keeps flowing while A drains.
            await open_stream.send(b"during the drain")
            assert await open_stream.recv() == b"during the drain"
            await open_stream.close()
            assert a.process is not None
            async with asyncio.timeout(seconds(10)):
                assert await a.process.wait() == 0


# --- Redis outage -------------------------------------------------------------------------


async def readyz(node: RelayProcess) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(f"{node.http_url}/readyz") as r:
        return r.status, json.loads(await r.text())


async def wait_ready(node: RelayProcess, want: int, timeout: float) -> dict[str, object]:
    async with asyncio.timeout(seconds(timeout)):
        while True:
            status, doc = await readyz(node)
            if status == want:
                return doc
            await asyncio.sleep(0.05)  # polling an endpoint, not synchronisation by delay


@pytest.mark.parametrize("outage", ["stopped", "hung"])
async def test_redis_outage_degrades_then_recovers_without_restarts(
    tmp_path: Path, outage: str
) -> None:
    redis = RedisServer(tmp_path)
    url = await asyncio.to_thread(redis.start)
    try:
        async with running_cluster(tmp_path, url, 2, presence_ttl=3) as cluster:
            a, b = cluster.nodes
            async with listening(RawListener(a.url, "echo")):
                await echo_once(b.url, "echo", b"cross-node before")
                await echo_once(a.url, "echo", b"local before")
                open_stream: WsConnection = await send(b.url, "echo")
                await open_stream.send(b"open")
                assert await open_stream.recv() == b"open"

                await asyncio.to_thread(redis.stop if outage == "stopped" else redis.pause)
                doc = await wait_ready(a, 503, timeout=10)
                assert doc["status"] == "degraded"
                assert "unavailable" in str(doc["reason"])

                # The open stream keeps flowing.
                await open_stream.send(b"during the outage")
                assert await open_stream.recv() == b"during the outage"
                # A sender whose listener is on its own node still gets through.
                await echo_once(a.url, "echo", b"local during the outage")
                # One whose listener is elsewhere gets 503 with the reason.
                with pytest.raises(HandshakeError) as refused:
                    await send(b.url, "echo")
                assert refused.value.status == 503
                assert "Redis" in refused.value.body

                await asyncio.to_thread(redis.start if outage == "stopped" else redis.resume)
                for node in (a, b):
                    doc = await wait_ready(node, 200, timeout=15)
                    assert doc["status"] == "ready"
                # Full service again, the listener re-registered by its node's heartbeat.
                async with asyncio.timeout(seconds(10)):
                    while True:
                        try:
                            await echo_once(b.url, "echo", b"cross-node after")
                            break
                        except HandshakeError:
                            await asyncio.sleep(0.05)  # re-registration: polled, bounded
                await open_stream.send(b"still open")
                assert await open_stream.recv() == b"still open"
                await open_stream.close()
    finally:
        await asyncio.to_thread(redis.stop)
