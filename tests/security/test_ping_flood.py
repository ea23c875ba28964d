"""Ping floods from a peer that never reads (issue 11, memory and resource exhaustion).

The relay answers every ping with a pong on the same connection. A peer that
pings at line rate and never reads must not make the relay buffer those pongs
without bound: the relay stops reading it instead. Each attack runs against a
relay subprocess (RSS is the process's) from a plain socket with a small
receive buffer, for a bounded volume; then the relay must still serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from tests.conftest import ProcessFactory
from tests.harness.attack import rss_kib
from tests.harness.metrics import limit_refusals
from tests.harness.peers import RawListener, listen_url, send, token_for
from tests.harness.raw_ws import RawWs, masked_frame
from tests.harness.relay import RelayProcess
from tests.harness.timing import seconds
from tests.security.conftest import RawPair

pytestmark = pytest.mark.e2e

# Largest ping RFC 6455 allows: 131 bytes in for 127 bytes of pong out.
_PING = masked_frame(0x9, b"p" * 125)
_CHUNK = _PING * 512
# What a flooder may send; without the fix this much lands in relay memory.
_VOLUME = 96 * 1024 * 1024
# Growth allowed over the baseline: kernel and transport buffers, allocator noise.
_RSS_BOUND_KIB = 32 * 1024
_RCVBUF = 4096


@dataclass
class Flood:
    sent: int
    rss_growth_kib: int


async def _flood(relay: RelayProcess, peer: RawWs) -> Flood:
    """Ping as fast as the socket takes it, never reading, for at most _VOLUME bytes.

    A relay that stops reading this peer makes the socket stop taking bytes: the
    flood ends when a send has not gone through for a second.
    """
    assert relay.process is not None
    pid = relay.process.pid
    baseline = rss_kib(pid)
    sent = await peer.send_until_stalled(_CHUNK, volume=_VOLUME, stall=seconds(1))
    return Flood(sent=sent, rss_growth_kib=rss_kib(pid) - baseline)


async def _assert_serving(relay: RelayProcess) -> None:
    """/healthz answers and a legitimate relayed echo (on hc-ws) goes through."""
    async with (
        aiohttp.ClientSession() as session,
        asyncio.timeout(seconds(10)),
        session.get(relay.http_url + "/healthz") as resp,
    ):
        assert resp.status == 200
    ws = await send(relay.url, "hc-ws")
    try:
        await ws.send(b"still here")
        assert await asyncio.wait_for(ws.recv(), seconds(10)) == b"still here"
    finally:
        await ws.close()


@pytest.fixture
async def relay(relay_process_factory: ProcessFactory) -> AsyncIterator[RelayProcess]:
    """A relay subprocess with a legitimate echo listener on hc-ws, warmed up once."""
    proc = await relay_process_factory()
    legit = await RawListener(proc.url, "hc-ws").start()
    try:
        await _assert_serving(proc)
        yield proc
    finally:
        await legit.stop()


def _report(what: str, flood: Flood) -> None:
    sent, growth = flood.sent / 2**20, flood.rss_growth_kib / 1024
    print(f"{what}: sent {sent:.1f} MiB, relay RSS +{growth:.1f} MiB")  # noqa: T201 - pytest -s


async def test_sender_ping_flood_without_reading_keeps_relay_memory_bounded(
    relay: RelayProcess,
) -> None:
    """A sender pings at line rate and never reads: relay RSS stays bounded, the relay serves."""
    listener = await RawListener(relay.url, "echo").start()
    url = f"{relay.url}/$hc/echo?sb-hc-action=connect"
    peer = await RawWs.open(
        url, headers={"ServiceBusAuthorization": token_for(url)}, rcvbuf=_RCVBUF
    )
    try:
        assert peer.status == 101
        flood = await _flood(relay, peer)
        _report("sender leg", flood)
        assert flood.rss_growth_kib < _RSS_BOUND_KIB, flood
        assert await limit_refusals(relay.url, "max_queued_control_frames") >= 1
        await _assert_serving(relay)
    finally:
        peer.close()
        await listener.stop()


async def test_listener_leg_ping_flood_without_reading_keeps_relay_memory_bounded(
    relay: RelayProcess,
) -> None:
    """A listener's rendezvous leg pings at line rate and never reads: RSS bounded, relay serves."""
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    sender_task = asyncio.create_task(send(relay.url, "echo"))
    peer: RawWs | None = None
    try:
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(10))
        peer = await RawWs.open(str(accept["address"]), rcvbuf=_RCVBUF)
        assert peer.status == 101
        sender = await asyncio.wait_for(sender_task, seconds(10))
        flood = await _flood(relay, peer)
        _report("listener leg", flood)
        assert flood.rss_growth_kib < _RSS_BOUND_KIB, flood
        assert await limit_refusals(relay.url, "max_queued_control_frames") >= 1
        await _assert_serving(relay)
        sender.abort()
    finally:
        if peer is not None:
            peer.close()
        sender_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender_task
        await listener.stop()


async def test_http_rendezvous_ping_flood_without_reading_keeps_relay_memory_bounded(
    relay: RelayProcess,
) -> None:
    """A listener's HTTP-mode rendezvous socket pings at line rate, never reads: RSS bounded."""
    url = listen_url(relay.url, "echo")
    control = await RawWs.open(url, headers={"ServiceBusAuthorization": token_for(url)})
    assert control.status == 101
    target = relay.http_url + "/echo/flood"
    session = aiohttp.ClientSession()
    request = asyncio.create_task(
        session.get(target, headers={"ServiceBusAuthorization": token_for(target)})
    )
    peer: RawWs | None = None
    try:
        async with asyncio.timeout(seconds(10)):
            opcode, payload = await control.recv_frame()
        assert opcode == 0x1
        address = json.loads(payload)["request"]["address"]
        peer = await RawWs.open(address, rcvbuf=_RCVBUF)
        assert peer.status == 101
        flood = await _flood(relay, peer)
        _report("HTTP rendezvous socket", flood)
        assert flood.rss_growth_kib < _RSS_BOUND_KIB, flood
        assert await limit_refusals(relay.url, "max_queued_control_frames") >= 1
        await _assert_serving(relay)
    finally:
        if peer is not None:
            peer.close()
        control.close()
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await request
        await session.close()


async def test_control_channel_ping_flood_without_reading_keeps_relay_memory_bounded(
    relay: RelayProcess,
) -> None:
    """A listener pings on its control channel at line rate, never reads: RSS bounded."""
    url = listen_url(relay.url, "echo")
    peer = await RawWs.open(
        url, headers={"ServiceBusAuthorization": token_for(url)}, rcvbuf=_RCVBUF
    )
    try:
        assert peer.status == 101
        flood = await _flood(relay, peer)
        _report("control channel", flood)
        assert flood.rss_growth_kib < _RSS_BOUND_KIB, flood
        await _assert_serving(relay)
    finally:
        peer.close()


@pytest.fixture
def raw_pair_rcvbuf() -> int:
    """Both legs of ``raw_pair`` stop taking bytes early."""
    return _RCVBUF


async def _read_into(peer: RawWs, into: bytearray) -> None:
    loop = asyncio.get_running_loop()
    while chunk := await loop.sock_recv(peer.sock, 1 << 16):
        into += chunk


async def test_sender_not_reading_its_download_can_still_upload(raw_pair: RawPair) -> None:
    """Not an attack but what the defence must keep: a sender that never reads still uploads."""
    download = masked_frame(0x2, b"d" * 60_000) * 4
    # The listener streams until the relay stops reading it: the sender's buffer is full.
    downloaded = await raw_pair.listener.send_until_stalled(
        download, volume=_VOLUME, stall=seconds(1)
    )
    assert downloaded < _VOLUME
    frames = 280  # 16 MiB
    expected = frames * (4 + 60_000)  # what the listener gets: unmasked, 4-byte headers
    received = bytearray()
    reading = asyncio.create_task(_read_into(raw_pair.listener, received))
    try:
        async with asyncio.timeout(seconds(30)):
            upload = masked_frame(0x2, b"u" * 60_000)
            for _ in range(frames):
                await raw_pair.sender.send(upload)
            while len(received) < expected:
                await asyncio.sleep(0.05)  # polling a buffer another task fills, bounded
        assert len(received) == expected
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


async def test_control_channel_flooder_that_never_reads_is_dropped(
    relay_process_factory: ProcessFactory,
) -> None:
    """A listener pings on its control channel and never reads: the relay drops it, not waits."""
    proc = await relay_process_factory(ping_interval=1)
    url = listen_url(proc.url, "echo")
    peer = await RawWs.open(
        url, headers={"ServiceBusAuthorization": token_for(url)}, rcvbuf=_RCVBUF
    )
    try:
        assert peer.status == 101
        assert await peer.send_until_stalled(_CHUNK, volume=_VOLUME, stall=seconds(1)) < _VOLUME
        # Without reading (reading would let the relay go on): the relay cuts the
        # connection within two ping intervals, which the stalled send then reports.
        async with asyncio.timeout(seconds(15)):
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                await peer.send_rest(_CHUNK * 64)
    finally:
        peer.close()
