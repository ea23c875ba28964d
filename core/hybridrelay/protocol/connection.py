"""One WebSocket connection, sans-I/O: bytes in, events out, bytes to send (RFC 6455).

Every WebSocket rule the project needs is decided here once: masking per role, the
control-frame limits, ping answered with pong, the closing handshake with half-close
(Hybrid Connections, HC Part 1 §5), failing the connection with the right close code,
the size of reassembled messages, UTF-8 of text, and when to stop reading a peer that
does not read what it is sent. The glue around it (an :class:`asyncio.Protocol`) only
moves bytes and obeys :attr:`Connection.wants_read`; it never reads a frame itself.

Use::

    conn = Connection(Role.SERVER, streaming=True)
    for event in conn.receive_data(data):   # one batch per read
        ...
    transport.writelines(conn.data_to_send())

The framing is :class:`~hybridrelay.protocol.frames.FrameParser`; this class is its sink.

States and what each allows (h11 style). "send data" is :meth:`Connection.send_message`,
:meth:`~Connection.send_frame` and the start of a :meth:`~Connection.forward`; the rest of
a forwarded frame already started always goes out, so a frame is never cut in two.

============== ===================== ================================= ================
state          receiving             sending                           next state on
============== ===================== ================================= ================
OPEN           every frame parsed;   data, ping, close                 our close: CLOSE_SENT;
               ping answered (pong)                                    peer's close: CLOSE_RECEIVED
                                                                       (CLOSED with auto_close_echo)
CLOSE_SENT     every frame parsed;   nothing (ConnectionClosedError)   peer's close: CLOSED
               pings not answered
CLOSE_RECEIVED nothing: bytes after  data, ping, close (half-close,    our close: CLOSED
               the close are dropped HC §5)
CLOSED         nothing               nothing                           (final)
============== ===================== ================================= ================

From any state but CLOSED: a frame that breaks the protocol fails the connection: our
close frame with the code (1002 protocol, 1007 bad UTF-8, 1009 too big) goes out unless
one went out already, nothing more is parsed, a :class:`Failed` event says why, and the
state is CLOSED. End of stream (:meth:`~Connection.receive_eof`) makes the state CLOSED;
before the peer's close frame it is an abnormal closure (:class:`ConnectionLost`, 1006).
Once CLOSED and :attr:`~Connection.control_pending` is empty the glue closes TCP (a
server at once, RFC 6455 §7.1.1; a client after a short grace for the server to do it).

Control frames the connection owes the peer (pongs, its close) wait while a forwarded
frame is half sent (nothing may come between its bytes) and while the peer's write
buffer is over its high-water mark (:meth:`~Connection.outgoing_buffered`), so a peer
that pings and never reads cannot fill memory with pongs. At ``max_queued_control``
waiting frames a new pong replaces the newest waiting pong (§5.5.3: answering the most
recent ping is enough), and while the write buffer is over its mark the peer is not read
(:attr:`Hold.BACKLOG`) until it takes them. Reading stops for as long as any reason in
:class:`Hold` is set; the glue adds its own (a splice holds a leg while the other leg's
buffer is full, :attr:`Hold.PEER_FULL`) and only calls ``pause_reading`` /
``resume_reading`` when :attr:`~Connection.wants_read` changes.

Two ways to receive data: messages (the default) reassembles each message into one
:class:`TextMessage` or :class:`BytesMessage`, failing with 1009 at the first header that
would take it over ``max_message_size``; streaming (``streaming=True``, for a splice or a
byte bridge) hands every payload chunk over as it arrives as a :class:`Frame`, at any size,
with nothing buffered. Events of the data path are NamedTuples rather than frozen
dataclasses: a frozen dataclass costs several times more to build, once per frame.
"""

from __future__ import annotations

import codecs
import os
import struct
from dataclasses import dataclass
from enum import Enum, IntFlag
from typing import Final, NamedTuple, TypeAlias, cast

from hybridrelay.errors import ConnectionClosedError
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.frames import (
    FrameError,
    FrameParser,
    Opcode,
    StopParsing,
    apply_mask,
    encode_close_payload,
    encode_frame_header,
    is_valid_close_code,
    parse_close_payload,
)

__all__ = [
    "DEFAULT_HIGH_WATER",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_QUEUED_CONTROL",
    "LIMIT_QUEUED_CONTROL",
    "BytesMessage",
    "CloseReceived",
    "Connection",
    "ConnectionLost",
    "ConnectionSettings",
    "Event",
    "Failed",
    "Frame",
    "Hold",
    "LimitReached",
    "Ping",
    "Pong",
    "Role",
    "State",
    "TextMessage",
]

DEFAULT_MAX_MESSAGE_SIZE: Final = 1 << 20  # as websockets and wsclient.DEFAULT_MAX_SIZE
DEFAULT_MAX_QUEUED_CONTROL: Final = 64  # [relay] max_queued_control_frames
DEFAULT_HIGH_WATER: Final = 256 * 1024  # [relay] stream_buffer_size
# LimitReached.limit when the control frames owed to the peer fill their queue.
LIMIT_QUEUED_CONTROL: Final = "max_queued_control_frames"

# Payloads under this are joined with their header into one bytes object; larger ones
# go out as two buffers, not copied (relay/splice.py does the same).
_COALESCE_LIMIT: Final = 16 * 1024
_TEXT: Final = int(Opcode.TEXT)
_BINARY: Final = int(Opcode.BINARY)
_CONT: Final = int(Opcode.CONTINUATION)
_CLOSE: Final = int(Opcode.CLOSE)
_PING: Final = int(Opcode.PING)
_PONG: Final = int(Opcode.PONG)
_UTF8_DECODER: Final = codecs.getincrementaldecoder("utf-8")
# Unmasked frame headers (RFC 6455 §5.2), packed directly on the splice's whole-frame path.
_pack_h: Final = struct.Struct("!BB").pack
_pack_h16: Final = struct.Struct("!BBH").pack
_pack_h64: Final = struct.Struct("!BBQ").pack


def _turned(mask: bytes, length: int) -> bytes:
    """``mask`` as it applies after ``length`` more bytes (RFC 6455 §5.3: byte i uses
    ``mask[i % 4]``)."""
    shift = length & 3
    return mask[shift:] + mask[:shift] if shift else mask


class _Nothing(list):  # type: ignore[type-arg]
    """The empty list a connection holds instead of its own until it has something; what
    receive_data and data_to_send return when there is nothing. Appending to it would
    hand one connection's bytes to every other: it refuses."""

    __slots__ = ()

    def _refuse(self, *args: object) -> None:
        raise RuntimeError("the shared empty list of Connection was about to be filled")

    append = extend = insert = __iadd__ = __setitem__ = _refuse  # type: ignore[assignment]


_NO_EVENTS: Final[list[Event]] = _Nothing()
_NO_DATA: Final[list[bytes]] = _Nothing()


class _MaskSource:
    """Masking keys (RFC 6455 §5.3), four random bytes each, read 256 keys at a time.

    One getrandom() system call per 256 frames a client sends instead of one per frame
    (the listener agent sends two per HTTP-mode response; perf: 2% of its CPU); each
    byte comes from os.urandom and is used once, so every key stays unpredictable.
    """

    __slots__ = ("_pool",)

    def __init__(self) -> None:
        self._pool: list[bytes] = []

    def reset(self) -> None:
        self._pool = []

    def __call__(self) -> bytes:
        if not self._pool:
            raw = os.urandom(4 * 256)
            self._pool = [raw[i : i + 4] for i in range(0, len(raw), 4)]
        return self._pool.pop()


_new_mask = _MaskSource()
# A forked child must not mask with the keys its parent will use too.
os.register_at_fork(after_in_child=_new_mask.reset)


class _Closing:
    """How the connection closes: our close, the peer's, our failure, the loss of it.

    One object made at the first of them rather than four slots on every connection: a
    relay holds two idle connections per relayed connection, and reads these only when
    a control frame comes or it closes.
    """

    __slots__ = ("failure", "lost", "received", "sent")

    def __init__(self) -> None:
        self.sent: tuple[int, str] | None = None  # our close frame, queued or sent
        self.received: tuple[int, str] | None = None  # the peer's close frame
        self.failure: tuple[int, str] | None = None  # this side failed the connection
        self.lost = False  # end of stream


class _NotClosing(_Closing):
    """What every open connection shares in place of a :class:`_Closing` of its own."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, name):
            raise RuntimeError("the shared not-closing state of Connection was about to change")
        object.__setattr__(self, name, value)  # __init__, once


_NOT_CLOSING: Final[_Closing] = _NotClosing()


class _Receiving:
    """The data frame being received, the message it belongs to, and the UTF-8 decoder.

    Made at the first data frame the connection reads itself, rather than nine slots on
    every connection: a relay's spliced legs pass frames on without it (splice_to()).
    """

    __slots__ = ("decoder", "fin", "length", "opcode", "parts", "size", "start", "text", "texts")

    def __init__(self) -> None:
        self.opcode = 0  # of the frame being received: 0 for a continuation
        self.fin = True
        self.length = 0
        self.start = True  # its first piece is still to be handed over (streaming)
        self.text = False  # the message it belongs to is text
        self.size = 0  # of that message so far, against max_message_size
        self.parts: list[bytes] | None = None  # a binary message being reassembled
        self.texts: list[str] | None = None  # a text message being reassembled, decoded
        self.decoder: codecs.IncrementalDecoder | None = None


class Role(Enum):
    CLIENT = "client"  # masks what it sends; refuses masked frames (RFC 6455 §5.1)
    SERVER = "server"  # sends unmasked; refuses unmasked frames


class State(Enum):
    OPEN = "open"
    CLOSE_SENT = "close_sent"
    CLOSE_RECEIVED = "close_received"
    CLOSED = "closed"


_OPEN: Final = State.OPEN
_CLOSE_SENT: Final = State.CLOSE_SENT
_CLOSE_RECEIVED: Final = State.CLOSE_RECEIVED


class Hold(IntFlag):
    """Reasons not to read the peer; it is read again when none is left."""

    BACKLOG = 1  # ours: control frames owed to it wait while its write buffer is full
    PEER_FULL = 2  # the glue's: where its data goes (a splice's other leg) is full
    UNRELEASED = 4  # the glue's: not started yet (a splice leg waiting for its partner)


_BACKLOG: Final = int(Hold.BACKLOG)  # _holds is a plain int (see hold_reading)


# ---------------------------------------------------------------------------- events


class Frame(NamedTuple):
    """Streaming mode: a piece of a data frame's payload, unmasked.

    ``start`` marks a frame's first piece (``length`` is its whole payload length, as
    for :func:`~hybridrelay.protocol.frames.encode_frame_header`), ``end`` its last; a
    frame that arrived whole is one event with both. ``opcode`` is 0 for continuations.
    ``data`` is bytes, or a view of the bytes received after
    :meth:`Connection.payload_views`.
    """

    opcode: int
    fin: bool
    length: int
    data: bytes | memoryview
    start: bool
    end: bool


class TextMessage(NamedTuple):
    """Messages mode: a whole text message, decoded."""

    data: str


class BytesMessage(NamedTuple):
    """Messages mode: a whole binary message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """The peer pinged; the pong is already queued (none once our close is sent), unless
    ``auto_answer`` is off: then :meth:`Connection.send_pong` answers it."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer's close frame: ``code`` 1005 when it carried none. Nothing after it is read."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The peer broke the protocol; our close frame with ``code`` is queued (if none was
    sent yet) and the state is CLOSED (with ``auto_answer`` off: once the glue calls
    :meth:`Connection.fail`). ``limit`` names the limit it hit, if one."""

    code: int
    reason: str
    limit: str | None = None


@dataclass(frozen=True, slots=True)
class LimitReached:
    """A limit was reached without failing the connection, for metrics: ``limit`` names
    it (``max_queued_control_frames``: the control frames owed to the peer filled their
    queue; later pongs coalesce). It comes out with the next batch of events."""

    limit: str


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """End of stream before the peer's close frame: an abnormal closure (1006)."""


Event: TypeAlias = (
    Frame
    | TextMessage
    | BytesMessage
    | Ping
    | Pong
    | CloseReceived
    | Failed
    | LimitReached
    | ConnectionLost
)


class ConnectionSettings:
    """What a :class:`Connection` was made with (the arguments of Connection), read-only.

    One object that many connections may share (:meth:`Connection.sharing`) rather than
    nine slots on every connection: a relay holds two connections per relayed
    connection, all made with the same settings.
    """

    __slots__ = (
        "auto_answer",
        "auto_close_echo",
        "high_water",
        "masks",
        "max_message_size",
        "max_queued_control",
        "role",
        "streaming",
        "validate_utf8",
    )

    role: Role
    masks: bool  # a client masks what it sends
    streaming: bool
    max_message_size: int | None  # None when streaming: no limit
    validate_utf8: bool
    auto_close_echo: bool
    auto_answer: bool
    max_queued_control: int
    high_water: int  # the low mark is a quarter of it

    def __init__(
        self,
        role: Role,
        *,
        streaming: bool = False,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        validate_utf8: bool = True,
        auto_close_echo: bool = True,
        auto_answer: bool = True,
        max_queued_control: int = DEFAULT_MAX_QUEUED_CONTROL,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> None:
        if max_queued_control < 1:
            raise ValueError("max_queued_control must be at least 1")
        values = {
            "role": role,
            "masks": role is Role.CLIENT,
            "streaming": streaming,
            "max_message_size": None if streaming else max_message_size,
            "validate_utf8": validate_utf8,
            "auto_close_echo": auto_close_echo,
            "auto_answer": auto_answer,
            "max_queued_control": max_queued_control,
            "high_water": high_water,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ConnectionSettings is read-only: connections share it")

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in sorted(self.__slots__))
        return f"ConnectionSettings({args})"


class Connection:
    """One end of a WebSocket connection after its opening handshake.

    Args:
        role: :attr:`Role.CLIENT` masks what it sends and refuses masked frames;
            :attr:`Role.SERVER` the reverse.
        streaming: hand data over as :class:`Frame` pieces (no size limit) instead of
            whole messages.
        max_message_size: largest reassembled message in payload bytes (None: no limit);
            a larger one fails the connection with 1009. Not used when streaming.
        validate_utf8: streaming: check text as UTF-8 as it arrives, across frames
            (1007); a relay that only passes frames on may leave that to the endpoints.
            Messages are always checked (a :class:`TextMessage` holds a str).
        auto_close_echo: answer the peer's close frame at once (plain WebSocket). False
            keeps the connection half-open (CLOSE_RECEIVED) until :meth:`send_close`.
        auto_answer: answer a ping, and a frame that fails the connection, as it is
            parsed. False leaves both to the glue, which answers as it handles the
            events (:meth:`send_pong` for a :class:`Ping`, :meth:`fail` for a
            :class:`Failed`), so what it sends follows their order: a relay that closes
            on a message neither pongs the pings behind it nor lets a broken frame behind
            it choose the close code (as aiohttp's reader, which queues its errors).
        max_queued_control: control frames that may wait for the peer before pongs
            coalesce and, while its buffer is full, it stops being read.
        high_water: bytes in the peer's write buffer over which it counts as full; it
            stops counting as full at a quarter of that (asyncio's default low mark).

    The same arguments made once for many connections: :meth:`sharing`.
    """

    __slots__ = (
        "_closing",
        "_events",
        "_header",
        "_holds",
        "_out",
        "_out_in_message",
        "_out_mask",
        "_out_remaining",
        "_parser",
        "_queued",
        "_rx",
        "_settings",
        "_target",
        "_write_paused",
        "bytes_received",
        "state",
    )

    def __init__(
        self,
        role: Role,
        *,
        streaming: bool = False,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        validate_utf8: bool = True,
        auto_close_echo: bool = True,
        auto_answer: bool = True,
        max_queued_control: int = DEFAULT_MAX_QUEUED_CONTROL,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> None:
        self._start(
            ConnectionSettings(
                role,
                streaming=streaming,
                max_message_size=max_message_size,
                validate_utf8=validate_utf8,
                auto_close_echo=auto_close_echo,
                auto_answer=auto_answer,
                max_queued_control=max_queued_control,
                high_water=high_water,
            )
        )

    @classmethod
    def sharing(cls, settings: ConnectionSettings) -> Connection:
        """A connection made with ``settings``, which it shares with the others made so."""
        conn = cls.__new__(cls)
        conn._start(settings)
        return conn

    def _start(self, settings: ConnectionSettings) -> None:
        self._settings = settings
        self.state = State.OPEN
        self.bytes_received = 0  # data payload bytes, for metrics
        self._parser = FrameParser(self, masked=settings.role is Role.SERVER)
        self._target: Connection | None = None  # splice_to()
        # No list of their own until something is received or sent (_NO_EVENTS and
        # _NO_DATA stand in, and are handed out empty): a relay holds two connections
        # per relayed connection, mostly idle.
        self._events: list[Event] = _NO_EVENTS
        self._out: list[bytes] = _NO_DATA
        # Lists made when first needed (None until then): a relay holds two idle
        # connections per relayed connection, and most never queue or reassemble.
        self._queued: list[bytes] | None = None
        self._out_remaining = 0  # bytes of a forwarded frame still to come
        # The mask of a forwarded frame in flight that we mask, turned to apply from its
        # next byte on (apply_mask's offset, kept in the mask: one slot, not two).
        self._out_mask = b""
        self._out_in_message = False  # a fragmented message we send is unfinished
        self._write_paused = False
        self._holds = 0
        # splice_to(): the header of the frame being forwarded, waiting for its first
        # payload bytes; b"" once it went out with them; None: the frame is not forwarded
        # (dropped whole: the target has closed).
        self._header: bytes | None = None
        # The data frame and message being received: none until the first data frame
        # this connection reads itself (a relay's spliced legs never do).
        self._rx: _Receiving | None = None
        self._closing = _NOT_CLOSING  # its own once it starts closing: _closing_now()

    # ------------------------------------------------------------------ state

    @property
    def settings(self) -> ConnectionSettings:
        return self._settings

    @property
    def role(self) -> Role:
        return self._settings.role

    @property
    def auto_close_echo(self) -> bool:
        return self._settings.auto_close_echo

    @property
    def close_code(self) -> int | None:
        """The peer's close code (1005 if its close had none), 1006 after an abnormal
        closure, None while neither happened."""
        closing = self._closing
        if closing.received is not None:
            return closing.received[0]
        return CloseCode.ABNORMAL if closing.lost else None

    @property
    def close_reason(self) -> str:
        received = self._closing.received
        return received[1] if received is not None else ""

    @property
    def close_received(self) -> tuple[int, str] | None:
        """(code, reason) of the peer's close frame once it arrived (1005: no code)."""
        return self._closing.received

    @property
    def close_sent(self) -> tuple[int, str] | None:
        """(code, reason) of our close frame once it is queued or sent (1005: no code)."""
        return self._closing.sent

    @property
    def failure(self) -> tuple[int, str] | None:
        """(code, reason) when this side failed the connection."""
        return self._closing.failure

    @property
    def can_send(self) -> bool:
        """Whether data may be sent: OPEN or CLOSE_RECEIVED."""
        return self.state is State.OPEN or self.state is State.CLOSE_RECEIVED

    @property
    def wants_read(self) -> bool:
        """False while any :class:`Hold` is set: the glue pauses reading the transport."""
        return not self._holds

    @property
    def holds(self) -> Hold:
        return Hold(self._holds)

    @property
    def frame_in_flight(self) -> bool:
        """A forwarded frame is half sent: nothing else may be written until it ends."""
        return self._out_remaining > 0

    @property
    def control_pending(self) -> int:
        """Control frames waiting for the frame in flight or for room in the write buffer."""
        return len(self._queued) if self._queued is not None else 0

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> list[Event]:
        """Consume bytes from the network; return the events they complete, in order.

        After the peer's close frame, a failure or the end of stream the bytes are
        dropped unparsed (RFC 6455 §5.5.1), even the rest of the read the close came in.
        """
        # Frames are parsed in OPEN and CLOSE_SENT, unless this side failed the connection
        # (with auto_answer off the state changes only when the glue calls fail()).
        state = self.state
        if (state is _OPEN or state is _CLOSE_SENT) and self._closing.failure is None:
            # The lists the parser's callbacks append to on the data path, once per read
            # rather than per frame: the target's output when splicing, else the events.
            target = self._target
            if target is not None:
                if target._out is _NO_DATA:
                    target._out = []
            elif self._events is _NO_EVENTS:
                self._events = []
            try:
                self._parser.feed(data)
            except FrameError as exc:
                self._fail(exc.code, exc.reason, exc.limit)
        events = self._events
        if events:
            self._events = _NO_EVENTS
            return events
        return _NO_EVENTS

    def receive_eof(self) -> list[Event]:
        """The peer closed its sending side (TCP FIN) or the connection dropped."""
        closing = self._closing_now()
        if closing.received is None and not closing.lost and closing.failure is None:
            self._emit(ConnectionLost())
        closing.lost = True
        self.state = State.CLOSED
        self._parser.stop()  # nothing more to parse; frees the parser <-> self cycle
        events, self._events = self._events, _NO_EVENTS
        return events

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> list[bytes]:
        """The bytes to write, in order, as buffers for ``transport.writelines``."""
        out = self._out
        if out:
            self._out = _NO_DATA
        return out

    def send_message(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a whole message in one frame: str as TEXT, bytes-like as BINARY."""
        if isinstance(message, str):
            self.send_frame(_TEXT, message.encode("utf-8"))
        else:
            self.send_frame(_BINARY, bytes(message))

    def send_frame(self, opcode: int, payload: bytes | memoryview, *, fin: bool = True) -> None:
        """Send one data frame; a fragmented message is TEXT/BINARY then continuations.

        ``payload`` may be a view of a buffer its owner reuses once this returns (a byte
        bridge's read buffer): what is queued never refers to it.

        Raises:
            ConnectionClosedError: our close frame is out, or the connection is closed.
            ValueError: the frame does not fit the message being sent (RFC 6455 §5.4),
                or a forwarded frame is half sent.
        """
        # Inlined checks and encoding: this runs once per message a client sends.
        state = self.state
        if state is not _OPEN and state is not _CLOSE_RECEIVED:
            raise self.closed_error()
        if self._out_remaining:
            raise ValueError("a forwarded frame is half sent")
        if opcode == _CONT:
            if not self._out_in_message:
                raise ValueError("continuation frame outside a fragmented message")
        elif opcode in (_TEXT, _BINARY):
            if self._out_in_message:
                raise ValueError("new data frame inside a fragmented message")
        else:
            raise ValueError(f"not a data opcode: {opcode:#x}")
        self._out_in_message = not fin
        data: bytes
        if self._settings.masks:
            mask = _new_mask()  # RFC 6455 §5.3: a fresh key per frame
            header = encode_frame_header(fin=fin, opcode=opcode, length=len(payload), mask=mask)
            data = apply_mask(payload, mask) if payload else b""  # a new buffer either way
        else:
            header = encode_frame_header(fin=fin, opcode=opcode, length=len(payload))
            data = payload if type(payload) is bytes else bytes(payload)
        out = self._out
        if out is _NO_DATA:
            self._out = out = []
        if len(data) < _COALESCE_LIMIT:
            out.append(header + data)
        else:
            out.append(header)
            out.append(data)

    def forward(self, frame: Frame) -> None:
        """Streaming: send a piece of a data frame received on another connection.

        A frame whose first piece comes while sending is not allowed (our close is out,
        the connection closed) is dropped whole, as a splice must once the other side
        has closed; the pieces of a frame whose start went out always follow it.
        """
        opcode, fin, length, data, start, end = frame
        self._forward_piece(opcode, fin, length, bytes(data), start, end)

    def payload_views(self, on: bool = True) -> None:
        """Streaming: :class:`Frame` data as views of the bytes received, not copies.

        For a byte bridge that writes each piece to a socket at once (a view keeps the
        whole read it came in alive). A client only: a server unmasks into new bytes.

        Raises:
            ValueError: Not a streaming client, or splice_to() is set.
        """
        settings = self._settings
        if on and (not settings.streaming or not settings.masks or self._target is not None):
            raise ValueError("payload views are for a streaming client that does not splice")
        self._parser.view_payload_to(self if on else None)

    def on_payload_view(self, data: memoryview, frame_done: bool) -> None:
        """payload_views(): :meth:`on_payload` for a streaming client, minus the copy."""
        self.bytes_received += len(data)
        rx = cast(_Receiving, self._rx)  # on_data_frame made it
        if rx.text and self._settings.validate_utf8:
            self._decode(data, frame_done and rx.fin)
        self._events.append(Frame(rx.opcode, rx.fin, rx.length, data, rx.start, frame_done))
        rx.start = False

    def splice_to(self, target: Connection | None) -> None:
        """Streaming: forward every data frame straight to ``target`` (None: stop).

        What a splice does with :class:`Frame` events, without making them: the relay's
        hot path costs one call per piece. Control frames and closes still come out
        as events, for the glue (a splice forwards a close with its code and reason).
        """
        if target is not None and not self._settings.streaming:
            raise ValueError("only a streaming connection forwards frames")
        if target is not None and self._parser.views:
            raise ValueError("a connection that hands out payload views does not splice")
        self._target = target
        # Frames that arrive whole skip the per-piece bookkeeping (one call per frame);
        # text to validate goes the long way, through the decoder.
        fast = (
            target is not None and not self._settings.validate_utf8 and not target._settings.masks
        )
        self._parser.whole_frame = Connection._splice_whole_frame if fast else None

    def abandon_frame(self) -> bool:
        """splice_to(): this connection is gone in the middle of a frame to the target.

        True when not a byte of that frame reached the target's output (its header waits
        for the first payload bytes): the frame is forgotten and the target's control
        frames, a close saying why (HC §5: 1011), may go out. False when part of it did:
        nothing may follow those bytes, so the glue can only abort the target.
        """
        target = self._target
        if target is None or not target._out_remaining:
            return True
        if not self._header:  # b"": it went out with the first payload bytes
            return False
        self._header = None
        target._out_remaining = 0
        if target._queued and not target._write_paused:
            target._flush_queued()
        return True

    def _forward_piece(
        self, opcode: int, fin: bool, length: int, data: bytes, start: bool, end: bool
    ) -> None:
        out = self._out
        if out is _NO_DATA:
            self._out = out = []
        if start:
            if self._out_remaining:
                raise ValueError("a forwarded frame is half sent")
            state = self.state
            if state is not State.OPEN and state is not State.CLOSE_RECEIVED:
                return  # dropped; its further pieces find _out_remaining == 0 too
            if self._settings.masks:
                mask = _new_mask()  # RFC 6455 §5.3: a fresh key per frame
                header = encode_frame_header(fin=fin, opcode=opcode, length=length, mask=mask)
                self._out_mask = _turned(mask, len(data))
                if data:
                    data = apply_mask(data, mask)
            else:
                header = encode_frame_header(fin=fin, opcode=opcode, length=length)
            if len(data) < _COALESCE_LIMIT:
                out.append(header + data)
            else:
                out.append(header)
                out.append(data)
            self._out_in_message = not fin
            if not end:
                self._out_remaining = length - len(data)
            elif self._queued and not self._write_paused:
                self._flush_queued()
            return
        if not self._out_remaining:
            return  # the rest of a dropped frame
        if self._settings.masks:
            mask = self._out_mask
            self._out_mask = _turned(mask, len(data))
            data = apply_mask(data, mask)
        out.append(data)
        if end:
            self._out_remaining = 0
            if self._queued and not self._write_paused:
                self._flush_queued()
        else:
            self._out_remaining -= len(data)

    def send_ping(self, payload: bytes = b"") -> None:
        self._check_can_send()
        self._send_control(_PING, payload)

    def send_pong(self, payload: bytes) -> None:
        """Answer a :class:`Ping` (``auto_answer=False``); nothing once our close is out."""
        if self._closing.sent is None and self.state is not State.CLOSED:
            self._send_control(_PONG, payload)

    def send_close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send our close frame (once; later calls do nothing). ``code`` 1005 sends none.

        OPEN becomes CLOSE_SENT, CLOSE_RECEIVED becomes CLOSED. The reason is cut to fit
        the 125-byte control payload.
        """
        if code != CloseCode.NO_STATUS and not is_valid_close_code(code):
            raise ValueError(f"{code} is not a close code an endpoint may send (RFC 6455 §7.4)")
        if self._closing.sent is not None or self.state is State.CLOSED:
            return
        self._queue_close(code, reason)
        self.state = State.CLOSED if self._closing.received is not None else State.CLOSE_SENT

    def fail(self, code: int, reason: str) -> None:
        """The application fails the connection (RFC 6455 §7.1.7), for a reason of its own:
        a message too big for it (1009), one it cannot finish (1011). Our close frame with
        ``code`` is queued unless one went out or ``code`` is 1006 (an abort: a keepalive
        or close timeout); nothing more is parsed; the state is CLOSED. No event."""
        if self._closing.failure is None:
            self._closing_now().failure = (code, reason)
        self._rx = None  # nothing more is parsed: a message in pieces is dropped
        if (
            self._closing.sent is None
            and code != CloseCode.ABNORMAL
            and self.state is not State.CLOSED
        ):
            self._queue_close(code, reason)
        self.state = State.CLOSED

    def closed_error(self) -> ConnectionClosedError:
        """Why nothing more can be received or sent: the peer's close, our failure, our
        close, else an abnormal closure (1006)."""
        closing = self._closing
        if closing.received is not None:
            code, reason = closing.received
        elif closing.failure is not None:
            code, reason = closing.failure
        elif closing.sent is not None and not closing.lost:
            code, reason = closing.sent
        else:
            code, reason = CloseCode.ABNORMAL, "connection lost"
        return ConnectionClosedError(code, reason)

    # ------------------------------------------------------------------ flow control

    def outgoing_buffered(self, size: int) -> None:
        """The transport holds ``size`` bytes not yet written to the peer.

        Over the high-water mark the peer counts as full: control frames wait for it.
        At or under the low mark they go out, and reading it resumes if the backlog held it.
        """
        high_water = self._settings.high_water
        if size > high_water:
            self._write_paused = True
        elif size <= high_water // 4 and self._write_paused:
            self._write_paused = False
            if self._queued and not self._out_remaining:
                self._flush_queued()
            self._holds &= ~_BACKLOG  # what still waits, waits for the frame in flight

    def hold_reading(self, reason: Hold) -> None:
        self._holds |= int(reason)  # plain ints: IntFlag arithmetic costs microseconds

    def unhold_reading(self, reason: Hold) -> None:
        self._holds &= ~int(reason)

    # ------------------------------------------------------------------ FrameSink

    def on_data_frame(self, fin: bool, opcode: int, length: int) -> None:
        target = self._target
        settings = self._settings
        if target is None or settings.validate_utf8:  # a relay's splice_to() skips this
            rx = self._rx
            if rx is None:
                rx = self._rx = _Receiving()
            rx.fin = fin
            rx.length = length
            rx.start = True
            rx.opcode = opcode
            if opcode:
                rx.text = opcode == _TEXT
                if rx.text and rx.decoder is not None:
                    rx.decoder.reset()
                rx.size = 0
            limit = settings.max_message_size
            if limit is not None:
                rx.size += length
                if rx.size > limit:
                    # Refused at the header: not a byte of it is held.
                    raise FrameError(CloseCode.MESSAGE_TOO_BIG, f"message over {limit} bytes")
            if target is None:
                return
        # splice_to(): what _forward_piece does, inline, as relay/splice.py Leg did: the
        # header waits for the first payload bytes, to go out in one buffer with them.
        state = target.state
        if target._out_remaining:
            raise ValueError("a forwarded frame is half sent")
        if state is not State.OPEN and state is not State.CLOSE_RECEIVED:
            self._header = None  # dropped whole: the target has closed
            return
        if target._settings.masks:
            mask = _new_mask()  # RFC 6455 §5.3: a fresh key per frame
            self._header = encode_frame_header(fin=fin, opcode=opcode, length=length, mask=mask)
            target._out_mask = mask
        else:
            self._header = encode_frame_header(fin=fin, opcode=opcode, length=length)
        target._out_remaining = length  # control frames to the target wait for this one
        target._out_in_message = not fin

    def _splice_whole_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        """splice_to() to an unmasking target: a data frame that arrived whole, re-framed in
        one step (what on_data_frame then on_payload would do, for this one case)."""
        length = len(payload)
        self.bytes_received += length
        target = cast(Connection, self._target)
        state = target.state
        if state is not _OPEN and state is not _CLOSE_RECEIVED:
            return  # dropped whole: the target has closed
        if target._out_remaining:
            raise ValueError("a forwarded frame is half sent")
        b0 = 0x80 | opcode if fin else opcode
        if length < 126:
            header = _pack_h(b0, length)
        elif length < 65536:
            header = _pack_h16(b0, 126, length)
        else:
            header = _pack_h64(b0, 127, length)
        if length < _COALESCE_LIMIT:
            target._out.append(header + payload)
        else:
            target._out.append(header)
            target._out.append(payload)
        target._out_in_message = not fin
        if target._queued and not target._write_paused:
            target._flush_queued()

    def on_payload(self, data: bytes, frame_done: bool) -> None:
        self.bytes_received += len(data)
        settings = self._settings
        if settings.streaming:
            if settings.validate_utf8:
                rx = cast(_Receiving, self._rx)  # on_data_frame made it
                if rx.text:
                    self._decode(data, frame_done and rx.fin)
            target = self._target
            if target is not None:
                header = self._header
                if header is None:
                    return  # a frame dropped at its header
                if target._settings.masks:
                    mask = target._out_mask
                    target._out_mask = _turned(mask, len(data))
                    data = apply_mask(data, mask)
                if header:
                    self._header = b""  # out with these bytes
                    if len(data) < _COALESCE_LIMIT:
                        target._out.append(header + data)
                    else:
                        target._out.append(header)
                        target._out.append(data)
                elif data:
                    target._out.append(data)
                if frame_done:
                    target._out_remaining = 0
                    if target._queued and not target._write_paused:
                        target._flush_queued()
                else:
                    target._out_remaining -= len(data)
                return
            rx = cast(_Receiving, self._rx)  # on_data_frame made it
            self._events.append(Frame(rx.opcode, rx.fin, rx.length, data, rx.start, frame_done))
            rx.start = False
            return
        rx = cast(_Receiving, self._rx)  # on_data_frame made it
        message_end = frame_done and rx.fin
        if rx.text:
            texts = rx.texts
            if message_end and texts is None:  # the common case: a message in one piece
                try:
                    self._events.append(TextMessage(data.decode("utf-8")))
                except UnicodeDecodeError as exc:
                    raise FrameError(
                        CloseCode.INVALID_DATA, "invalid UTF-8 in a text message"
                    ) from exc
                return
            text = self._decode(data, message_end)  # fails early, not at the end
            if texts is None:
                rx.texts = texts = [text]
            else:
                texts.append(text)
            if message_end:
                self._events.append(TextMessage("".join(texts)))
                rx.texts = None
            return
        parts = rx.parts
        if parts is None:
            if message_end:  # the common case: a message in one piece
                self._events.append(BytesMessage(data))
                return
            rx.parts = [data]
            return
        parts.append(data)
        if message_end:
            self._events.append(BytesMessage(b"".join(parts)))
            rx.parts = None

    def _decode(self, data: bytes | memoryview, final: bool) -> str:
        rx = cast(_Receiving, self._rx)  # on_data_frame made it
        decoder = rx.decoder
        if decoder is None:
            decoder = rx.decoder = _UTF8_DECODER("strict")
        try:
            return decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            # RFC 6455 §8.1: invalid UTF-8 fails the connection with 1007
            raise FrameError(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message") from exc

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == _PING:
            self._emit(Ping(payload))
            if (
                self._closing.sent is None and self._settings.auto_answer
            ):  # §5.5.1: none after our close
                self._send_control(_PONG, payload)
        elif opcode == _PONG:
            self._emit(Pong(payload))
        else:
            code, reason = parse_close_payload(payload)  # FrameError fails the connection
            self._closing_now().received = (code, reason)
            self._emit(CloseReceived(code, reason))
            if self._closing.sent is not None:
                self.state = State.CLOSED
            elif self._settings.auto_close_echo:
                self._queue_close(code, reason)  # §5.5.1: echo the code, none if none
                self.state = State.CLOSED
            else:
                self.state = State.CLOSE_RECEIVED
            raise StopParsing  # §5.5.1: nothing after a close frame is acted on

    # ------------------------------------------------------------------ internals

    def _check_can_send(self) -> None:
        if not (self.state is State.OPEN or self.state is State.CLOSE_RECEIVED):
            raise self.closed_error()

    def _encode(self, fin: bool, opcode: int, payload: bytes) -> list[bytes]:
        if self._settings.masks:
            mask = _new_mask()
            header = encode_frame_header(fin=fin, opcode=opcode, length=len(payload), mask=mask)
            if payload:
                payload = apply_mask(payload, mask)
        else:
            header = encode_frame_header(fin=fin, opcode=opcode, length=len(payload))
        if len(payload) < _COALESCE_LIMIT:
            return [header + payload]
        return [header, payload]

    def _send_control(self, opcode: int, payload: bytes) -> None:
        (frame,) = self._encode(True, opcode, payload)  # at most 125 bytes: one buffer
        if not (self._out_remaining or self._write_paused):
            if self._out is _NO_DATA:
                self._out = [frame]
            else:
                self._out.append(frame)
            return
        queued = self._queued
        if queued is None:
            self._queued = queued = []
        limit = self._settings.max_queued_control
        if len(queued) < limit:
            queued.append(frame)
            if len(queued) < limit:
                return
            self._emit(LimitReached(LIMIT_QUEUED_CONTROL))
        elif opcode != _CLOSE and queued[-1][0] == frame[0]:
            # §5.5.3: a pong for the most recent ping answers the earlier ones (and one
            # waiting ping of ours is as good as two).
            queued[-1] = frame
        else:
            queued.append(frame)  # the one close frame, or a ping after a pong
        # Full: a peer that does not read what it is sent stops being read until it does.
        # A backlog that only waits for a frame in flight is left to coalesce: holding
        # there could make two spliced peers wait forever, each for the other's frame.
        if self._write_paused:
            self._holds |= _BACKLOG

    def _flush_queued(self) -> None:
        if self._queued is not None:
            if self._out is _NO_DATA:
                self._out = self._queued
            else:
                self._out.extend(self._queued)
            self._queued = None
        self._holds &= ~_BACKLOG

    def _closing_now(self) -> _Closing:
        """This connection's own closing state, made at the first close, failure or loss."""
        closing = self._closing
        if closing is _NOT_CLOSING:
            self._closing = closing = _Closing()
        return closing

    def _emit(self, event: Event) -> None:
        """Add an event off the data path (whose appends rely on receive_data's list)."""
        if self._events is _NO_EVENTS:
            self._events = [event]
        else:
            self._events.append(event)

    def _queue_close(self, code: int, reason: str) -> None:
        payload = b"" if code == CloseCode.NO_STATUS else encode_close_payload(code, reason)
        self._closing_now().sent = (code, reason)
        self._send_control(_CLOSE, payload)

    def _fail(self, code: int, reason: str, limit: str | None) -> None:
        """RFC 6455 §7.1.7: send a close frame with ``code`` if none went out, parse no more."""
        self._closing_now().failure = (code, reason)
        self._rx = None  # nothing more is parsed: a message in pieces is dropped
        self._emit(Failed(code, reason, limit))
        if not self._settings.auto_answer:
            return  # the glue calls fail() when it reaches the event
        if self._closing.sent is None:
            self._queue_close(code, reason)
        self.state = State.CLOSED
