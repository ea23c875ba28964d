"""What the ``hybridrelay`` command prints, run the way a user types it (a child process):
``--version``, ``--help``, ``token --ttl`` with durations and its refusals, and the relay's
one ready line on stdout while its logs stay on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from urllib.parse import parse_qs

import aiohttp
import pytest
from tests.harness.timing import seconds

pytestmark = pytest.mark.e2e


def _env(**extra: str) -> dict[str, str]:
    # The developer's own HYBRIDRELAY_* settings must not leak in (the timeout factor may).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HYBRIDRELAY_") or k.startswith("HYBRIDRELAY_TEST_")
    }
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybridrelay", *args],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=seconds(30),
        check=False,
    )


def test_version_prints_the_installed_version() -> None:
    done = _cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"hybridrelay {version('hybridrelay')}\n"


def test_help_describes_commands_and_environment_without_markup() -> None:
    done = _cli("--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "``" not in text
    assert text.count("Hybrid Connections protocol") == 1
    for command in ("relay", "listen", "forward", "token", "admin"):
        assert re.search(rf"^    {command} +\S", text, re.MULTILINE), command
    assert "environment variables" in text
    assert re.search(r"^  HYBRIDRELAY_ADMIN_KEY +admin: ", text, re.MULTILINE)
    assert "--version" in text


def _token_expiry(stdout: str) -> int:
    token = stdout.strip().removeprefix("SharedAccessSignature ")
    return int(parse_qs(token)["se"][0])


def test_token_ttl_takes_a_duration() -> None:
    # One child process: tests/unit/test_durations.py covers the other forms.
    before = int(time.time())
    done = _cli(
        "token", "--uri", "http://relay.example/hc", "--key-name", "send", "--key-env", "K",
        "--ttl", "1h", K="k3y_-example",
    )  # fmt: skip
    after = int(time.time()) + 1
    assert done.returncode == 0, done.stderr
    assert before + 3600 <= _token_expiry(done.stdout) <= after + 3600


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        ("0", "argument --ttl: '0': must be more than 0 seconds"),
        ("soon", "argument --ttl: 'soon' is not a duration (use 30s, 30m, 1h, 1d"),
    ],
)
def test_token_ttl_refuses_zero_and_junk_with_a_usage_error(ttl: str, message: str) -> None:
    done = _cli(
        "token", "--uri", "http://relay.example/hc", "--key-name", "send", "--key-env", "K",
        "--ttl", ttl, K="k3y",
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr
    assert "Traceback" not in done.stderr


async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode("utf-8", "replace").rstrip("\n"))


async def test_relay_prints_one_ready_line_on_stdout_and_logs_on_stderr(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hybridrelay", "relay", "serve", "--port", "0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(HYBRIDRELAY_DATA_DIR=str(tmp_path / "data")),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    stderr: list[str] = []
    stderr_reader = asyncio.create_task(_drain(proc.stderr, stderr))
    try:
        async with asyncio.timeout(seconds(20)):
            line = (await proc.stdout.readline()).decode().rstrip("\n")
        match = re.fullmatch(
            r"hybridrelay relay ready at (?P<url>ws://127\.0\.0\.1:\d+)"
            r" \(dashboard: (?P<dashboard>http://127\.0\.0\.1:\d+/\$dashboard/)\)",
            line,
        )
        assert match, (line, stderr)
        http = match["url"].replace("ws://", "http://")
        async with aiohttp.ClientSession() as session:
            async with session.get(http + "/readyz") as resp:
                assert resp.status == 200
            # The dashboard is at the link, on a loopback port of its own, not the public one.
            assert match["dashboard"] != http + "/$dashboard/"
            async with session.get(match["dashboard"]) as resp:
                assert resp.status == 200
            async with session.get(http + "/$dashboard/") as resp:
                assert resp.status == 404
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(seconds(20)):
            rest = await proc.stdout.read()
            code = await proc.wait()
            await stderr_reader
    assert code == 0, stderr
    assert rest == b""  # nothing else on stdout, before or after
    assert any("event=relay_started" in entry for entry in stderr), stderr
    assert not any("relay ready" in entry for entry in stderr), stderr
