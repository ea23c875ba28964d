"""CertificateReloader on a real TLS server socket: which certificate and which client CAs
new handshakes get after a reload, and that a bad renewal changes nothing.

The relay as a process (SIGHUP, a file change, an open relayed stream) is in
tests/e2e/test_operations.py; here the context swap itself is checked, mTLS included.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.harness.device_certs import make_device_ca, make_device_cert
from tests.harness.tls import TlsFiles, make_tls_files

from hybridrelay.relay.ca_trust import attach
from hybridrelay.relay.config import RelaySettings
from hybridrelay.relay.metrics import RelayMetrics
from hybridrelay.relay.serve import tls_context
from hybridrelay.relay.store.certificates import thumbprint
from hybridrelay.relay.tls_reload import CertificateReloader


def _build(s: RelaySettings) -> ssl.SSLContext:
    assert s.tls_cert is not None
    assert s.tls_key is not None
    return tls_context(
        s.tls_cert, s.tls_key, client_cert=s.client_cert, client_ca_file=s.client_ca_file
    )


def _sha256_of(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text("ascii"))).hexdigest()


@contextlib.asynccontextmanager
async def _server(context: ssl.SSLContext) -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _handshake(port: int, client: ssl.SSLContext) -> str:
    """The SHA-256 of the certificate a new connection is served (raises if refused)."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
        try:
            # TLS 1.3 refuses a client certificate after the handshake: a round trip shows it.
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            return hashlib.sha256(der).hexdigest()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()


def _install(new: TlsFiles, old: TlsFiles) -> None:
    shutil.copyfile(new.cert, old.cert)
    shutil.copyfile(new.key, old.key)


def _client(*cas: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for ca in cas:
        ctx.load_verify_locations(cafile=str(ca))
    return ctx


async def test_a_reload_serves_the_new_certificate_and_a_bad_one_keeps_the_old(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    live_files, renewed = make_tls_files(tmp_path / "a"), make_tls_files(tmp_path / "b")
    old_sha = _sha256_of(live_files.cert)
    settings = RelaySettings(tls_cert=str(live_files.cert), tls_key=str(live_files.key))
    live = _build(settings)
    metrics = RelayMetrics()
    reloader = CertificateReloader(settings, live, build=_build, counter=metrics.tls_reloads)
    client = _client(live_files.ca_cert, renewed.ca_cert)
    async with _server(live) as port:
        assert await _handshake(port, client) == old_sha
        # Half a renewal: the new certificate with the old key does not load.
        shutil.copyfile(renewed.cert, live_files.cert)
        assert not reloader.reload("signal")
        failures = [r for r in caplog.records if r.getMessage() == "tls_reload_failed"]
        assert len(failures) == 1
        assert failures[0].exc_info is None  # one line, no traceback
        assert await _handshake(port, client) == old_sha
        # The whole renewal.
        _install(renewed, live_files)
        assert reloader.reload("signal")
        assert await _handshake(port, client) == _sha256_of(renewed.cert)
    assert metrics.tls_reloads.labels("ok").value == 1
    assert metrics.tls_reloads.labels("failed").value == 1


async def test_polling_waits_for_the_files_to_settle_and_tries_a_bad_set_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    live_files, renewed = make_tls_files(tmp_path / "a"), make_tls_files(tmp_path / "b")
    settings = RelaySettings(tls_cert=str(live_files.cert), tls_key=str(live_files.key))
    live = _build(settings)
    reloader = CertificateReloader(settings, live, build=_build)
    assert not reloader.poll()  # nothing changed
    shutil.copyfile(renewed.cert, live_files.cert)  # the certificate is written first...
    assert not reloader.poll()  # ...seen once: not loaded yet
    shutil.copyfile(renewed.key, live_files.key)  # ...then the key
    assert not reloader.poll()  # changed again: still settling
    assert reloader.poll()  # held still for one poll: loaded
    assert reloader.current is not live
    assert not reloader.poll()
    # A bad set is tried once, then left alone until it changes.
    live_files.key.write_text("not a key\n", "ascii")
    assert not reloader.poll()
    assert not reloader.poll()
    assert not reloader.poll()
    assert not reloader.poll()
    failures = [r for r in caplog.records if r.getMessage() == "tls_reload_failed"]
    assert len(failures) == 1


async def test_a_reload_follows_a_new_client_ca_file(tmp_path: Path) -> None:
    """mTLS: devices of a CA added to client_ca_file pass; those of a removed CA fail."""
    server_files = make_tls_files(tmp_path)
    old_ca, new_ca = make_device_ca(tmp_path, "old CA"), make_device_ca(tmp_path, "new CA")
    old_device = make_device_cert(tmp_path, "dev-old", ca=old_ca)
    new_device = make_device_cert(tmp_path, "dev-new", ca=new_ca)
    bundle = tmp_path / "device-cas.pem"
    shutil.copyfile(old_ca.pem, bundle)
    settings = RelaySettings(
        tls_cert=str(server_files.cert),
        tls_key=str(server_files.key),
        client_cert="required",
        client_ca_file=str(bundle),
    )
    live = _build(settings)
    reloader = CertificateReloader(settings, live, build=_build)
    async with _server(live) as port:
        await _handshake(port, old_device.client_context(server_files.ca_cert))
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await _handshake(port, new_device.client_context(server_files.ca_cert))
        shutil.copyfile(new_ca.pem, bundle)
        assert reloader.reload("signal")
        await _handshake(port, new_device.client_context(server_files.ca_cert))
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await _handshake(port, old_device.client_context(server_files.ca_cert))


async def test_cas_trusted_at_run_time_stay_trusted_after_a_reload(tmp_path: Path) -> None:
    """A CA registered through the management API (ca_trust.CaTrust) joins the new context."""
    server_files = make_tls_files(tmp_path)
    config_ca, runtime_ca = make_device_ca(tmp_path, "config CA"), make_device_ca(tmp_path, "rt CA")
    device = make_device_cert(tmp_path, "dev-rt", ca=runtime_ca)
    settings = RelaySettings(
        tls_cert=str(server_files.cert),
        tls_key=str(server_files.key),
        client_cert="required",
        client_ca_file=str(config_ca.pem),
    )
    live = _build(settings)
    trust = attach(live, settings.client_ca_file)
    # What CaTrust.trust does for a verified CA record of the store.
    live.load_verify_locations(cadata=runtime_ca.pem.read_text("ascii"))
    trust.loaded[thumbprint(runtime_ca.cert)] = runtime_ca.cert
    reloader = CertificateReloader(
        settings,
        live,
        build=_build,
        on_context=functools.partial(trust.rebind, client_ca_file=settings.client_ca_file),
    )
    async with _server(live) as port:
        await _handshake(port, device.client_context(server_files.ca_cert))
        assert reloader.reload("signal")
        assert trust.follows(reloader.current)
        assert trust.follows(live)  # connections made before the reload still count
        assert trust.context is reloader.current
        await _handshake(port, device.client_context(server_files.ca_cert))
