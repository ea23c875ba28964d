"""The operator's runbook (docs/operations.md), each step run the way an operator runs it:
the relay, the agent and the admin CLI as child processes.

- TLS certificate renewal: SIGHUP, and a change of the files on disk, make new
  connections get the new certificate while an open relayed stream keeps flowing; a
  bad renewal keeps the old certificate and says so in one line.
- Key rotation with the secondary key: regenerate it, move the agent to it with SIGHUP,
  regenerate the primary (revoking the old key); the agent never drops its channel.
- Backup of the SQLite store while the relay serves, restored into a new relay.
- Upgrade and rollback: a relay refuses a store whose schema is newer than it knows,
  without touching the file; restoring the pre-upgrade backup is the way back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.harness.processes import CliProcess, ProcessGroup
from tests.harness.relay import ROOT_KEY, write_config
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles, make_tls_files

from hybridrelay.client import connect
from hybridrelay.listener import Listener, parse_target
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection

pytestmark = pytest.mark.e2e

ROOT = "RootManageSharedAccessKey"
_READY = r"relay ready at (?P<url>\S+)"


@pytest.fixture
async def procs(request: pytest.FixtureRequest) -> AsyncIterator[ProcessGroup]:
    group = ProcessGroup()
    try:
        yield group
    finally:
        await group.close()
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            print(group.log())  # noqa: T201 - child logs, shown only for a failed test


async def start_relay(
    procs: ProcessGroup, config: Path, *, name: str = "relay"
) -> tuple[CliProcess, str]:
    proc = await procs.start("relay", "serve", "--config", str(config), name=name)
    url = (await proc.wait_for_line(_READY, timeout=20)).group("url")
    return proc, url


@contextlib.asynccontextmanager
async def listening(
    url: str, hc: str, target: tuple[str, int], ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Listener]:
    """A library listener on ``hc`` bridging to the echo server, online when entered."""
    listener = Listener(
        url,
        hc,
        token_provider=SasTokenProvider(ROOT, ROOT_KEY),
        target=parse_target(f"tcp://{target[0]}:{target[1]}"),
        ssl_context=ssl_context,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        async with asyncio.timeout(seconds(10)):
            await listener.connected.wait()
        yield listener
    finally:
        stop.set()
        async with asyncio.timeout(seconds(15)):
            await task


async def roundtrip(stream: WsConnection, payload: bytes) -> None:
    await stream.send(payload)
    received = b""
    async with asyncio.timeout(seconds(10)):
        while len(received) < len(payload):
            message = await stream.recv()
            assert isinstance(message, bytes)
            received += message
    assert received == payload


def _sha256_of(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text("ascii"))).hexdigest()


async def served_sha256(url: str, client: ssl.SSLContext) -> str:
    """The SHA-256 of the certificate a new TLS connection to the relay is served."""
    host, port = url.removeprefix("wss://").rsplit(":", 1)
    async with asyncio.timeout(seconds(10)):
        _, writer = await asyncio.open_connection(
            host, int(port), ssl=client, server_hostname="localhost"
        )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()
    return hashlib.sha256(der).hexdigest()


def _renewal(tmp_path: Path) -> tuple[TlsFiles, TlsFiles, ssl.SSLContext]:
    """The certificate in use, its renewal (another CA: any new serial and key will do),
    and a client trusting both."""
    (tmp_path / "tls").mkdir()
    (tmp_path / "renewed").mkdir()
    live, renewed = make_tls_files(tmp_path / "tls"), make_tls_files(tmp_path / "renewed")
    client = ssl.create_default_context(cafile=str(live.ca_cert))
    client.load_verify_locations(cafile=str(renewed.ca_cert))
    return live, renewed, client


# -- TLS certificate renewal ----------------------------------------------------------------


async def test_sighup_renews_the_certificate_and_the_open_stream_keeps_flowing(
    procs: ProcessGroup, echo_server: tuple[str, int], tmp_path: Path
) -> None:
    live, renewed, client = _renewal(tmp_path)
    config = write_config(
        tmp_path, tls=(live.cert, live.key), relay_extra="tls_reload_interval = 0"
    )
    relay, url = await start_relay(procs, config)
    assert url.startswith("wss://")
    old_sha = _sha256_of(live.cert)
    assert await served_sha256(url, client) == old_sha
    async with (
        listening(url, "hc-ws", echo_server, client),
        connect(url, "hc-ws", key_name=ROOT, key=ROOT_KEY, ssl_context=client) as stream,
    ):
        await roundtrip(stream, b"before")

        # A half-done renewal (the new certificate, the old key): refused, old one kept.
        shutil.copyfile(renewed.cert, live.cert)
        relay.send_signal(signal.SIGHUP)
        failed = await relay.wait_for_line(r"event=tls_reload_failed .*")
        assert "Traceback" not in relay.output()
        assert "cause=signal" in failed.group(0)
        assert await served_sha256(url, client) == old_sha

        shutil.copyfile(renewed.key, live.key)
        relay.send_signal(signal.SIGHUP)
        line = await relay.wait_for_line(r"event=tls_reloaded .*cause=signal.*")
        renewed_sha = _sha256_of(renewed.cert)
        assert f"sha256={renewed_sha}" in line.group(0)
        assert await served_sha256(url, client) == renewed_sha
        await roundtrip(stream, b"after the renewal")  # the stream opened before it


async def test_a_renewed_certificate_file_is_picked_up_without_a_signal(
    procs: ProcessGroup, echo_server: tuple[str, int], tmp_path: Path
) -> None:
    live, renewed, client = _renewal(tmp_path)
    config = write_config(
        tmp_path, tls=(live.cert, live.key), relay_extra="tls_reload_interval = 0.1"
    )
    relay, url = await start_relay(procs, config)
    async with (
        listening(url, "hc-ws", echo_server, client),
        connect(url, "hc-ws", key_name=ROOT, key=ROOT_KEY, ssl_context=client) as stream,
    ):
        await roundtrip(stream, b"before")
        # What certbot or cert-manager does: new files renamed over the old ones.
        shutil.copyfile(renewed.cert, tmp_path / "tls" / "cert.pem.new")
        shutil.copyfile(renewed.key, tmp_path / "tls" / "key.pem.new")
        (tmp_path / "tls" / "key.pem.new").replace(live.key)
        (tmp_path / "tls" / "cert.pem.new").replace(live.cert)
        await relay.wait_for_line(r"event=tls_reloaded .*cause=file_change")
        assert await served_sha256(url, client) == _sha256_of(renewed.cert)
        await roundtrip(stream, b"after the renewal")
    assert "tls_reload_failed" not in relay.output()
