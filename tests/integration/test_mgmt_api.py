"""The management API under /$mgmt/v1 (issue 5) against an in-process relay.

The relay's store is the SQLite default under the test's data dir; the config of
``tests/harness/relay.py`` gives config-owned hybrid connections (hc-ws, echo, ...)
and the config-owned namespace rule RootManageSharedAccessKey (Manage).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict
from tests.conftest import RelayFactory
from tests.harness.peers import RawListener, connect_url, send, token_for
from tests.harness.relay import LISTEN_KEY, ROOT_KEY, InProcessRelay, jwt_issuer_config
from tests.harness.timing import seconds

from hybridrelay.errors import ConnectionClosedError, HandshakeError
from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.relay.mgmt.audit import AUDIT
from hybridrelay.relay.reactions import REACTIONS, DeviceRevoked
from hybridrelay.relay.store.models import Device

ROOT = "RootManageSharedAccessKey"


def namespace_token(
    resource: str = "http://127.0.0.1/", key_name: str = ROOT, key: str = ROOT_KEY, ttl: int = 600
) -> str:
    return create_sas_token(resource, key_name, key, int(time.time()) + ttl)


@dataclass
class Reply:
    status: int
    body: Any
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)


@dataclass
class Api:
    """A tiny client of /$mgmt/v1 for tests; ``token`` None sends no Authorization."""

    session: aiohttp.ClientSession
    base: str
    token: str | None

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        raw: bytes | None = None,
    ) -> Reply:
        all_headers = dict(headers or {})
        auth = token if token is not None else self.token
        if auth is not None:
            all_headers.setdefault("Authorization", auth)
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base + path, data=data, headers=all_headers
        ) as resp:
            text = await resp.text()
            return Reply(resp.status, json.loads(text) if text else None, CIMultiDict(resp.headers))


@pytest.fixture
async def api(relay: InProcessRelay) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, relay.http_url + "/$mgmt/v1", namespace_token())


def quoted(name: str) -> str:
    return quote(name, safe="")


# --- hybrid connections -----------------------------------------------------------------------


async def test_hybrid_connection_crud_with_slash_in_name(api: Api) -> None:
    created = await api.call(
        "PUT", "/hybridconnections/fleet/sensor-1", {"userMetadata": "m", "maxListeners": 3}
    )
    assert created.status == 201, created.body
    doc = created.body
    assert doc["name"] == "fleet/sensor-1"
    assert doc["userMetadata"] == "m"
    assert doc["maxListeners"] == 3
    assert doc["listenerCount"] == 0
    assert doc["configOwned"] is False
    assert doc["createdAt"] == doc["updatedAt"]
    assert created.headers["ETag"] == f'"{doc["etag"]}"'

    got = await api.call("GET", "/hybridconnections/fleet/sensor-1")
    assert got.status == 200
    assert got.body == doc

    # PUT replaces: omitted fields go back to their defaults.
    replaced = await api.call("PUT", "/hybridconnections/fleet/sensor-1", {"http": True})
    assert replaced.status == 200
    assert replaced.body["http"] is True
    assert replaced.body["userMetadata"] == ""
    assert replaced.body["createdAt"] == doc["createdAt"]
    assert replaced.body["etag"] != doc["etag"]

    # PATCH changes only what it names.
    patched = await api.call(
        "PATCH", "/hybridconnections/fleet/sensor-1", {"requiresClientAuthorization": False}
    )
    assert patched.status == 200
    assert patched.body["requiresClientAuthorization"] is False
    assert patched.body["http"] is True

    # The name may also arrive percent-encoded, and is case-insensitive.
    again = await api.call("GET", "/hybridconnections/" + quoted("FLEET/Sensor-1"))
    assert again.status == 200
    assert again.body["name"] == "fleet/sensor-1"

    listed = await api.call("GET", "/hybridconnections")
    assert "fleet/sensor-1" in [hc["name"] for hc in listed.body["value"]]

    deleted = await api.call("DELETE", "/hybridconnections/fleet/sensor-1")
    assert deleted.status == 204
    gone = await api.call("GET", "/hybridconnections/fleet/sensor-1")
    assert gone.status == 404
    assert set(gone.body["error"]) == {"code", "message", "trackingId"}


async def test_hybrid_connection_validation(api: Api) -> None:
    too_big = await api.call("PUT", "/hybridconnections/meta", {"userMetadata": "é" * 513})
    assert too_big.status == 400
    assert "userMetadata" in too_big.body["error"]["message"]
    exactly = await api.call("PUT", "/hybridconnections/meta", {"userMetadata": "x" * 1024})
    assert exactly.status == 201
    bad_type = await api.call("PUT", "/hybridconnections/meta", {"maxListeners": "many"})
    assert bad_type.status == 400
    assert (await api.call("PUT", "/hybridconnections/bad name", {})).status == 400
    assert (await api.call("PUT", "/hybridconnections/$hc/x", {})).status == 400
    # A segment named "rules" would make the URLs ambiguous.
    reserved = await api.call("PUT", "/hybridconnections/a/rules", {})  # the rules list
    assert reserved.status == 405
    reserved2 = await api.call("PUT", "/hybridconnections/rules", {})
    assert reserved2.status == 400
    not_json = await api.call("PUT", "/hybridconnections/meta", raw=b"{nope")
    assert not_json.status == 400
    not_object = await api.call("PUT", "/hybridconnections/meta", raw=b"[1, 2]")
    assert not_object.status == 400
    nan = await api.call("PUT", "/hybridconnections/meta", raw=b'{"requestTimeout": NaN}')
    assert nan.status == 400
    huge = await api.call(
        "PUT", "/hybridconnections/meta", raw=b'{"requestTimeout": 1' + b"0" * 400 + b"}"
    )
    assert huge.status == 400
    surrogate = await api.call("PUT", "/hybridconnections/meta", raw=b'{"userMetadata": "\\ud800"}')
    assert surrogate.status == 400


async def test_hybrid_connection_if_match(api: Api) -> None:
    created = await api.call("PUT", "/hybridconnections/guarded", {})
    etag = created.body["etag"]
    stale = await api.call(
        "PUT", "/hybridconnections/guarded", {"userMetadata": "a"}, headers={"If-Match": '"nope"'}
    )
    assert stale.status == 412
    ok = await api.call(
        "PUT",
        "/hybridconnections/guarded",
        {"userMetadata": "a"},
        headers={"If-Match": f'"{etag}"'},
    )
    assert ok.status == 200
    assert (
        await api.call("DELETE", "/hybridconnections/guarded", headers={"If-Match": etag})
    ).status == 412
    assert (
        await api.call("DELETE", "/hybridconnections/guarded", headers={"If-Match": "*"})
    ).status == 204


async def test_hybrid_connection_paging(api: Api) -> None:
    names = [f"page/hc-{i:02d}" for i in range(23)]
    for name in names:
        assert (await api.call("PUT", f"/hybridconnections/{name}", {})).status == 201
    seen: list[str] = []
    path = "/hybridconnections?top=7"
    pages = 0
    while True:
        page = await api.call("GET", path)
        assert page.status == 200, page.body
        assert len(page.body["value"]) <= 7
        seen.extend(hc["name"] for hc in page.body["value"])
        pages += 1
        token = page.body["continuationToken"]
        if token is None:
            assert page.body["nextLink"] is None
            assert "x-ms-continuation" not in page.headers
            break
        assert page.headers["x-ms-continuation"] == token
        assert page.body["nextLink"].startswith("/$mgmt/v1/hybridconnections?top=7&")
        path = page.body["nextLink"].removeprefix("/$mgmt/v1")
    assert seen == sorted(seen, key=str.lower)
    assert len(seen) == len(set(seen))
    assert [n for n in seen if n.startswith("page/")] == names
    assert pages >= 4  # 23 + the config's hybrid connections, 7 per page

    assert (await api.call("GET", "/hybridconnections?top=0")).status == 400
    assert (await api.call("GET", "/hybridconnections?top=1001")).status == 400
    assert (await api.call("GET", "/hybridconnections?top=x")).status == 400
    bad = await api.call("GET", "/hybridconnections?continuationToken=garbage")
    assert bad.status == 400


async def test_config_owned_entities_are_protected(api: Api) -> None:
    deleted = await api.call("DELETE", "/hybridconnections/hc-ws")
    assert deleted.status == 409
    assert deleted.body["error"]["code"] == "Conflict"
    assert (await api.call("PUT", "/hybridconnections/hc-ws", {})).status == 409
    assert (
        await api.call("PATCH", "/hybridconnections/hc-ws", {"userMetadata": "x"})
    ).status == 409
    got = await api.call("GET", "/hybridconnections/hc-ws")
    assert got.status == 200
    assert got.body["configOwned"] is True
    # Config-owned rules: no delete, no regenerate, no change.
    assert (await api.call("DELETE", f"/rules/{ROOT}")).status == 409
    regen = await api.call("POST", f"/rules/{ROOT}/regenerate", {"keyType": "primary"})
    assert regen.status == 409
    assert (await api.call("PUT", f"/rules/{ROOT}", {"rights": ["Send"]})).status == 409
    assert (await api.call("DELETE", "/hybridconnections/hc-ws/rules/listen-only")).status == 409


async def test_listener_count_is_live(api: Api, relay: InProcessRelay) -> None:
    assert (await api.call("GET", "/hybridconnections/echo")).body["listenerCount"] == 0
    listener = await RawListener(relay.url, "echo").start()
    try:
        assert (await api.call("GET", "/hybridconnections/echo")).body["listenerCount"] == 1
    finally:
        await listener.stop()


async def test_delete_closes_listeners_with_1001_and_open_streams(
    api: Api, relay: InProcessRelay
) -> None:
    assert (await api.call("PUT", "/hybridconnections/temp/one", {})).status == 201
    listener = await RawListener(relay.url, "temp/one").start()
    bystander = await RawListener(relay.url, "echo").start()
    try:
        sender = await send(relay.url, "temp/one")
        await sender.send("before")
        assert await sender.recv() == "before"
        started = asyncio.get_running_loop().time()
        assert (await api.call("DELETE", "/hybridconnections/temp/one")).status == 204
        code, _ = await listener.wait_control_closed(seconds(1))
        assert code == 1001
        assert asyncio.get_running_loop().time() - started < seconds(1)
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(seconds(1)):
                await sender.recv()
        assert closed.value.code == 1001
        # Other hybrid connections keep their listeners; the deleted one is gone.
        assert bystander.control_closed is not None
        assert not bystander.control_closed.done()
        with pytest.raises(HandshakeError) as info:
            await send(relay.url, "temp/one")
        assert info.value.status == 404
    finally:
        await listener.stop()
        await bystander.stop()


async def test_disable_closes_listeners_and_refuses_until_enabled(
    api: Api, relay: InProcessRelay
) -> None:
    assert (await api.call("PUT", "/hybridconnections/switchable", {})).status == 201
    listener = await RawListener(relay.url, "switchable").start()
    try:
        sender = await send(relay.url, "switchable")
        started = asyncio.get_running_loop().time()
        patched = await api.call("PATCH", "/hybridconnections/switchable", {"status": "disabled"})
        assert patched.status == 200
        assert patched.body["status"] == "disabled"
        code, _ = await listener.wait_control_closed(seconds(1))
        assert code == 1001
        assert asyncio.get_running_loop().time() - started < seconds(1)
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(seconds(1)):
                await sender.recv()
        assert closed.value.code == 1001
        for attempt in (
            lambda: RawListener(relay.url, "switchable").start(),
            lambda: send(relay.url, "switchable"),
        ):
            with pytest.raises(HandshakeError) as info:
                await attempt()
            assert info.value.status == 403
            assert "disabled" in info.value.body
        enabled = await api.call("PATCH", "/hybridconnections/switchable", {"status": "enabled"})
        assert enabled.body["status"] == "enabled"
        again = await RawListener(relay.url, "switchable").start()
        ws = await send(relay.url, "switchable")
        await ws.send("back")
        assert await ws.recv() == "back"
        await ws.close()
        await again.stop()
        bad = await api.call("PATCH", "/hybridconnections/switchable", {"status": "paused"})
        assert bad.status == 400
    finally:
        await listener.stop()


# --- rules ----------------------------------------------------------------------------------


async def test_namespace_rules_crud_and_quota(api: Api) -> None:
    listed = await api.call("GET", "/rules")
    assert listed.status == 200
    assert [r["name"] for r in listed.body["value"]] == [ROOT]
    assert "primaryKey" not in listed.body["value"][0]

    created = await api.call("PUT", "/rules/ops", {"rights": ["Listen", "Send"]})
    assert created.status == 201
    assert created.body["rights"] == ["Listen", "Send"]
    assert len(created.body["primaryKey"]) >= 32
    assert created.body["secondaryKey"]
    changed = await api.call("PUT", "/rules/ops", {"rights": ["Manage"]})
    assert changed.status == 200
    assert changed.body["primaryKey"] == created.body["primaryKey"]
    got = await api.call("GET", "/rules/OPS")
    assert got.status == 200
    assert got.body["primaryKey"] == created.body["primaryKey"]

    for i in range(10):
        assert (await api.call("PUT", f"/rules/extra-{i}", {"rights": ["Send"]})).status == 201
    thirteenth = await api.call("PUT", "/rules/one-too-many", {"rights": ["Send"]})
    assert thirteenth.status == 403
    assert thirteenth.body["error"]["code"] == "QuotaExceeded"
    assert len((await api.call("GET", "/rules")).body["value"]) == 12

    assert (await api.call("PUT", "/rules/bad", {"rights": ["Fly"]})).status == 400
    assert (await api.call("PUT", "/rules/bad", {"rights": []})).status == 400
    assert (await api.call("PUT", "/rules/bad", {})).status == 400
    assert (await api.call("PUT", "/rules/-bad", {"rights": ["Send"]})).status == 400
    bad_type = await api.call("POST", "/rules/ops/regenerate", {"keyType": "tertiary"})
    assert bad_type.status == 400

    assert (await api.call("DELETE", "/rules/ops")).status == 204
    assert (await api.call("GET", "/rules/ops")).status == 404
    assert (await api.call("DELETE", "/rules/ops")).status == 404


async def test_hybrid_connection_rules_crud_quota_and_regenerate(api: Api) -> None:
    assert (await api.call("PUT", "/hybridconnections/site/a", {})).status == 201
    for i in range(12):
        reply = await api.call(
            "PUT", f"/hybridconnections/site/a/rules/r{i}", {"rights": ["Listen"]}
        )
        assert reply.status == 201, reply.body
    over = await api.call("PUT", "/hybridconnections/site/a/rules/r12", {"rights": ["Listen"]})
    assert over.status == 403
    listed = await api.call("GET", "/hybridconnections/site/a/rules")
    assert len(listed.body["value"]) == 12
    assert all("primaryKey" not in r for r in listed.body["value"])

    before = (await api.call("GET", "/hybridconnections/site/a/rules/r0")).body
    primary = await api.call(
        "POST", "/hybridconnections/site/a/rules/r0/regenerate", {"keyType": "primary"}
    )
    assert primary.status == 200
    assert primary.body["primaryKey"] != before["primaryKey"]
    assert primary.body["secondaryKey"] == before["secondaryKey"]
    secondary = await api.call(
        "POST", "/hybridconnections/site/a/rules/r0/regenerate", {"keyType": "SecondaryKey"}
    )
    assert secondary.body["secondaryKey"] != before["secondaryKey"]
    assert secondary.body["primaryKey"] == primary.body["primaryKey"]
    chosen = await api.call(
        "POST",
        "/hybridconnections/site/a/rules/r0/regenerate",
        {"keyType": "primary", "key": "k" * 32},
    )
    assert chosen.body["primaryKey"] == "k" * 32

    assert (await api.call("DELETE", "/hybridconnections/site/a/rules/r0")).status == 204
    assert (await api.call("GET", "/hybridconnections/site/a/rules/r0")).status == 404
    missing = await api.call("GET", "/hybridconnections/nowhere/rules")
    assert missing.status == 404
    # Rules go with their hybrid connection.
    assert (await api.call("DELETE", "/hybridconnections/site/a")).status == 204
    assert (await api.call("GET", "/hybridconnections/site/a/rules")).status == 404


async def test_regenerated_key_is_refused_at_once(api: Api, relay: InProcessRelay) -> None:
    rule = await api.call("PUT", "/hybridconnections/echo/rules/senders", {"rights": ["Send"]})
    assert rule.status == 201
    old_primary = rule.body["primaryKey"]
    url = connect_url(relay.url, "echo")
    old_token = token_for(url, "senders", old_primary)
    listener = await RawListener(relay.url, "echo").start()
    try:
        # Works, and is now in the relay's verified-token cache.
        ws = await send(relay.url, "echo", token=old_token)
        await ws.close()

        fresh = await api.call(
            "POST", "/hybridconnections/echo/rules/senders/regenerate", {"keyType": "primary"}
        )
        assert fresh.status == 200
        with pytest.raises(HandshakeError) as refused:
            await send(relay.url, "echo", token=old_token)
        assert refused.value.status == 401

        ws = await send(
            relay.url, "echo", token=token_for(url, "senders", fresh.body["primaryKey"])
        )
        await ws.send("new key")
        assert await ws.recv() == "new key"
        await ws.close()
        # The secondary key was not regenerated and still works.
        ws = await send(
            relay.url, "echo", token=token_for(url, "senders", fresh.body["secondaryKey"])
        )
        await ws.close()

        # Deleting the rule refuses its tokens at once too.
        assert (await api.call("DELETE", "/hybridconnections/echo/rules/senders")).status == 204
        with pytest.raises(HandshakeError) as deleted:
            await send(
                relay.url, "echo", token=token_for(url, "senders", fresh.body["secondaryKey"])
            )
        assert deleted.value.status == 401
    finally:
        await listener.stop()


# --- devices --------------------------------------------------------------------------------


async def test_device_crud_with_etags(api: Api) -> None:
    created = await api.call("PUT", "/devices/dev-1", {"grants": {"listen": ["echo"]}})
    assert created.status == 201, created.body
    doc = created.body
    assert doc["deviceId"] == "dev-1"
    assert doc["status"] == "enabled"
    assert doc["connectionState"] == "Disconnected"
    assert doc["authentication"]["type"] == "sas"
    assert doc["authentication"]["symmetricKey"]["primaryKey"]
    assert doc["grants"] == {"listen": ["echo"], "send": []}
    assert created.headers["ETag"] == f'W/"{doc["etag"]}"'

    assert (await api.call("PUT", "/devices/dev-1", {})).status == 409
    got = await api.call("GET", "/devices/dev-1")
    assert got.status == 200
    assert got.body == doc
    assert (await api.call("GET", "/devices/DEV-1")).status == 404  # case-sensitive

    update = {"status": "disabled", "statusReason": "stolen"}
    stale = await api.call("PUT", "/devices/dev-1", update, headers={"If-Match": '"stale"'})
    assert stale.status == 412
    assert stale.body["error"]["code"] == "PreconditionFailed"
    replaced = await api.call(
        "PUT", "/devices/dev-1", update, headers={"If-Match": created.headers["ETag"]}
    )
    assert replaced.status == 200
    assert replaced.body["status"] == "disabled"
    assert replaced.body["statusReason"] == "stolen"
    assert replaced.body["etag"] != doc["etag"]
    assert replaced.body["generationId"] == doc["generationId"]
    # Keys are kept when a replacement gives none.
    assert replaced.body["authentication"] == doc["authentication"]
    forced = await api.call(
        "PUT", "/devices/dev-1", {"status": "enabled"}, headers={"If-Match": "*"}
    )
    assert forced.status == 200
    assert (await api.call("PUT", "/devices/ghost", {}, headers={"If-Match": "*"})).status == 404
    mismatch = await api.call("PUT", "/devices/dev-2", {"deviceId": "dev-3"})
    assert mismatch.status == 400

    assert (
        await api.call("DELETE", "/devices/dev-1", headers={"If-Match": doc["etag"]})
    ).status == 412
    deleted = await api.call("DELETE", "/devices/dev-1", headers={"If-Match": forced.body["etag"]})
    assert deleted.status == 204
    assert (await api.call("GET", "/devices/dev-1")).status == 404
    assert (await api.call("DELETE", "/devices/dev-1")).status == 404

    recreated = await api.call("PUT", "/devices/dev-1", {})
    assert recreated.status == 201
    assert recreated.body["generationId"] != doc["generationId"]
    # Delete without If-Match is unconditional.
    assert (await api.call("DELETE", "/devices/dev-1")).status == 204


async def test_two_concurrent_replaces_exactly_one_wins(api: Api) -> None:
    created = await api.call("PUT", "/devices/racer", {})
    etag = created.body["etag"]
    for _ in range(5):
        replies = await asyncio.gather(
            *(
                api.call(
                    "PUT",
                    "/devices/racer",
                    {"statusReason": f"writer {i}"},
                    headers={"If-Match": f'W/"{etag}"'},
                )
                for i in range(2)
            )
        )
        assert sorted(r.status for r in replies) == [200, 412]
        etag = next(r.body["etag"] for r in replies if r.status == 200)


DEVICE_ID_CASES = [
    ("has space", " "),
    ("slash/inside", "/"),
    ("café", "é"),
    ("angle<", "<"),
    ("back\\slash", "\\"),
    ("semi;colon", ";"),
]


@pytest.mark.parametrize(("device_id", "bad"), DEVICE_ID_CASES)
async def test_device_id_validation_names_the_bad_character(
    api: Api, device_id: str, bad: str
) -> None:
    for method in ("PUT", "GET", "DELETE"):
        reply = await api.call(
            method, "/devices/" + quoted(device_id), {} if method == "PUT" else None
        )
        assert reply.status == 400, (method, reply.body)
        assert reply.body["error"]["code"] == "ArgumentInvalid"
        assert repr(bad) in reply.body["error"]["message"]


async def test_device_id_specials_and_length(api: Api) -> None:
    special = "a-.+%_#*?!(),:=@$'z"
    created = await api.call("PUT", "/devices/" + quoted(special), {})
    assert created.status == 201, created.body
    assert created.body["deviceId"] == special
    assert (await api.call("GET", "/devices/" + quoted(special))).status == 200
    assert (await api.call("PUT", "/devices/" + "d" * 128, {})).status == 201
    too_long = await api.call("PUT", "/devices/" + "d" * 129, {})
    assert too_long.status == 400
    assert "128" in too_long.body["error"]["message"]


async def test_device_list_paging_over_2500(api: Api, relay: InProcessRelay) -> None:
    store = relay.state.store
    ids = [f"dev-{i:05d}" for i in range(2500)]
    for device_id in ids:
        await store.create_device(Device(device_id=device_id))
    first = await api.call("GET", "/devices")
    assert first.status == 200
    assert len(first.body["value"]) == 1000
    token = first.body["continuationToken"]
    assert token
    assert first.headers["x-ms-continuation"] == token
    # The next page by header, IoT Hub style, then by the query parameter.
    second = await api.call("GET", "/devices", headers={"x-ms-continuation": token})
    assert len(second.body["value"]) == 1000
    third = await api.call(
        "GET", "/devices?continuationToken=" + quoted(second.body["continuationToken"])
    )
    assert len(third.body["value"]) == 500
    assert third.body["continuationToken"] is None
    seen = [d["deviceId"] for page in (first, second, third) for d in page.body["value"]]
    assert seen == ids

    small = await api.call("GET", "/devices?top=700")
    assert len(small.body["value"]) == 700
    assert small.body["nextLink"].startswith("/$mgmt/v1/devices?top=700&continuationToken=")
    assert (await api.call("GET", "/devices?top=1001")).status == 400


async def test_device_revoked_hook(api: Api, relay: InProcessRelay) -> None:
    assert relay.app is not None
    seen: asyncio.Queue[DeviceRevoked] = asyncio.Queue()
    unregister = relay.app[REACTIONS].on_device_revoked(seen.put_nowait)
    try:
        created = await api.call("PUT", "/devices/hooked", {})
        await api.call("PUT", "/devices/hooked", {"statusReason": "x"}, headers={"If-Match": "*"})
        await api.call("PUT", "/devices/hooked", {"status": "disabled"}, headers={"If-Match": "*"})
        async with asyncio.timeout(seconds(1)):
            assert await seen.get() == DeviceRevoked(device_id="hooked", reason="disabled")
        assert seen.empty()  # creating and an enabled update revoke nothing
        await api.call("DELETE", "/devices/hooked")
        async with asyncio.timeout(seconds(1)):
            assert await seen.get() == DeviceRevoked(device_id="hooked", reason="deleted")
        assert created.status == 201
    finally:
        unregister()


# --- auth, audit, routing -------------------------------------------------------------------


async def test_auth_401_and_403(api: Api) -> None:
    async with api.session.get(api.base + "/devices") as resp:  # no token at all
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "TokenMissingOrInvalid"
    for token in (
        "garbage",
        namespace_token(ttl=-60),
        namespace_token(key="wrong-key-0123456789abcdef"),
        namespace_token(key_name="nobody"),
        # An entity rule is never a namespace rule, whatever its rights.
        namespace_token("http://127.0.0.1/hc-ws", "listen-only", LISTEN_KEY),
    ):
        reply = await api.call("GET", "/devices", token=token)
        assert reply.status == 401, token
        assert reply.body["error"]["code"] == "TokenMissingOrInvalid"
        assert "sig=" not in reply.body["error"]["message"]

    sender = await api.call("PUT", "/rules/send-only", {"rights": ["Send", "Listen"]})
    weak = namespace_token(key_name="send-only", key=sender.body["primaryKey"])
    for method, path in (("GET", "/devices"), ("PUT", "/devices/x"), ("GET", "/rules")):
        forbidden = await api.call(method, path, {} if method == "PUT" else None, token=weak)
        assert forbidden.status == 403
        assert forbidden.body["error"]["code"] == "Forbidden"
    # A Manage token scoped to one hybrid connection does not manage the namespace.
    scoped = await api.call("GET", "/devices", token=namespace_token("http://127.0.0.1/hc-ws"))
    assert scoped.status == 403
    # Scoped to the API (or part of it) is fine; ServiceBusAuthorization works too.
    mgmt = namespace_token("http://127.0.0.1/$mgmt")
    assert (await api.call("GET", "/devices", token=mgmt)).status == 200
    devices_only = namespace_token("https://127.0.0.1/$mgmt/v1/devices")
    assert (await api.call("GET", "/devices", token=devices_only)).status == 200
    assert (await api.call("GET", "/rules", token=devices_only)).status == 403
    async with api.session.get(
        api.base + "/rules", headers={"ServiceBusAuthorization": namespace_token()}
    ) as resp:
        assert resp.status == 200
    # The OpenAPI document is public.
    async with api.session.get(api.base + "/openapi.json") as resp:
        assert resp.status == 200


async def test_audit_log_one_line_per_write_without_secrets(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT)
    rule = await api.call("PUT", "/rules/audited", {"rights": ["Send"]})
    regen = await api.call("POST", "/rules/audited/regenerate", {"keyType": "secondary"})
    await api.call("GET", "/rules/audited")  # reads are not audited
    await api.call("PUT", "/devices/aud-1", {})
    await api.call("DELETE", "/hybridconnections/hc-ws")  # refused: 409
    await api.call("DELETE", "/devices/aud-1", token="garbage")  # refused: 401
    weak = namespace_token(key_name="audited", key=regen.body["primaryKey"])
    await api.call("DELETE", "/devices/aud-1", token=weak)  # refused: 403, caller known
    await api.call("POST", "/devices/aud-1")  # refused: 405
    records = [r for r in caplog.records if r.name == AUDIT]
    summary = [
        (
            r.getMessage(),
            r.__dict__["who"],
            r.__dict__["method"],
            r.__dict__["resource"],
            r.__dict__["status"],
        )
        for r in records
    ]
    assert summary == [
        ("mgmt_write", f"sas:{ROOT}", "PUT", "/$mgmt/v1/rules/audited", 201),
        ("mgmt_write", f"sas:{ROOT}", "POST", "/$mgmt/v1/rules/audited/regenerate", 200),
        ("mgmt_write", f"sas:{ROOT}", "PUT", "/$mgmt/v1/devices/aud-1", 201),
        ("mgmt_write", f"sas:{ROOT}", "DELETE", "/$mgmt/v1/hybridconnections/hc-ws", 409),
        ("mgmt_write", "-", "DELETE", "/$mgmt/v1/devices/aud-1", 401),
        ("mgmt_write", "sas:audited", "DELETE", "/$mgmt/v1/devices/aud-1", 403),
        ("mgmt_write", "-", "POST", "/$mgmt/v1/devices/aud-1", 405),
    ]
    assert records[3].__dict__["error"] == "Conflict"
    secrets = {
        rule.body["primaryKey"],
        rule.body["secondaryKey"],
        regen.body["secondaryKey"],
        ROOT_KEY,
        api.token or "",
    }
    everything = caplog.text + " ".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    for secret in secrets:
        assert secret not in everything
    assert "sig=" not in everything


async def test_routing_405_404_and_percent_encoded_prefix(api: Api) -> None:
    reply = await api.call("PATCH", "/devices/x", {})
    assert reply.status == 405
    assert reply.headers["Allow"] == "DELETE, GET, PUT"
    assert (await api.call("POST", "/hybridconnections/a/rules/r")).status == 405
    unknown = await api.call("GET", "/nothing/here")
    assert unknown.status == 404
    assert unknown.body["error"]["code"] == "EndpointNotFound"
    assert (await api.call("GET", "/../v2/hybridconnections")).status == 404
    encoded = api.base.replace("/$mgmt/", "/%24mgmt/")
    async with api.session.get(
        encoded + "/rules", headers={"Authorization": api.token or ""}
    ) as resp:
        assert resp.status == 200


# --- JWT bearer tokens with a manage scope ---------------------------------------------------

IDP = "https://idp.example"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def idp_token(**claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": IDP, "aud": "hybridrelay", "sub": "ops-robot", "exp": now + 600, **claims}
    return jwt.encode(payload, RSA_KEY, algorithm="RS256")


async def test_jwt_with_manage_scope(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = await relay_factory(extra=jwt_issuer_config(tmp_path / "idp.pem", RSA_KEY, IDP))
    async with aiohttp.ClientSession() as session:
        api = Api(session, relay.http_url + "/$mgmt/v1", None)
        ok = await api.call(
            "PUT", "/devices/by-jwt", {}, token=f"Bearer {idp_token(scope='hc:manage:*')}"
        )
        assert ok.status == 201
        raw = await api.call("GET", "/devices", token=idp_token(hc={"manage": ["$mgmt"]}))
        assert raw.status == 200
        narrow = await api.call("GET", "/devices", token=idp_token(scope="hc:manage:sensors/*"))
        assert narrow.status == 403
        listen = await api.call("GET", "/devices", token=idp_token(scope="hc:listen:*"))
        assert listen.status == 403
        expired = await api.call(
            "GET", "/devices", token=idp_token(scope="hc:manage:*", exp=int(time.time()) - 300)
        )
        assert expired.status == 401
        assert (await api.call("GET", "/devices", token="Bearer nope")).status == 401


MGMT_MODULES = [
    "hybridrelay.relay.mgmt",
    "hybridrelay.relay.mgmt.access",
    "hybridrelay.relay.mgmt.audit",
    "hybridrelay.relay.mgmt.handlers",
    "hybridrelay.relay.mgmt.openapi",
    "hybridrelay.relay.reactions",
]


@pytest.mark.parametrize("name", MGMT_MODULES)
def test_mgmt_modules_declare_all(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__, name
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"
