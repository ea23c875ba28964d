"""Length-prefixed datagrams inside a relayed byte stream (UDP over Hybrid Connections).

A relayed stream carries bytes, so UDP datagram boundaries have to be written
into it. Each datagram becomes one *frame*: a 2-byte big-endian length, then
that many payload bytes::

    +--------+--------+---------------- ... ---+
    | length (u16 BE) | payload (length bytes) |
    +--------+--------+---------------- ... ---+

``length`` is 0..65507 (the largest UDP payload over IPv4); an empty datagram is
a valid frame. The stream's binary WebSocket messages hold one or more whole or
partial frames: the sender batches several datagrams into one message, and a
receiver must not assume any alignment, which is why :class:`DatagramDecoder`
is incremental and accepts any split.

Sans-I/O: no sockets, no asyncio, no clock. A length above the limit is the
peer's protocol violation and raises :class:`~hybridrelay.errors.ProtocolError`;
the decoder is then unusable (the stream has lost its framing and must be closed,
with 1002).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from hybridrelay.errors import ProtocolError

__all__ = ["HEADER_SIZE", "MAX_DATAGRAM", "DatagramDecoder", "encode", "encode_many"]

MAX_DATAGRAM: Final = 65507  # 65535 - 8 (UDP header) - 20 (IPv4 header)
HEADER_SIZE: Final = 2


def encode(datagram: bytes | bytearray | memoryview) -> bytes:
    """One datagram as a frame: its 2-byte big-endian length, then the datagram.

    Raises:
        ValueError: The datagram is longer than :data:`MAX_DATAGRAM` (a caller's bug:
            such a datagram cannot have come from a UDP socket over IPv4).
    """
    size = len(datagram)
    if size > MAX_DATAGRAM:
        raise ValueError(f"datagram of {size} bytes is over the {MAX_DATAGRAM}-byte limit")
    return size.to_bytes(HEADER_SIZE, "big") + bytes(datagram)


def encode_many(datagrams: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """Several datagrams as consecutive frames (one WebSocket message's payload).

    Raises:
        ValueError: As for :func:`encode`.
    """
    return b"".join([encode(d) for d in datagrams])


class DatagramDecoder:
    """Incremental decoder: feed stream bytes in any split, get whole datagrams back.

    Memory stays bounded by one frame: at most ``HEADER_SIZE + MAX_DATAGRAM - 1``
    bytes are buffered between calls.
    """

    __slots__ = ("_buffer", "_error")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes held for a frame that has not arrived whole yet (0 at a boundary)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add stream bytes; return the datagrams completed by them, in order.

        Raises:
            ProtocolError: A frame announces a length over :data:`MAX_DATAGRAM`. The
                datagrams before it in this call are lost with it; every later call
                raises the same error.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        pos = 0
        end = len(buffer)
        while end - pos >= HEADER_SIZE:
            size = int.from_bytes(buffer[pos : pos + HEADER_SIZE], "big")
            if size > MAX_DATAGRAM:
                self._error = ProtocolError(
                    f"datagram frame announces {size} bytes, over the {MAX_DATAGRAM}-byte limit"
                )
                buffer.clear()
                raise self._error
            start = pos + HEADER_SIZE
            if end - start < size:
                break
            out.append(bytes(buffer[start : start + size]))
            pos = start + size
        if pos:
            del buffer[:pos]
        return out
