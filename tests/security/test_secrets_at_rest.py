"""Secrets at rest: the store, its WAL, job files; and keys copied from example configs.

The SQLite store holds every SAS key and device credential, export jobs write them to
disk and imports spool them. With a permissive umask (0 in many containers) they were
world-readable. And a relay started from a shipped example config served with a key
that anyone can read in this repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]  # no stubs installed (as test_deploy)

from hybridrelay.errors import ConfigError
from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.relay.config import load_relay_config, refuse_placeholder_keys
from tests.harness.relay import ROOT_KEY, RelayProcess, write_config
from tests.harness.timing import seconds

ROOT = "RootManageSharedAccessKey"
REPO = Path(__file__).parents[2]


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _mgmt(
    session: aiohttp.ClientSession,
    relay: RelayProcess,
    method: str,
    path: str,
    body: bytes | None = None,
) -> tuple[int, Any]:
    token = create_sas_token("http://127.0.0.1/", ROOT, ROOT_KEY, int(time.time()) + 600)
    headers = {"Authorization": token, "Content-Type": "application/x-ndjson"}
    url = f"{relay.http_url}/$mgmt/v1{path}"
    async with session.request(method, url, data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def _finished(session: aiohttp.ClientSession, relay: RelayProcess, job_id: str) -> None:
    async with asyncio.timeout(seconds(20)):
        while True:
            status, job = await _mgmt(session, relay, "GET", f"/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in ("completed", "failed"):
                return
            await asyncio.sleep(0.05)  # polling the job endpoint


async def test_store_wal_and_job_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """A relay started under umask 0 imports and exports devices: files 0600, dirs 0700."""
    data = tmp_path / "data"
    with umask(0):  # inherited by the relay process
        relay = await RelayProcess(write_config(tmp_path)).start()
    try:
        body = (
            b"".join(
                json.dumps({"deviceId": f"dev-{i}", "importMode": "create"}).encode() + b"\n"
                for i in range(3)
            )
            + b'{"deviceId": "broken"\n'
        )
        async with aiohttp.ClientSession() as session:
            status, job = await _mgmt(session, relay, "POST", "/jobs/import", body)
            assert status == 202, job
            await _finished(session, relay, job["jobId"])
            status, export = await _mgmt(session, relay, "POST", "/jobs/export")
            assert status == 202, export
            await _finished(session, relay, export["jobId"])
        store = data / "hybridrelay.sqlite3"
        files = [store, *(store.with_name(store.name + s) for s in ("-wal", "-shm"))]
        jobs = data / "jobs"
        output = jobs / f"{export['jobId']}.jsonl"
        errors = jobs / f"{job['jobId']}.errors.jsonl"
        assert b"symmetricKey" in output.read_bytes() or b"primaryKey" in output.read_bytes()
        for path in (*files, output, errors):
            assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))}"
        for directory in (data, jobs):
            assert mode(directory) == 0o700, f"{directory.name} is {oct(mode(directory))}"
    finally:
        await relay.stop()


async def test_an_existing_loose_store_is_tightened(tmp_path: Path) -> None:
    """A data dir and store left world-readable by an older relay are made private at start."""
    with umask(0):
        relay = await RelayProcess(write_config(tmp_path)).start()
    await relay.stop()
    data = tmp_path / "data"
    store = data / "hybridrelay.sqlite3"
    data.chmod(0o755)
    store.chmod(0o644)
    relay = await RelayProcess(write_config(tmp_path)).start()
    try:
        assert (mode(data), mode(store)) == (0o700, 0o600)
    finally:
        await relay.stop()


def _shipped_relay_configs(tmp_path: Path) -> list[Path]:
    """Every relay config the repository ships with keys in it."""
    paths = [REPO / "deploy" / "relay.example.toml", REPO / "deploy" / "compose" / "relay.toml"]
    for doc in yaml.safe_load_all(
        (REPO / "deploy" / "k8s" / "relay-config.example.yaml").read_text("utf-8")
    ):
        text = (doc or {}).get("stringData", {}).get("relay.toml")
        if text:
            path = tmp_path / "k8s-relay.toml"
            path.write_text(text, "utf-8")
            paths.append(path)
    return paths


def test_every_shipped_example_key_is_refused(tmp_path: Path) -> None:
    """Each shipped example config's keys are recognised as placeholders and refused."""
    paths = _shipped_relay_configs(tmp_path)
    assert len(paths) == 3
    # The example's TLS files live under /etc/hybridrelay on a real host: stand-ins here.
    env = {"HYBRIDRELAY_TLS_CERT": str(tmp_path / "cert.pem")}
    env["HYBRIDRELAY_TLS_KEY"] = str(tmp_path / "key.pem")
    for name in env.values():
        Path(name).write_text("x")
    for path in paths:
        config = load_relay_config(path, env)
        with pytest.raises(ConfigError) as info:
            refuse_placeholder_keys(config)
        assert info.value.key == "rules[0].key"
        assert "placeholder" in info.value.reason


async def test_a_relay_with_an_example_key_exits_2_before_serving(tmp_path: Path) -> None:
    """An operator starts the relay from deploy/relay.example.toml unchanged: exit 2, clear line."""
    text = (REPO / "deploy" / "relay.example.toml").read_text("utf-8")
    # Runnable here: no TLS files, a free port, the test's data dir.
    text = "\n".join(
        line
        for line in text.splitlines()
        if not line.startswith(("tls_cert", "tls_key", "port", "host", "data_dir", "public_url"))
    ).replace("[relay]", f'[relay]\nport = 0\ndata_dir = "{tmp_path / "data"}"', 1)
    path = tmp_path / "relay.toml"
    path.write_text(text, "utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hybridrelay",
        "relay",
        "serve",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(seconds(20)):
        output, _ = await proc.communicate()
    assert proc.returncode == 2, output.decode()
    assert f"config error: {path}: rules[0].key: is a placeholder" in output.decode()
    assert "relay ready" not in output.decode()
    assert not (tmp_path / "data").exists()  # refused before anything was written


async def test_the_compose_demo_opt_in_starts_with_a_warning(tmp_path: Path) -> None:
    """HYBRIDRELAY_ALLOW_PLACEHOLDER_KEYS=true (compose demo only) starts, logging a warning."""
    text = (REPO / "deploy" / "compose" / "relay.toml").read_text("utf-8")
    text = text.replace('host = "0.0.0.0"', 'host = "127.0.0.1"').replace("port = 8080", "port = 0")
    text = text.replace('data_dir = "/var/lib/hybridrelay"', f'data_dir = "{tmp_path / "data"}"')
    # [cluster] stays: without HYBRIDRELAY_REDIS_URL the node runs alone.
    path = tmp_path / "relay.toml"
    path.write_text(text, "utf-8")
    relay = RelayProcess(path, env={"HYBRIDRELAY_ALLOW_PLACEHOLDER_KEYS": "true"})
    await relay.start()
    try:
        assert any("placeholder_keys_allowed" in line for line in relay.log_lines)
    finally:
        await relay.stop()
