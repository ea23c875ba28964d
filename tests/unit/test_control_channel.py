"""The relay's control-channel glue (relay/control.py) over a recording transport.

What the glue adds to the Connection and RelayControl: a message and its body leave in
one write while the listener's socket has room, wait their turn (bounded by
``control_send_timeout``) while it has none, what is delivered before the socket is
taken over follows the 101, and a bad message's close is the one sent even when pings
and broken frames came behind it in the same read. Real sockets: tests/security and
tests/integration.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from tests.unit.test_splice_holds import RecordingTransport

from hybridrelay.errors import ConnectionClosedError
from hybridrelay.logs import ConnectionLogger
from hybridrelay.protocol.frames import FrameParser, encode_close_payload, encode_frame
from hybridrelay.protocol.messages import Accept, Request, encode
from hybridrelay.relay.control import ControlChannel

_MASK = b"\x0a\x0b\x0c\x0d"
ADDRESS = "wss://relay/$hc/hyco?sb-hc-action=accept&sb-hc-id=1&sb-hc-rdv=k"
ACCEPT = Accept(address=ADDRESS, id="a1", connect_headers={"Sec-WebSocket-Key": "k"})
REQUEST = Request(address=ADDRESS, id="r1", request_target="/", method="POST", body=True)


class CountingTransport(RecordingTransport):
    """Counts write calls: one per write or writelines."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> None:
        self.writes += 1
        self.written += data

    def writelines(self, list_of_data: Any) -> None:
        self.writes += 1
        for data in list_of_data:
            self.written += data


class Frames:
    """Decodes what the relay wrote as (opcode, payload) per whole frame."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self._op = 0
        self._buf = b""
        self._parser = FrameParser(self, masked=False)

    def on_data_frame(self, fin: bool, opcode: int, length: int) -> None:
        self._op, self._buf = opcode, b""

    def on_payload(self, data: bytes, frame_done: bool) -> None:
        self._buf += data
        if frame_done:
            self.frames.append((self._op, self._buf))

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        self.frames.append((opcode, payload))

    def read(self, transport: RecordingTransport) -> list[tuple[int, bytes]]:
        self._parser.feed(bytes(transport.written))
        transport.written.clear()
        frames, self.frames = self.frames, []
        return frames


def _frame(opcode: int, payload: bytes) -> bytes:
    return encode_frame(fin=True, opcode=opcode, payload=payload, mask=_MASK)


async def _renew(token: str) -> float:
    raise AssertionError("no renewal in these tests")


def _channel(hits: list[str], *, send_timeout: float = 10.0) -> ControlChannel:
    return ControlChannel(
        hc_name="hyco",
        listener_id="l1",
        expires_at=None,
        renew=_renew,
        ping_interval=30.0,
        token_grace=300.0,
        log=ConnectionLogger(logging.getLogger("test.control"), {}),
        send_timeout=send_timeout,
        limit_hit=hits.append,
    )


def _attach(channel: ControlChannel, tail: bytes = b"") -> CountingTransport:
    transport = CountingTransport()
    channel.attach((transport, asyncio.Protocol(), tail))
    return transport


async def test_a_request_and_its_body_leave_in_one_write() -> None:
    channel = _channel([])
    transport = _attach(channel)
    await channel.deliver(REQUEST, b"body")
    assert transport.writes == 1
    assert Frames().read(transport) == [(0x1, encode(REQUEST).encode()), (0x2, b"body")]
    channel.abort()


async def test_what_is_delivered_before_the_takeover_follows_the_101() -> None:
    channel = _channel([])
    await channel.deliver(ACCEPT)
    transport = _attach(channel)
    assert Frames().read(transport) == [(0x1, encode(ACCEPT).encode())]
    channel.abort()


async def test_deliveries_wait_in_turn_while_the_listener_is_full() -> None:
    channel = _channel([])
    transport = _attach(channel)
    transport.buffered = 1 << 20
    channel.pause_writing()
    first = asyncio.create_task(channel.deliver(REQUEST, b"one"))
    second = asyncio.create_task(channel.deliver(ACCEPT))
    await asyncio.sleep(0)  # both reach their wait (no timing: one loop turn)
    assert not transport.written
    transport.buffered = 0
    channel.resume_writing()
    await asyncio.gather(first, second)
    frames = Frames().read(transport)
    assert frames == [
        (0x1, encode(REQUEST).encode()),
        (0x2, b"one"),
        (0x1, encode(ACCEPT).encode()),
    ]
    channel.abort()


async def test_a_listener_that_never_takes_a_message_is_cut_at_control_send_timeout() -> None:
    hits: list[str] = []
    channel = _channel(hits, send_timeout=0.05)
    transport = _attach(channel)
    transport.buffered = 1 << 20
    channel.pause_writing()
    with pytest.raises(ConnectionClosedError):
        await channel.deliver(ACCEPT)
    assert transport.closing  # aborted
    assert hits == ["control_send_timeout"]  # counted once, by whichever timer fired


async def test_a_bad_message_closes_and_the_ping_and_broken_frame_behind_it_are_not_acted_on() -> (
    None
):
    hits: list[str] = []
    channel = _channel(hits)
    transport = _attach(channel)
    read = (
        _frame(0x9, b"before")
        + _frame(0x1, b"not json")
        + _frame(0x9, b"after")
        + _frame(0x1, b"\xff")  # invalid UTF-8: would be 1007
    )
    channel.data_received(read)
    frames = Frames().read(transport)
    assert [opcode for opcode, _ in frames] == [0xA, 0x8]
    assert frames[0] == (0xA, b"before")
    assert frames[1][1][:2] == (1002).to_bytes(2, "big")
    assert channel.closing
    assert transport.closing  # the broken frame failed the connection: no answer awaited
    assert hits == []  # a bad message is no limit


async def test_a_bad_message_closes_1002_and_waits_for_the_listeners_answer() -> None:
    channel = _channel([])
    transport = _attach(channel)
    channel.data_received(_frame(0x1, b'{"accept": {}}'))
    ((opcode, payload),) = Frames().read(transport)
    assert (opcode, payload[:2]) == (0x8, (1002).to_bytes(2, "big"))
    assert not transport.closing  # the listener gets close_timeout to answer
    channel.data_received(_frame(0x8, payload))
    assert transport.closing


async def test_the_listeners_close_is_answered_and_tcp_closed() -> None:
    channel = _channel([])
    transport = _attach(channel, tail=_frame(0x8, encode_close_payload(1000, "bye")))
    assert Frames().read(transport) == [(0x8, encode_close_payload(1000, "bye"))]
    assert transport.closing
    channel.connection_lost(None)
    assert await channel.run() == 1000
