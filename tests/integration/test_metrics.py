"""The relay's ``/metrics`` (issue 12): per-hybrid-connection series with a cap on their
number, ``hybridrelay_build_info`` and the TLS certificates' expiry.

Every exposition is fetched over a real socket and read by prometheus_client's own text
parser (``tests.harness.metrics.scrape``), which refuses anything malformed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import platform
import socket
import ssl
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import generate_latest
from tests.conftest import RelayFactory
from tests.harness.http_peers import HttpListener
from tests.harness.metrics import Samples, parse_exposition, sample, scrape
from tests.harness.peers import RawListener, send
from tests.harness.redis import RedisServer, unique_prefix
from tests.harness.relay import ROOT_KEY, InProcessRelay, write_config
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles

from hybridrelay.errors import ConfigError, HandshakeError
from hybridrelay.relay.config import load_relay_config
from hybridrelay.relay.metrics import HC_OTHER, RelayMetrics
from hybridrelay.relay.tls_expiry import observe_certificates


async def _until(relay: InProcessRelay, done: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``done`` holds (streams are counted when their splice finishes)."""
    async with asyncio.timeout(seconds(10)):
        while True:
            samples = await scrape(relay.http_url)
            if done(samples):
                return samples
            await asyncio.sleep(0.02)  # polling the endpoint, not synchronisation by delay


def _hc_values(samples: Samples) -> set[str]:
    return {value for (_, labels) in samples for (name, value) in labels if name == "hc"}


async def _refused(relay: InProcessRelay, hc: str, *, key: str = ROOT_KEY) -> int:
    with pytest.raises(HandshakeError) as info:
        await send(relay.url, hc, key=key)
    return info.value.status


async def test_streams_listeners_and_refusals_are_counted_per_hybrid_connection(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory()
    listener = await RawListener(relay.url, "echo").start()
    try:
        ws = await send(relay.url, "echo")
        await ws.send(b"12345")
        assert await ws.recv() == b"12345"
        await ws.close()
        assert await _refused(relay, "other") == 404  # exists, no listener
        assert await _refused(relay, "echo", key="wrong-key-0123456789abcdef") == 401
        assert await _refused(relay, "made-up") == 404  # no such entity
        samples = await _until(
            relay, lambda s: sample(s, "hybridrelay_hc_active_connections", hc="echo") == 0
        )
        assert sample(samples, "hybridrelay_hc_listeners", hc="echo") == 1
        assert sample(samples, "hybridrelay_hc_connections_total", hc="echo") == 1
        for direction in ("sender_to_listener", "listener_to_sender"):
            relayed = sample(
                samples, "hybridrelay_hc_bytes_relayed_total", hc="echo", direction=direction
            )
            assert relayed is not None
            assert relayed >= 5
        assert sample(samples, "hybridrelay_hc_rejections_total", hc="other", status="404") == 1
        assert sample(samples, "hybridrelay_hc_rejections_total", hc="echo", status="401") == 1
        # A name that is no entity never becomes a label: a sender chooses it.
        assert _hc_values(samples) == {"echo", "other"}
        assert sample(samples, "hybridrelay_hc_labels") == 2
        # The relay-wide families are still there, and agree.
        assert sample(samples, "hybridrelay_connections_total") == 1
        assert sample(samples, "hybridrelay_listeners") == 1
    finally:
        await listener.stop()
    await _until(relay, lambda s: sample(s, "hybridrelay_hc_listeners", hc="echo") == 0)


async def test_http_requests_are_counted_per_hybrid_connection(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory()
    peer = await HttpListener(relay.url, "anon").start()
    try:
        async with aiohttp.ClientSession() as session:
            answer = asyncio.ensure_future(session.get(relay.http_url + "/anon/thing"))
            request = await peer.next_request()
            await peer.respond(request.id, 200, body=b"ok")
            async with await answer as resp:
                assert resp.status == 200
                assert await resp.read() == b"ok"
        samples = await scrape(relay.http_url)
        assert sample(samples, "hybridrelay_hc_http_requests_total", hc="anon") == 1
        assert sample(samples, "hybridrelay_http_requests_total", status="200") == 1
    finally:
        await peer.stop()


async def test_hybrid_connections_beyond_the_cap_share_the_other_series(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory(relay_extra="max_metrics_hc_labels = 1")
    first = await RawListener(relay.url, "echo").start()
    second = await RawListener(relay.url, "other").start()
    try:
        ws = await send(relay.url, "other")
        await ws.close()
        samples = await _until(
            relay, lambda s: sample(s, "hybridrelay_hc_active_connections", hc=HC_OTHER) == 0
        )
        assert _hc_values(samples) == {"echo", HC_OTHER}
        assert sample(samples, "hybridrelay_hc_labels") == 1
        assert sample(samples, "hybridrelay_hc_listeners", hc="echo") == 1
        assert sample(samples, "hybridrelay_hc_listeners", hc=HC_OTHER) == 1
        assert sample(samples, "hybridrelay_hc_connections_total", hc=HC_OTHER) == 1
        # Each update folded into _other counts: the listener's connect, the stream's.
        folded = sample(samples, "hybridrelay_limit_refusals_total", limit="max_metrics_hc_labels")
        assert folded == 2
    finally:
        await first.stop()
        await second.stop()


async def test_build_info_process_and_cluster_state(relay: InProcessRelay) -> None:
    samples = await scrape(relay.http_url)
    assert sample(samples, "hybridrelay_cluster_state_available") == 1  # a single node
    resident = sample(samples, "process_resident_memory_bytes")
    assert resident is not None
    assert resident > 10_000_000
    info = [(key, value) for key, value in samples.items() if key[0] == "hybridrelay_build_info"]
    assert info == [
        (
            (
                "hybridrelay_build_info",
                frozenset(
                    {("version", version("hybridrelay")), ("python", platform.python_version())}
                ),
            ),
            1.0,
        )
    ]


def _not_after(path: Path) -> float:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


def _self_signed(path: Path, days: int, key_path: Path | None = None) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    if key_path is not None:
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renewed")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


async def test_tls_certificate_expiry_per_file_and_after_a_reload(
    relay_factory: RelayFactory, tls_files: TlsFiles, tmp_path: Path
) -> None:
    relay = await relay_factory(
        tls=tls_files,
        relay_extra=f'client_cert = "optional"\nclient_ca_file = "{tls_files.ca_cert}"',
    )
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=tls_files.ca_cert))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(relay.http_url + "/metrics") as resp,
    ):
        samples = parse_exposition(await resp.text())
    expiry = "hybridrelay_tls_certificate_expiry_seconds"
    assert sample(samples, expiry, certificate="tls_cert") == _not_after(tls_files.cert)
    assert sample(samples, expiry, certificate="client_ca_file") == _not_after(tls_files.ca_cert)
    # What a certificate reload calls once the new file is in place.
    renewed = tmp_path / "renewed.pem"
    _self_signed(renewed, days=90)
    tls_files.cert.write_bytes(renewed.read_bytes())
    observe_certificates(relay.state.metrics, relay.state.config.relay)
    text = generate_latest(relay.state.metrics.registry).decode()
    after = sample(parse_exposition(text), expiry, certificate="tls_cert")
    assert after == _not_after(renewed)
    assert after is not None
    assert after > dt.datetime.now(dt.UTC).timestamp() + 89 * 86_400


async def test_no_certificate_no_expiry_sample(relay: InProcessRelay) -> None:
    samples = await scrape(relay.http_url)
    assert not [key for key in samples if key[0].startswith("hybridrelay_tls_certificate")]


def test_hostile_label_values_are_escaped() -> None:
    """Label values with quotes, backslashes, newlines and non-ASCII survive the exposition."""
    metrics = RelayMetrics()
    names = ['a"b', "back\\slash", "new\nline", "ünï/cödé", "}{,=", "x\\n"]
    for name in names:
        metrics.listener_connected(name)
        metrics.rejected(404, "connect", name)
    samples = parse_exposition(generate_latest(metrics.registry).decode())
    for name in names:
        assert sample(samples, "hybridrelay_hc_listeners", hc=name) == 1
        assert sample(samples, "hybridrelay_hc_rejections_total", hc=name, status="404") == 1


@pytest.mark.redis
async def test_cluster_state_available_follows_redis(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """The gauge the "Redis degraded" alert watches: 0 while Redis is down, 1 once back."""
    redis = RedisServer(tmp_path)
    url = await asyncio.to_thread(redis.start)
    try:
        extra = (
            f'\n[cluster]\nredis_url = "{url}"\nprefix = "{unique_prefix()}"\npresence_ttl = 2\n'
        )
        relay = await relay_factory(extra=extra)
        assert sample(await scrape(relay.http_url), "hybridrelay_cluster_state_available") == 1
        await asyncio.to_thread(redis.stop)
        await _until(relay, lambda s: sample(s, "hybridrelay_cluster_state_available") == 0)
        await asyncio.to_thread(redis.start)
        await _until(relay, lambda s: sample(s, "hybridrelay_cluster_state_available") == 1)
    finally:
        await asyncio.to_thread(redis.stop)


async def test_a_metrics_address_in_use_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, relay_extra=f'metrics_listen = "127.0.0.1:{port}"')
        relay = InProcessRelay(load_relay_config(path, {}))
        with pytest.raises(ConfigError) as info:
            await relay.start()
    assert info.value.key == "relay.metrics_listen"
    assert f"cannot listen on 127.0.0.1:{port}" in info.value.reason


def test_a_listener_chosen_status_does_not_multiply_an_entitys_series() -> None:
    """A listener may reject with any 4xx/5xx: per entity, unusual ones are "4xx"/"5xx"."""
    metrics = RelayMetrics()
    for status in (404, 418, 499, 503, 599):
        metrics.rejected(status, "connect", "echo")
    samples = parse_exposition(generate_latest(metrics.registry).decode())
    per_hc = {
        dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "hybridrelay_hc_rejections_total"
    }
    assert per_hc == {"404": 1, "4xx": 2, "503": 1, "5xx": 1}
    # The relay-wide family keeps every status, as before.
    assert sample(samples, "hybridrelay_rejections_total", status="418", action="connect") == 1


async def test_the_expiry_follows_a_certificate_renewed_on_disk(
    relay_factory: RelayFactory, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """The relay's own reload (a file change here; SIGHUP is the same path) updates the gauge,
    read over plain HTTP on the metrics address while the public port serves TLS."""
    relay = await relay_factory(
        tls=tls_files, relay_extra='tls_reload_interval = 0.05\nmetrics_listen = "127.0.0.1:0"'
    )
    address = relay.state.config.relay.metrics_listen  # the completed config: bound port
    assert address is not None
    base = f"http://{address[0]}:{address[1]}"
    expiry = "hybridrelay_tls_certificate_expiry_seconds"
    before = sample(await scrape(base), expiry, certificate="tls_cert")
    assert before == _not_after(tls_files.cert)
    renewed, renewed_key = tmp_path / "renewed.pem", tmp_path / "renewed-key.pem"
    _self_signed(renewed, days=90, key_path=renewed_key)
    tls_files.key.write_bytes(renewed_key.read_bytes())
    tls_files.cert.write_bytes(renewed.read_bytes())
    async with asyncio.timeout(seconds(10)):
        while sample(await scrape(base), expiry, certificate="tls_cert") != _not_after(renewed):
            await asyncio.sleep(0.05)  # polling the endpoint, not synchronisation by delay
    ok = sample(await scrape(base), "hybridrelay_tls_reloads_total", result="ok")
    assert ok is not None
    assert ok >= 1
