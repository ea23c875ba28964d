"""The management resources behind the dashboard's device and hybrid connection pages.

Device search (``GET /devices?prefix=&contains=&status=&connectionState=``, a bounded
scan with a continuation token), ``POST /devices/{id}/regenerateKey``, the per-device
timeline (``GET /devices/{id}/timeline``: connects, disconnects with reasons, auth
failures, check-in verdict) and ``GET /hybridconnections/{name}/metrics`` (the Azure
counters) against an in-process relay with real listeners and senders.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from tests.conftest import RelayFactory
from tests.harness.device_certs import device_sas_token
from tests.harness.peers import RawListener, listen_url, send
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds
from tests.integration.test_device_auth import (
    TokenListener,
    handshake_status,
    host_of,
    listening,
    wait_state,
)

from hybridrelay.protocol.device_sas import parse_device_connection_string
from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.wsclient import ws_connect

ROOT = "RootManageSharedAccessKey"
WRONG = "bm90LXRoZS1kZXZpY2Uta2V5LTAxMjM0NTY3ODlhYmM="


class Api:
    def __init__(self, relay: InProcessRelay, http: aiohttp.ClientSession) -> None:
        self.base = relay.http_url + "/$mgmt/v1/"
        self.http = http

    async def __call__(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, json=body) as resp:
            return resp.status, await resp.json() if resp.content_length != 0 else None


@pytest.fixture
async def api(relay: InProcessRelay) -> AsyncIterator[Api]:
    token = create_sas_token(relay.http_url + "/", ROOT, ROOT_KEY, int(time.time()) + 600)
    async with aiohttp.ClientSession(headers={"Authorization": token}) as http:
        yield Api(relay, http)


async def create(api: Api, device_id: str, **fields: object) -> dict[str, Any]:
    status, doc = await api("PUT", f"devices/{device_id}", fields)
    assert status == 201, doc
    return dict(doc)


async def test_search_narrows_by_prefix_substring_status_and_connection(
    relay: InProcessRelay, api: Api
) -> None:
    for device_id in ("pump-01", "pump-02", "pump-10", "valve-01", "Pumpkin"):
        await create(api, device_id, grants={"listen": ["echo"]})
    current = (await api("GET", "devices/pump-02"))[1]
    current["status"] = "disabled"
    async with api.http.put(
        api.base + "devices/pump-02", json=current, headers={"If-Match": "*"}
    ) as resp:
        assert resp.status == 200

    async def ids(query: str) -> list[str]:
        status, doc = await api("GET", "devices?" + query)
        assert status == 200, doc
        return [d["deviceId"] for d in doc["value"]]

    assert await ids("prefix=pump-") == ["pump-01", "pump-02", "pump-10"]
    assert await ids("contains=PUMP") == ["Pumpkin", "pump-01", "pump-02", "pump-10"]
    assert await ids("contains=01") == ["pump-01", "valve-01"]
    assert await ids("status=disabled") == ["pump-02"]
    assert await ids("prefix=pump&status=enabled") == ["pump-01", "pump-10"]
    assert await ids("connectionState=Connected") == []
    # Pages of a search carry the terms in nextLink; the token holds a position only.
    status, first = await api("GET", "devices?top=2&contains=pump")
    assert [d["deviceId"] for d in first["value"]] == ["Pumpkin", "pump-01"]
    assert "contains=pump" in first["nextLink"]
    async with api.http.get(relay.http_url + first["nextLink"]) as resp:
        second = await resp.json()
    assert [d["deviceId"] for d in second["value"]] == ["pump-02", "pump-10"]
    assert second["continuationToken"] is None
    for bad in ("status=sleeping", "connectionState=maybe", "prefix=" + "x" * 129):
        status, doc = await api("GET", "devices?" + bad)
        assert status == 400, bad
        assert doc["error"]["code"] == "ArgumentInvalid"

    # A device that connects is found by connectionState.
    async with listening(
        TokenListener(relay.url, "echo", token=device_token(relay, await key_of(api, "pump-10")))
    ):
        await wait_state(relay.state.store, "pump-10", "connected")
        assert await ids("connectionState=connected") == ["pump-10"]


async def test_a_search_examines_at_most_device_search_scan_devices_per_page(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(relay_extra="device_search_scan = 100")
    token = create_sas_token(relay.http_url + "/", ROOT, ROOT_KEY, int(time.time()) + 600)
    async with aiohttp.ClientSession(headers={"Authorization": token}) as http:
        api = Api(relay, http)
        for n in range(250):
            await relay.state.store.create_device(device(f"d{n:03d}"))
        await create(api, "zz-needle")
        pages, found, token_ = 0, [], ""
        while True:
            status, doc = await api("GET", f"devices?contains=needle{token_}")
            assert status == 200
            pages += 1
            found += [d["deviceId"] for d in doc["value"]]
            if doc["continuationToken"] is None:
                break
            token_ = f"&continuationToken={doc['continuationToken']}"
        # 251 devices, 100 looked at per page: three pages, the first two empty.
        assert (pages, found) == (3, ["zz-needle"])


def device(device_id: str) -> Any:
    from hybridrelay.relay.store.models import Device

    return Device(device_id=device_id)


async def key_of(api: Api, device_id: str, which: str = "primaryKey") -> str:
    status, doc = await api("GET", f"devices/{device_id}")
    assert status == 200
    return str(doc["authentication"]["symmetricKey"][which])


def device_token(relay: InProcessRelay, key: str, device_id: str = "pump-10") -> str:
    return device_sas_token(host_of(relay), device_id, key)


async def test_regenerating_a_key_replaces_only_that_key(relay: InProcessRelay, api: Api) -> None:
    await create(api, "meter-7", grants={"send": ["echo"]})
    old_primary, old_secondary = (
        await key_of(api, "meter-7"),
        await key_of(api, "meter-7", "secondaryKey"),
    )
    status, doc = await api("POST", "devices/meter-7/regenerateKey", {"keyType": "primary"})
    assert status == 200, doc
    keys = doc["authentication"]["symmetricKey"]
    assert keys["primaryKey"] != old_primary
    assert keys["secondaryKey"] == old_secondary
    async with listening(RawListener(relay.url, "echo")):
        old = send(
            relay.url, "echo", token=device_sas_token(host_of(relay), "meter-7", old_primary)
        )
        assert await handshake_status(old) == 401
        new = send(
            relay.url, "echo", token=device_sas_token(host_of(relay), "meter-7", keys["primaryKey"])
        )
        assert await handshake_status(new) == 101
    status, doc = await api("POST", "devices/meter-7/regenerateKey", {"keyType": "tertiary"})
    assert status == 400
    # A given key is taken when it is one (base64 of 16 to 64 bytes).
    chosen = "Y2hvc2VuLWJ5LXRoZS1vcGVyYXRvci0wMTIzNDU2Nzg="
    body = {"keyType": "SecondaryKey", "key": chosen}
    status, doc = await api("POST", "devices/meter-7/regenerateKey", body)
    assert (status, doc["authentication"]["symmetricKey"]["secondaryKey"]) == (200, chosen)
    body = {"keyType": "secondary", "key": "not base64!"}
    status, doc = await api("POST", "devices/meter-7/regenerateKey", body)
    assert status == 400
    assert "secondaryKey" in doc["error"]["message"]
    status, doc = await api("POST", "devices/nobody/regenerateKey", {"keyType": "primary"})
    assert status == 404
    await create(
        api,
        "cam-x509",
        authentication={"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "AB" * 20}},
    )
    status, doc = await api("POST", "devices/cam-x509/regenerateKey", {"keyType": "primary"})
    assert status == 400
    assert "no SAS keys" in doc["error"]["message"]


async def test_a_connection_string_built_from_the_device_reaches_the_relay(
    relay: InProcessRelay, api: Api
) -> None:
    """The string the dashboard copies (HostName=;DeviceId=;SharedAccessKey=) is one the
    device client parses into a relay URL and a token provider that the relay accepts."""
    await create(api, "cs-device", grants={"send": ["echo"]})
    key = await key_of(api, "cs-device")
    text = f"HostName={host_of(relay)};DeviceId=cs-device;SharedAccessKey={key}"
    parsed = parse_device_connection_string(text)
    assert (parsed.host, parsed.device_id) == (host_of(relay), "cs-device")
    provider = parsed.token_provider()
    async with listening(RawListener(relay.url, "echo")):
        url = f"{relay.url}/$hc/echo"
        token = provider.token_for(url, time.time())
        assert await handshake_status(send(relay.url, "echo", token=token)) == 101


async def timeline(api: Api, device_id: str) -> dict[str, Any]:
    status, doc = await api("GET", f"devices/{device_id}/timeline")
    assert status == 200, doc
    return dict(doc)


async def wait_timeline(api: Api, device_id: str, entries: int) -> dict[str, Any]:
    """The device's timeline once it holds ``entries`` entries (bounded wait)."""
    async with asyncio.timeout(seconds(5)):
        while len((doc := await timeline(api, device_id))["value"]) < entries:
            await asyncio.sleep(0.02)  # polling the API, not synchronising by delay
    return doc


async def test_the_timeline_shows_connects_disconnects_with_reasons_and_auth_failures(
    relay: InProcessRelay, api: Api
) -> None:
    await create(api, "gw-1", grants={"listen": ["echo"]}, checkInIntervalSeconds=3600)
    key = await key_of(api, "gw-1")
    doc = await timeline(api, "gw-1")
    assert (doc["value"], doc["checkIn"], doc["checkInIntervalSeconds"]) == ([], "never", 3600)

    # An auth failure (the wrong key), then a connect.
    refused = ws_connect(
        listen_url(relay.url, "echo"),
        headers={"ServiceBusAuthorization": device_sas_token(host_of(relay), "gw-1", WRONG)},
    )
    assert await handshake_status(refused) == 401
    listener = TokenListener(relay.url, "echo", token=device_sas_token(host_of(relay), "gw-1", key))
    async with listening(listener):
        await wait_state(relay.state.store, "gw-1", "connected", active=True)
        doc = await timeline(api, "gw-1")
        assert [(e["kind"], e["role"], e["hybridConnection"]) for e in doc["value"]] == [
            ("connected", "listener", "echo"),
            ("authFailed", "listener", "echo"),
        ]
        failure = doc["value"][1]
        assert failure["status"] == 401
        assert "signature" in failure["reason"]
        assert doc["checkIn"] == "onSchedule"
        assert doc["nextCheckInDue"] is not None
        # A device sender's stream is on its timeline; on the listening device's, not.
        await create(api, "car-1", grants={"send": ["echo"]})
        car_key = await key_of(api, "car-1")
        sender = await send(
            relay.url, "echo", token=device_sas_token(host_of(relay), "car-1", car_key)
        )
        await sender.send("hi")
        assert await sender.recv() == "hi"
        await sender.close()
        # Not the stored state: a new device reads "disconnected" with its activity touched
        # for a moment before its connect is recorded.
        car = await wait_timeline(api, "car-1", 2)
        assert [(e["kind"], e["role"], e["reason"]) for e in car["value"]] == [
            ("disconnected", "sender", "ended"),
            ("connected", "sender", ""),
        ]
        assert len((await timeline(api, "gw-1"))["value"]) == 2
        # Disabling the device cuts the channel; the timeline says why.
        current = (await api("GET", "devices/gw-1"))[1]
        current["status"] = "disabled"
        async with api.http.put(
            api.base + "devices/gw-1", json=current, headers={"If-Match": "*"}
        ) as resp:
            assert resp.status == 200
        code, _ = await listener.wait_control_closed(seconds(2))
        assert code == 1008
        await wait_state(relay.state.store, "gw-1", "disconnected")
    doc = await timeline(api, "gw-1")
    latest = doc["value"][0]
    assert (latest["kind"], latest["reason"], latest["closeCode"]) == (
        "disconnected",
        "the device is disabled",
        1008,
    )
    # Unknown devices have no timeline (and make none by failing to authenticate).
    assert (await api("GET", "devices/ghost/timeline"))[0] == 404
    ghost = send(relay.url, "echo", token=device_sas_token(host_of(relay), "ghost", WRONG))
    assert await handshake_status(ghost) == 401
    status, doc = await api("GET", "devices/no-schedule/timeline")
    assert status == 404
    await create(api, "no-schedule")
    assert (await timeline(api, "no-schedule"))["checkIn"] == "unscheduled"
    status, doc = await api("PUT", "devices/bad-schedule", {"checkInIntervalSeconds": 0})
    assert status == 400


async def test_hybrid_connection_metrics_use_the_azure_names(
    relay: InProcessRelay, api: Api
) -> None:
    status, doc = await api("GET", "hybridconnections/echo/metrics")
    assert status == 200
    assert doc["counted"] is False
    listener = await RawListener(relay.url, "echo").start()
    try:
        # A listener refused (bad token): the listener's client error, not a sender's.
        bad = ws_connect(
            listen_url(relay.url, "echo"), headers={"ServiceBusAuthorization": "SharedAccess x"}
        )
        assert await handshake_status(bad) == 401
        sender = await send(relay.url, "echo")
        await sender.send("abc")
        assert await sender.recv() == "abc"
        await sender.close()
        assert await handshake_status(send(relay.url, "echo", key="wrong-key")) == 401
        async with asyncio.timeout(seconds(5)):
            while True:
                status, doc = await api("GET", "hybridconnections/ECHO/metrics")
                if doc["ActiveConnections"] == 0:
                    break
                await asyncio.sleep(0.02)  # polling the API, not synchronisation by delay
        assert status == 200
        assert doc["name"] == "echo"
        assert {k: v for k, v in doc.items() if k not in ("name", "counted")} == {
            "ActiveListeners": 1,
            "ActiveConnections": 0,
            "ListenerConnections-Success": 1,
            "ListenerConnections-ClientError": 1,
            "ListenerConnections-ServerError": 0,
            "SenderConnections-Success": 1,
            "SenderConnections-ClientError": 1,
            "SenderConnections-ServerError": 0,
            "BytesTransferred": 6,
            "listenersAllNodes": 1,
        }
    finally:
        await listener.stop()
    assert (await api("GET", "hybridconnections/nope/metrics"))[0] == 404
    # .../metrics is the counters, never an entity named "a/metrics".
    async with api.http.put(api.base + "hybridconnections/a/metrics", json={}) as resp:
        assert (resp.status, resp.headers["Allow"]) == (405, "GET")
