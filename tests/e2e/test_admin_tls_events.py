"""``hybridrelay admin`` as a user types it (a subprocess): a TLS relay with its own CA
through environment variables, and ``events tail --since`` replaying every kind of change.

Each CLI run is one ``python -m hybridrelay admin ...`` child with a bounded wait; the
relay is a real ``relay serve`` child (TLS) or in-process (events), on port 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.harness.cluster import running_cluster
from tests.harness.device_certs import make_device_ca, make_device_cert
from tests.harness.peers import token_for
from tests.harness.relay import ROOT_KEY, InProcessRelay, RelayProcess
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles, make_tls_files

from hybridrelay.client.admin import AdminClient

pytestmark = pytest.mark.e2e

ROOT = "RootManageSharedAccessKey"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def admin_env(relay_url: str, **extra: str) -> dict[str, str]:
    """The environment of a user who exported the admin variables (and nothing else of ours)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDRELAY_ADMIN_")}
    env.update(
        HYBRIDRELAY_ADMIN_RELAY=relay_url,
        HYBRIDRELAY_ADMIN_KEY_NAME=ROOT,
        HYBRIDRELAY_ADMIN_KEY=ROOT_KEY,
        **extra,
    )
    return env


async def hybridrelay(env: Mapping[str, str], *argv: str, timeout: float = 30) -> Run:
    """``python -m hybridrelay ARGV`` to its end (killed after ``timeout`` seconds)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hybridrelay",
        "--log-level",
        "warning",
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )
    try:
        async with asyncio.timeout(seconds(timeout)):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


# --- TLS with the relay's own CA ---------------------------------------------------------


async def test_tls_relay_ca_from_the_environment(
    relay_process_factory: Any, tls_files: TlsFiles, tmp_path: Path
) -> None:
    relay: RelayProcess = await relay_process_factory(tls=tls_files)
    url = relay.http_url
    assert url.startswith("https://")

    # No CA: one line naming the URL, the reason and both ways to give the CA; exit 2.
    r = await hybridrelay(admin_env(url), "admin", "hc", "list")
    assert r.code == 2, r.err
    [line] = r.err.strip().splitlines()
    assert url in line
    assert "certificate verify failed" in line
    assert "--ca-file" in line
    assert "HYBRIDRELAY_ADMIN_CA_FILE" in line
    assert "HYBRIDRELAY_ADMIN_RELAY" in line  # where the URL came from
    assert "Traceback" not in r.err

    # The CA in the environment: every call works without a flag.
    r = await hybridrelay(
        admin_env(url, HYBRIDRELAY_ADMIN_CA_FILE=str(tls_files.ca_cert)), "admin", "hc", "list"
    )
    assert r.code == 0, r.err
    assert "hc-ws" in {doc["name"] for doc in r.lines()}

    # The flag wins over the variable; a wrong CA in the variable is named as such.
    other_dir = tmp_path / "other-ca"
    other_dir.mkdir()
    other = make_tls_files(other_dir)
    wrong = admin_env(url, HYBRIDRELAY_ADMIN_CA_FILE=str(other.ca_cert))
    r = await hybridrelay(wrong, "admin", "--ca-file", str(tls_files.ca_cert), "rule", "list")
    assert r.code == 0, r.err
    assert ROOT in {doc["name"] for doc in r.lines()}
    r = await hybridrelay(wrong, "admin", "rule", "list")
    assert r.code == 2
    assert str(other.ca_cert) in r.err
    assert "from HYBRIDRELAY_ADMIN_CA_FILE" in r.err


# --- every change is an event; --since replays them ---------------------------------------


async def mgmt(base: str, method: str, path: str, body: object = None) -> dict[str, Any]:
    """One management call with the root key (for the resources AdminClient has no call for)."""
    url = f"{base}/$mgmt/v1{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers={"Authorization": token_for(url)}) as resp,
    ):
        text = await resp.text()
        assert resp.status < 300, f"{method} {path}: {resp.status} {text}"
        doc = json.loads(text) if text else {}
        return doc if isinstance(doc, dict) else {}


async def every_kind_of_change(base: str, directory: Path) -> tuple[list[str], list[str]]:
    """Make one change of each kind on the relay at ``base``; answer the opTypes they
    should publish, in order, and every secret the answers revealed."""
    secrets: list[str] = []
    async with AdminClient(base, ROOT, ROOT_KEY) as admin:
        await admin.put_hybrid_connection("ev-hc", {"maxListeners": 3})
        await admin.update_hybrid_connection("ev-hc", {"userMetadata": "m"})
        await admin.update_hybrid_connection("ev-hc", {"status": "disabled"})
        await admin.update_hybrid_connection("ev-hc", {"status": "enabled"})
        rule = await admin.put_rule("ev-rule", ["Listen"], "ev-hc")
        rule = await admin.put_rule("ev-rule", ["Listen", "Send"], "ev-hc")
        secrets += [rule["primaryKey"], rule["secondaryKey"]]
        rule = await admin.regenerate_key("ev-rule", "primary", "ev-hc")
        secrets.append(rule["primaryKey"])
        await admin.delete_rule("ev-rule", "ev-hc")
        device = await admin.create_device("ev-dev", {})
        secrets += list(device["authentication"]["symmetricKey"].values())
        await admin.update_device("ev-dev", {"grants": {"listen": ["ev-hc"], "send": []}})
        await admin.set_device_status("ev-dev", "disabled", reason="lost")
        await admin.set_device_status("ev-dev", "enabled")
        fresh = {"primaryKey": "A" * 44, "secondaryKey": "B" * 44}
        secrets += list(fresh.values())
        await admin.update_device(
            "ev-dev", {"authentication": {"type": "sas", "symmetricKey": fresh}}
        )
        await admin.delete_device("ev-dev")
        await admin.delete_hybrid_connection("ev-hc")
    ca = make_device_ca(directory)
    await mgmt(base, "PUT", "/certificates/fleet", {"certificate": ca.pem.read_text()})
    code = (await mgmt(base, "POST", "/certificates/fleet/generateVerificationCode"))[
        "verificationCode"
    ]
    secrets.append(code)
    proof = make_device_cert(directory, code, ca=ca, file_stem="proof")
    await mgmt(base, "POST", "/certificates/fleet/verify", {"certificate": proof.cert.read_text()})
    await mgmt(base, "DELETE", "/certificates/fleet")
    expected = [
        "createHybridConnection",
        "updateHybridConnection",
        "disableHybridConnection",
        "enableHybridConnection",
        "createAuthorizationRule",
        "updateAuthorizationRule",
        "regenerateAuthorizationRuleKey",
        "deleteAuthorizationRule",
        "createDeviceIdentity",
        "updateDeviceIdentity",
        "disableDeviceIdentity",
        "enableDeviceIdentity",
        "regenerateDeviceKeys",
        "deleteDeviceIdentity",
        "deleteHybridConnection",
        "createCertificate",
        "generateCertificateVerificationCode",
        "verifyCertificate",
        "deleteCertificate",
    ]
    return expected, secrets


def op_types(events: list[Any]) -> list[str]:
    return [e["properties"]["opType"] for e in events]


async def test_events_tail_replays_every_change(relay: InProcessRelay, tmp_path: Path) -> None:
    expected, secrets = await every_kind_of_change(relay.http_url, tmp_path)
    env = admin_env(relay.http_url)

    # After the fact: everything kept, at once (no new event is needed to end it).
    r = await hybridrelay(env, "admin", "events", "tail", "--since", "0", "--count", "19")
    assert r.code == 0, r.err
    events = r.lines()
    assert op_types(events) == expected
    for secret in secrets:  # no key and no verification code in any event
        assert secret not in r.out
    for event in events:
        if "deviceId" in event["properties"] and "authentication" in event["body"]:
            keys = event["body"]["authentication"]["symmetricKey"]
            assert keys == {"primaryKey": None, "secondaryKey": None}
    by_op = {e["properties"]["opType"]: e for e in events}
    assert by_op["disableDeviceIdentity"]["body"]["status"] == "disabled"
    assert by_op["disableDeviceIdentity"]["properties"]["deviceId"] == "ev-dev"
    assert by_op["disableHybridConnection"]["body"]["status"] == "disabled"
    assert by_op["regenerateAuthorizationRuleKey"]["properties"] == {
        "opType": "regenerateAuthorizationRuleKey",
        "hubName": "127.0.0.1",
        "ruleName": "ev-rule",
        "hybridConnection": "ev-hc",
        "operationTimestamp": by_op["regenerateAuthorizationRuleKey"]["properties"][
            "operationTimestamp"
        ],
    }
    assert by_op["verifyCertificate"]["body"]["isVerified"] is True

    # Resume after a sequence number: only what came after it.
    middle = events[13]["sequenceNumber"]
    r = await hybridrelay(env, "admin", "events", "tail", "--since", str(middle), "--count", "5")
    assert r.code == 0, r.err
    assert op_types(r.lines()) == expected[14:]

    # From a time: the last hour holds them all; a live event follows the replay.
    tail = asyncio.ensure_future(
        hybridrelay(env, "admin", "events", "tail", "--since", "1h", "--count", "20")
    )
    # Whenever the tail subscribes, the replay (since the hour) or the stream has it.
    async with AdminClient(relay.http_url, ROOT, ROOT_KEY) as admin:
        await admin.create_device("ev-live", {})
    r = await tail
    assert r.code == 0, r.err
    assert op_types(r.lines()) == [*expected, "createDeviceIdentity"]

    # Bad values are usage errors.
    r = await hybridrelay(env, "admin", "events", "tail", "--since", "yesterday")
    assert r.code == 2
    assert "--since" in r.err


async def test_cluster_changes_on_one_node_are_events_on_the_other(
    tmp_path: Path, redis_url: str
) -> None:
    async with running_cluster(tmp_path, redis_url, 2) as cluster:
        writer, reader = cluster.nodes
        async with AdminClient(writer.http_url, ROOT, ROOT_KEY) as admin:
            await admin.put_hybrid_connection("cl-hc", {})
            await admin.put_rule("cl-rule", ["Send"], "cl-hc")
            rule = await admin.regenerate_key("cl-rule", "secondary", "cl-hc")
            await admin.create_device("cl-dev", {})
            await admin.set_device_status("cl-dev", "disabled", reason="stolen")
            await admin.delete_device("cl-dev")
        # The reader heard of each change through Redis and numbered it itself.
        r = await hybridrelay(
            admin_env(reader.http_url), "admin", "events", "tail", "--since", "0", "--count", "6"
        )
        assert r.code == 0, r.err
        events = r.lines()
        assert op_types(events) == [
            "createHybridConnection",
            "createAuthorizationRule",
            "regenerateAuthorizationRuleKey",
            "createDeviceIdentity",
            "disableDeviceIdentity",
            "deleteDeviceIdentity",
        ]
        assert [e["sequenceNumber"] for e in events] == [1, 2, 3, 4, 5, 6]
        assert events[4]["body"]["statusReason"] == "stolen"
        assert rule["secondaryKey"] not in r.out
