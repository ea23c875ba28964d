"""A WebSocket peer made of a plain socket and hand-built bytes, as an attacker writes one.

Nothing here uses hybridrelay's client code: the handshake is a literal request
head, frames are packed by hand, and the peer can stop reading for as long as
it likes (``rcvbuf`` keeps the kernel from soaking up what the relay writes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .timing import seconds

__all__ = ["RawWs", "masked_frame", "unmasked_frame"]


def masked_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One client frame (RFC 6455 §5.2), masked with a fresh random key."""
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return _head(opcode, len(payload), fin=fin, masked=True) + key + body


def unmasked_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One frame without a mask: what a server sends, and what a client must not."""
    return _head(opcode, len(payload), fin=fin, masked=False) + payload


def _head(opcode: int, length: int, *, fin: bool, masked: bool) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    bit = 0x80 if masked else 0
    if length < 126:
        return struct.pack("!BB", b0, bit | length)
    if length < 65536:
        return struct.pack("!BBH", b0, bit | 126, length)
    return struct.pack("!BBQ", b0, bit | 127, length)


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
                lines = [
                    f"GET {target} HTTP/1.1",
                    f"Host: {host}:{port}",
                    "Upgrade: websocket",
                    "Connection: Upgrade",
                    f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
                    "Sec-WebSocket-Version: 13",
                    *(f"{k}: {v}" for k, v in (headers or {}).items()),
                ]
                request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
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
        while True:
            frame = self._take_frame()
            if frame is not None:
                return frame
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise EOFError("connection closed")
            self._buffer += chunk

    def _take_frame(self) -> tuple[int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        length = buf[1] & 0x7F
        start = 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from("!H", buf, 2)
            start = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,) = struct.unpack_from("!Q", buf, 2)
            start = 10
        if len(buf) < start + length:
            return None
        opcode = buf[0] & 0x0F
        payload = bytes(buf[start : start + length])
        del buf[: start + length]
        return opcode, payload

    async def recv_close(self) -> int:
        """Read until the server's close frame; its code (1005 when it carries none)."""
        while True:
            opcode, payload = await self.recv_frame()
            if opcode == 0x8:
                return struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1005

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
