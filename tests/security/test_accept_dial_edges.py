"""The accept dial taken from its head (issue 16) at the edges of the front door.

What ``test_accept_dial_head.py`` leaves out: the head arriving over TLS, the per-source
connection count of connections the upgrade hook took (a leak would refuse the source's
next connections with 429), and connections that never became a request (no aiohttp
task serves them any more) when the relay stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest

from tests.conftest import RelayFactory
from tests.harness.peers import RawListener, send
from tests.harness.raw_http import (
    connect_raw,
    http_request,
    read_head,
    read_response,
    relay_address,
    upgrade_request,
)
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles
from tests.security.test_accept_dial_head import Rendezvous, request_path, spliced

__all__ = ["request_path"]  # the fixture: which dials the request path served


async def _splice_once(
    relay: InProcessRelay,
    listener: RawListener,
    ctx: ssl.SSLContext | None,
    source: str | None = None,
) -> None:
    """One connect on "echo", its accept dialled raw (one write: head only), then cut."""
    sender = asyncio.create_task(send(relay.url, "echo"))
    try:
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(10))
        rendezvous = Rendezvous(relay, listener, sender, str(accept["address"]))
        reader, writer = await connect_raw(relay.url, source=source, ssl_context=ctx)
        try:
            writer.write(rendezvous.head())
            await writer.drain()
            assert (await read_head(reader)).status == 101
            ws = await rendezvous.sender_ws()
            await spliced(reader, writer, ws)
            ws.abort()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            (await sender).abort()


async def test_an_accept_dial_over_tls_is_spliced_from_its_head(
    relay_factory: RelayFactory,
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
    request_path: list[str],
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca_cert))  # the sender's and listener's
    relay = await relay_factory(tls=tls_files)
    assert relay.url.startswith("wss://")
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        await _splice_once(
            relay, listener, ssl.create_default_context(cafile=str(tls_files.ca_cert))
        )
    finally:
        await listener.stop()
    assert request_path == []


async def test_dials_taken_from_their_head_leave_no_connection_counted(
    relay_factory: RelayFactory, request_path: list[str]
) -> None:
    """One connection at a time from the dialling address, 127.0.0.2 (not exempt).

    A spliced leg is no longer an anonymous connection (admission._release): had the
    hook's connections stayed counted, the second dial would get a 429.
    """
    relay = await relay_factory(
        relay_extra='per_ip_limits_exempt = ["127.0.0.1/32"]\nmax_connections_per_ip = 1'
    )
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        for _ in range(5):
            await _splice_once(relay, listener, None, source="127.0.0.2")
    finally:
        await listener.stop()
    assert request_path == []


async def test_connections_without_a_whole_head_are_closed_when_the_relay_stops(
    relay_factory: RelayFactory,
) -> None:
    """No task serves them (FrontDoorProtocol._serve waits for a head); the stop closes
    them anyway, long before their 408 (the handshake_timeout) is due."""
    relay = await relay_factory(relay_extra="handshake_timeout = 600")
    host, port = relay_address(relay.url)
    idle = await connect_raw(relay.url)
    partial = await connect_raw(relay.url)
    partial[1].write(upgrade_request("/$hc/echo?sb-hc-action=accept", f"{host}:{port}")[:30])
    await partial[1].drain()
    # A request answered on a third connection: the relay has accepted the first two.
    reader, writer = await connect_raw(relay.url)
    writer.write(http_request("GET", "/healthz", f"{host}:{port}"))
    assert (await read_response(reader)).status == 200
    writer.close()
    await relay.stop()  # asserts too that no relay task outlived it
    for peer_reader, peer_writer in (idle, partial):
        assert await asyncio.wait_for(peer_reader.read(), seconds(10)) == b""  # no 408
        peer_writer.close()
