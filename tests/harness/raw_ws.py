"""WebSocket as an attacker speaks it: frames packed and read by hand, and a raw client socket.

Nothing here uses hybridrelay's frame code: frames are packed with ``struct`` (masked as a
client must, or unmasked as only a server may), any header field can lie, and one reader
decodes what comes back (server frames, or a client's masked ones on the hostile server
side). :class:`RawWs` is a client on a plain socket whose handshake is a literal request
head, and which can stop reading for as long as it likes (``rcvbuf`` keeps the kernel
from soaking up what the relay writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import sys
from dataclasses import dataclass, field
from typing import Final, NamedTuple
from urllib.parse import urlsplit

from .raw_http import upgrade_request
from .timing import seconds

__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "PING",
    "PONG",
    "TEXT",
    "Frame",
    "RawWs",
    "close_code",
    "close_payload",
    "decode_frame",
    "encode_frame",
    "frame_head",
    "frame_size",
    "mask_bytes",
    "masked_frame",
    "read_close_code",
    "read_frame",
    "unmasked_frame",
]

# Opcodes (RFC 6455 §5.2).
CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA


# ------------------------------------------------------------------------------------ encoding


def mask_bytes(data: bytes, key: bytes) -> bytes:
    """RFC 6455 §5.3 masking (XOR with the 4-byte key, repeated); its own inverse."""
    n = len(data)
    if not n:
        return b""
    repeated = key * (n // 4) + key[: n % 4]
    return (int.from_bytes(data, sys.byteorder) ^ int.from_bytes(repeated, sys.byteorder)).to_bytes(
        n, sys.byteorder
    )


def frame_head(
    opcode: int, length: int, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None
) -> bytes:
    """A frame header announcing ``length`` payload bytes (with the masking key, if any)."""
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)])
    bit = 0x80 if mask is not None else 0
    if length < 126:
        head += struct.pack("!B", bit | length)
    elif length < 1 << 16:
        head += struct.pack("!BH", bit | 126, length)
    else:
        head += struct.pack("!BQ", bit | 127, length)
    return head if mask is None else head + mask


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One frame; ``length`` overrides the announced payload length (a lying header)."""
    announced = len(payload) if length is None else length
    head = frame_head(opcode, announced, fin=fin, rsv=rsv, mask=mask)
    return head + (payload if mask is None else mask_bytes(payload, mask))


def masked_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One client frame (RFC 6455 §5.3), masked with a fresh random key."""
    return encode_frame(opcode, payload, fin=fin, mask=os.urandom(4))


def unmasked_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One frame without a mask: what a server sends, and what a client must not."""
    return encode_frame(opcode, payload, fin=fin)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def close_code(payload: bytes) -> int:
    """The code of a close frame's payload (1005 when it carries none, RFC 6455 §7.1.5)."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005


# ------------------------------------------------------------------------------------ decoding


class Frame(NamedTuple):
    fin: bool
    opcode: int
    payload: bytes  # unmasked


def frame_size(data: bytes | bytearray) -> int:
    """Bytes the frame at the start of ``data`` takes, as far as ``data`` tells: its
    header's size while the header is incomplete, then header and payload together."""
    if len(data) < 2:
        return 2
    head = 2 + {126: 2, 127: 8}.get(data[1] & 0x7F, 0) + (4 if data[1] & 0x80 else 0)
    if len(data) < head:
        return head
    length = data[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack_from("!H", data, 2)
    elif length == 127:
        (length,) = struct.unpack_from("!Q", data, 2)
    return head + length


def decode_frame(data: bytes | bytearray) -> Frame:
    """The frame at the start of ``data`` (at least :func:`frame_size` bytes), unmasked."""
    size = frame_size(data)
    length = data[1] & 0x7F
    start = 2 + {126: 2, 127: 8}.get(length, 0)
    payload = bytes(data[start:size])
    if data[1] & 0x80:
        payload = mask_bytes(payload[4:], bytes(data[start : start + 4]))
    return Frame(bool(data[0] & 0x80), data[0] & 0x0F, payload)


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame on ``reader``; EOF raises IncompleteReadError."""
    data = bytearray(await reader.readexactly(2))
    while (size := frame_size(data)) > len(data):
        data += await reader.readexactly(size - len(data))
    return decode_frame(data)


async def read_close_code(reader: asyncio.StreamReader) -> int | None:
    """Read frames until a close frame and return its code; None when the socket just ends."""
    while True:
        try:
            frame = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if frame.opcode == CLOSE:
            return close_code(frame.payload)


# ---------------------------------------------------------------------------------- the client


@dataclass
class RawWs:
    """One raw WebSocket client connection (non-blocking socket on the running loop)."""

    sock: socket.socket
    status: int = 0
    head: str = ""
    _buffer: bytearray = field(default_factory=bytearray)
    _unsent: memoryview = field(default_factory=lambda: memoryview(b""))

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
        before_101: bytes = b"",
    ) -> RawWs:
        """Dial ``url`` (ws://host:port/path?query) and read the handshake answer.

        ``before_101`` is written right after the request head, before the answer
        arrives (so the server finds it in the same read as the head).
        """
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Set before connect so the advertised window stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        peer = cls(sock)
        try:
            async with asyncio.timeout(seconds(10)):
                await loop.sock_connect(sock, (host, port))
                request = upgrade_request(target, f"{host}:{port}", headers)
                await loop.sock_sendall(sock, request + before_101)
                await peer._read_head()
        except BaseException:
            sock.close()
            raise
        return peer

    async def _read_head(self) -> None:
        loop = asyncio.get_running_loop()
        while b"\r\n\r\n" not in self._buffer:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionResetError("closed during the handshake")
            self._buffer += chunk
        end = self._buffer.index(b"\r\n\r\n") + 4
        self.head = self._buffer[:end].decode("latin-1")
        del self._buffer[:end]
        self.status = int(self.head.split(" ", 2)[1])

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_until_stalled(self, chunk: bytes, *, volume: int, stall: float) -> int:
        """Send ``chunk`` over and over, never reading, until ``volume`` bytes went out
        or the socket took nothing for ``stall`` seconds (the server stopped reading).

        Returns the bytes sent. A chunk cut short by the stall is finished by the next
        call (or :meth:`send_rest`), so frames stay whole on the wire.
        """
        loop = asyncio.get_running_loop()
        sent = 0
        while sent < volume:
            if not self._unsent:
                self._unsent = memoryview(chunk)
            try:
                n = self.sock.send(self._unsent)
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(self.sock.fileno(), writable.set_result, None)
                try:
                    async with asyncio.timeout(stall):
                        await writable
                except TimeoutError:
                    return sent
                finally:
                    loop.remove_writer(self.sock.fileno())
                continue
            sent += n
            self._unsent = self._unsent[n:]
        return sent

    async def send_rest(self, then: bytes = b"") -> None:
        """Finish the chunk :meth:`send_until_stalled` was cut short in, then send ``then``."""
        rest, self._unsent = bytes(self._unsent), memoryview(b"")
        await self.send(rest + then)

    async def recv_frame(self) -> tuple[int, bytes]:
        """The next whole frame from the server as (opcode, payload); EOFError at the end."""
        loop = asyncio.get_running_loop()
        while len(self._buffer) < (size := frame_size(self._buffer)):
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise EOFError("connection closed")
            self._buffer += chunk
        frame = decode_frame(self._buffer)
        del self._buffer[:size]
        return frame.opcode, frame.payload

    async def recv_close(self) -> int:
        """Read until the server's close frame; its code (1005 when it carries none)."""
        while True:
            opcode, payload = await self.recv_frame()
            if opcode == CLOSE:
                return close_code(payload)

    async def recv_eof_or_reset(self) -> bytes:
        """Read until the server ends the connection; all bytes read meanwhile."""
        loop = asyncio.get_running_loop()
        data = bytearray(self._buffer)
        self._buffer.clear()
        with contextlib.suppress(ConnectionResetError):
            while chunk := await loop.sock_recv(self.sock, 65536):
                data += chunk
        return bytes(data)

    def close(self) -> None:
        self.sock.close()
