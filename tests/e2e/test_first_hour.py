"""The README quickstart as a user types it, with a relay restart in the middle, and the
configuration mistakes that must fail at start (exit 2, one line) instead of at the first
client or never.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
from pathlib import Path

import pytest
from tests.harness.processes import (
    CliProcess,
    ProcessGroup,
    forward_args,
    forwarded_port,
    listen_args,
)
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

pytestmark = pytest.mark.e2e

ROOT = "RootManageSharedAccessKey"
DEV_LINE = r"development mode: rule (?P<rule>\S+) key (?P<key>\S+) \(kept in (?P<path>[^)]+)\)"
READY_LINE = r"relay ready at (?P<url>ws://\S+)"
# Each listener control channel that opens: the first one, and the one after the restart.
CHANNEL_OPEN = r"event=control_channel_open"


async def _echo_through(port: int, payload: bytes) -> bytes:
    """What a local client gets back through the forwarder (the target echoes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(seconds(10)):
            return await reader.readexactly(len(payload))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _serve_dev_relay(procs: ProcessGroup, cwd: Path, port: int) -> tuple[CliProcess, str]:
    """``hybridrelay relay serve`` as in the README (development default, data in cwd)."""
    relay = await procs.start("relay", "serve", "--port", str(port), cwd=cwd, name="relay")
    key = (await relay.wait_for_line(DEV_LINE, 20)).group("key")
    await relay.wait_for_line(READY_LINE, 20)
    return relay, key


async def test_quickstart_survives_a_relay_restart(
    procs: ProcessGroup, tmp_path: Path, echo_server: tuple[str, int]
) -> None:
    # 1. the relay, its key into the environment
    relay = await procs.start("relay", "serve", "--port", "0", cwd=tmp_path, name="relay")
    dev = await relay.wait_for_line(DEV_LINE, 20)
    url = (await relay.wait_for_line(READY_LINE, 20)).group("url")
    key = dev.group("key")
    assert (tmp_path / dev.group("path")).stat().st_mode & 0o777 == 0o600
    # 2. the listener agent next to the target, from flags
    host, target_port = echo_server
    agent = await procs.start(
        *listen_args(url, "mqtt", f"tcp://{host}:{target_port}", key_name=ROOT),
        key=key,
        cwd=tmp_path,
        name="listen",
    )
    await agent.wait_for_line(CHANNEL_OPEN, 20)
    # 3. the forwarder next to the device
    forwarder = await procs.start(
        *forward_args(url, "mqtt", key_name=ROOT), key=key, cwd=tmp_path, name="forward"
    )
    local = await forwarded_port(forwarder, 20)
    # 4. a client reaches the target through the relay
    assert await _echo_through(local, b"before the restart") == b"before the restart"

    # The relay restarts: SIGTERM, then the same command on the same port and directory.
    assert await relay.stop() == 0
    port = int(url.rsplit(":", 1)[1])
    again = await procs.start("relay", "serve", "--port", str(port), cwd=tmp_path, name="relay#2")
    assert (await again.wait_for_line(DEV_LINE, 20)).group("key") == key
    await again.wait_for_line(READY_LINE, 20)

    # The agent is back on the same key (no 401), and says how long the relay was away.
    back = await agent.wait_for_line(r"event=relay_reachable_again .*down_s=\S+ attempts=(\d+)", 20)
    await agent.wait_for_line(CHANNEL_OPEN)
    assert "listen_refused" not in agent.output()
    # One warning for the outage, however many attempts it took.
    warnings = [line for line in agent.lines if "level=warning" in line]
    assert len([w for w in warnings if "event=relay_unreachable" in w]) <= 1, warnings
    assert int(back.group(1)) >= 1
    # Bytes flow again through the forwarder that kept running.
    assert await _echo_through(local, b"after the restart") == b"after the restart"
    assert forwarder.returncode is None


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["forward", "listen"])
async def test_an_http_url_fails_at_start_with_did_you_mean(
    procs: ProcessGroup, command: str
) -> None:
    args = (
        forward_args("https://relay.example.com", "mqtt", key_name=ROOT)
        if command == "forward"
        else listen_args("https://relay.example.com", "mqtt", "tcp://127.0.0.1:1", key_name=ROOT)
    )
    proc = await procs.start(*args, key="any-key-0123456789", name=command)
    assert await proc.wait(20) == 2
    assert proc.lines == [
        "hybridrelay: config error: <command line>: --relay: relay URL must be ws:// or wss://,"
        " not https:// (did you mean wss://relay.example.com?)"
    ]


async def test_a_wrong_key_or_name_fails_at_start(
    procs: ProcessGroup, relay: InProcessRelay
) -> None:
    wrong_key = "wrong-" + secrets.token_urlsafe(24)
    cases = [
        (forward_args(relay.url, "echo", key_name=ROOT), wrong_key, "--key-name", "HTTP 401"),
        (forward_args(relay.url, "no-such-hc", key_name=ROOT), ROOT_KEY, "--hc", "no-such-hc"),
        (
            listen_args(relay.url, "echo", "tcp://127.0.0.1:1", key_name=ROOT),
            wrong_key,
            "--key-name",
            "signature",
        ),
    ]
    for args, key, flag, words in cases:
        proc = await procs.start(*args, key=key, name=args[0])
        assert await proc.wait(20) == 2, proc.output()
        (line,) = [line for line in proc.lines if line.startswith("hybridrelay:")]
        assert re.match(rf"hybridrelay: config error: <command line>: {flag}: ", line), line
        assert words in line, line
        assert not any("forwarding" in line for line in proc.lines)


async def test_a_relay_that_is_down_at_start_is_retried_not_refused(
    procs: ProcessGroup,
) -> None:
    forwarder = await procs.start(
        *forward_args(f"ws://127.0.0.1:{_dead_port()}", "mqtt", key_name=ROOT),
        key=ROOT_KEY,
        name="forward",
    )
    await forwarder.wait_for_line(r"level=warning .*event=relay_not_reachable_at_start", 20)
    await forwarded_port(forwarder, 20)  # serving anyway: the relay may come back
    assert forwarder.returncode is None


async def test_forward_config_names_the_binding_that_is_wrong(
    procs: ProcessGroup, relay: InProcessRelay, tmp_path: Path
) -> None:
    config = tmp_path / "forward.toml"
    config.write_text(
        f'relay = "{relay.url}"\n'
        f'[[bindings]]\nlocal = "127.0.0.1:0"\nhc = "echo"\nkey_name = "{ROOT}"\n'
        'key_env = "HYBRIDRELAY_KEY"\n'
        f'[[bindings]]\nlocal = "127.0.0.1:0"\nhc = "no-such-hc"\nkey_name = "{ROOT}"\n'
        'key_env = "HYBRIDRELAY_KEY"\n',
        "utf-8",
    )
    proc = await procs.start("forward", "--config", str(config), key=ROOT_KEY, name="forward")
    assert await proc.wait(20) == 2, proc.output()
    (line,) = [line for line in proc.lines if line.startswith("hybridrelay:")]
    assert line.startswith(f"hybridrelay: config error: {config}: bindings[1].hc: "), line
    assert "'no-such-hc'" in line
