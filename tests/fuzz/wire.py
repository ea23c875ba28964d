"""The fuzzer's judge of the relay's bytes, and the socket that collects them.

Frames and requests are packed with the attacker harness (:mod:`tests.harness.raw_ws`,
:mod:`tests.harness.raw_http`), with a fixed masking key so that an example sends the same
bytes every time. What comes back is judged here, strictly and with nothing of the relay's
own parser or codec: every server frame against RFC 6455, every response against RFC 9112
(the harness's readers take what a test expects; these name every rule the bytes break).
Every read is bounded in bytes and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from tests.harness.raw_ws import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    close_code as close_code_of,
    encode_frame,
)

__all__ = [
    "BadAnswerError",
    "BadServerFrameError",
    "HttpAnswer",
    "RawSocket",
    "ServerFrame",
    "client_frame",
    "head_status",
    "parse_answers",
    "parse_server_frames",
    "valid_close_code",
]

_KNOWN_OPCODES: Final = frozenset({CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG})
FUZZ_MASK: Final = b"\x37\xfa\x21\x3d"  # every example's frames are masked with this key

READ_LIMIT: Final = 4 << 20  # bytes read from one socket in one example, at most


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = FUZZ_MASK,
    length: int | None = None,
) -> bytes:
    """One frame as a client sends it; ``length`` overrides the announced payload length."""
    return encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask, length=length)


def valid_close_code(code: int) -> bool:
    """RFC 6455 §7.4 and the IANA registry: codes an endpoint may put in a close frame."""
    return code in {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014} or (
        3000 <= code <= 4999
    )


@dataclass(frozen=True, slots=True)
class ServerFrame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        """The code of a close frame (1005 when it has none), else None."""
        return close_code_of(self.payload) if self.opcode == CLOSE else None


class BadServerFrameError(Exception):
    """The relay sent a frame RFC 6455 forbids a server to send."""


def parse_server_frames(data: bytes) -> tuple[list[ServerFrame], bytes]:
    """Whole frames at the start of ``data`` and the incomplete rest; strict about each frame."""
    frames: list[ServerFrame] = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        length = b1 & 0x7F
        need = 2
        if length == 126:
            need = 4
        elif length == 127:
            need = 10
        if len(data) - pos < need:
            break
        if b1 & 0x80:
            raise BadServerFrameError(f"masked server frame at byte {pos}")
        if b0 & 0x70:
            raise BadServerFrameError(f"reserved bits set at byte {pos}")
        opcode = b0 & 0x0F
        if opcode not in _KNOWN_OPCODES:
            raise BadServerFrameError(f"reserved opcode {opcode:#x} at byte {pos}")
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos + 2)
            if length < 126:
                raise BadServerFrameError("non-minimal 16-bit length")
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos + 2)
            if length < 1 << 16 or length >> 63:
                raise BadServerFrameError("bad 64-bit length")
        fin = bool(b0 & 0x80)
        if opcode >= CLOSE and (length > 125 or not fin):
            raise BadServerFrameError("control frame fragmented or over 125 bytes")
        if len(data) - pos - need < length:
            break
        payload = data[pos + need : pos + need + length]
        if opcode == CLOSE:
            _check_close(payload)
        frames.append(ServerFrame(fin, opcode, payload))
        pos += need + length
    return frames, data[pos:]


def _check_close(payload: bytes) -> None:
    if not payload:
        return
    if len(payload) == 1:
        raise BadServerFrameError("close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if not valid_close_code(code):
        raise BadServerFrameError(f"close code {code} may not be sent")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadServerFrameError("close reason is not UTF-8") from exc


# ----------------------------------------------------------------------------------------- sockets


@dataclass
class RawSocket:
    """A TCP connection read into one buffer: what the peer sent and how it ended."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: bytearray = field(default_factory=bytearray)
    eof: bool = False
    reset: bool = False

    @classmethod
    async def open(
        cls, host: str, port: int, *, local_addr: tuple[str, int] | None = None
    ) -> RawSocket:
        reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
        return cls(reader, writer)

    async def send(self, data: bytes) -> bool:
        """Write and drain; False when the peer is gone already (that is its right)."""
        if self.writer.is_closing():
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    def half_close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if not self.writer.is_closing() and self.writer.can_write_eof():
                self.writer.write_eof()

    async def read_some(self) -> bool:
        """Read what is there (waiting for it); False at EOF or reset."""
        if self.eof:
            return False
        try:
            chunk = await self.reader.read(65536)
        except (ConnectionError, OSError):
            self.eof = self.reset = True
            return False
        if not chunk:
            self.eof = True
            return False
        self.received += chunk
        if len(self.received) > READ_LIMIT:
            raise BadAnswerError(f"peer sent over {READ_LIMIT} bytes")
        return True

    async def read_head(self) -> bytes | None:
        """Bytes up to and including the first blank line (an HTTP head), or None at EOF."""
        while (end := self.received.find(b"\r\n\r\n")) < 0:
            if len(self.received) > 65536 or not await self.read_some():
                return None
        head = bytes(self.received[: end + 4])
        del self.received[: end + 4]
        return head

    async def read_to_eof(self) -> bytes:
        while await self.read_some():
            pass
        return bytes(self.received)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    def abort(self) -> None:
        self.writer.transport.abort()


_STATUS_LINE: Final = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ([^\r\n]*))?\r\n")


def head_status(head: bytes) -> int | None:
    match = _STATUS_LINE.match(head)
    return int(match.group(2)) if match else None


# ------------------------------------------------------------------------------------ HTTP answers


class BadAnswerError(Exception):
    """The relay's bytes are not a sequence of well-formed HTTP/1.1 responses."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    aborted: bool = False  # a chunked body cut before its last chunk (a broken response)
    version: bytes = b"1.1"

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE_BAD: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_REASON_BAD: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def parse_answers(data: bytes, methods: Sequence[str]) -> tuple[list[HttpAnswer], bytes]:
    """The responses in ``data`` (read to EOF) for requests with ``methods``, in order.

    Interim 1xx answers are returned too. Returns the answers and the bytes left over
    after the last one that parsed; raises :class:`BadAnswerError` for a malformed head,
    conflicting framing or a Content-Length body cut short.
    """
    answers: list[HttpAnswer] = []
    pos = 0
    finals = 0
    while pos < len(data) and data.startswith(b"HTTP/", pos):
        method = methods[finals] if finals < len(methods) else "GET"
        answer, pos = _parse_one(data, pos, method)
        answers.append(answer)
        if answer.status >= 200 or answer.status == 101:
            finals += 1
        if answer.aborted or answer.status == 101:
            break
    return answers, data[pos:]


def _parse_one(data: bytes, pos: int, method: str) -> tuple[HttpAnswer, int]:
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        raise BadAnswerError(f"response head not terminated: {data[pos : pos + 120]!r}")
    match = _STATUS_LINE.match(data, pos)
    if match is None:
        raise BadAnswerError(f"bad status line: {data[pos : pos + 80]!r}")
    version = match.group(1)
    status = int(match.group(2))
    reason = match.group(3) or b""
    if _REASON_BAD.search(reason):
        raise BadAnswerError(f"control character in reason phrase {reason!r}")
    headers: list[tuple[bytes, bytes]] = []
    lines = data[match.end() : end].split(b"\r\n") if match.end() < end else []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadAnswerError(f"bad header line {line[:80]!r}")
        value = value.strip(b" \t")
        if _FIELD_VALUE_BAD.search(value):
            raise BadAnswerError(f"control character in header {name!r}: {value[:80]!r}")
        headers.append((name, value))
    pos = end + 4
    answer = HttpAnswer(status, reason, tuple(headers), b"", version=version)
    if method == "HEAD" or status < 200 or status in (204, 304):
        return answer, pos
    te = [v for k, v in headers if k.lower() == b"transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == b"content-length"]
    if te and cl:
        raise BadAnswerError("both Transfer-Encoding and Content-Length")
    if te:
        if b",".join(te).split(b",")[-1].strip().lower() != b"chunked":
            raise BadAnswerError(f"Transfer-Encoding {te!r} does not end in chunked")
        body, pos, aborted = _parse_chunked(data, pos)
        return HttpAnswer(status, reason, tuple(headers), body, aborted, version), pos
    if cl:
        values = {v.strip() for v in b",".join(cl).split(b",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise BadAnswerError(f"bad Content-Length {cl!r}")
        length = int(next(iter(values)))
        if len(data) - pos < length:
            raise BadAnswerError(f"Content-Length {length} but {len(data) - pos} bytes follow")
        body = data[pos : pos + length]
        return HttpAnswer(status, reason, tuple(headers), body, version=version), pos + length
    # Close-delimited (RFC 9112 §6.3 rule 8): the rest is the body.
    return HttpAnswer(status, reason, tuple(headers), data[pos:], version=version), len(data)


def _parse_chunked(data: bytes, pos: int) -> tuple[bytes, int, bool]:
    body = bytearray()
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return bytes(body), len(data), True  # cut: a broken response
        size_text = data[pos:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise BadAnswerError(f"bad chunk size {size_text[:20]!r}") from exc
        pos = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n", pos)
            while trailer_end > pos:  # trailer fields
                pos = trailer_end + 2
                trailer_end = data.find(b"\r\n", pos)
            if trailer_end < 0:
                return bytes(body), len(data), True
            return bytes(body), trailer_end + 2, False
        if len(data) - pos < size + 2:
            return bytes(body) + data[pos:], len(data), True
        body += data[pos : pos + size]
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise BadAnswerError("chunk not followed by CRLF")
        pos += size + 2
