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
import sqlite3
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.harness.processes import CliProcess, ProcessGroup
from tests.harness.relay import ROOT_KEY, InProcessRelay, load, write_config
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles, make_tls_files

from hybridrelay.client import connect
from hybridrelay.client.admin import AdminApiError, AdminClient
from hybridrelay.errors import HandshakeError
from hybridrelay.listener import Listener
from hybridrelay.listener.targets import TcpTarget
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection

pytestmark = pytest.mark.e2e

ROOT = "RootManageSharedAccessKey"
_READY = r"relay ready at (?P<url>\S+)"


async def start_relay(
    procs: ProcessGroup, config: Path, *, name: str = "relay"
) -> tuple[CliProcess, str]:
    proc = await procs.start("relay", "serve", "--config", str(config), name=name)
    url = (await proc.wait_for_line(_READY, timeout=20)).group("url")
    return proc, url


@contextlib.asynccontextmanager
async def listening(
    url: str,
    hc: str,
    target: tuple[str, int],
    ssl_context: ssl.SSLContext | None = None,
    *,
    key_name: str = ROOT,
    key: str = ROOT_KEY,
) -> AsyncIterator[Listener]:
    """A library listener on ``hc`` bridging to the echo server, online when entered."""
    listener = Listener(
        url,
        hc,
        token_provider=SasTokenProvider(key_name, key),
        target=TcpTarget(target[0], target[1]),
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


# -- the admin CLI and one-shot commands ------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str]:
    """``python -m hybridrelay ARGS`` to completion: its exit code and combined output."""
    async with CliProcess(args) as proc:
        code = await proc.wait(timeout=30)
        return code, proc.output()


def admin(url: str) -> AdminClient:
    """The management API with the root rule (the admin CLI's own client; the CLI itself is
    tested in test_admin_cli.py, and a child process per call would cost seconds here)."""
    return AdminClient(url.replace("ws://", "http://"), ROOT, ROOT_KEY)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- backup and restore of the SQLite store --------------------------------------------------


async def test_backup_while_serving_then_restore_into_a_new_relay(
    echo_server: tuple[str, int], tmp_path: Path
) -> None:
    """The relay runs in this process (``relay backup`` is the child here)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config_a = write_config(tmp_path / "a")
    relay_a = await InProcessRelay(load(config_a)).start()
    url = relay_a.url
    async with admin(url) as api:
        await api.put_hybrid_connection("backed-up")
        rule = await api.put_rule("agent", ["Listen", "Send"], "backed-up")
        await api.create_device("sensor-1", {"grants": {"send": ["backed-up"]}})
    backup = tmp_path / "backups" / "relay.sqlite3"
    backup.parent.mkdir()
    async with (
        listening(url, "hc-ws", echo_server),
        connect(url, "hc-ws", key_name=ROOT, key=ROOT_KEY) as stream,
    ):
        await roundtrip(stream, b"before")
        code, out = await run_cli("relay", "backup", "--config", str(config_a), str(backup))
        assert code == 0, out
        assert f"backup written: {backup}" in out
        assert "1 devices" in out
        await roundtrip(stream, b"after the backup")  # the relay never paused
    assert backup.stat().st_mode & 0o777 == 0o600  # it holds every key
    assert not backup.with_name(backup.name + "-wal").exists()  # one self-contained file
    async with admin(url) as api:
        await api.put_hybrid_connection("after-backup")  # not in the backup
    await relay_a.stop()

    # Restore: the backup becomes the store file of a relay that is not running.
    config_b = write_config(tmp_path / "b")
    data_b = tmp_path / "b" / "data"
    data_b.mkdir(mode=0o700)
    shutil.copyfile(backup, data_b / "hybridrelay.sqlite3")
    relay_b = await InProcessRelay(load(config_b)).start()
    url_b = relay_b.url
    async with admin(url_b) as api:
        assert (await api.get_hybrid_connection("backed-up"))["name"] == "backed-up"
        restored = await api.get_rule("agent", "backed-up")
        assert restored["primaryKey"] == rule["primaryKey"]
        assert (await api.get_device("sensor-1"))["grants"]["send"] == ["backed-up"]
        with pytest.raises(AdminApiError) as missing:
            await api.get_hybrid_connection("after-backup")
        assert missing.value.status == 404
    # The restored rule's key works on the restored relay.
    async with (
        listening(url_b, "backed-up", echo_server, key_name="agent", key=rule["primaryKey"]),
        connect(url_b, "backed-up", key_name=ROOT, key=ROOT_KEY) as stream,
    ):
        await roundtrip(stream, b"restored")
    await relay_b.stop()


async def test_backup_of_a_relay_without_a_store_says_where_it_looked(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    code, out = await run_cli("relay", "backup", "--config", str(config), str(tmp_path / "b.db"))
    assert code == 2
    assert "no store here" in out
    assert str(tmp_path / "data" / "hybridrelay.sqlite3") in out
    assert "Traceback" not in out
    assert not (tmp_path / "data").exists()  # nothing was created


# -- upgrade and rollback across store migrations -------------------------------------------


async def test_an_older_relay_refuses_a_newer_store_untouched_and_the_backup_rolls_back(
    tmp_path: Path,
) -> None:
    """``relay backup`` and the refusing ``relay serve`` are children; the relays that
    serve run in this process."""
    config = write_config(tmp_path)
    relay = await InProcessRelay(load(config)).start()
    async with admin(relay.url) as api:
        await api.put_hybrid_connection("kept")
    # Step 1 of an upgrade: the backup, taken before the new version first starts.
    backup = tmp_path / "before-upgrade.sqlite3"
    code, out = await run_cli("relay", "backup", "--config", str(config), str(backup))
    assert code == 0, out
    version = int(out.split("store schema version ", 1)[1].split(";", 1)[0])
    await relay.stop()

    # What a newer relay leaves behind: its migration ran, the version went up.
    store = tmp_path / "data" / "hybridrelay.sqlite3"
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        db.execute("CREATE TABLE from_the_future (x INTEGER)")
        db.execute("UPDATE schema_version SET version = ?", (version + 1,))
    before = _sha256_file(store)

    # This (older) relay refuses it: exit 2, one line naming the file and both versions.
    code, out = await run_cli("relay", "serve", "--config", str(config))
    assert code == 2, out
    assert f"store schema version {version + 1} is newer than this relay" in out
    assert f"it knows up to {version}" in out
    assert str(store) in out
    assert "Traceback" not in out
    assert _sha256_file(store) == before  # not migrated, not rewritten

    # Rollback: the pre-upgrade backup replaces the store; the old relay serves it.
    for leftover in store.parent.glob("hybridrelay.sqlite3*"):
        leftover.unlink()
    shutil.copyfile(backup, store)
    relay = await InProcessRelay(load(config)).start()
    async with admin(relay.url) as api:
        assert (await api.get_hybrid_connection("kept"))["name"] == "kept"
    await relay.stop()


# -- key rotation with the secondary key -----------------------------------------------------


async def test_key_rotation_with_the_secondary_key_keeps_the_agent_online(
    procs: ProcessGroup, echo_server: tuple[str, int], tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    _, url = await start_relay(procs, config)
    async with admin(url) as api:
        await api.put_hybrid_connection("rotated")
        rule = await api.put_rule("agent", ["Listen", "Send"], "rotated")
    old_key = rule["primaryKey"]
    key_file = tmp_path / "agent.key"
    key_file.write_text(old_key + "\n", "utf-8")
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text(
        f'relays = ["{url}"]\nagent_id = "rot"\nstatus = "127.0.0.1:0"\n'
        "[[mappings]]\n"
        'hc = "rotated"\n'
        f'target = "tcp://{echo_server[0]}:{echo_server[1]}"\n'
        'key_name = "agent"\n'
        'key_file = "agent.key"\n',
        "utf-8",
    )
    agent = await procs.start("listen", "--config", str(agent_toml), name="agent")
    await agent.wait_for_line(r"agent ready: 1 mappings \(1 online")

    async def echo_through_agent(payload: bytes) -> None:
        async with connect(url, "rotated", key_name=ROOT, key=ROOT_KEY) as stream:
            await roundtrip(stream, payload)

    async with connect(url, "rotated", key_name=ROOT, key=ROOT_KEY) as long_lived:
        await roundtrip(long_lived, b"before")
        # 1. A new secondary key (the old primary still works everywhere).
        async with admin(url) as api:
            rule = await api.regenerate_key("agent", "secondary", "rotated")
        new_key = rule["secondaryKey"]
        assert rule["primaryKey"] == old_key
        # 2. Roll the agent to it: the file, then SIGHUP (no restart, no reconnect).
        key_file.write_text(new_key + "\n", "utf-8")
        agent.send_signal(signal.SIGHUP)
        await agent.wait_for_line(r"event=config_reloaded .*rekeyed=1")
        await agent.wait_for_line(r"event=token_renewed")  # the relay took the new key
        # 3. Revoke the old key: regenerate the primary.
        async with admin(url) as api:
            rule = await api.regenerate_key("agent", "primary", "rotated")
        assert old_key not in (rule["primaryKey"], rule["secondaryKey"])
        await roundtrip(long_lived, b"after the rotation")
    await echo_through_agent(b"new stream")
    assert "listener_disconnected" not in agent.output()
    # The old key is refused.
    with pytest.raises(HandshakeError) as refused:
        async with connect(url, "rotated", key_name="agent", key=old_key):
            pass
    assert refused.value.status == 401
    async with connect(url, "rotated", key_name="agent", key=new_key) as stream:
        await roundtrip(stream, b"with the new key")
