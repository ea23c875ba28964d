"""A peer that vanishes in the middle of a frame (issue 11, robustness).

The relay writes a frame's header with its first payload bytes. When the peer
that sent the header goes away before any payload arrived, nothing of the
frame reached the other peer, which must then get a close frame (1011, HC §5)
rather than a TCP reset. Only a frame that is really half written leaves the
relay no choice but to cut the connection.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.harness.peers import RawListener, token_for
from tests.harness.raw_ws import RawWs
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds

_MASK = b"\x01\x02\x03\x04"


def _binary_header(length: int) -> bytes:
    """The masked header of a binary frame promising ``length`` payload bytes."""
    return struct.pack("!BBH", 0x82, 0x80 | 126, length) + _MASK


def _masked(data: bytes) -> bytes:
    return bytes(b ^ _MASK[i % 4] for i, b in enumerate(data))


@dataclass
class Pair:
    sender: RawWs
    listener: RawWs


@pytest.fixture
async def pair(relay: InProcessRelay) -> AsyncIterator[Pair]:
    """A raw sender spliced to a raw listener leg on "echo"."""
    control = await RawListener(relay.url, "echo", behaviour=None).start()
    url = f"{relay.url}/$hc/echo?sb-hc-action=connect"
    dialling = asyncio.create_task(
        RawWs.open(url, headers={"ServiceBusAuthorization": token_for(url)})
    )
    try:
        accept = await asyncio.wait_for(control.accepts.get(), seconds(10))
        listener = await RawWs.open(str(accept["address"]))
        sender = await asyncio.wait_for(dialling, seconds(10))
        assert (sender.status, listener.status) == (101, 101)
        yield Pair(sender, listener)
        sender.close()
        listener.close()
    finally:
        dialling.cancel()
        await control.stop()


@pytest.mark.parametrize("vanishing", ["sender", "listener"])
async def test_peer_gone_before_any_byte_of_its_frame_other_gets_close_1011(
    pair: Pair, vanishing: str
) -> None:
    """A peer sends a frame header (payload promised, none sent) and vanishes: other gets 1011."""
    gone, other = (
        (pair.sender, pair.listener) if vanishing == "sender" else (pair.listener, pair.sender)
    )
    await gone.send(_binary_header(1000))
    gone.close()
    async with asyncio.timeout(seconds(10)):
        assert await other.recv_close() == 1011


async def test_peer_gone_mid_frame_other_is_cut_after_the_forwarded_bytes(pair: Pair) -> None:
    """A sender sends a header and some payload, vanishes: listener gets those bytes, then EOF."""
    await pair.sender.send(_binary_header(1000) + _masked(b"x" * 10))
    # The relay forwards payload as it arrives: wait until the listener has it.
    async with asyncio.timeout(seconds(10)):
        received = b""
        while len(received) < 14:
            received += await asyncio.get_running_loop().sock_recv(pair.listener.sock, 65536)
    pair.sender.close()
    async with asyncio.timeout(seconds(10)):
        rest = await pair.listener.recv_eof_or_reset()
    # No close frame can follow a frame that will never be completed.
    assert received + rest == struct.pack("!BBH", 0x82, 126, 1000) + b"x" * 10
