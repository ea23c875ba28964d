"""A relay that goes away: one warning and a summary (not one per attempt), and the 401 hint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import pytest
from tests.conftest import RelayFactory
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

from hybridrelay.backoff import ReconnectBackoff
from hybridrelay.client.forward import Forwarder
from hybridrelay.dev.children import free_port
from hybridrelay.listener import Listener, TcpTarget
from hybridrelay.protocol.sas import SasTokenProvider

ROOT = "RootManageSharedAccessKey"


def _events(caplog: pytest.LogCaptureFixture, name: str, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name and r.levelno == level]


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(seconds(timeout)):
        while not condition():
            await asyncio.sleep(0.01)


async def test_listener_logs_an_outage_once_and_summarises_it(
    relay_factory: RelayFactory, echo_server: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hybridrelay.listener")
    port = free_port()  # nothing listens there yet: the relay is "down"
    listener = Listener(
        f"ws://127.0.0.1:{port}",
        "echo",
        token_provider=SasTokenProvider(ROOT, ROOT_KEY),
        target=TcpTarget(*echo_server),
        backoff=ReconnectBackoff(base=0.01, floor=0.05),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        await _until(lambda: listener.stats.attempts >= 5)
        await relay_factory(port=port)  # the relay comes up
        async with asyncio.timeout(seconds(10)):
            await listener.connected.wait()
        assert len(_events(caplog, "relay_unreachable", logging.WARNING)) == 1
        assert len(_events(caplog, "relay_unreachable", logging.DEBUG)) >= 4
        (back,) = _events(caplog, "relay_reachable_again", logging.INFO)
        assert back.__dict__["attempts"] >= 5
        assert back.__dict__["down_s"] >= 0
        scheduled = _events(caplog, "reconnect_scheduled", logging.INFO)
        assert len(scheduled) == 1  # only after the first failure; the rest are debug
    finally:
        stop.set()
        async with asyncio.timeout(seconds(20)):
            await task


async def test_forwarder_logs_an_unreachable_relay_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="hybridrelay.client")
    forwarder = Forwarder(
        f"ws://127.0.0.1:{free_port()}",
        "echo",
        token_provider=SasTokenProvider(ROOT, ROOT_KEY),
        open_timeout=seconds(5),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    try:
        async with asyncio.timeout(seconds(10)):
            await forwarder.ready.wait()
        for _ in range(4):  # four local clients while the relay is down
            reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
            async with asyncio.timeout(seconds(10)):
                assert await reader.read() == b""  # closed: no stream
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await _until(lambda: forwarder.stats.failed == 4)
        assert len(_events(caplog, "tunnel_refused", logging.WARNING)) == 1
        assert len(_events(caplog, "tunnel_refused", logging.DEBUG)) == 3
    finally:
        stop.set()
        async with asyncio.timeout(seconds(20)):
            await task


async def test_a_listener_refused_after_being_connected_hints_at_a_changed_key(
    relay: InProcessRelay, echo_server: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hybridrelay.listener")
    listener = Listener(
        relay.url,
        "echo",
        token_provider=SasTokenProvider(ROOT, ROOT_KEY),
        target=TcpTarget(*echo_server),
        backoff=ReconnectBackoff(base=0.01, floor=0.05),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        async with asyncio.timeout(seconds(10)):
            await listener.connected.wait()
        # From the listener's side, the relay's key changed: its token no longer verifies.
        listener.set_token_provider(SasTokenProvider(ROOT, "a-key-the-relay-does-not-have-0123"))
        await _until(lambda: bool(_events(caplog, "listen_refused", logging.ERROR)))
        refused = _events(caplog, "listen_refused", logging.ERROR)[0]
        assert refused.__dict__["status"] == 401
        assert "key may have changed" in refused.__dict__["hint"]
    finally:
        stop.set()
        async with asyncio.timeout(seconds(20)):
            await task


async def test_a_listener_refused_at_its_first_attempt_gets_no_hint(
    relay: InProcessRelay, echo_server: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hybridrelay.listener")
    listener = Listener(
        relay.url,
        "echo",
        token_provider=SasTokenProvider(ROOT, "a-key-the-relay-does-not-have-0123"),
        target=TcpTarget(*echo_server),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        await _until(lambda: bool(_events(caplog, "listen_refused", logging.ERROR)))
        assert "hint" not in _events(caplog, "listen_refused", logging.ERROR)[0].__dict__
    finally:
        stop.set()
        async with asyncio.timeout(seconds(20)):
            await task
