"""Log lines name a peer as ``host:port`` (IPv6 ``[addr]:port``), never as a Python tuple.

The forwarder logs each local client it could not tunnel (TCP and UDP), on IPv4 and IPv6
loopback, against an in-process relay where the hybrid connection has no listener (so
every open is refused at once); the management API's audit line names its caller alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import pytest
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

from hybridrelay.client import Forwarder, UdpForwarder
from hybridrelay.logs import CLIENT, host_port, peer_text
from hybridrelay.protocol.sas import SasTokenProvider

ROOT = "RootManageSharedAccessKey"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


LOOPBACKS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="no IPv6 loopback here"))]  # fmt: skip


def test_peer_text_forms() -> None:
    assert peer_text(("127.0.0.1", 5000)) == "127.0.0.1:5000"
    assert peer_text(("::1", 5000, 0, 0)) == "[::1]:5000"
    assert peer_text(("fe80::1%eth0", 80, 0, 2)) == "[fe80::1%eth0]:80"
    assert peer_text("/run/app.sock") == "/run/app.sock"
    assert peer_text("") == peer_text(None) == peer_text(()) == "-"
    assert host_port("relay.example.com", 443) == "relay.example.com:443"


@contextlib.asynccontextmanager
async def serving(forwarder: Forwarder | UdpForwarder) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    try:
        async with asyncio.timeout(seconds(10)):
            await forwarder.ready.wait()
        yield
    finally:
        stop.set()
        async with asyncio.timeout(seconds(20)):
            await task


async def _record(caplog: pytest.LogCaptureFixture, event: str) -> logging.LogRecord:
    """The first ``event`` record; polls the capture (a log line has no event to wait on)."""
    async with asyncio.timeout(seconds(10)):
        while True:
            for record in caplog.records:
                if record.getMessage() == event:
                    return record
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("host", LOOPBACKS)
async def test_forwarder_logs_a_tcp_peer_as_host_port(
    relay: InProcessRelay, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    caplog.set_level(logging.INFO, logger=CLIENT)
    tokens = SasTokenProvider(ROOT, ROOT_KEY)
    forwarder = Forwarder(relay.url, "nobody-listens", token_provider=tokens, host=host)
    async with serving(forwarder):
        reader, writer = await asyncio.open_connection(host, forwarder.port)
        client_port = writer.get_extra_info("sockname")[1]
        record = await _record(caplog, "tunnel_refused")
        async with asyncio.timeout(seconds(10)):
            assert await reader.read() == b""  # refused: the forwarder closes the client
        writer.close()
    expected = f"[{host}]:{client_port}" if ":" in host else f"{host}:{client_port}"
    assert record.__dict__["peer"] == expected
    listening = next(r for r in caplog.records if r.getMessage() == "forwarder_listening")
    assert listening.__dict__["local"] == f"tcp {host_port(host, forwarder.port)}"


class _Sender(asyncio.DatagramProtocol):
    pass


@pytest.mark.parametrize("host", LOOPBACKS)
async def test_forwarder_logs_a_udp_peer_as_host_port(
    relay: InProcessRelay, caplog: pytest.LogCaptureFixture, host: str
) -> None:
    caplog.set_level(logging.INFO, logger=CLIENT)
    tokens = SasTokenProvider(ROOT, ROOT_KEY)
    forwarder = UdpForwarder(relay.url, "nobody-listens", token_provider=tokens, host=host)
    async with serving(forwarder):
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            _Sender, remote_addr=(host, forwarder.port)
        )
        try:
            client_port = transport.get_extra_info("sockname")[1]
            transport.sendto(b"hello")
            record = await _record(caplog, "udp_flow_refused")
        finally:
            transport.close()
    expected = f"[{host}]:{client_port}" if ":" in host else f"{host}:{client_port}"
    assert record.__dict__["peer"] == expected
