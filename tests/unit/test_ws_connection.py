"""The sans-I/O WebSocket connection (protocol/connection.py), driven with bytes only.

Both ends live in memory: a :class:`ConnectionPair` moves what one end wants to send
into the other (h11/wsproto style). Raw frames, for what a well-behaved end never
sends, come from protocol/frames.py's encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings, strategies as st

from hybridrelay.errors import ConnectionClosedError
from hybridrelay.protocol.connection import (
    BytesMessage,
    CloseReceived,
    Connection,
    ConnectionLost,
    Event,
    Failed,
    Frame,
    Hold,
    LimitReached,
    Ping,
    Pong,
    Role,
    State,
    TextMessage,
)
from hybridrelay.protocol.frames import FrameParser, Opcode, encode_close_payload, encode_frame

MASK = b"\x01\x02\x03\x04"


def state(conn: Connection) -> State:
    """The state now (read through a call: mypy would keep an earlier narrowing)."""
    return conn.state


def wants_read(conn: Connection) -> bool:
    return conn.wants_read


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A frame as a client sends it (masked)."""
    return encode_frame(fin=fin, opcode=opcode, payload=payload, mask=MASK)


@dataclass
class ConnectionPair:
    """A client and a server Connection wired to each other in memory."""

    client: Connection
    server: Connection

    @classmethod
    def make(
        cls, *, client: dict[str, object] | None = None, server: dict[str, object] | None = None
    ) -> ConnectionPair:
        return cls(
            Connection(Role.CLIENT, **(client or {})),  # type: ignore[arg-type]
            Connection(Role.SERVER, **(server or {})),  # type: ignore[arg-type]
        )

    def to_server(self) -> list[Event]:
        """Deliver what the client wrote; return the server's events."""
        return self.server.receive_data(b"".join(self.client.data_to_send()))

    def to_client(self) -> list[Event]:
        return self.client.receive_data(b"".join(self.server.data_to_send()))


@dataclass
class WireReader:
    """Decodes what a Connection wrote, whole frames, as (opcode, fin, payload)."""

    masked: bool
    frames: list[tuple[int, bool, bytes]] = field(default_factory=list)
    _fin: bool = True
    _op: int = 0
    _buf: bytes = b""

    def __post_init__(self) -> None:
        self._parser = FrameParser(self, masked=self.masked)

    def on_data_frame(self, fin: bool, opcode: int, length: int) -> None:
        self._fin, self._op, self._buf = fin, opcode, b""

    def on_payload(self, data: bytes, frame_done: bool) -> None:
        self._buf += data
        if frame_done:
            self.frames.append((self._op, self._fin, self._buf))

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        self.frames.append((opcode, True, payload))

    def read(self, conn: Connection) -> list[tuple[int, bool, bytes]]:
        return self.read_bytes(b"".join(conn.data_to_send()))

    def read_bytes(self, data: bytes) -> list[tuple[int, bool, bytes]]:
        self._parser.feed(data)
        frames, self.frames = self.frames, []
        return frames


# ---------------------------------------------------------------------------- messages


def test_messages_both_ways_client_masks_server_does_not() -> None:
    pair = ConnectionPair.make()
    pair.client.send_message("héllo")
    pair.client.send_message(b"\x00\xff")
    out = b"".join(pair.client.data_to_send())
    assert out[1] & 0x80  # masked
    assert pair.server.receive_data(out) == [TextMessage("héllo"), BytesMessage(b"\x00\xff")]
    pair.server.send_message(b"back")
    out = b"".join(pair.server.data_to_send())
    assert not out[1] & 0x80
    assert pair.client.receive_data(out) == [BytesMessage(b"back")]
    assert pair.client.data_to_send() == []


def test_fragmented_message_with_interleaved_control_frames() -> None:
    pair = ConnectionPair.make()
    text = "añb".encode()  # the ñ is cut between the two frames
    pair.client.send_frame(Opcode.TEXT, text[:2], fin=False)
    pair.client.send_ping(b"p1")
    pair.client.send_frame(Opcode.CONTINUATION, text[2:], fin=False)
    pair.client.send_frame(Opcode.CONTINUATION, b"!")
    assert pair.to_server() == [Ping(b"p1"), TextMessage("añb!")]
    assert pair.to_client() == [Pong(b"p1")]


def test_sending_frames_out_of_message_order_is_refused() -> None:
    conn = Connection(Role.CLIENT)
    with pytest.raises(ValueError, match="continuation frame outside"):
        conn.send_frame(Opcode.CONTINUATION, b"x")
    conn.send_frame(Opcode.BINARY, b"x", fin=False)
    with pytest.raises(ValueError, match="new data frame inside"):
        conn.send_frame(Opcode.TEXT, b"x")
    with pytest.raises(ValueError, match="not a data opcode"):
        conn.send_frame(Opcode.PING, b"x")


def test_message_over_max_size_fails_1009_at_its_header() -> None:
    pair = ConnectionPair.make(server={"max_message_size": 10})
    pair.client.send_message(b"x" * 10)  # at the limit: fine
    pair.client.send_frame(Opcode.BINARY, b"x" * 6, fin=False)
    pair.client.send_frame(Opcode.CONTINUATION, b"x" * 5)  # 11 in all
    events = pair.to_server()
    assert events == [BytesMessage(b"x" * 10), Failed(1009, "message over 10 bytes")]
    assert state(pair.server) is State.CLOSED
    assert pair.to_client() == [CloseReceived(1009, "message over 10 bytes")]


def test_header_of_a_huge_frame_fails_before_any_payload() -> None:
    server = Connection(Role.SERVER, max_message_size=1024)
    header = bytes([0x82, 0xFF]) + (1 << 40).to_bytes(8, "big") + MASK
    events = server.receive_data(header)
    assert [type(e) for e in events] == [Failed]
    assert events[0].code == 1009  # type: ignore[union-attr]


def test_streaming_mode_has_no_size_limit() -> None:
    pair = ConnectionPair.make(server={"streaming": True, "max_message_size": 10})
    pair.client.send_message(b"y" * 100)
    assert pair.to_server() == [Frame(Opcode.BINARY, True, 100, b"y" * 100, True, True)]


# ---------------------------------------------------------------------------- UTF-8


def test_bad_utf8_in_one_frame_fails_1007() -> None:
    server = Connection(Role.SERVER)
    events = server.receive_data(client_frame(Opcode.TEXT, b"ok\xff"))
    assert events == [Failed(1007, "invalid UTF-8 in a text message")]
    reason = "invalid UTF-8 in a text message"
    assert WireReader(masked=False).read(server) == [
        (Opcode.CLOSE, True, encode_close_payload(1007, reason))
    ]


def test_bad_utf8_is_found_in_the_fragment_it_is_in_not_at_the_message_end() -> None:
    server = Connection(Role.SERVER)
    assert server.receive_data(client_frame(Opcode.TEXT, "é".encode()[:1], fin=False)) == []
    # The continuation of é must be a 0x80-0xBF byte: 'A' is invalid right now.
    events = server.receive_data(client_frame(Opcode.CONTINUATION, b"A", fin=False))
    assert [type(e) for e in events] == [Failed]
    assert events[0].code == 1007  # type: ignore[union-attr]


def test_truncated_utf8_at_message_end_fails_1007() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(client_frame(Opcode.TEXT, b"a", fin=False))
    events = server.receive_data(client_frame(Opcode.CONTINUATION, "é".encode()[:1]))
    assert events[0] == Failed(1007, "invalid UTF-8 in a text message")


def test_streaming_validates_text_across_frames_unless_told_not_to() -> None:
    bad = client_frame(Opcode.TEXT, b"\xc3", fin=False) + client_frame(Opcode.CONTINUATION, b"A")
    checked = Connection(Role.SERVER, streaming=True)
    assert isinstance(checked.receive_data(bad)[-1], Failed)
    relay = Connection(Role.SERVER, streaming=True, validate_utf8=False)
    assert [e.data for e in relay.receive_data(bad) if isinstance(e, Frame)] == [b"\xc3", b"A"]


def test_close_reason_must_be_utf8() -> None:
    server = Connection(Role.SERVER)
    events = server.receive_data(client_frame(Opcode.CLOSE, b"\x03\xe8\xff"))
    assert events == [Failed(1007, "close reason is not valid UTF-8")]


# ---------------------------------------------------------------------------- protocol errors


@pytest.mark.parametrize(
    ("role", "frame", "reason"),
    [
        (Role.SERVER, encode_frame(fin=True, opcode=2, payload=b"x"), "unmasked client frame"),
        (Role.CLIENT, client_frame(Opcode.BINARY, b"x"), "masked server frame"),
        (Role.SERVER, client_frame(Opcode.CONTINUATION, b"x"), "continuation frame outside"),
        (Role.SERVER, client_frame(0x3, b"x"), "reserved opcode"),
        (Role.SERVER, client_frame(Opcode.PING, b"x", fin=False), "fragmented control frame"),
        (Role.SERVER, client_frame(Opcode.CLOSE, b"\x03\xed"), "invalid close code 1005"),
        (Role.SERVER, client_frame(Opcode.CLOSE, b"\x03"), "1-byte payload"),
    ],
)
def test_protocol_errors_fail_1002_and_stop_parsing(role: Role, frame: bytes, reason: str) -> None:
    conn = Connection(role)
    after = client_frame(Opcode.BINARY, b"later") if role is Role.SERVER else b""
    events = conn.receive_data(frame + after)
    assert len(events) == 1
    assert isinstance(events[0], Failed)
    assert events[0].code == 1002
    assert reason in events[0].reason
    assert state(conn) is State.CLOSED
    assert conn.failure == (1002, events[0].reason)
    reader = WireReader(masked=role is Role.CLIENT)
    ((opcode, _, payload),) = reader.read(conn)
    assert opcode == Opcode.CLOSE
    assert payload[:2] == b"\x03\xea"
    assert conn.receive_data(client_frame(Opcode.BINARY, b"more")) == []
    with pytest.raises(ConnectionClosedError) as info:
        conn.send_message(b"x")
    assert info.value.code == 1002


def test_control_frame_over_125_bytes_names_the_limit() -> None:
    events = Connection(Role.SERVER).receive_data(client_frame(Opcode.PING, b"x" * 126))
    assert events == [Failed(1002, "control frame payload over 125 bytes", "max_control_payload")]


def test_failure_after_our_close_sends_no_second_close() -> None:
    server = Connection(Role.SERVER)
    server.send_close(1001, "going")
    events = server.receive_data(encode_frame(fin=True, opcode=2, payload=b"unmasked"))
    assert [type(e) for e in events] == [Failed]
    frames = WireReader(masked=False).read(server)
    assert frames == [(Opcode.CLOSE, True, encode_close_payload(1001, "going"))]
    assert state(server) is State.CLOSED


def test_without_auto_answer_pings_and_failures_are_answered_in_event_order() -> None:
    """auto_answer=False: the glue answers as it handles events, so a close it decides on
    a message is the close sent, and the ping and the broken frame behind it get nothing."""
    server = Connection(Role.SERVER, auto_answer=False)
    read = (
        client_frame(Opcode.PING, b"before")
        + client_frame(Opcode.TEXT, b"bad message")
        + client_frame(Opcode.PING, b"after")
        + client_frame(Opcode.TEXT, b"\xff")  # invalid UTF-8: 1007
    )
    events = server.receive_data(read)
    assert events == [
        Ping(b"before"),
        TextMessage("bad message"),
        Ping(b"after"),
        Failed(1007, "invalid UTF-8 in a text message"),
    ]
    assert server.data_to_send() == []  # nothing answered while parsing
    assert state(server) is State.OPEN  # until the glue reaches the Failed event
    server.send_pong(b"before")
    server.send_close(1002, "bad message")
    server.send_pong(b"after")  # behind our close: not sent
    server.fail(1007, "invalid UTF-8 in a text message")  # our close went out already
    assert WireReader(masked=False).read(server) == [
        (Opcode.PONG, True, b"before"),
        (Opcode.CLOSE, True, encode_close_payload(1002, "bad message")),
    ]
    assert state(server) is State.CLOSED


def test_without_auto_answer_a_failure_reached_first_sends_its_own_close() -> None:
    server = Connection(Role.SERVER, auto_answer=False)
    assert server.receive_data(encode_frame(fin=True, opcode=2, payload=b"unmasked")) == [
        Failed(1002, "unmasked client frame")
    ]
    assert server.receive_data(client_frame(Opcode.PING, b"late")) == []  # parses no more
    server.fail(1002, "unmasked client frame")
    ((opcode, _, payload),) = WireReader(masked=False).read(server)
    assert (opcode, payload[:2]) == (Opcode.CLOSE, b"\x03\xea")
    assert state(server) is State.CLOSED


# ---------------------------------------------------------------------------- closing


def test_close_handshake_echoes_code_and_reason() -> None:
    pair = ConnectionPair.make()
    pair.client.send_close(4000, "bye")
    assert state(pair.client) is State.CLOSE_SENT
    assert pair.to_server() == [CloseReceived(4000, "bye")]
    assert state(pair.server) is State.CLOSED
    assert pair.server.close_sent == (4000, "bye")
    assert pair.to_client() == [CloseReceived(4000, "bye")]
    assert state(pair.client) is State.CLOSED
    assert pair.client.close_code == 4000
    assert pair.client.close_reason == "bye"


def test_close_without_code_is_echoed_without_code() -> None:
    pair = ConnectionPair.make()
    pair.client.send_close(1005)
    assert pair.to_server() == [CloseReceived(1005, "")]
    assert WireReader(masked=False).read(pair.server) == [(Opcode.CLOSE, True, b"")]


def test_half_close_data_flows_after_close_received() -> None:
    """HC §5: the side that got a close keeps sending until it closes too."""
    pair = ConnectionPair.make(server={"auto_close_echo": False})
    pair.client.send_close(1000, "Shutdown")
    assert pair.to_server() == [CloseReceived(1000, "Shutdown")]
    assert state(pair.server) is State.CLOSE_RECEIVED
    assert pair.server.data_to_send() == []  # no echo yet
    pair.server.send_message(b"tail 1")
    pair.server.send_ping(b"still")
    pair.server.send_message("tail 2")
    # The client sent its close but still receives (and does not answer pings).
    assert pair.to_client() == [BytesMessage(b"tail 1"), Ping(b"still"), TextMessage("tail 2")]
    assert pair.client.data_to_send() == []
    assert state(pair.client) is State.CLOSE_SENT
    pair.server.send_close(1000, "done")
    assert state(pair.server) is State.CLOSED
    assert pair.to_client() == [CloseReceived(1000, "done")]
    assert state(pair.client) is State.CLOSED


def test_close_sent_refuses_sending_but_receives() -> None:
    pair = ConnectionPair.make()
    pair.client.send_close()
    with pytest.raises(ConnectionClosedError) as info:
        pair.client.send_message(b"x")
    assert info.value.code == 1000
    with pytest.raises(ConnectionClosedError):
        pair.client.send_ping()
    with pytest.raises(ConnectionClosedError):
        pair.client.send_frame(Opcode.BINARY, b"x")
    pair.client.send_close(4001)  # a second close does nothing
    assert len(WireReader(masked=True).read(pair.client)) == 1


def test_data_after_close_is_ignored_even_in_the_same_read() -> None:
    server = Connection(Role.SERVER, auto_close_echo=False)
    data = (
        client_frame(Opcode.BINARY, b"before")
        + client_frame(Opcode.CLOSE, encode_close_payload(1000))
        + client_frame(Opcode.BINARY, b"after")
        + b"\xff\xff garbage that would fail the parser"
    )
    assert server.receive_data(data) == [BytesMessage(b"before"), CloseReceived(1000, "")]
    assert server.receive_data(client_frame(Opcode.PING, b"x")) == []
    assert server.data_to_send() == []
    assert server.failure is None


def test_closed_connection_ignores_input_and_refuses_output() -> None:
    pair = ConnectionPair.make()
    pair.client.send_close()
    pair.to_server()
    pair.to_client()
    assert state(pair.server) is State.CLOSED
    assert state(pair.client) is State.CLOSED
    assert pair.server.receive_data(client_frame(Opcode.BINARY, b"x")) == []
    with pytest.raises(ConnectionClosedError):
        pair.server.send_message(b"x")
    pair.server.send_close()  # nothing to do
    assert pair.server.data_to_send() == []


def test_eof_without_close_is_abnormal_1006() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(client_frame(Opcode.BINARY, b"partial")[:5])
    assert server.receive_eof() == [ConnectionLost()]
    assert state(server) is State.CLOSED
    assert server.close_code == 1006
    with pytest.raises(ConnectionClosedError) as info:
        server.send_message(b"x")
    assert info.value.code == 1006
    assert server.receive_data(client_frame(Opcode.BINARY, b"x")) == []


def test_eof_after_our_close_but_before_theirs_is_abnormal() -> None:
    client = Connection(Role.CLIENT)
    client.send_close(1000)
    assert client.receive_eof() == [ConnectionLost()]
    assert state(client) is State.CLOSED
    assert client.close_code == 1006


def test_eof_after_close_is_not_abnormal() -> None:
    server = Connection(Role.SERVER, auto_close_echo=False)
    server.receive_data(client_frame(Opcode.CLOSE, encode_close_payload(1001, "away")))
    assert server.receive_eof() == []
    assert state(server) is State.CLOSED
    assert server.close_code == 1001


def test_send_close_validates_the_code() -> None:
    with pytest.raises(ValueError, match="1006"):
        Connection(Role.CLIENT).send_close(1006)


# ---------------------------------------------------------------------------- flow control


def test_ping_flood_with_a_peer_that_does_not_read_stays_bounded() -> None:
    """Pongs wait while the peer's buffer is full; at the cap they coalesce and the
    peer stops being read until it drains (issue 11)."""
    server = Connection(Role.SERVER, max_queued_control=8, high_water=1000)
    server.outgoing_buffered(1001)  # the peer reads nothing
    assert server.write_paused
    flood = b"".join(client_frame(Opcode.PING, i.to_bytes(4, "big")) for i in range(1000))
    events = server.receive_data(flood)
    # The queue filled at the eighth ping: reported once (for metrics), after its Ping.
    assert [i for i, e in enumerate(events) if isinstance(e, LimitReached)] == [8]
    assert events[8] == LimitReached("max_queued_control_frames")
    assert len(events) == 1001
    assert all(isinstance(e, Ping) for e in events[:8] + events[9:])
    assert server.data_to_send() == []
    assert server.control_pending == 8
    assert not wants_read(server)
    assert server.holds == Hold.BACKLOG
    server.outgoing_buffered(251)  # over the low mark: still full
    assert not wants_read(server)
    server.outgoing_buffered(250)
    assert wants_read(server)
    assert server.control_pending == 0
    frames = WireReader(masked=False).read(server)
    assert [op for op, _, _ in frames] == [Opcode.PONG] * 8
    # The first seven pings answered in order, the last pong for the most recent ping.
    assert [p for _, _, p in frames] == [i.to_bytes(4, "big") for i in (*range(7), 999)]


def test_close_queued_behind_a_full_buffer_is_kept_once() -> None:
    server = Connection(Role.SERVER, max_queued_control=2, high_water=10)
    server.outgoing_buffered(11)
    server.receive_data(b"".join(client_frame(Opcode.PING, b"%d" % i) for i in range(5)))
    server.send_close(1001, "bye")
    server.receive_data(client_frame(Opcode.PING, b"late"))  # after our close: no pong
    assert server.control_pending == 3
    server.outgoing_buffered(0)
    frames = WireReader(masked=False).read(server)
    assert [op for op, _, _ in frames] == [Opcode.PONG, Opcode.PONG, Opcode.CLOSE]
    assert frames[1][2] == b"4"


def test_holds_release_only_when_none_is_left() -> None:
    conn = Connection(Role.SERVER)
    assert wants_read(conn)
    conn.hold_reading(Hold.PEER_FULL)
    conn.hold_reading(Hold.UNRELEASED)
    conn.unhold_reading(Hold.PEER_FULL)
    assert not wants_read(conn)
    assert conn.holds == Hold.UNRELEASED
    conn.unhold_reading(Hold.UNRELEASED)
    assert wants_read(conn)


# ---------------------------------------------------------------------------- streaming / forward


def test_streaming_pieces_forward_to_identical_frames() -> None:
    """A splice in miniature: a server leg's pieces forwarded to a client, re-masked."""
    leg = Connection(Role.SERVER, streaming=True)
    out = Connection(Role.CLIENT)
    wire = client_frame(Opcode.TEXT, "hé".encode(), fin=False) + client_frame(
        Opcode.CONTINUATION, b"x" * 5000
    )
    pieces: list[Event] = []
    for i in range(0, len(wire), 777):
        pieces += leg.receive_data(wire[i : i + 777])
    frames = [e for e in pieces if isinstance(e, Frame)]
    assert frames[0] == Frame(Opcode.TEXT, False, 3, "hé".encode(), True, True)
    assert frames[1].start
    assert not frames[1].end
    assert frames[-1].end
    assert sum(len(f.data) for f in frames[1:]) == 5000
    assert leg.bytes_received == 5003
    for frame in frames:
        out.forward(frame)
    reader = WireReader(masked=True)
    assert reader.read(out) == [
        (Opcode.TEXT, False, "hé".encode()),
        (Opcode.CONTINUATION, True, b"x" * 5000),
    ]


def test_control_frames_wait_for_the_frame_in_flight() -> None:
    conn = Connection(Role.SERVER)
    conn.forward(Frame(Opcode.BINARY, True, 10, b"12345", True, False))
    assert conn.frame_in_flight
    conn.receive_data(client_frame(Opcode.PING, b"p"))
    with pytest.raises(ValueError, match="half sent"):
        conn.send_message(b"x")
    conn.send_close(1000)
    assert conn.control_pending == 2
    conn.forward(Frame(Opcode.BINARY, True, 10, b"67890", False, True))
    frames = WireReader(masked=False).read(conn)
    assert frames == [
        (Opcode.BINARY, True, b"1234567890"),
        (Opcode.PONG, True, b"p"),
        (Opcode.CLOSE, True, encode_close_payload(1000)),
    ]


def test_forward_after_our_close_drops_whole_frames() -> None:
    conn = Connection(Role.SERVER)
    conn.send_close(1000)
    conn.data_to_send()
    conn.forward(Frame(Opcode.BINARY, True, 4, b"ab", True, False))
    conn.forward(Frame(Opcode.BINARY, True, 4, b"cd", False, True))
    assert conn.data_to_send() == []


# ---------------------------------------------------------------------------- property


_data_frame = st.tuples(
    st.sampled_from(["text", "binary"]),
    st.lists(st.binary(max_size=300), min_size=1, max_size=4),
)
_control = st.tuples(st.sampled_from([Opcode.PING, Opcode.PONG]), st.binary(max_size=125))


@st.composite
def _wire(draw: st.DrawFn) -> bytes:
    """A valid client byte stream: fragmented messages, control frames between fragments,
    maybe a close at the end, maybe some bytes after it."""
    out = b""
    for kind, parts in draw(st.lists(_data_frame, max_size=6)):
        if kind == "text":
            text = draw(st.text(max_size=60)).encode()
            cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=3)))
            pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        else:
            pieces = parts
        opcode = Opcode.TEXT if kind == "text" else Opcode.BINARY
        for i, part in enumerate(pieces):
            for ctl_op, ctl_payload in draw(st.lists(_control, max_size=2)):
                out += client_frame(ctl_op, ctl_payload)
            out += client_frame(opcode if i == 0 else 0, part, fin=i == len(pieces) - 1)
    if draw(st.booleans()):
        out += client_frame(Opcode.CLOSE, encode_close_payload(1000, draw(st.text(max_size=20))))
        out += draw(st.binary(max_size=20))
    return out


def _feed(conn: Connection, wire: bytes, cuts: list[int]) -> list[Event]:
    events: list[Event] = []
    bounds = sorted({c % (len(wire) + 1) for c in cuts})
    for a, b in zip([0, *bounds], [*bounds, len(wire)], strict=True):
        events += conn.receive_data(wire[a:b])
    return events


def _whole_frames(events: list[Event]) -> list[object]:
    """Streaming events with each frame's pieces joined (where a read ends moves them)."""
    out: list[object] = []
    data = b""
    for event in events:
        if isinstance(event, Frame):
            data = bytes(event.data) if event.start else data + event.data
            if event.end:
                out.append((event.opcode, event.fin, event.length, data))
        else:
            out.append(event)
    return out


@settings(max_examples=100, deadline=None)
@given(wire=_wire(), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_split_input_gives_the_same_events(wire: bytes, cuts: list[int]) -> None:
    whole = Connection(Role.SERVER).receive_data(wire)
    assert not any(isinstance(e, Failed) for e in whole)
    assert _feed(Connection(Role.SERVER), wire, cuts) == whole
    # Output too: the same pongs and close echo, whatever the reads.
    a, b = Connection(Role.SERVER), Connection(Role.SERVER)
    a.receive_data(wire)
    _feed(b, wire, cuts)
    assert b"".join(a.data_to_send()) == b"".join(b.data_to_send())
    stream_events = Connection(Role.SERVER, streaming=True).receive_data(wire)
    split = _whole_frames(_feed(Connection(Role.SERVER, streaming=True), wire, cuts))
    assert split == _whole_frames(stream_events)
    # A splice: forwarding the events and splice_to() on split input write the same bytes.
    forwarded = Connection(Role.SERVER)
    for event in stream_events:
        if isinstance(event, Frame):
            forwarded.forward(event)
    spliced = Connection(Role.SERVER)
    leg = Connection(Role.SERVER, streaming=True)
    leg.splice_to(spliced)
    _feed(leg, wire, cuts)
    assert b"".join(spliced.data_to_send()) == b"".join(forwarded.data_to_send())


@pytest.mark.parametrize("target_role", [Role.SERVER, Role.CLIENT])
def test_splice_to_forwards_frames_without_events(target_role: Role) -> None:
    """splice_to() is forward() without the Frame events: same bytes on the wire."""
    wire = (
        client_frame(Opcode.BINARY, b"a" * 3000, fin=False)
        + client_frame(Opcode.PING, b"hi")
        + client_frame(Opcode.CONTINUATION, b"")
        + client_frame(Opcode.TEXT, "é".encode())
    )
    leg = Connection(Role.SERVER, streaming=True)
    target = Connection(target_role)
    leg.splice_to(target)
    events: list[Event] = []
    for i in range(0, len(wire), 1000):
        events += leg.receive_data(wire[i : i + 1000])
    assert events == [Ping(b"hi")]
    assert leg.bytes_received == 3002
    assert WireReader(masked=target_role is Role.CLIENT).read(target) == [
        (Opcode.BINARY, False, b"a" * 3000),
        (Opcode.CONTINUATION, True, b""),
        (Opcode.TEXT, True, "é".encode()),
    ]


def test_splice_to_holds_the_targets_control_frames_until_the_frame_ends() -> None:
    leg = Connection(Role.SERVER, streaming=True)
    target = Connection(Role.SERVER)
    leg.splice_to(target)
    wire = client_frame(Opcode.BINARY, b"z" * 100)
    leg.receive_data(wire[:50])
    assert target.frame_in_flight
    target.receive_data(client_frame(Opcode.PING, b"p"))  # the target's own peer pings
    assert target.control_pending == 1
    leg.receive_data(wire[50:])
    assert WireReader(masked=False).read(target) == [
        (Opcode.BINARY, True, b"z" * 100),
        (Opcode.PONG, True, b"p"),
    ]


def test_splice_to_drops_frames_once_the_target_closed() -> None:
    leg = Connection(Role.SERVER, streaming=True)
    target = Connection(Role.SERVER)
    leg.splice_to(target)
    target.send_close(1000)
    target.data_to_send()
    assert leg.receive_data(client_frame(Opcode.BINARY, b"lost")) == []
    assert target.data_to_send() == []
    with pytest.raises(ValueError, match="streaming"):
        Connection(Role.SERVER).splice_to(target)


def _relay_splice() -> tuple[Connection, Connection]:
    """Two legs as the relay joins them: no UTF-8 check, so whole frames take one step."""
    leg = Connection(Role.SERVER, streaming=True, validate_utf8=False)
    target = Connection(Role.SERVER, streaming=True, validate_utf8=False)
    leg.splice_to(target)
    return leg, target


def test_relay_splice_output_does_not_depend_on_how_reads_cut_the_frames() -> None:
    """Frames that arrive whole (one step) and in pieces (header, then payload) leave
    the same bytes, at every header size and with control frames between them."""
    wire = b"".join(
        [
            client_frame(Opcode.BINARY, b""),
            client_frame(Opcode.TEXT, "é".encode()),
            client_frame(Opcode.BINARY, b"a" * 125),
            client_frame(Opcode.PING, b"hi"),
            client_frame(Opcode.BINARY, b"b" * 126, fin=False),
            client_frame(Opcode.CONTINUATION, b"c" * 70000, fin=False),
            client_frame(Opcode.CONTINUATION, b"d" * 3),
            client_frame(Opcode.TEXT, b"\xff"),  # not the relay's to validate
        ]
    )
    outputs = []
    for step in (len(wire), 1000, 7, 1):
        leg, target = _relay_splice()
        events: list[Event] = []
        for i in range(0, len(wire), step):
            events += leg.receive_data(wire[i : i + step])
        assert events == [Ping(b"hi")]
        assert leg.data_to_send() == [encode_frame(fin=True, opcode=Opcode.PONG, payload=b"hi")]
        assert leg.bytes_received == 0 + 2 + 125 + 126 + 70000 + 3 + 1
        outputs.append(b"".join(target.data_to_send()))
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3]
    assert WireReader(masked=False).read_bytes(outputs[0]) == [
        (Opcode.BINARY, True, b""),
        (Opcode.TEXT, True, "é".encode()),
        (Opcode.BINARY, True, b"a" * 125),
        (Opcode.BINARY, False, b"b" * 126),
        (Opcode.CONTINUATION, False, b"c" * 70000),
        (Opcode.CONTINUATION, True, b"d" * 3),
        (Opcode.TEXT, True, b"\xff"),
    ]


def test_relay_splice_whole_frames_wait_for_nothing_and_stop_at_the_targets_close() -> None:
    leg, target = _relay_splice()
    # A pong the target owes waits for the streamed frame; the whole frame after it
    # starts only once that frame ended, and the pong goes between them.
    big = client_frame(Opcode.BINARY, b"z" * 100)
    leg.receive_data(big[:50])
    target.receive_data(client_frame(Opcode.PING, b"p"))
    leg.receive_data(big[50:] + client_frame(Opcode.BINARY, b"small"))
    assert WireReader(masked=False).read(target) == [
        (Opcode.BINARY, True, b"z" * 100),
        (Opcode.PONG, True, b"p"),
        (Opcode.BINARY, True, b"small"),
    ]
    target.send_close(1000)
    target.data_to_send()
    assert leg.receive_data(client_frame(Opcode.BINARY, b"dropped")) == []
    assert target.data_to_send() == []
    assert leg.bytes_received == 100 + 5 + 7  # received, though not forwarded


def test_abandon_frame_frees_the_target_only_if_nothing_of_the_frame_went_out() -> None:
    """A splice whose source vanishes mid-frame: a close can still follow a frame whose
    header never left; after part of a frame only an abort can."""
    leg = Connection(Role.SERVER, streaming=True)
    target = Connection(Role.SERVER)
    leg.splice_to(target)
    header_only = client_frame(Opcode.BINARY, b"q" * 50)[:6]  # header and mask, no payload
    leg.receive_data(header_only)
    target.send_close(1011, "sender connection lost")
    assert target.control_pending == 1
    assert leg.abandon_frame()
    assert WireReader(masked=False).read(target) == [
        (Opcode.CLOSE, True, encode_close_payload(1011, "sender connection lost"))
    ]
    leg2 = Connection(Role.SERVER, streaming=True)
    target2 = Connection(Role.SERVER)
    leg2.splice_to(target2)
    leg2.receive_data(client_frame(Opcode.BINARY, b"q" * 50)[:20])
    assert target2.data_to_send() != []
    assert not leg2.abandon_frame()
    assert target2.frame_in_flight


def test_the_application_fails_the_connection_with_its_own_code() -> None:
    # wsclient's recv() refusing a message over max_size, send_fragments() left unfinished.
    pair = ConnectionPair.make()
    pair.client.fail(1009, "message too big")
    assert pair.client.state is State.CLOSED
    assert pair.client.failure == (1009, "message too big")
    assert WireReader(masked=True).read(pair.client) == [
        (Opcode.CLOSE, True, encode_close_payload(1009, "message too big"))
    ]
    assert (
        pair.client.receive_data(encode_frame(fin=True, opcode=Opcode.BINARY, payload=b"x")) == []
    )
    error = pair.client.closed_error()
    assert (error.code, error.reason) == (1009, "message too big")
    with pytest.raises(ConnectionClosedError):
        pair.client.send_message(b"x")


def test_an_abort_sends_no_close_frame_and_the_peers_close_still_explains() -> None:
    server = Connection(Role.SERVER, auto_close_echo=False)
    server.receive_data(client_frame(Opcode.CLOSE, encode_close_payload(4000, "bye")))
    assert server.close_received == (4000, "bye")
    server.fail(1006, "keepalive ping timeout")  # 1006 may not be sent (RFC 6455 §7.4.1)
    assert server.data_to_send() == []
    assert server.state is State.CLOSED
    error = server.closed_error()
    assert (error.code, error.reason) == (4000, "bye")


def test_payload_views_give_views_of_the_read_for_a_streaming_client() -> None:
    conn = Connection(Role.CLIENT, streaming=True)
    conn.payload_views(True)
    read = encode_frame(fin=True, opcode=Opcode.BINARY, payload=b"abc") + encode_frame(
        fin=True, opcode=Opcode.BINARY, payload=b"defg"
    )
    first, second = conn.receive_data(read)
    assert isinstance(first, Frame)
    assert isinstance(second, Frame)
    assert isinstance(first.data, memoryview)
    assert isinstance(second.data, memoryview)
    assert (bytes(first.data), bytes(second.data)) == (b"abc", b"defg")
    assert first.data.obj is second.data.obj  # both views of the one read: no copy
    assert conn.bytes_received == 7
    conn.payload_views(False)
    (third,) = conn.receive_data(encode_frame(fin=True, opcode=Opcode.BINARY, payload=b"h"))
    assert isinstance(third, Frame)
    assert third.data == b"h"
    assert isinstance(third.data, bytes)


@pytest.mark.parametrize(
    ("role", "streaming"), [(Role.SERVER, True), (Role.CLIENT, False)], ids=["server", "messages"]
)
def test_payload_views_only_for_a_streaming_client(role: Role, streaming: bool) -> None:
    with pytest.raises(ValueError, match="payload views"):
        Connection(role, streaming=streaming).payload_views(True)


def test_a_connection_with_payload_views_does_not_splice() -> None:
    conn = Connection(Role.CLIENT, streaming=True)
    conn.payload_views(True)
    with pytest.raises(ValueError, match="does not splice"):
        conn.splice_to(Connection(Role.CLIENT, streaming=True))


def test_send_frame_copies_a_view_it_does_not_mask() -> None:
    """A server sends unmasked: a view of a reused buffer must not be queued as is."""
    conn = Connection(Role.SERVER)
    buffer = bytearray(b"x" * 20_000)
    conn.send_frame(Opcode.BINARY, memoryview(buffer))
    buffer[:] = b"y" * 20_000
    assert b"".join(conn.data_to_send()) == encode_frame(
        fin=True, opcode=Opcode.BINARY, payload=b"x" * 20_000
    )
