"""hybridrelay.probe against a real relay over loopback: every verdict, and no side effects."""

from __future__ import annotations

import socket
import ssl

from tests.conftest import RelayFactory
from tests.harness.peers import RawListener
from tests.harness.relay import LISTEN_KEY, ROOT_KEY, SEND_KEY, InProcessRelay
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles

from hybridrelay.probe import ProbeOutcome, probe_relay
from hybridrelay.protocol.sas import SasTokenProvider

ROOT = "RootManageSharedAccessKey"


def _root(key: str = ROOT_KEY) -> SasTokenProvider:
    return SasTokenProvider(ROOT, key)


async def test_ok_for_a_sender_and_a_listener(relay: InProcessRelay) -> None:
    sender = await probe_relay(relay.url, "echo", token_provider=_root())
    assert sender.outcome is ProbeOutcome.OK
    assert sender.listeners == 0
    listener = await probe_relay(relay.url, "echo", token_provider=_root(), action="listen")
    assert listener.outcome is ProbeOutcome.OK
    assert not sender.fatal


async def test_wrong_key_is_bad_token(relay: InProcessRelay) -> None:
    result = await probe_relay(relay.url, "echo", token_provider=_root("wrong-key-" * 4))
    assert result.outcome is ProbeOutcome.BAD_TOKEN
    assert result.status == 401
    assert result.fatal
    assert "TrackingId" not in result.detail


async def test_a_key_without_the_right_is_bad_token(relay: InProcessRelay) -> None:
    listen_only = SasTokenProvider("listen-only", LISTEN_KEY)
    result = await probe_relay(relay.url, "hc-ws", token_provider=listen_only)
    assert result.outcome is ProbeOutcome.BAD_TOKEN
    assert result.status == 403
    send_only = SasTokenProvider("send-only", SEND_KEY)
    result = await probe_relay(relay.url, "hc-ws", token_provider=send_only, action="listen")
    assert result.outcome is ProbeOutcome.BAD_TOKEN


async def test_unknown_hybrid_connection(relay: InProcessRelay) -> None:
    result = await probe_relay(relay.url, "no-such-hc", token_provider=_root())
    assert result.outcome is ProbeOutcome.NO_SUCH_ENTITY
    assert result.status == 404
    assert result.fatal


async def test_http_url_is_refused_before_any_connection(relay: InProcessRelay) -> None:
    result = await probe_relay(relay.http_url, "echo", token_provider=_root())
    assert result.outcome is ProbeOutcome.BAD_URL
    assert f"did you mean {relay.url}" in result.detail


async def test_nothing_listening_is_unreachable_not_fatal() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        result = await probe_relay(f"ws://127.0.0.1:{port}", "echo", token_provider=_root())
    assert result.outcome is ProbeOutcome.UNREACHABLE
    assert not result.fatal


async def test_untrusted_certificate_is_a_tls_error(
    relay_factory: RelayFactory, tls_files: TlsFiles
) -> None:
    secure = await relay_factory(tls=tls_files)
    untrusted = await probe_relay(secure.url, "echo", token_provider=_root())
    assert untrusted.outcome is ProbeOutcome.TLS_ERROR
    assert "certificate" in untrusted.detail
    assert untrusted.setting == "ca_file"
    trusted = await probe_relay(
        secure.url,
        "echo",
        token_provider=_root(),
        ssl_context=ssl.create_default_context(cafile=tls_files.ca_cert),
    )
    assert trusted.outcome is ProbeOutcome.OK


async def test_wss_to_a_plain_port_is_a_tls_error(relay: InProcessRelay) -> None:
    plain = await probe_relay(
        relay.url.replace("ws://", "wss://"), "echo", token_provider=_root(), timeout=seconds(5)
    )
    assert plain.outcome is ProbeOutcome.TLS_ERROR
    assert plain.setting == "relay"


async def test_a_sender_probe_reaches_no_listener(relay: InProcessRelay) -> None:
    listener = await RawListener(relay.url, "echo").start()
    try:
        result = await probe_relay(relay.url, "echo", token_provider=_root())
        assert result.outcome is ProbeOutcome.OK
        assert result.listeners == 1
        assert listener.accepts.empty()
        assert relay.state.cluster.pending_count() == 0
    finally:
        await listener.stop()


async def test_a_listen_probe_creates_nothing(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(relay_extra="auto_create = true")
    result = await probe_relay(relay.url, "fresh", token_provider=_root(), action="listen")
    assert result.outcome is ProbeOutcome.OK
    assert result.listeners == 0
    assert await relay.state.store.resolve("fresh") is None
    assert not relay.listeners
