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

import pytest

from tests.harness.raw_ws import BINARY, frame_head, mask_bytes
from tests.harness.timing import seconds
from tests.security.conftest import RawPair

_MASK = b"\x01\x02\x03\x04"


def _binary_header(length: int) -> bytes:
    """The masked header of a binary frame promising ``length`` payload bytes."""
    return frame_head(BINARY, length, mask=_MASK)


def _masked(data: bytes) -> bytes:
    return mask_bytes(data, _MASK)


@pytest.mark.parametrize("vanishing", ["sender", "listener"])
async def test_peer_gone_before_any_byte_of_its_frame_other_gets_close_1011(
    raw_pair: RawPair, vanishing: str
) -> None:
    """A peer sends a frame header (payload promised, none sent) and vanishes: other gets 1011."""
    sender, listener = raw_pair.sender, raw_pair.listener
    gone, other = (sender, listener) if vanishing == "sender" else (listener, sender)
    await gone.send(_binary_header(1000))
    gone.close()
    async with asyncio.timeout(seconds(10)):
        assert await other.recv_close() == 1011


async def test_peer_gone_mid_frame_other_is_cut_after_the_forwarded_bytes(
    raw_pair: RawPair,
) -> None:
    """A sender sends a header and some payload, vanishes: listener gets those bytes, then EOF."""
    await raw_pair.sender.send(_binary_header(1000) + _masked(b"x" * 10))
    # The relay forwards payload as it arrives: wait until the listener has it.
    async with asyncio.timeout(seconds(10)):
        received = b""
        while len(received) < 14:
            received += await asyncio.get_running_loop().sock_recv(raw_pair.listener.sock, 65536)
    raw_pair.sender.close()
    async with asyncio.timeout(seconds(10)):
        rest = await raw_pair.listener.recv_eof_or_reset()
    # No close frame can follow a frame that will never be completed.
    assert received + rest == struct.pack("!BBH", 0x82, 126, 1000) + b"x" * 10
