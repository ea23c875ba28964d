"""RFC 6455 framing, sans-I/O: FrameParser against a recording sink, encoders, close payloads.

Everything here is bytes in, recorded events out; no sockets and no event loop.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings, strategies as st

from hybridrelay.errors import ProtocolError
from hybridrelay.protocol.frames import (
    MAX_CONTROL_PAYLOAD,
    FrameError,
    FrameParser,
    Opcode,
    apply_mask,
    encode_close_payload,
    encode_frame,
    encode_frame_header,
    parse_close_payload,
)

MASK = b"\x37\xfa\x21\x3d"

Event = tuple[object, ...]


@dataclass
class Recorder:
    """A FrameSink that records every call, and can coalesce them into whole frames."""

    events: list[Event] = field(default_factory=list)

    def on_data_frame(self, fin: bool, opcode: int, length: int) -> None:
        self.events.append(("data", fin, opcode, length))

    def on_payload(self, data: bytes, frame_done: bool) -> None:
        assert isinstance(data, bytes)
        self.events.append(("payload", data, frame_done))

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        assert isinstance(payload, bytes)
        self.events.append(("control", opcode, payload))

    def frames(self) -> list[Event]:
        """Whole frames: ("data", fin, opcode, payload) and ("control", opcode, payload).

        Also checks the sink contract: every data frame gets at least one payload call,
        only the last one has frame_done, only an empty frame gets an empty chunk, and
        the chunks add up to the announced length.
        """
        out: list[Event] = []
        current: tuple[bool, int, int] | None = None
        chunks: list[bytes] = []
        for event in self.events:
            if event[0] == "data":
                assert current is None, "data frame started before the previous one ended"
                _, fin, opcode, length = event
                assert isinstance(fin, bool)
                assert isinstance(opcode, int)
                assert isinstance(length, int)
                current = (fin, opcode, length)
                chunks = []
            elif event[0] == "payload":
                assert current is not None, "payload outside a data frame"
                _, data, done = event
                assert isinstance(data, bytes)
                if data == b"":
                    assert current[2] == 0, "empty chunk for a non-empty frame"
                chunks.append(data)
                if done:
                    payload = b"".join(chunks)
                    assert len(payload) == current[2]
                    out.append(("data", current[0], current[1], payload))
                    current = None
            else:
                assert current is None, "control frame in the middle of a data frame"
                out.append(event)
        assert current is None, "data frame did not finish"
        return out


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool) -> bytes:
    return encode_frame(fin=fin, opcode=opcode, payload=payload, mask=MASK if masked else None)


def pattern(n: int, seed: int = 0) -> bytes:
    """Non-periodic bytes, so a mask applied at the wrong offset shows."""
    return bytes((i * 7 + seed + (i >> 8)) & 0xFF for i in range(n))


def parse(data: bytes, *, masked: bool) -> list[Event]:
    rec = Recorder()
    FrameParser(rec, masked=masked).feed(data)
    return rec.frames()


def parse_chunks(chunks: list[bytes], *, masked: bool) -> tuple[list[Event], FrameParser]:
    rec = Recorder()
    parser = FrameParser(rec, masked=masked)
    for chunk in chunks:
        parser.feed(chunk)
    return rec.frames(), parser


def py_xor(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    return bytes(b ^ mask[(i + offset) % 4] for i, b in enumerate(data))


# A message fragmented over three frames with control frames interleaved, then more
# messages: every length class except 64-bit, empty data and control frames, and an
# empty ping as the last frame of the stream.
def small_stream(masked: bool) -> tuple[bytes, list[Event]]:
    parts: list[tuple[int, bytes, bool]] = [
        (Opcode.TEXT, pattern(5, 1), False),
        (Opcode.PING, b"", True),
        (Opcode.CONTINUATION, pattern(300, 2), False),
        (Opcode.PONG, pattern(MAX_CONTROL_PAYLOAD, 3), True),
        (Opcode.CONTINUATION, b"", False),
        (Opcode.CONTINUATION, pattern(126, 4), True),
        (Opcode.BINARY, b"", True),
        (Opcode.BINARY, pattern(125, 5), True),
        (Opcode.CLOSE, encode_close_payload(1000, "bye"), True),
        (Opcode.PING, b"", True),
    ]
    data = b"".join(frame(op, p, fin=fin, masked=masked) for op, p, fin in parts)
    expected: list[Event] = [
        ("control", int(op), p) if op >= 8 else ("data", fin, int(op), p) for op, p, fin in parts
    ]
    return data, expected


def big_stream(masked: bool) -> tuple[bytes, list[Event]]:
    parts: list[tuple[int, bytes, bool]] = [
        (Opcode.BINARY, pattern(65536, 6), False),
        (Opcode.PING, pattern(3, 7), True),
        (Opcode.CONTINUATION, pattern(65535, 8), True),
        (Opcode.TEXT, pattern(1, 9), True),
        (Opcode.PONG, b"", True),
    ]
    data = b"".join(frame(op, p, fin=fin, masked=masked) for op, p, fin in parts)
    expected: list[Event] = [
        ("control", int(op), p) if op >= 8 else ("data", fin, int(op), p) for op, p, fin in parts
    ]
    return data, expected


# --- frame shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize(
    ("length", "header_len"),
    [(0, 2), (1, 2), (125, 2), (126, 4), (1000, 4), (65535, 4), (65536, 10), (70000, 10)],
)
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_data_frame_shapes(masked: bool, length: int, header_len: int, opcode: int) -> None:
    payload = pattern(length)
    data = frame(opcode, payload, masked=masked)
    assert len(data) == header_len + (4 if masked else 0) + length
    assert data[1] & 0x80 == (0x80 if masked else 0)
    if length:
        assert data[-length:] == (py_xor(payload, MASK) if masked else payload)
    assert parse(data, masked=masked) == [("data", True, opcode, payload)]


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("length", [0, 1, 2, 124, MAX_CONTROL_PAYLOAD])
@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_control_frame_shapes(masked: bool, length: int, opcode: int) -> None:
    payload = pattern(length)
    assert parse(frame(opcode, payload, masked=masked), masked=masked) == [
        ("control", opcode, payload)
    ]


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_empty_data_frame_reports_one_empty_final_chunk(masked: bool) -> None:
    rec = Recorder()
    parser = FrameParser(rec, masked=masked)
    parser.feed(frame(Opcode.BINARY, b"", masked=masked))
    assert rec.events == [("data", True, Opcode.BINARY, 0), ("payload", b"", True)]
    assert not parser.mid_frame


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_empty_control_frame_at_the_very_end_of_a_chunk(masked: bool, opcode: int) -> None:
    rec = Recorder()
    parser = FrameParser(rec, masked=masked)
    parser.feed(frame(Opcode.TEXT, b"hi", masked=masked) + frame(opcode, b"", masked=masked))
    assert rec.frames() == [("data", True, Opcode.TEXT, b"hi"), ("control", opcode, b"")]
    assert not parser.mid_frame
    # And as a chunk of its own.
    parser.feed(frame(opcode, b"", masked=masked))
    assert rec.events[-1] == ("control", opcode, b"")


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_header_split_across_feeds_is_buffered(masked: bool) -> None:
    data = frame(Opcode.BINARY, pattern(70000), masked=masked)
    rec = Recorder()
    parser = FrameParser(rec, masked=masked)
    header_len = 10 + (4 if masked else 0)
    for i in range(header_len):
        parser.feed(data[i : i + 1])
        assert len(rec.events) == (0 if i < header_len - 1 else 1)
        assert parser.mid_frame
    parser.feed(data[header_len:])
    assert rec.frames() == [("data", True, Opcode.BINARY, pattern(70000))]
    assert not parser.mid_frame


def test_payload_is_streamed_not_buffered() -> None:
    payload = pattern(1000)
    data = frame(Opcode.BINARY, payload, masked=True)
    rec = Recorder()
    parser = FrameParser(rec, masked=True)
    parser.feed(data[:108])  # 8 header bytes (16-bit length, mask) + 100 payload bytes
    assert rec.events == [("data", True, Opcode.BINARY, 1000), ("payload", payload[:100], False)]
    assert parser.mid_frame
    parser.feed(data[108:])
    assert rec.events[-1] == ("payload", payload[100:], True)
    assert not parser.mid_frame


def test_feeding_nothing_is_harmless() -> None:
    rec = Recorder()
    parser = FrameParser(rec, masked=True)
    parser.feed(b"")
    assert rec.events == []
    assert not parser.mid_frame
    assert not parser.in_message


# --- streaming at every boundary ---------------------------------------------------------


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_stream_in_one_piece(masked: bool) -> None:
    for build in (small_stream, big_stream):
        data, expected = build(masked)
        frames, parser = parse_chunks([data], masked=masked)
        assert frames == expected
        assert not parser.mid_frame
        assert not parser.in_message


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_stream_split_at_every_position(masked: bool) -> None:
    data, expected = small_stream(masked)
    for cut in range(len(data) + 1):
        frames, parser = parse_chunks([data[:cut], data[cut:]], masked=masked)
        assert frames == expected, f"split at {cut}"
        assert not parser.mid_frame


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_stream_split_at_every_pair_of_positions(masked: bool) -> None:
    data, expected = small_stream(masked)
    n = len(data)
    for a in range(0, n + 1, 3):
        for b in range(a, n + 1, 7):
            frames, _ = parse_chunks([data[:a], data[a:b], data[b:]], masked=masked)
            assert frames == expected, f"split at {a} and {b}"


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_stream_fed_byte_by_byte(masked: bool) -> None:
    data, expected = small_stream(masked)
    frames, parser = parse_chunks([data[i : i + 1] for i in range(len(data))], masked=masked)
    assert frames == expected
    assert not parser.mid_frame


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=200, deadline=None)
@given(masked=st.booleans(), cuts=st.lists(st.integers(min_value=0), max_size=40))
def test_small_stream_random_chunking(masked: bool, cuts: list[int]) -> None:
    data, expected = small_stream(masked)
    frames, parser = parse_chunks(_chunked(data, cuts), masked=masked)
    assert frames == expected
    assert not parser.mid_frame


@settings(max_examples=200, deadline=None)
@given(masked=st.booleans(), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_big_stream_random_chunking(masked: bool, cuts: list[int]) -> None:
    data, expected = big_stream(masked)
    frames, parser = parse_chunks(_chunked(data, cuts), masked=masked)
    assert frames == expected
    assert not parser.mid_frame


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(max_size=600),
    mask=st.binary(min_size=4, max_size=4),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_masked_payload_round_trips_under_any_mask_and_chunking(
    payload: bytes, mask: bytes, cuts: list[int]
) -> None:
    data = encode_frame(fin=True, opcode=Opcode.BINARY, payload=payload, mask=mask)
    frames, _ = parse_chunks(_chunked(data, cuts), masked=True)
    assert frames == [("data", True, Opcode.BINARY, payload)]


# --- message-level rules (RFC 6455 §5.4) --------------------------------------------------


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_fragmented_message_state(masked: bool) -> None:
    rec = Recorder()
    parser = FrameParser(rec, masked=masked)
    states = [parser.in_message]
    for data in (
        frame(Opcode.TEXT, b"a", fin=False, masked=masked),
        frame(Opcode.PING, b"p", masked=masked),
        frame(Opcode.CLOSE, encode_close_payload(1001), masked=masked),
        frame(Opcode.CONTINUATION, b"b", fin=False, masked=masked),
        frame(Opcode.PONG, b"", masked=masked),
        frame(Opcode.CONTINUATION, b"c", masked=masked),
    ):
        parser.feed(data)
        states.append(parser.in_message)
    assert states == [False, True, True, True, True, True, False]
    parser.feed(frame(Opcode.BINARY, b"next", masked=masked))
    assert rec.frames() == [
        ("data", False, Opcode.TEXT, b"a"),
        ("control", Opcode.PING, b"p"),
        ("control", Opcode.CLOSE, encode_close_payload(1001)),
        ("data", False, Opcode.CONTINUATION, b"b"),
        ("control", Opcode.PONG, b""),
        ("data", True, Opcode.CONTINUATION, b"c"),
        ("data", True, Opcode.BINARY, b"next"),
    ]


def _expect_failure(data: bytes, *, masked: bool, code: int = 1002) -> FrameError:
    parser = FrameParser(Recorder(), masked=masked)
    with pytest.raises(FrameError) as info:
        parser.feed(data)
    assert info.value.code == code
    assert info.value.reason
    assert isinstance(info.value, ProtocolError)
    # A failed parser refuses everything after, even a valid frame.
    with pytest.raises(FrameError) as again:
        parser.feed(frame(Opcode.PING, b"", masked=masked))
    assert again.value.code == 1002
    return info.value


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_continuation_without_start_fails(masked: bool) -> None:
    err = _expect_failure(frame(Opcode.CONTINUATION, b"x", masked=masked), masked=masked)
    assert "continuation" in err.reason


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_continuation_after_a_finished_message_fails(masked: bool) -> None:
    data = frame(Opcode.TEXT, b"done", masked=masked) + frame(
        Opcode.CONTINUATION, b"x", masked=masked
    )
    _expect_failure(data, masked=masked)


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("second", [Opcode.TEXT, Opcode.BINARY])
def test_new_data_frame_inside_a_fragmented_message_fails(masked: bool, second: int) -> None:
    data = frame(Opcode.BINARY, b"a", fin=False, masked=masked) + frame(second, b"b", masked=masked)
    rec = Recorder()
    parser = FrameParser(rec, masked=masked)
    with pytest.raises(FrameError) as info:
        parser.feed(data)
    assert info.value.code == 1002
    # The first frame was delivered before the violation was found.
    assert rec.events[:2] == [("data", False, Opcode.BINARY, 1), ("payload", b"a", True)]


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes_fail(masked: bool, opcode: int) -> None:
    err = _expect_failure(frame(opcode, b"x", masked=masked), masked=masked)
    assert "opcode" in err.reason


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.PING])
def test_rsv_bits_fail(masked: bool, rsv: int, opcode: int) -> None:
    data = bytearray(frame(opcode, b"x", masked=masked))
    data[0] |= rsv
    err = _expect_failure(bytes(data), masked=masked)
    assert "reserved bits" in err.reason


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_fragmented_control_frame_fails(masked: bool, opcode: int) -> None:
    err = _expect_failure(frame(opcode, b"x", fin=False, masked=masked), masked=masked)
    assert "fragmented control" in err.reason


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("length", [126, 1000, 65536])
@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_control_frame_over_125_bytes_fails_on_the_header(
    masked: bool, length: int, opcode: int
) -> None:
    header = encode_frame_header(
        fin=True, opcode=opcode, length=length, mask=MASK if masked else None
    )
    err = _expect_failure(header, masked=masked)  # no payload needed to refuse it
    assert "125" in err.reason


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_64_bit_length_with_msb_set_fails(masked: bool) -> None:
    b1 = 127 | (0x80 if masked else 0)
    header = struct.pack("!BBQ", 0x82, b1, 1 << 63) + (MASK if masked else b"")
    err = _expect_failure(header, masked=masked)
    assert "most significant bit" in err.reason
    # The largest legal length is accepted (its payload just never comes).
    rec = Recorder()
    legal = struct.pack("!BBQ", 0x82, b1, (1 << 63) - 1) + (MASK if masked else b"")
    FrameParser(rec, masked=masked).feed(legal)
    assert rec.events == [("data", True, Opcode.BINARY, (1 << 63) - 1)]


def test_unmasked_frame_to_a_server_parser_fails() -> None:
    err = _expect_failure(frame(Opcode.TEXT, b"x", masked=False), masked=True)
    assert err.reason == "unmasked client frame"


def test_masked_frame_to_a_client_parser_fails() -> None:
    err = _expect_failure(frame(Opcode.TEXT, b"x", masked=True), masked=False)
    assert err.reason == "masked server frame"


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_failure_after_a_split_header(masked: bool) -> None:
    data = bytearray(frame(Opcode.TEXT, pattern(300), masked=masked))
    data[0] |= 0x40
    parser = FrameParser(Recorder(), masked=masked)
    parser.feed(bytes(data[:1]))  # not enough to judge yet
    with pytest.raises(FrameError):
        parser.feed(bytes(data[1:]))
    with pytest.raises(FrameError):
        parser.feed(b"")


# --- encoders -----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [None, MASK], ids=["unmasked", "masked"])
@pytest.mark.parametrize("fin", [True, False])
@pytest.mark.parametrize("opcode", list(Opcode))
@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 2**32, 2**63 - 1])
def test_encode_frame_header_round_trip(
    mask: bytes | None, fin: bool, opcode: int, length: int
) -> None:
    header = encode_frame_header(fin=fin, opcode=opcode, length=length, mask=mask)
    assert header[0] == (0x80 if fin else 0) | opcode
    assert bool(header[1] & 0x80) == (mask is not None)
    code = header[1] & 0x7F
    if length < 126:
        assert code == length
        size = 2
    elif length < 65536:
        assert code == 126
        assert struct.unpack_from("!H", header, 2)[0] == length
        size = 4
    else:
        assert code == 127
        assert struct.unpack_from("!Q", header, 2)[0] == length
        size = 10
    if mask is None:
        assert len(header) == size
    else:
        assert header[size:] == mask
        assert len(header) == size + 4


@settings(max_examples=200, deadline=None)
@given(
    fin=st.booleans(),
    opcode=st.sampled_from([Opcode.TEXT, Opcode.BINARY]),
    payload=st.binary(max_size=70000),
    mask=st.none() | st.binary(min_size=4, max_size=4),
)
def test_encode_frame_round_trips_through_the_parser(
    fin: bool, opcode: int, payload: bytes, mask: bytes | None
) -> None:
    data = encode_frame(fin=fin, opcode=opcode, payload=payload, mask=mask)
    frames, parser = parse_chunks([data], masked=mask is not None)
    assert frames == [("data", fin, opcode, payload)]
    assert parser.in_message == (not fin)


def test_encode_frame_masks_the_payload() -> None:
    payload = pattern(10)
    data = encode_frame(fin=True, opcode=Opcode.BINARY, payload=payload, mask=MASK)
    assert data == bytes([0x82, 0x80 | 10]) + MASK + py_xor(payload, MASK)
    assert encode_frame(fin=True, opcode=Opcode.BINARY, payload=payload) == b"\x82\x0a" + payload
    assert encode_frame(fin=True, opcode=Opcode.PING, payload=b"", mask=MASK) == b"\x89\x80" + MASK


# --- apply_mask ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=200),
    mask=st.binary(min_size=4, max_size=4),
    offset=st.integers(min_value=0, max_value=1 << 40),
)
def test_apply_mask_equals_pure_python_xor(data: bytes, mask: bytes, offset: int) -> None:
    assert apply_mask(data, mask, offset) == py_xor(data, mask, offset)
    assert apply_mask(bytearray(data), mask, offset) == py_xor(data, mask, offset)
    assert apply_mask(memoryview(data), mask, offset) == py_xor(data, mask, offset)


@pytest.mark.parametrize("offset", range(9))
def test_apply_mask_offsets_compose(offset: int) -> None:
    data = pattern(100)
    whole = apply_mask(data, MASK)
    assert apply_mask(data[:offset], MASK) + apply_mask(data[offset:], MASK, offset) == whole
    assert apply_mask(whole, MASK) == data
    assert apply_mask(b"", MASK, offset) == b""


# --- close payloads (RFC 6455 §5.5.1, §7.4) -----------------------------------------------


def test_parse_close_payload_empty_is_1005() -> None:
    assert parse_close_payload(b"") == (1005, "")


def test_parse_close_payload_one_byte_fails() -> None:
    with pytest.raises(FrameError) as info:
        parse_close_payload(b"\x03")
    assert info.value.code == 1002


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_parse_close_payload_invalid_code_fails(code: int) -> None:
    with pytest.raises(FrameError) as info:
        parse_close_payload(struct.pack("!H", code) + b"why")
    assert info.value.code == 1002
    assert str(code) in info.value.reason


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
)
def test_parse_close_payload_valid_codes(code: int) -> None:
    assert parse_close_payload(struct.pack("!H", code)) == (code, "")
    assert parse_close_payload(struct.pack("!H", code) + "ok ✓".encode()) == (code, "ok ✓")


@pytest.mark.parametrize("reason", [b"\xff", b"ab\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_parse_close_payload_bad_utf8_is_1007(reason: bytes) -> None:
    with pytest.raises(FrameError) as info:
        parse_close_payload(struct.pack("!H", 1000) + reason)
    assert info.value.code == 1007


def test_encode_close_payload_round_trips() -> None:
    assert encode_close_payload(1000) == b"\x03\xe8"
    assert parse_close_payload(encode_close_payload(4001, "gone away")) == (4001, "gone away")


@pytest.mark.parametrize("char", ["é", "€", "😀", "a"])
def test_encode_close_payload_truncates_at_a_utf8_boundary(char: str) -> None:
    reason = char * 200
    payload = encode_close_payload(1001, reason)
    assert len(payload) <= MAX_CONTROL_PAYLOAD
    width = len(char.encode())
    assert len(payload) - 2 == (123 // width) * width  # as many whole characters as fit
    code, text = parse_close_payload(payload)  # still valid UTF-8
    assert code == 1001
    assert reason.startswith(text)
    assert len(text) == 123 // width
    # It fits in a control frame the parser accepts.
    frames = parse(frame(Opcode.CLOSE, payload, masked=True), masked=True)
    assert frames == [("control", Opcode.CLOSE, payload)]


def test_encode_close_payload_keeps_a_reason_that_fits_exactly() -> None:
    reason = "x" * 123
    assert encode_close_payload(1000, reason) == b"\x03\xe8" + reason.encode()


@pytest.mark.parametrize("masked", [True, False])
def test_whole_frame_takes_the_frames_a_read_holds_whole_and_only_those(masked: bool) -> None:
    """whole_frame(sink, fin, opcode, payload) replaces on_data_frame + on_payload for a frame
    whose payload is all there; a frame cut by the read goes the usual way."""
    rec = Recorder()
    parser = FrameParser(rec, masked=masked)
    whole: list[Event] = []
    parser.whole_frame = lambda sink, fin, opcode, payload: whole.append(
        ("data", sink is rec, fin, opcode, payload)
    )
    data = pattern(300, seed=3)
    wire = (
        frame(0x2, b"", masked=masked)
        + frame(0x1, data[:126], fin=False, masked=masked)
        + frame(0x9, b"p", masked=masked)
        + frame(0x0, data, masked=masked)
    )
    cut = len(wire) - 100  # in the middle of the last frame's payload
    parser.feed(wire[:cut])
    parser.feed(wire[cut:])
    assert whole == [("data", True, True, 0x2, b""), ("data", True, False, 0x1, data[:126])]
    assert rec.frames() == [("control", 0x9, b"p"), ("data", True, 0x0, data)]


@dataclass
class ViewRecorder(Recorder):
    """A Recorder that takes payload as views (FrameParser.view_payload_to)."""

    views: list[memoryview] = field(default_factory=list)

    def on_payload_view(self, data: memoryview, frame_done: bool) -> None:
        assert isinstance(data, memoryview)
        self.views.append(data)
        self.events.append(("payload", bytes(data), frame_done))


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_payload_views_carry_what_bytes_would(cuts: list[int]) -> None:
    """Views of the reads, split anywhere, make the same frames as copied bytes."""
    wire = (
        encode_frame(fin=False, opcode=Opcode.BINARY, payload=bytes(range(200)))
        + encode_frame(fin=True, opcode=Opcode.PING, payload=b"ping")
        + encode_frame(fin=True, opcode=Opcode.CONTINUATION, payload=b"\x00" * 70_000)
        + encode_frame(fin=True, opcode=Opcode.TEXT, payload="été".encode())
    )
    expected = Recorder()
    FrameParser(expected, masked=False).feed(wire)
    viewed = ViewRecorder()
    parser = FrameParser(viewed, masked=False)
    parser.view_payload_to(viewed)
    assert parser.views
    bounds = sorted({c % (len(wire) + 1) for c in cuts})
    for a, b in zip([0, *bounds], [*bounds, len(wire)], strict=True):
        parser.feed(wire[a:b])
    assert viewed.frames() == expected.frames()
    assert viewed.views  # the payload really came as views
    parser.view_payload_to(None)
    assert not parser.views


def test_payload_views_are_refused_for_masked_frames() -> None:
    sink = ViewRecorder()
    with pytest.raises(ValueError, match="no views"):
        FrameParser(sink, masked=True).view_payload_to(sink)
