"""Frames after a close frame (RFC 6455 §5.5.1, issue 11 fuzzing): never acted on.

A peer that writes a close frame and more frames behind it in one write used to have
those frames relayed (or its pings answered) because the relay parsed the whole read
before it looked at the close. Nothing after a close, valid or not, may reach the
other peer.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from tests.harness.raw_ws import masked_frame
from tests.harness.timing import seconds
from tests.security.conftest import RawPair


@pytest.mark.parametrize(
    ("close_code", "seen_by_listener"),
    [(1000, 1000), (999, 1011)],  # a valid close is forwarded; an invalid one fails the leg
    ids=["valid-close", "invalid-close"],
)
async def test_frames_behind_a_close_in_the_same_write_are_dropped(
    raw_pair: RawPair, close_code: int, seen_by_listener: int
) -> None:
    """Sender writes close + text + ping in one write: listener gets only the close."""
    sender, listener = raw_pair.sender, raw_pair.listener
    await sender.send(
        masked_frame(0x8, struct.pack("!H", close_code))
        + masked_frame(0x1, b"after the close")
        + masked_frame(0x9, b"ping after the close")
    )
    async with asyncio.timeout(seconds(10)):
        opcode, payload = await listener.recv_frame()
    assert opcode == 0x8, payload
    assert struct.unpack("!H", payload[:2])[0] == seen_by_listener
    await listener.send(masked_frame(0x8, struct.pack("!H", 1000)))  # completes the handshake
    # The sender gets no pong for the ping it sent after its close, only a close.
    async with asyncio.timeout(seconds(10)):
        while True:
            try:
                opcode, _ = await sender.recv_frame()
            except (ConnectionError, asyncio.IncompleteReadError, EOFError):
                break
            assert opcode != 0xA, "the relay answered a ping that came after a close"
            if opcode == 0x8:
                break
