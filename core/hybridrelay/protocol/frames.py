"""RFC 6455 framing, sans-I/O: an incremental parser that streams payloads, and encoders.

The relay never reassembles messages: its splice re-frames every incoming frame
as soon as the header is known and streams the payload through in chunks, so a
32 MiB frame costs no more memory than a 32 byte one. The parser therefore
reports a data frame in pieces (header, then payload chunks) to a sink, and
only buffers control frames, which RFC 6455 §5.5 caps at 125 bytes.

The parser also enforces the message-level rules of §5.4 (continuation frames
only inside a fragmented message, no new data frame inside one), so that both
ends of a splice see a well-formed frame sequence.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import Any, Final, Protocol, cast

from hybridrelay.errors import ProtocolError
from hybridrelay.protocol.codes import CloseCode


def _load_c_mask() -> Callable[[Any, bytes], bytes] | None:
    """The C helper websockets ships; same semantics as the fallback below."""
    try:
        from websockets import speedups
    except ImportError:  # pragma: no cover - websockets ships the extension on CPython wheels
        return None
    # Its stub's parameter type differs between websockets releases; it takes any buffer.
    return cast("Callable[[Any, bytes], bytes]", speedups.apply_mask)


_c_apply_mask = _load_c_mask()

__all__ = [
    "MAX_CONTROL_PAYLOAD",
    "FrameError",
    "FrameParser",
    "FrameSink",
    "Opcode",
    "StopParsing",
    "apply_mask",
    "encode_close_payload",
    "encode_frame",
    "encode_frame_header",
    "is_valid_close_code",
    "parse_close_payload",
]

MAX_CONTROL_PAYLOAD: Final = 125


class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_DATA_OPCODES: Final = frozenset({0x0, 0x1, 0x2})
_CONTROL_OPCODES: Final = frozenset({0x8, 0x9, 0xA})


class FrameError(ProtocolError):
    """The peer sent a frame RFC 6455 forbids; ``close_code`` says how to fail the connection."""

    def __init__(self, close_code: int, reason: str, *, limit: str | None = None) -> None:
        super().__init__(reason, limit=limit)
        self.code = close_code
        self.reason = reason


def _py_apply_mask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    n = len(data)
    data_int = int.from_bytes(data, sys.byteorder)
    mask_int = int.from_bytes(mask * (n // 4) + mask[: n % 4], sys.byteorder)
    return (data_int ^ mask_int).to_bytes(n, sys.byteorder)


def apply_mask(data: bytes | bytearray | memoryview, mask: bytes, offset: int = 0) -> bytes:
    """XOR ``data`` with ``mask``, as if ``data`` started ``offset`` bytes into a payload."""
    shift = offset & 3
    if shift:
        mask = mask[shift:] + mask[:shift]
    if _c_apply_mask is not None:
        return _c_apply_mask(data, mask)
    return _py_apply_mask(data, mask)  # pragma: no cover


# apply_mask at offset 0, without the offset check: once per whole frame the parser unmasks.
_unmask: Final[Callable[[Any, bytes], bytes]] = _c_apply_mask or _py_apply_mask


_pack_h = struct.Struct("!BB").pack
_pack_h16 = struct.Struct("!BBH").pack
_pack_h64 = struct.Struct("!BBQ").pack


def encode_frame_header(*, fin: bool, opcode: int, length: int, mask: bytes | None = None) -> bytes:
    """Return the header of a frame carrying ``length`` payload bytes (RFC 6455 §5.2)."""
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask is not None else 0
    if length < 126:
        head = _pack_h(b0, mbit | length)
    elif length < 65536:
        head = _pack_h16(b0, mbit | 126, length)
    else:
        head = _pack_h64(b0, mbit | 127, length)
    return head + mask if mask is not None else head


def encode_frame(*, fin: bool, opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """Return a whole frame; the payload is masked when ``mask`` is given (client side)."""
    header = encode_frame_header(fin=fin, opcode=opcode, length=len(payload), mask=mask)
    if mask is not None and payload:
        payload = apply_mask(payload, mask)
    return header + payload


# RFC 6455 §7.4: 1000-1003, 1007-1011 (and the later 1012-1014) or 3000-4999; never
# 1005 or 1006, which only report that a close had no code or never came.
_SENDABLE_CODES: Final = frozenset(CloseCode) - {CloseCode.NO_STATUS, CloseCode.ABNORMAL}


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (never 1005, 1006 or 1015)."""
    return code in _SENDABLE_CODES or (3000 <= code <= 4999)


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    """Return (code, reason) of a close frame; (1005, "") when it carries no code."""
    if not payload:
        return CloseCode.NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if not is_valid_close_code(code):
        raise FrameError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8") from exc
    return code, reason


def encode_close_payload(code: int, reason: str = "") -> bytes:
    """Return a close payload; the reason is cut at a character boundary to fit 123 bytes."""
    data = reason.encode("utf-8")
    if len(data) > MAX_CONTROL_PAYLOAD - 2:
        data = data[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + data


class StopParsing(Exception):  # noqa: N818 - a signal from a sink, not an error
    """Raised by a sink to end parsing: :meth:`FrameParser.feed` discards the rest.

    RFC 6455 §5.5.1: after a close frame (or a frame that failed the connection) the
    endpoint must not act on any further data, including frames that arrived in the
    same read. The sink raises this from its callback; the parser drops the rest of
    that read and every later one, at no cost to frames that do not stop it.
    """


class FrameSink(Protocol):
    """Receives what a :class:`FrameParser` finds, in order."""

    def on_data_frame(self, fin: bool, opcode: int, length: int) -> None:
        """A data frame starts; ``opcode`` is 0 (continuation), 1 or 2. Payload follows."""

    def on_payload(self, data: bytes, frame_done: bool) -> None:
        """Unmasked payload bytes of the current data frame; called at least once per frame."""

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        """A whole close, ping or pong frame, unmasked."""


class _NoSink:
    """What a stopped parser points at instead of its former sink."""

    def on_data_frame(self, fin: bool, opcode: int, length: int) -> None:
        return None

    def on_payload(self, data: bytes, frame_done: bool) -> None:
        return None

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        return None


_NO_SINK: Final = _NoSink()


class PayloadViewSink(Protocol):
    """Takes payload as views of the bytes fed (:meth:`FrameParser.view_payload_to`)."""

    def on_payload_view(self, data: memoryview, frame_done: bool) -> None:
        """As :meth:`FrameSink.on_payload`; ``data`` is a view of the bytes fed, no copy."""


# Parser states
_HEAD: Final = 0
_PAYLOAD: Final = 1
# A control frame's payload is awaited: the state is its opcode (8, 9 or 10), so that a
# parser needs no slot of its own for it (a relay holds two parsers per connection).
_CONTROL: Final = 8
_FAILED: Final = 3
_STOPPED: Final = 4  # a sink raised StopParsing: everything after is discarded


class FrameParser:
    """Incremental frame parser. ``masked`` says whether incoming frames must be masked.

    A server (the relay) parses client frames, which RFC 6455 §5.1 requires to be
    masked; a client parses server frames, which must not be.
    """

    __slots__ = (
        "_buf",
        "_in_message",
        "_mask",
        "_masked",
        "_offset",
        "_remaining",
        "_sink",
        "_state",
        "_view_sink",
        "whole_frame",
    )

    def __init__(self, sink: FrameSink, *, masked: bool) -> None:
        self._sink = sink
        # When set, a data frame whose whole payload is in the bytes being parsed goes to
        # it as one call, whole_frame(sink, fin, opcode, payload), instead of
        # on_data_frame then on_payload: a splice's cost per small frame is mostly Python
        # calls (issue 16). A plain function taking the sink, not a bound method: that
        # would be one more object per connection, and a relay holds two per connect.
        # It comes before view_payload_to() for such frames (no parser uses both).
        self.whole_frame: Callable[[Any, bool, int, bytes], None] | None = None
        self._masked = masked
        self._buf = b""
        self._state = _HEAD
        self._remaining = 0
        self._mask: bytes | None = None
        self._offset = 0
        self._in_message = False
        self._view_sink: PayloadViewSink | None = None

    @property
    def views(self) -> bool:
        """Whether payload goes to a :class:`PayloadViewSink` (:meth:`view_payload_to`)."""
        return self._view_sink is not None

    def view_payload_to(self, sink: PayloadViewSink | None) -> None:
        """Unmasked frames: hand payload to ``sink`` as views of the bytes fed (None: as
        bytes to the FrameSink, as before).

        Slicing a payload piece out of a read copies it; a byte bridge that writes the
        piece to a socket at once needs no copy. The views keep the read alive.

        Raises:
            ValueError: This parser takes masked frames (they are unmasked into a copy).
        """
        if sink is not None and self._masked:
            raise ValueError("masked payload is unmasked into new bytes: no views")
        self._view_sink = sink

    def stop(self) -> None:
        """Parse nothing more, and let go of the sink: its owner is done with the stream.

        Dropping the references breaks the sink <-> parser cycle, so a finished
        connection is freed by reference counting, not left for the cyclic GC.
        """
        self._state = _STOPPED
        self._buf = b""
        self._sink = _NO_SINK
        self._view_sink = None
        self.whole_frame = None

    @property
    def in_message(self) -> bool:
        """True while a fragmented message has started and not yet ended."""
        return self._in_message

    @property
    def mid_frame(self) -> bool:
        """True while a frame header was read but not all of its payload."""
        return self._state != _HEAD or bool(self._buf)

    def feed(self, data: bytes) -> None:
        """Consume bytes from the network; raises :class:`FrameError` on a protocol violation."""
        if self._state == _FAILED:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "frame parser already failed")
        if self._state == _STOPPED:
            return
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        end = len(data)
        sink = self._sink
        view_sink = self._view_sink
        try:
            while True:
                state = self._state
                if pos >= end and not (state != _HEAD and self._remaining == 0):
                    break
                if state == _PAYLOAD and view_sink is not None:
                    take = min(self._remaining, end - pos)
                    view = memoryview(data)[pos : pos + take]
                    pos += take
                    self._remaining -= take
                    self._offset += take
                    if self._remaining == 0:
                        self._state = _HEAD
                        view_sink.on_payload_view(view, True)
                    else:
                        view_sink.on_payload_view(view, False)
                elif state == _PAYLOAD:
                    take = min(self._remaining, end - pos)
                    chunk = data[pos : pos + take] if (pos or take != end) else data
                    pos += take
                    self._remaining -= take
                    mask = self._mask
                    if mask is not None and take:
                        chunk = apply_mask(chunk, mask, self._offset)
                    self._offset += take
                    if self._remaining == 0:
                        self._state = _HEAD
                        sink.on_payload(chunk, True)
                    else:
                        sink.on_payload(chunk, False)
                elif state >= _CONTROL:
                    if end - pos < self._remaining:
                        break
                    payload = data[pos : pos + self._remaining]
                    pos += self._remaining
                    if self._mask is not None and payload:
                        payload = apply_mask(payload, self._mask)
                    self._state = _HEAD
                    self._remaining = 0
                    sink.on_control_frame(state, payload)
                else:
                    used = self._parse_header(data, pos, end)
                    if used == 0:
                        break
                    pos += used
        except FrameError:
            self._state = _FAILED
            raise
        except StopParsing:
            self._state = _STOPPED
            self._buf = b""
            return
        if pos < end:
            self._buf = data[pos:]

    def _parse_header(self, data: bytes, pos: int, end: int) -> int:
        avail = end - pos
        if avail < 2:
            return 0
        b0 = data[pos]
        b1 = data[pos + 1]
        length = b1 & 0x7F
        need = 2
        if length == 126:
            need = 4
        elif length == 127:
            need = 10
        has_mask = bool(b1 & 0x80)
        if has_mask:
            need += 4
        if avail < need:
            return 0
        if b0 & 0x70:
            raise FrameError(
                CloseCode.PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)"
            )
        if has_mask != self._masked:
            raise FrameError(
                CloseCode.PROTOCOL_ERROR,
                "unmasked client frame" if self._masked else "masked server frame",
            )
        fin = bool(b0 & 0x80)
        opcode = b0 & 0x0F
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos + 2)
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos + 2)
            if length >> 63:
                raise FrameError(
                    CloseCode.PROTOCOL_ERROR, "frame length has its most significant bit set"
                )
        if opcode in _CONTROL_OPCODES:
            if not fin:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise FrameError(
                    CloseCode.PROTOCOL_ERROR,
                    "control frame payload over 125 bytes",
                    limit="max_control_payload",
                )
            self._mask = data[pos + need - 4 : pos + need] if has_mask else None
            self._remaining = length
            self._state = opcode  # >= _CONTROL
            return need
        if opcode not in _DATA_OPCODES:
            raise FrameError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if opcode == 0:
            if not self._in_message:
                raise FrameError(
                    CloseCode.PROTOCOL_ERROR, "continuation frame outside a fragmented message"
                )
        elif self._in_message:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "new data frame inside a fragmented message")
        self._in_message = not fin
        whole = self.whole_frame
        if whole is not None and end - pos - need >= length:
            start = pos + need
            payload = data[start : start + length]
            if has_mask and length:
                payload = _unmask(payload, data[start - 4 : start])
            whole(self._sink, fin, opcode, payload)
            return need + length
        self._mask = data[pos + need - 4 : pos + need] if has_mask else None
        self._remaining = length
        self._offset = 0
        self._state = _PAYLOAD
        self._sink.on_data_frame(fin, opcode, length)
        return need
