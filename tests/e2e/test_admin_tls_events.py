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

import pytest
from tests.harness.relay import ROOT_KEY, RelayProcess
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles, make_tls_files

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

    # A CA file that cannot be read is a configuration error naming the variable.
    missing = admin_env(url, HYBRIDRELAY_ADMIN_CA_FILE=str(tmp_path / "nope.pem"))
    r = await hybridrelay(missing, "admin", "hc", "list")
    assert r.code == 2
    assert "HYBRIDRELAY_ADMIN_CA_FILE" in r.err
    assert "nope.pem" in r.err
