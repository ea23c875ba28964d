"""The relay's frame forwarder, byte level: what one leg writes is what the other leg reads.

Both legs here are raw sockets speaking RFC 6455 by hand (no WebSocket library in between),
so the test sees every frame exactly: fragment boundaries, opcodes, FIN and RSV bits,
masking, control frames. ``relay/splice.py`` promises:

* data frames pass one for one, re-framed (unmasked) with the same FIN bit, opcode and
  payload, so fragmented TEXT/BINARY messages keep their fragments;
* ping is answered per hop, by the relay, with a pong carrying the same payload, and is
  never forwarded; pongs are never forwarded either;
* a control frame that arrives between two fragments is handled without disturbing the
  message, and a pong never lands inside a frame that is being streamed to that leg;
* a close frame is forwarded with its payload (code and reason) unchanged, also in the
  middle of a fragmented message, and the other direction keeps flowing until the other
  side closes too (half-close).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import pytest
from tests.harness.peers import RawListener, connect_url, token_for
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds

CONT: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA
GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


@dataclass(frozen=True, slots=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes
    rsv: int = 0
    masked: bool = False


def encode(fin: bool, opcode: int, payload: bytes = b"") -> bytes:
    """A masked client frame (RFC 6455 §5.2), minimal length encoding, random mask."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: str) -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")


class RawLeg:
    """One WebSocket client connection, frames written and read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str, headers: dict[str, str] | None = None) -> RawLeg:
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.hostname}:{parts.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status, *fields = head.split("\r\n")
        assert status.startswith("HTTP/1.1 101"), head
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()  # noqa: S324 - RFC 6455 §4.2.2
        got = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields if f)}
        assert got["sec-websocket-accept"] == accept
        return cls(reader, writer)

    async def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))
        await self.writer.drain()

    async def recv(self) -> Frame:
        async with asyncio.timeout(seconds(5)):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            mask = await self.reader.readexactly(4) if b1 & 0x80 else None
            payload = await self.reader.readexactly(n)
        if mask is not None:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return Frame(
            fin=bool(b0 & 0x80),
            opcode=b0 & 0x0F,
            payload=payload,
            rsv=(b0 >> 4) & 0x7,
            masked=mask is not None,
        )

    async def recv_n(self, count: int) -> list[Frame]:
        return [await self.recv() for _ in range(count)]

    async def eof(self) -> bytes:
        """What is left before the relay closes the TCP connection (must be nothing)."""
        async with asyncio.timeout(seconds(5)):
            return await self.reader.read()

    def close(self) -> None:
        self.writer.close()


@dataclass
class Pair:
    sender: RawLeg
    listener: RawLeg

    def legs(self, direction: str) -> tuple[RawLeg, RawLeg]:
        """(source, destination) for ``sender->listener`` or ``listener->sender``."""
        if direction == "sender->listener":
            return self.sender, self.listener
        return self.listener, self.sender


@pytest.fixture
async def pair(relay: InProcessRelay):
    """A relayed connection whose two legs (sender, listener's rendezvous) are raw sockets."""
    control = await RawListener(relay.url, "echo", behaviour=None).start()
    url = connect_url(relay.url, "echo")
    sender = asyncio.create_task(RawLeg.connect(url, {"ServiceBusAuthorization": token_for(url)}))
    legs: list[RawLeg] = []
    try:
        async with asyncio.timeout(seconds(10)):
            accept = await control.accepts.get()
            legs.append(await RawLeg.connect(str(accept["address"])))
            legs.insert(0, await sender)
        yield Pair(sender=legs[0], listener=legs[1])
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        for leg in legs:
            leg.close()
        await control.stop()


DIRECTIONS: Final = ["sender->listener", "listener->sender"]


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_fragments_opcodes_and_fin_bits_pass_one_for_one(pair: Pair, direction: str) -> None:
    source, destination = pair.legs(direction)
    sent = [
        # A text message in four fragments; one empty, one splitting "é" between two frames.
        Frame(False, TEXT, b"fragmented t"),
        Frame(False, CONT, b""),
        Frame(False, CONT, b"ext \xc3"),
        Frame(True, CONT, b"\xa9"),
        # A binary message whose middle fragment needs the 64-bit length form.
        Frame(False, BINARY, b"\x00\x01\x02"),
        Frame(False, CONT, os.urandom(70_000)),
        Frame(True, CONT, b"end"),
        # Unfragmented messages, one of them empty.
        Frame(True, BINARY, b""),
        Frame(True, TEXT, b"whole"),
        Frame(True, BINARY, os.urandom(300)),
    ]
    await source.send(*(encode(f.fin, f.opcode, f.payload) for f in sent))
    received = await destination.recv_n(len(sent))
    assert received == sent  # same FIN, opcode, payload; RSV 0 and unmasked from the relay


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_ping_between_fragments_is_answered_per_hop_and_not_forwarded(
    pair: Pair, direction: str
) -> None:
    source, destination = pair.legs(direction)
    await source.send(
        encode(False, BINARY, b"a"),
        encode(True, PING, b"ping-1"),
        encode(False, CONT, b"b"),
        encode(True, PONG, b"unsolicited"),  # a pong nobody asked for: dropped
        encode(True, PING, b""),
        encode(True, CONT, b"c"),
        encode(True, TEXT, b"marker"),
    )
    # The relay answers each ping on the leg it came from, payload echoed, in order.
    assert await source.recv_n(2) == [Frame(True, PONG, b"ping-1"), Frame(True, PONG, b"")]
    # The other leg gets the message's fragments and nothing else in between.
    assert await destination.recv_n(4) == [
        Frame(False, BINARY, b"a"),
        Frame(False, CONT, b"b"),
        Frame(True, CONT, b"c"),
        Frame(True, TEXT, b"marker"),
    ]
    # Nothing more is queued for either leg: the next frame each reads is this one.
    await destination.send(encode(True, TEXT, b"back"))
    assert await source.recv() == Frame(True, TEXT, b"back")
    await source.send(encode(True, TEXT, b"forth"))
    assert await destination.recv() == Frame(True, TEXT, b"forth")


async def test_pong_waits_for_the_frame_being_streamed_to_that_leg(
    relay: InProcessRelay, pair: Pair
) -> None:
    # The listener streams a 200 KB frame to the sender in two writes; the sender pings
    # while the frame is half delivered. The pong must come after the frame, not inside it.
    payload = os.urandom(200_000)
    frame = encode(True, BINARY, payload)
    await pair.listener.send(frame[: len(frame) // 2])
    async with asyncio.timeout(seconds(5)):
        head = await pair.sender.reader.readexactly(10)  # 2 + 8 bytes: the 64-bit form
        first = await pair.sender.reader.readexactly(1000)
    assert head[0] == 0x80 | BINARY
    assert struct.unpack("!Q", head[2:])[0] == len(payload)
    await pair.sender.send(encode(True, PING, b"mid-frame"))
    # Loopback delivers the ping to the relay's socket before send() returns, so once the
    # relay (same event loop) has answered an HTTP request made after it, it has read the
    # ping too, while the frame to the sender is still half written.
    async with (
        aiohttp.ClientSession() as session,
        asyncio.timeout(seconds(5)),
        session.get(relay.http_url + "/healthz") as resp,
    ):
        assert resp.status == 200
    await pair.listener.send(frame[len(frame) // 2 :])
    async with asyncio.timeout(seconds(5)):
        rest = await pair.sender.reader.readexactly(len(payload) - len(first))
    assert first + rest == payload
    assert await pair.sender.recv() == Frame(True, PONG, b"mid-frame")


CLOSES: Final = [
    pytest.param(close_payload(1000, ""), id="1000"),
    pytest.param(close_payload(1001, "going away"), id="1001-reason"),
    pytest.param(close_payload(4000, "défini par l'application"), id="4000-utf8"),
    pytest.param(close_payload(3999, "r" * 123), id="3999-longest-reason"),
    pytest.param(b"", id="no-status-code"),
]


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("payload", CLOSES)
async def test_close_code_and_reason_forwarded_exactly(
    pair: Pair, direction: str, payload: bytes
) -> None:
    source, destination = pair.legs(direction)
    await source.send(encode(True, CLOSE, payload))
    assert await destination.recv() == Frame(True, CLOSE, payload)
    # Half-close: the other direction still flows until that side closes as well.
    await destination.send(encode(True, TEXT, b"last words"))
    assert await source.recv() == Frame(True, TEXT, b"last words")
    answer = close_payload(1000, "bye")
    await destination.send(encode(True, CLOSE, answer))
    assert await source.recv() == Frame(True, CLOSE, answer)
    assert await source.eof() == b""
    assert await destination.eof() == b""


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_close_inside_a_fragmented_message_is_forwarded_after_the_fragments(
    pair: Pair, direction: str
) -> None:
    source, destination = pair.legs(direction)
    payload = close_payload(1011, "gave up mid-message")
    await source.send(
        encode(False, TEXT, b"unfinished "),
        encode(False, CONT, b"message"),
        encode(True, CLOSE, payload),
    )
    assert await destination.recv_n(3) == [
        Frame(False, TEXT, b"unfinished "),
        Frame(False, CONT, b"message"),
        Frame(True, CLOSE, payload),
    ]
    await destination.send(encode(True, CLOSE, payload))
    assert await source.recv() == Frame(True, CLOSE, payload)
    assert await source.eof() == b""
