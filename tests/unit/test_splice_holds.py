"""Why a splice leg is not read, reason by reason (the holds of a leg's Connection).

A leg may be unread for several reasons at once (its peer's buffer is full, the
control frames it is owed pile up); it must be read again only when the last one
is gone, whatever the order. Driven with bytes through a recording transport:
the socket behaviour itself is covered by tests/security/test_ping_flood.py.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from hybridrelay.protocol.frames import encode_frame
from hybridrelay.relay.splice import Leg, Splice, SpliceSettings

_MASK = b"\x0a\x0b\x0c\x0d"


class RecordingTransport(asyncio.Transport):
    """Records what a leg writes and whether it reads; pause/resume must alternate."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.written = bytearray()
        self.closing = False
        self.buffered = 0  # what get_write_buffer_size() says, as the test sets it
        self.protocol: asyncio.BaseProtocol | None = None

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def write(self, data: Any) -> None:
        self.written += data

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def _ping(payload: bytes) -> bytes:
    return encode_frame(fin=True, opcode=0x9, payload=payload, mask=_MASK)


def _pong(payload: bytes) -> bytes:
    return encode_frame(fin=True, opcode=0xA, payload=payload)


@pytest.fixture
def hits() -> list[str]:
    return []


@pytest.fixture
async def splice(hits: list[str]) -> Splice:
    splice = Splice(SpliceSettings(close_timeout=5.0, max_queued_control=4, limit_hit=hits.append))
    splice.listener.attach(RecordingTransport(), paused=True)
    splice.join(RecordingTransport(), b"", b"")
    return splice


def _transport(leg: Any) -> RecordingTransport:
    transport = leg.transport
    assert isinstance(transport, RecordingTransport)
    return transport


def _fill(leg: Leg) -> None:
    """The leg's socket buffer goes over its high-water mark, as asyncio reports it."""
    _transport(leg).buffered = leg.splice.settings.write_buffer + 1
    leg.pause_writing()


def _drain(leg: Leg) -> None:
    _transport(leg).buffered = 0
    leg.resume_writing()


async def test_pongs_to_a_leg_that_does_not_read_wait_then_coalesce_then_hold(
    splice: Splice, hits: list[str]
) -> None:
    sender = _transport(splice.sender)
    _fill(splice.sender)  # its socket buffer is over the mark
    splice.sender.data_received(b"".join(_ping(b"%d" % i) for i in range(3)))
    assert sender.written == b""  # nothing more goes into a full buffer
    assert sender.is_reading()
    assert not hits
    splice.sender.data_received(_ping(b"3") + _ping(b"4") + _ping(b"5"))
    # Fourth pong: the queue is full, the leg is not read; later pongs replace the newest.
    assert not sender.is_reading()
    assert hits == ["max_queued_control_frames"]
    assert splice.sender.conn.control_pending == 4
    assert sender.written == b""
    _drain(splice.sender)
    assert sender.written == _pong(b"0") + _pong(b"1") + _pong(b"2") + _pong(b"5")
    assert sender.is_reading()


@pytest.mark.parametrize("first", ["own", "peer"])
async def test_a_leg_held_for_two_reasons_reads_again_only_when_both_are_gone(
    splice: Splice, first: str
) -> None:
    sender = _transport(splice.sender)
    _fill(splice.sender)
    splice.sender.data_received(b"".join(_ping(b"%d" % i) for i in range(4)))
    _fill(splice.listener)  # and what the sender sends could not be written
    assert not sender.is_reading()
    if first == "own":
        _drain(splice.sender)
        assert not sender.is_reading()  # the listener's buffer is still full
        _drain(splice.listener)
    else:
        _drain(splice.listener)
        assert not sender.is_reading()  # its own pongs still wait
        _drain(splice.sender)
    assert sender.is_reading()


async def test_pongs_behind_a_frame_in_flight_coalesce_without_holding_the_leg(
    splice: Splice, hits: list[str]
) -> None:
    sender, listener = _transport(splice.sender), _transport(splice.listener)
    # The listener starts a 10-byte frame to the sender and sends 4 bytes of it.
    frame = encode_frame(fin=True, opcode=0x2, payload=b"0123456789", mask=_MASK)
    splice.listener.data_received(frame[:10])
    splice.sender.data_received(b"".join(_ping(b"%d" % i) for i in range(6)))
    # The queue is full but only waits for that frame: the sender is still read (holding
    # it could make two legs each wait for the other's frame).
    assert sender.is_reading()
    assert listener.is_reading()
    assert hits == ["max_queued_control_frames"]
    assert splice.sender.conn.control_pending == 4
    splice.listener.data_received(frame[10:])
    pongs = _pong(b"0") + _pong(b"1") + _pong(b"2") + _pong(b"5")
    assert sender.written == b"\x82\x0a0123456789" + pongs


async def test_the_unreleased_listener_leg_stays_unread_whatever_its_peer_does() -> None:
    splice = Splice(SpliceSettings(close_timeout=5.0))
    listener = RecordingTransport()
    splice.listener.attach(listener, paused=True)
    splice.sender.attach(RecordingTransport())
    splice.sender.release(b"")
    _fill(splice.sender)
    _drain(splice.sender)
    assert not listener.is_reading()  # still waiting for release()
    splice.listener.release(b"")
    assert listener.is_reading()


class _OnFinish:
    def __init__(self, splice: Splice, ends: list[tuple[int, int]]) -> None:
        self.splice = splice
        self.ends = ends

    def __call__(self, up: int, down: int) -> None:
        self.ends.append((up, down))


async def test_done_resolves_whether_asked_for_before_or_after_the_splice_finished() -> None:
    early = Splice(SpliceSettings(close_timeout=5.0))
    waiting = early.done
    late = Splice(SpliceSettings(close_timeout=5.0))
    for splice in (early, late):
        splice.listener.attach(RecordingTransport(), paused=True)
        splice.join(RecordingTransport(), b"", b"")
        splice.sender.connection_lost(None)
        splice.listener.connection_lost(None)
    assert waiting.done()
    assert early.done is waiting
    assert late.done.done()
    await late.wait()


async def test_a_stream_id_once_started_the_same_at_every_read() -> None:
    splice = Splice(SpliceSettings(close_timeout=5.0))
    assert splice.stream_id == ""  # not a live stream yet (mgmt/live.py lists none)
    splice.started("listener-1", 1234.5)
    stream_id = splice.stream_id
    assert len(stream_id) == 16
    assert int(stream_id, 16) >= 0
    assert splice.stream_id == stream_id
    assert (splice.listener_id, splice.started_at) == ("listener-1", 1234.5)
    assert Splice(SpliceSettings(close_timeout=5.0)).stream_id == ""


async def test_a_finished_splice_is_freed_without_the_cyclic_gc() -> None:
    """Once both legs are gone nothing refers from one part of a splice to another, so
    it is freed by reference counting as soon as the relay lets go of it; a relay that
    left every connect to the cyclic GC would pay for it in CPU per connect."""
    gc.collect()
    gc.disable()
    try:
        splice = Splice(SpliceSettings(close_timeout=5.0))
        ends: list[tuple[int, int]] = []
        splice.on_finish = _OnFinish(splice, ends)  # refers back, as the relay's does
        listener, sender = RecordingTransport(), RecordingTransport()
        splice.listener.attach(listener, paused=True)
        splice.join(sender, b"", b"")
        close = encode_frame(fin=True, opcode=0x8, payload=b"\x03\xe8", mask=_MASK)
        splice.sender.data_received(_ping(b"x") + close)
        splice.listener.data_received(close)
        assert listener.closing
        assert sender.closing
        splice.sender.connection_lost(None)
        splice.listener.connection_lost(None)
        assert splice.done.done()
        assert ends == [(0, 0)]
        del splice
        listener.protocol = sender.protocol = None  # as asyncio's transports do once closed
        assert gc.collect() == 0  # nothing was left in a reference cycle
    finally:
        gc.enable()
