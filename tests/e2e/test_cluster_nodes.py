"""GET /nodes and POST /nodes/{id}/drain across two relay processes sharing Redis.

The dashboard's cluster page reads these: which node holds which listener, and a drain
asked of one node through another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from tests.harness.cluster import mgmt_call, running_cluster
from tests.harness.peers import RawListener
from tests.harness.relay import RelayProcess
from tests.harness.timing import seconds

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


async def _until_nodes(
    node: RelayProcess, done: Callable[[list[dict[str, object]]], bool]
) -> list[dict[str, object]]:
    """GET /nodes on ``node`` until ``done`` says the answer is the awaited one."""
    async with asyncio.timeout(seconds(10)):
        while True:
            status, doc = await mgmt_call(node, "GET", "/nodes")
            assert status == 200, doc
            value = doc["value"]
            assert isinstance(value, list)
            if done(value):
                return value
            await asyncio.sleep(0.1)  # polling the API, not synchronisation by delay


async def _until_status(url: str, wanted: int) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(seconds(10)):
        while True:
            async with session.get(url) as resp:
                if resp.status == wanted:
                    return
            await asyncio.sleep(0.05)


def _ids(nodes: list[dict[str, object]]) -> list[object]:
    return [n["id"] for n in nodes]


async def test_nodes_lists_each_nodes_listeners_and_drains_and_undrains_another_node(
    tmp_path: Path, redis_url: str
) -> None:
    async with running_cluster(tmp_path, redis_url, 2, presence_ttl=1.5) as cluster:
        a, b = cluster.nodes
        listener = await RawListener(b.url, "echo", listener_id="on-b").start()
        try:

            def b_holds_echo(nodes: list[dict[str, object]]) -> bool:
                held = [n for n in nodes if n["id"] == "node-1"]
                return bool(held) and held[0]["hybridConnections"] == [
                    {"name": "echo", "listeners": 1}
                ]

            nodes = await _until_nodes(a, b_holds_echo)
            assert _ids(nodes) == ["node-0", "node-1"]  # the answering node first
            assert nodes[1]["address"] == b.url
            assert nodes[1]["listeners"] == 1
            assert nodes[1]["draining"] is False
            assert nodes[0]["listeners"] == 0

            assert (await mgmt_call(a, "POST", "/nodes/no-such-node/drain"))[0] == 404
            status, doc = await mgmt_call(a, "POST", "/nodes/node-1/drain")
            assert (status, doc) == (202, {"id": "node-1", "draining": True})
            # B sends its listener away (1001), refuses new work, and says so.
            code, _ = await listener.wait_control_closed(seconds(10))
            assert code == 1001
            await _until_status(b.http_url + "/readyz", 503)
            await _until_status(a.http_url + "/readyz", 200)
            await _until_nodes(a, lambda ns: any(n["draining"] for n in ns if n["id"] == "node-1"))
            # And back, through A and Redis: B serves again.
            status, doc = await mgmt_call(a, "POST", "/nodes/node-1/undrain")
            assert (status, doc) == (202, {"id": "node-1", "draining": False})
            await _until_status(b.http_url + "/readyz", 200)
            await _until_nodes(
                a, lambda ns: any(not n["draining"] for n in ns if n["id"] == "node-1")
            )
        finally:
            await listener.stop()
        # A stopped node leaves the list at once (it removes its own summary).
        await b.stop()
        assert _ids(await _until_nodes(a, lambda ns: len(ns) == 1)) == ["node-0"]
