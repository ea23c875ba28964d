"""Devices through the shipped CLI (issue 12): ``listen``, ``forward`` and ``token`` with
``--device-id`` and a device key, against a real relay process whose devices are created
through its management API. The CLI runs as a child process, the way a user types it.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tests.harness.processes import ProcessGroup, forwarded_port
from tests.harness.relay import ROOT_KEY, RelayProcess
from tests.harness.timing import seconds

from hybridrelay.cli import main
from hybridrelay.client import connect
from hybridrelay.client.admin import AdminClient
from hybridrelay.errors import HandshakeError

pytestmark = pytest.mark.e2e

ROOT = "RootManageSharedAccessKey"
ProcessFactory = Callable[..., Awaitable[RelayProcess]]
GW_KEY_ENV = "HYBRIDRELAY_TEST_GW_KEY"


async def _create_device(
    admin: AdminClient, device_id: str, *, listen: list[str], send: list[str]
) -> str:
    """Register a SAS device through the management API; return its generated primary key."""
    doc = await admin.create_device(
        device_id, {"authentication": {"type": "sas"}, "grants": {"listen": listen, "send": send}}
    )
    auth = doc["authentication"]
    assert isinstance(auth, dict)
    keys = auth["symmetricKey"]
    assert isinstance(keys, dict)
    key = keys["primaryKey"]
    assert isinstance(key, str)
    return key


async def _echo_through(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(seconds(15)):
            return await reader.read(-1)
    finally:
        writer.close()
        await writer.wait_closed()


class _FixedToken:
    """A TokenProvider handing out one token (what ``hybridrelay token`` printed)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def token_for(self, audience: str, now: float) -> str:
        return self.token


async def _token_from_cli(procs: ProcessGroup, *args: str, env: dict[str, str]) -> str:
    proc = await procs.start("token", *args, env=env, name="token")
    assert await proc.wait() == 0, proc.output()
    (line,) = proc.lines
    return line


async def test_device_listens_and_forwards_with_its_own_keys(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    relay = await relay_process_factory()
    async with AdminClient(relay.http_url, ROOT, ROOT_KEY) as admin:
        gw_key = await _create_device(admin, "gw-1", listen=["echo"], send=[])
        dev_key = await _create_device(admin, "dev-42", listen=[], send=["echo"])

        # The gateway reads its key from a file, the device from $HYBRIDRELAY_DEVICE_KEY.
        key_file = tmp_path / "gw-1.key"
        key_file.write_text(gw_key + "\n", "utf-8")
        host, port = echo_server
        listener = await procs.start(
            "listen", "--relay", relay.url, "--hc", "echo", "--target", f"tcp://{host}:{port}",
            "--device-id", "gw-1", "--device-key-file", str(key_file),
            name="listen",
        )  # fmt: skip
        await listener.wait_for_line(r"event=control_channel_open")
        forwarder = await procs.start(
            "forward", "--relay", relay.url, "--hc", "echo", "--local", "127.0.0.1:0",
            "--device-id", "dev-42",
            env={"HYBRIDRELAY_DEVICE_KEY": dev_key},
            name="forward",
        )  # fmt: skip
        local = await forwarded_port(forwarder)
        for proc in (listener, forwarder):
            assert gw_key not in " ".join(proc.args)
            assert dev_key not in " ".join(proc.args)

        payload = secrets.token_bytes(256 * 1024)
        assert await _echo_through(local, payload) == payload
        # The relay saw the device, not some rule: the gateway is connected as gw-1.
        gw = await admin.get_device("gw-1")
        assert gw["connectionState"] == "Connected"

        # `hybridrelay token --device-id` prints a token the relay takes for a Send connect.
        token = await _token_from_cli(
            procs,
            "--uri", relay.url, "--device-id", "dev-42", "--device-key-env", "DEV_KEY",
            env={"DEV_KEY": dev_key},
        )  # fmt: skip
        assert token.startswith("SharedAccessSignature sr=127.0.0.1%2Fdevices%2Fdev-42&sig=")
        assert "skn=" not in token
        async with connect(
            relay.url, "echo", token_provider=_FixedToken(token), stream_mode=True
        ) as stream:
            await stream.send(b"token-ok")
            async with asyncio.timeout(seconds(10)):
                assert await stream.read() == b"token-ok"

        # The gateway's key does not sign for dev-42: the relay refuses it (401).
        wrong = await _token_from_cli(
            procs,
            "--uri", relay.url, "--device-id", "dev-42", "--device-key-env", "DEV_KEY",
            env={"DEV_KEY": gw_key},
        )  # fmt: skip
        with pytest.raises(HandshakeError) as refused:
            async with connect(relay.url, "echo", token_provider=_FixedToken(wrong)):
                pass
        assert refused.value.status == 401


async def test_wrong_device_key_and_disabled_device_are_refused_with_the_reason(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    relay = await relay_process_factory()
    async with AdminClient(relay.http_url, ROOT, ROOT_KEY) as admin:
        gw_key = await _create_device(admin, "gw-1", listen=["echo"], send=["echo"])
        wrong_key = base64.b64encode(secrets.token_bytes(32)).decode()
        host, port = echo_server

        wrong = await procs.start(
            "listen", "--relay", relay.url, "--hc", "echo", "--target", f"tcp://{host}:{port}",
            "--device-id", "gw-1", "--device-key-env", GW_KEY_ENV,
            env={GW_KEY_ENV: wrong_key},
            name="listen-wrong-key",
        )  # fmt: skip
        # A wrong key is a configuration mistake: checked at start, exit 2, one line.
        assert await wrong.wait(20) == 2, wrong.output()
        (refused,) = [line for line in wrong.lines if line.startswith("hybridrelay:")]
        assert "--device-key: " in refused
        assert "HTTP 401" in refused
        assert "signature does not match the device" in refused

        # The right key, from an agent config this time.
        config = tmp_path / "agent.toml"
        config.write_text(
            f'relay = "{relay.url}"\n'
            f'[[mappings]]\nhc = "echo"\ntarget = "tcp://{host}:{port}"\n'
            f'device_id = "gw-1"\ndevice_key_env = "{GW_KEY_ENV}"\n',
            "utf-8",
        )
        listener = await procs.start(
            "listen", "--config", str(config), env={GW_KEY_ENV: gw_key}, name="listen-agent"
        )
        await listener.wait_for_line(r"event=control_channel_open")
        await admin.set_device_status("gw-1", "disabled", reason="lost")
        # Cut at once, then refused on reconnect, each time saying why.
        cut = await listener.wait_for_line(r"event=control_channel_closed")
        assert 'code=1008 reason="the device is disabled"' in cut.string
        again = await listener.wait_for_line(r"event=listen_refused", timeout=30)
        assert "status=401" in again.string
        assert "the device is disabled" in again.string


async def test_device_options_mixed_with_rule_options_exit_2_with_one_line(
    procs: ProcessGroup,
) -> None:
    proc = await procs.start(
        "forward", "--relay", "ws://127.0.0.1:9", "--hc", "echo",
        "--key-name", ROOT, "--key-env", "HYBRIDRELAY_KEY", "--device-id", "dev-42",
        key=ROOT_KEY,
        name="forward-mixed",
    )  # fmt: skip
    assert await proc.wait() == 2
    (line,) = proc.lines
    assert line == (
        "hybridrelay: config error: <command line>: --key-name: cannot be combined with"
        " --device-id (a device signs with its own key; give --key-name and a key,"
        " or --device-id and a device key)"
    )


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (
            [
                "listen",
                "--relay",
                "ws://127.0.0.1:9",
                "--hc",
                "h",
                "--target",
                "tcp://127.0.0.1:9",
                "--device-key-env",
                "K",
            ],
            {"K": base64.b64encode(b"k" * 32).decode()},
            "--device-key-env: needs --device-id",
        ),
        (
            ["forward", "--relay", "ws://127.0.0.1:9", "--hc", "h", "--device-id", "d"],
            {},
            "HYBRIDRELAY_DEVICE_KEY: is not set (give --device-key-env VAR,",
        ),
        (
            ["token", "--uri", "ws://127.0.0.1:9", "--device-id", "d", "--device-key", "n0t_b64"],
            {},
            "--device-key: a device key must be base64",
        ),
        (
            ["token", "--uri", "ws://127.0.0.1:9", "--device-id", "a/b", "--device-key-env", "K"],
            {"K": base64.b64encode(b"k" * 32).decode()},
            "--device-id: '/' is not allowed",
        ),
        (
            ["listen", "--relay", "ws://127.0.0.1:9", "--hc", "h", "--target", "tcp://127.0.0.1:9"],
            {},
            "--key-name: is required (or --device-id for a device)",
        ),
    ],
    ids=["key-without-id", "no-key", "key-not-base64", "bad-id", "neither"],
)
def test_device_option_errors_name_the_option(
    argv: list[str],
    env: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("HYBRIDRELAY_DEVICE_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert err.count("\n") == 1


def test_a_bad_device_key_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.key"
    empty.write_text("\n", "utf-8")
    text = tmp_path / "rule.key"
    text.write_text("root-key-0123456789abcdef0123456789\n", "utf-8")
    base = ["token", "--uri", "ws://127.0.0.1:9", "--device-id", "d", "--device-key-file"]
    for path, reason in (
        (empty, "the device key is empty"),
        (text, "a device key must be base64"),
        (tmp_path / "missing.key", "cannot read device key file"),
    ):
        assert main([*base, str(path)]) == 2
        assert f"config error: {path}: {reason}" in capsys.readouterr().err
