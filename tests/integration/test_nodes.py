"""GET /nodes and POST /nodes/{id}/drain on a single node (the SQLite default, no cluster)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from tests.harness.peers import RawListener
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

from hybridrelay.protocol.sas import create_sas_token


def _auth(relay: InProcessRelay) -> dict[str, str]:
    token = create_sas_token(
        relay.http_url + "/", "RootManageSharedAccessKey", ROOT_KEY, int(time.time()) + 600
    )
    return {"Authorization": token}


async def test_the_one_node_lists_its_listeners_and_drains(relay: InProcessRelay) -> None:
    base = relay.http_url + "/$mgmt/v1"
    listener = await RawListener(relay.url, "hc-ws", listener_id="held").start()
    try:
        async with aiohttp.ClientSession(headers=_auth(relay)) as http:
            async with http.get(base + "/nodes") as resp:
                assert resp.status == 200
                doc = await resp.json()
            assert doc["self"] == "local"
            [node] = doc["value"]
            assert node["id"] == "local"
            assert node["address"] == relay.url
            assert (node["listeners"], node["streams"], node["draining"]) == (1, 0, False)
            assert node["hybridConnections"] == [{"name": "hc-ws", "listeners": 1}]
            assert node["startedAt"].endswith("Z")

            async with http.post(base + "/nodes/elsewhere/drain") as resp:
                assert resp.status == 404
            async with http.post(base + "/nodes/local/drain") as resp:
                assert resp.status == 202
                assert await resp.json() == {"id": "local", "draining": True}
            code, _ = await listener.wait_control_closed(seconds(10))
            assert code == 1001
            async with http.get(relay.http_url + "/readyz") as resp:
                assert resp.status == 503
            async with asyncio.timeout(seconds(10)):
                while True:  # the relay forgets the channel once its close handshake ends
                    async with http.get(base + "/nodes") as resp:
                        [node] = (await resp.json())["value"]
                    assert node["draining"] is True
                    if node["listeners"] == 0:
                        break
                    await asyncio.sleep(0.02)  # polling the API, not synchronisation by delay
            # Draining twice is no error (the second changes nothing).
            async with http.post(base + "/nodes/local/drain") as resp:
                assert resp.status == 202
        # Without the Manage right there is nothing to see or do.
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.get(base + "/nodes") as resp:
                assert resp.status == 401
            async with anonymous.post(base + "/nodes/local/drain") as resp:
                assert resp.status == 401
    finally:
        await listener.stop()
