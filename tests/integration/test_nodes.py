"""GET /nodes and POST /nodes/{id}/drain on a single node (the SQLite default, no cluster)."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from tests.harness.peers import RawListener
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

from hybridrelay.errors import HandshakeError
from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.relay.mgmt.audit import AUDIT


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


async def test_undrain_takes_a_drain_back_and_is_audited(
    relay: InProcessRelay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    base = relay.http_url + "/$mgmt/v1"
    async with aiohttp.ClientSession(headers=_auth(relay)) as http:
        async with http.post(base + "/nodes/local/drain") as resp:
            assert resp.status == 202
        async with http.get(relay.http_url + "/readyz") as resp:
            assert resp.status == 503
        with pytest.raises(HandshakeError):  # a draining node takes no new listener
            await RawListener(relay.url, "hc-ws", listener_id="refused").start()

        async with http.post(base + "/nodes/elsewhere/undrain") as resp:
            assert resp.status == 404
        async with http.post(base + "/nodes/local/undrain") as resp:
            assert resp.status == 202
            assert await resp.json() == {"id": "local", "draining": False}
        async with http.get(relay.http_url + "/readyz") as resp:
            assert resp.status == 200
        async with http.get(base + "/nodes") as resp:
            [node] = (await resp.json())["value"]
        assert node["draining"] is False
        listener = await RawListener(relay.url, "hc-ws", listener_id="welcome").start()
        await listener.stop()
        # Undraining a node that serves changes nothing.
        async with http.post(base + "/nodes/local/undrain") as resp:
            assert resp.status == 202
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.post(base + "/nodes/local/undrain") as resp,
    ):
        assert resp.status == 401
    writes = [
        (r.__dict__["resource"], r.__dict__["status"])
        for r in caplog.records
        if r.getMessage() == "mgmt_write" and r.__dict__["resource"].endswith("drain")
    ]
    assert ("/$mgmt/v1/nodes/local/undrain", 202) in writes
    assert ("/$mgmt/v1/nodes/elsewhere/undrain", 404) in writes
    assert ("/$mgmt/v1/nodes/local/undrain", 401) in writes


async def test_a_stopping_node_stays_closed_when_undrained(relay: InProcessRelay) -> None:
    relay.lifecycle.stop()  # what SIGTERM's shutdown does
    async with aiohttp.ClientSession(headers=_auth(relay)) as http:
        async with http.post(relay.http_url + "/$mgmt/v1/nodes/local/undrain") as resp:
            assert resp.status == 202
        async with http.get(relay.http_url + "/readyz") as resp:
            assert resp.status == 503
