"""Unmasked client frames on a listener's control channel (issue 11, robustness).

RFC 6455 §5.1: a server must fail the connection when a client frame is not
masked. The splice legs always did; the control channel (aiohttp's WebSocket)
must too, with close 1002, also when the frame arrives in the same packet as
the handshake.
"""

from __future__ import annotations

import asyncio

from tests.harness.peers import RawListener, listen_url, send, token_for
from tests.harness.raw_ws import RawWs, masked_frame, unmasked_frame
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds


async def _listen(relay: InProcessRelay, *, before_101: bytes = b"") -> RawWs:
    url = listen_url(relay.url, "echo")
    peer = await RawWs.open(
        url, headers={"ServiceBusAuthorization": token_for(url)}, before_101=before_101
    )
    assert peer.status == 101
    return peer


async def _assert_serving(relay: InProcessRelay) -> None:
    listener = await RawListener(relay.url, "echo").start()
    try:
        ws = await send(relay.url, "echo")
        await ws.send(b"ok")
        assert await asyncio.wait_for(ws.recv(), seconds(10)) == b"ok"
        await ws.close()
    finally:
        await listener.stop()


async def test_unmasked_frame_on_control_channel_is_refused_with_1002(
    relay: InProcessRelay,
) -> None:
    """A listener sends an unmasked ping on its control channel: the relay closes it with 1002."""
    peer = await _listen(relay)
    try:
        # A masked ping is answered: the channel works.
        await peer.send(masked_frame(0x9, b"masked"))
        async with asyncio.timeout(seconds(10)):
            assert await peer.recv_frame() == (0xA, b"masked")
            await peer.send(unmasked_frame(0x9, b"unmasked"))
            assert await peer.recv_close() == 1002
    finally:
        peer.close()
    await _assert_serving(relay)


async def test_unmasked_frame_behind_the_handshake_is_refused_with_1002(
    relay: InProcessRelay,
) -> None:
    """A listener sends an unmasked frame in the same packet as its handshake: close 1002."""
    peer = await _listen(relay, before_101=unmasked_frame(0x9, b"early"))
    try:
        async with asyncio.timeout(seconds(10)):
            assert await peer.recv_close() == 1002
    finally:
        peer.close()
    await _assert_serving(relay)


async def test_unmasked_frame_after_masked_ones_in_one_packet_is_refused_with_1002(
    relay: InProcessRelay,
) -> None:
    """Masked pings, then an unmasked one, in one write: the masked are answered, then 1002."""
    peer = await _listen(relay)
    try:
        await peer.send(
            masked_frame(0x9, b"one") + masked_frame(0x9, b"two") + unmasked_frame(0x9, b"bad")
        )
        async with asyncio.timeout(seconds(10)):
            assert await peer.recv_frame() == (0xA, b"one")
            assert await peer.recv_frame() == (0xA, b"two")
            assert await peer.recv_close() == 1002
    finally:
        peer.close()
