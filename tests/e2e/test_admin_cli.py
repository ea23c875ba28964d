"""``hybridrelay admin`` end to end: a relay child process, the CLI run in-process.

``main()`` runs its own event loop, so each call goes to a worker thread; capsys
still captures what it prints. The key is passed through the environment only.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.harness.relay import ROOT_KEY, RelayProcess

from hybridrelay.cli import main

pytestmark = pytest.mark.e2e

ROOT = "RootManageSharedAccessKey"
ProcessFactory = Callable[..., Awaitable[RelayProcess]]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def doc(self) -> Any:
        return json.loads(self.out)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # API errors and argparse usage errors
        return int(exc.code or 0)


@pytest.fixture
async def admin(
    relay_process_factory: ProcessFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., Awaitable[Result]]:
    relay = await relay_process_factory()
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_RELAY", relay.http_url)
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_KEY_NAME", ROOT)
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_KEY", ROOT_KEY)
    capsys.readouterr()

    async def run(*argv: str) -> Result:
        code = await asyncio.to_thread(_main, ["--log-level", "warning", "admin", *argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


async def test_hc_create_show_list_delete(admin: Callable[..., Awaitable[Result]]) -> None:
    r = await admin("hc", "create", "team/app", "--max-listeners", "3", "--metadata", "m")
    assert r.code == 0, r.err
    assert r.doc()["name"] == "team/app"
    assert r.doc()["maxListeners"] == 3

    r = await admin("hc", "show", "team/app")
    assert r.code == 0, r.err
    assert r.doc()["userMetadata"] == "m"
    assert r.doc()["etag"]

    r = await admin("hc", "create", "team/app")
    assert r.code == 1
    assert "exists" in r.err

    r = await admin("hc", "update", "team/app", "--no-client-auth", "--http", "false")
    assert r.code == 0, r.err
    assert r.doc()["requiresClientAuthorization"] is False
    assert r.doc()["maxListeners"] == 3

    r = await admin("hc", "list")
    assert r.code == 0, r.err
    assert "team/app" in {d["name"] for d in r.lines()}

    r = await admin("hc", "list", "--table")
    assert r.code == 0, r.err
    assert r.out.splitlines()[0].split()[0] == "name"
    assert any(line.startswith("team/app ") for line in r.out.splitlines())

    assert (await admin("hc", "delete", "team/app")).code == 0
    r = await admin("hc", "show", "team/app")
    assert r.code == 1
    assert "404" in r.err
    assert "does not exist" in r.err


async def test_rule_create_show_regenerate(admin: Callable[..., Awaitable[Result]]) -> None:
    assert (await admin("hc", "create", "ruled")).code == 0
    r = await admin("rule", "create", "sender", "--rights", "Send,listen", "--hc", "ruled")
    assert r.code == 0, r.err
    assert sorted(r.doc()["rights"]) == ["Listen", "Send"]
    assert "primaryKey" not in r.doc()  # keys only with --keys

    before = (await admin("rule", "show", "sender", "--hc", "ruled", "--keys")).doc()
    assert before["primaryKey"]

    r = await admin("rule", "regenerate", "sender", "--key", "primary", "--hc", "ruled", "--keys")
    assert r.code == 0, r.err
    assert r.doc()["primaryKey"] != before["primaryKey"]
    assert r.doc()["secondaryKey"] == before["secondaryKey"]

    r = await admin("rule", "list", "--hc", "ruled")
    assert [d["name"] for d in r.lines()] == ["sender"]
    assert ROOT in {d["name"] for d in (await admin("rule", "list")).lines()}

    assert (await admin("rule", "delete", "sender", "--hc", "ruled")).code == 0
    assert (await admin("rule", "show", "sender", "--hc", "ruled")).code == 1


async def test_device_lifecycle(admin: Callable[..., Awaitable[Result]]) -> None:
    r = await admin(
        "device", "create", "dev-1", "--grant-listen", "sensors/*", "--grant-send", "echo"
    )
    assert r.code == 0, r.err
    doc = r.doc()
    assert doc["grants"] == {"listen": ["sensors/*"], "send": ["echo"]}
    assert doc["status"] == "enabled"
    assert "primaryKey" not in json.dumps(doc)  # keys hidden without --keys

    r = await admin("device", "show", "dev-1", "--keys")
    assert r.doc()["authentication"]["symmetricKey"]["primaryKey"]

    r = await admin("device", "disable", "dev-1", "--reason", "lost")
    assert r.code == 0, r.err
    r = await admin("device", "show", "dev-1")
    assert r.doc()["status"] == "disabled"
    assert r.doc()["statusReason"] == "lost"

    r = await admin("device", "enable", "dev-1")
    assert r.code == 0, r.err
    assert (await admin("device", "show", "dev-1")).doc()["status"] == "enabled"

    r = await admin("device", "update", "dev-1", "--grant-send", "a", "--grant-send", "b")
    assert r.code == 0, r.err
    assert r.doc()["grants"] == {"listen": ["sensors/*"], "send": ["a", "b"]}

    thumb = "AB" * 20
    r = await admin(
        "device", "create", "dev-x509", "--auth", "x509-thumbprint", "--primary-thumbprint", thumb
    )
    assert r.code == 0, r.err
    assert r.doc()["authentication"]["type"] == "selfSigned"

    r = await admin("device", "delete", "dev-1", "--etag", "stale")
    assert r.code == 1
    assert "412" in r.err
    assert (await admin("device", "delete", "dev-1")).code == 0
    r = await admin("device", "show", "dev-1")
    assert r.code == 1
    assert "404" in r.err


async def test_device_list_pages(admin: Callable[..., Awaitable[Result]]) -> None:
    from hybridrelay.client.admin import AdminClient

    async with AdminClient(os.environ["HYBRIDRELAY_ADMIN_RELAY"], ROOT, ROOT_KEY) as client:
        sem = asyncio.Semaphore(20)

        async def make(i: int) -> None:
            async with sem:
                await client.create_device(f"page-{i:03d}", {})

        await asyncio.gather(*(make(i) for i in range(250)))

    r = await admin("device", "list", "--top", "7")
    assert r.code == 0, r.err
    ids = [d["deviceId"] for d in r.lines()]
    assert len(ids) == 250
    assert set(ids) == {f"page-{i:03d}" for i in range(250)}


async def test_api_error_and_config_errors(
    admin: Callable[..., Awaitable[Result]], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await admin("rule", "create", "bad name!", "--rights", "Send")
    assert r.code == 1
    assert "400" in r.err

    r = await admin("device", "create", "dev-a")
    assert r.code == 0, r.err
    r = await admin("device", "create", "dev-a")
    assert r.code == 1
    assert "409" in r.err

    monkeypatch.setenv("HYBRIDRELAY_ADMIN_KEY", "wrong-key-0123456789abcdef0123456789")
    r = await admin("hc", "list")
    assert r.code == 1
    assert "401" in r.err
    assert "wrong-key" not in r.err

    monkeypatch.delenv("HYBRIDRELAY_ADMIN_KEY")
    r = await admin("hc", "list")
    assert r.code == 2
    assert "HYBRIDRELAY_ADMIN_KEY" in r.err

    r = await admin("--key-env", "NOT_SET_ANYWHERE", "hc", "list")
    assert r.code == 2
    assert "NOT_SET_ANYWHERE" in r.err


async def test_import_export_round_trip(
    admin: Callable[..., Awaitable[Result]], tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"deviceId": f"imp-{i}", "importMode": "create"}) for i in range(20)]
    lines.insert(5, "{not json")
    source.write_text("\n".join(lines) + "\n")
    r = await admin("import", str(source))
    assert r.code == 1  # one refused line
    assert "%" in r.err  # the progress bar
    job = r.doc()
    assert job["status"] == "completed"
    assert (job["succeeded"], job["failed"]) == (20, 1)

    out = tmp_path / "out.jsonl"
    r = await admin("export", str(out))
    assert r.code == 0, r.err
    ids = {json.loads(line)["deviceId"] for line in out.read_text().splitlines() if line}
    assert ids == {f"imp-{i}" for i in range(20)}


async def test_events_tail(admin: Callable[..., Awaitable[Result]]) -> None:
    from hybridrelay.client.admin import AdminClient

    tail: asyncio.Future[Result] = asyncio.ensure_future(admin("events", "tail", "--count", "1"))
    async with AdminClient(os.environ["HYBRIDRELAY_ADMIN_RELAY"], ROOT, ROOT_KEY) as client:
        for i in range(50):  # until the tail has subscribed and seen one
            await client.create_device(f"ev-{i}", {})
            done, _ = await asyncio.wait({tail}, timeout=0.2)
            if done:
                break
    r = await tail
    assert r.code == 0, r.err
    [event] = r.lines()
    assert event["properties"]["opType"] == "createDeviceIdentity"
