"""The datagram codec: frames survive any split of the stream; bad lengths are documented errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hybridrelay.datagrams import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    DatagramDecoder,
    encode,
    encode_many,
)
from hybridrelay.errors import ProtocolError

datagrams = st.lists(st.binary(max_size=2000), max_size=30)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


def test_frame_is_length_then_payload() -> None:
    assert encode(b"abc") == b"\x00\x03abc"
    assert encode(b"") == b"\x00\x00"
    assert encode(bytearray(b"x" * 300))[:2] == b"\x01\x2c"
    assert encode_many([b"a", b"", b"bc"]) == b"\x00\x01a\x00\x00\x00\x02bc"


def test_largest_datagram_round_trips() -> None:
    big = bytes(range(256)) * (MAX_DATAGRAM // 256) + b"z" * (MAX_DATAGRAM % 256)
    assert len(big) == MAX_DATAGRAM
    assert DatagramDecoder().feed(encode(big)) == [big]


def test_encoding_an_oversized_datagram_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="65507"):
        encode(b"x" * (MAX_DATAGRAM + 1))


@pytest.mark.parametrize("length", [MAX_DATAGRAM + 1, 0xFFFF])
def test_bad_length_raises_protocol_error_and_stays_failed(length: int) -> None:
    decoder = DatagramDecoder()
    assert decoder.feed(encode(b"ok")) == [b"ok"]
    with pytest.raises(ProtocolError, match="over the 65507-byte limit"):
        decoder.feed(length.to_bytes(2, "big") + b"....")
    with pytest.raises(ProtocolError):
        decoder.feed(encode(b"later"))


def test_partial_frames_wait_for_the_rest() -> None:
    decoder = DatagramDecoder()
    assert decoder.feed(b"\x00") == []
    assert decoder.pending == 1
    assert decoder.feed(b"\x05ab") == []
    assert decoder.feed(b"cde\x00\x00\x00") == [b"abcde", b""]
    assert decoder.pending == 1
    assert decoder.feed(b"\x01!") == [b"!"]
    assert decoder.pending == 0


@settings(max_examples=300, deadline=None)
@given(datagrams, st.lists(st.integers(min_value=0), max_size=40))
def test_any_split_gives_back_the_same_datagrams(items: list[bytes], cuts: list[int]) -> None:
    stream = encode_many(items)
    decoder = DatagramDecoder()
    out: list[bytes] = []
    for piece in split(stream, cuts):
        out += decoder.feed(piece)
    assert out == items
    assert decoder.pending == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes, cuts: list[int]) -> None:
    decoder = DatagramDecoder()
    try:
        for piece in split(data, cuts):
            for datagram in decoder.feed(piece):
                assert len(datagram) <= MAX_DATAGRAM
    except ProtocolError:
        return
    # Whatever is left is one incomplete frame: shorter than its header plus payload.
    assert decoder.pending < HEADER_SIZE + MAX_DATAGRAM
