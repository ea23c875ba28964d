"""``hybridrelay admin`` does what the dashboard does: device search, key regeneration,
timelines, connection strings, HC counters, nodes (drain/undrain) and the HTTP inspector.

A relay child process, the CLI run in-process (as tests/e2e/test_admin_cli.py does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from tests.e2e.test_admin_cli import ROOT, Result, _main
from tests.harness.http_peers import HttpListener
from tests.harness.peers import token_for
from tests.harness.relay import ROOT_KEY, RelayProcess
from tests.harness.timing import seconds

from hybridrelay.protocol.device_sas import parse_device_connection_string

pytestmark = pytest.mark.e2e

ProcessFactory = Callable[..., Awaitable[RelayProcess]]


@dataclass
class Admin:
    relay: RelayProcess
    run: Callable[..., Awaitable[Result]]


@pytest.fixture
async def admin(
    relay_process_factory: ProcessFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Admin:
    relay = await relay_process_factory()
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_RELAY", relay.http_url)
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_KEY_NAME", ROOT)
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_KEY", ROOT_KEY)
    capsys.readouterr()

    async def run(*argv: str) -> Result:
        code = await asyncio.to_thread(_main, ["--log-level", "warning", "admin", *argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return Admin(relay, run)


async def test_device_search_regenerate_key_connection_string_timeline(admin: Admin) -> None:
    for device in ("dev-a1", "dev-a2", "dev-b1"):
        assert (await admin.run("device", "create", device)).code == 0
    assert (await admin.run("device", "disable", "dev-a2")).code == 0

    async def ids(*terms: str) -> list[str]:
        r = await admin.run("device", "search", *terms)
        assert r.code == 0, r.err
        return [d["deviceId"] for d in r.lines()]

    assert await ids("--prefix", "dev-a") == ["dev-a1", "dev-a2"]
    assert await ids("--contains", "B1") == ["dev-b1"]
    assert await ids("--prefix", "dev-a", "--status", "enabled") == ["dev-a1"]
    assert await ids("--connection-state", "disconnected", "--top", "1") == [
        "dev-a1",
        "dev-a2",
        "dev-b1",
    ]
    assert await ids("--connection-state", "connected") == []
    hidden = (await admin.run("device", "search", "--prefix", "dev-b")).lines()[0]
    assert "primaryKey" not in str(hidden)
    table = await admin.run("device", "search", "--prefix", "dev-a", "--table")
    assert table.out.splitlines()[0].startswith("deviceId")
    assert len(table.out.splitlines()) == 3

    before = (await admin.run("device", "show", "dev-a1", "--keys")).doc()
    r = await admin.run("device", "regenerate-key", "dev-a1", "--key", "primary", "--keys")
    assert r.code == 0, r.err
    keys, old_keys = r.doc()["authentication"]["symmetricKey"], before["authentication"]
    assert keys["primaryKey"] != old_keys["symmetricKey"]["primaryKey"]
    assert keys["secondaryKey"] == old_keys["symmetricKey"]["secondaryKey"]
    assert (await admin.run("device", "regenerate-key", "nope", "--key", "primary")).code == 1

    r = await admin.run("device", "connection-string", "dev-a1")
    assert r.code == 0, r.err
    parsed = parse_device_connection_string(r.out.strip())
    assert parsed.device_id == "dev-a1"
    assert r.out.strip() == (
        f"HostName={admin.relay.http_url.removeprefix('http://')};DeviceId=dev-a1;"
        f"SharedAccessKey={keys['primaryKey']}"
    )
    r = await admin.run("device", "connection-string", "dev-a1", "--secondary")
    assert r.out.strip().endswith(f"SharedAccessKey={keys['secondaryKey']}")

    r = await admin.run("device", "timeline", "dev-a1", "--table")  # no table: JSON
    assert r.code == 0, r.err
    assert r.doc()["deviceId"] == "dev-a1"
    assert r.doc()["value"] == []


async def test_hc_metrics_and_nodes_drain_undrain(admin: Admin) -> None:
    r = await admin.run("hc", "metrics", "echo")
    assert r.code == 0, r.err
    assert r.doc()["name"] == "echo"
    assert r.doc()["ActiveListeners"] == 0
    assert (await admin.run("hc", "metrics", "no-such-hc")).code == 1

    r = await admin.run("nodes", "list")
    assert r.code == 0, r.err
    [node] = r.lines()
    assert (node["id"], node["draining"]) == ("local", False)

    r = await admin.run("nodes", "drain", "local")
    assert r.doc() == {"id": "local", "draining": True}
    r = await admin.run("nodes", "list", "--table")
    header, row = r.out.splitlines()
    assert header.split()[-1] == "draining"
    assert row.split()[-1] == "true"
    r = await admin.run("nodes", "undrain", "local")
    assert r.doc() == {"id": "local", "draining": False}
    assert (await admin.run("nodes", "list")).lines()[0]["draining"] is False
    assert (await admin.run("nodes", "undrain", "elsewhere")).code == 1


async def test_inspector_on_list_get_replay_off(admin: Admin) -> None:
    relay = admin.relay
    listener = await HttpListener(relay.url, "hyco").start()
    try:
        r = await admin.run("inspector", "on", "hyco")
        assert r.code == 0, r.err
        assert r.doc()["enabled"] is True
        assert (await admin.run("inspector", "show", "hyco")).doc()["enabled"] is True

        url = f"{relay.http_url}/hyco/orders?x=1"
        auth = {"ServiceBusAuthorization": token_for(f"{relay.http_url}/hyco")}
        async with aiohttp.ClientSession() as http:
            sending = asyncio.ensure_future(http.post(url, data=b"first", headers=auth))
            request = await listener.next_request()
            await listener.respond(request.id, 201, body=b"made")
            async with await asyncio.wait_for(sending, seconds(10)) as resp:
                assert resp.status == 201

        r = await admin.run("inspector", "list", "hyco")
        [record] = r.lines()
        assert (record["method"], record["status"]) == ("POST", 201)
        r = await admin.run("inspector", "get", "hyco", record["id"])
        assert r.doc()["requestBody"]["text"] == "first"

        replaying = asyncio.ensure_future(
            admin.run("inspector", "replay", "hyco", record["id"], "--body", "second")
        )
        try:
            request = await listener.next_request()
        except TimeoutError:
            raise AssertionError(await replaying) from None
        assert request.message["method"] == "POST"
        await listener.respond(request.id, 202, body=b"again")
        r = await asyncio.wait_for(replaying, seconds(10))
        assert r.code == 0, r.err
        assert r.doc()["status"] == 202
        assert r.doc()["replay"]["replayOf"] == record["id"]

        assert (await admin.run("inspector", "replay", "hyco", "x", "--header", "bad")).code == 2
        r = await admin.run("inspector", "off", "hyco")
        assert r.doc()["enabled"] is False
        assert (await admin.run("inspector", "list", "hyco")).lines() == []
    finally:
        await listener.stop()
