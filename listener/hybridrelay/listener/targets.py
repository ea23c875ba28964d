"""Targets of a listener: parse ``tcp:// unix:// udp:// http://`` URLs and dial them.

A stream target (TCP or a unix socket) is bridged byte for byte with
:func:`hybridrelay.bridge.bridge`, half-close included. A ``udp://`` target gets one
connected UDP socket per relayed stream (:class:`UdpConnection`), carried by a
:class:`hybridrelay.datagram_bridge.DatagramBridge`. ``http(s)://`` targets serve
HTTP-mode requests (:class:`~hybridrelay.listener.http_target.HttpTarget`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias, cast
from urllib.parse import urlsplit

from hybridrelay.listener.http_target import HttpTarget
from hybridrelay.logs import LISTENER
from hybridrelay.socket_bridge import SocketBridge

__all__ = [
    "StreamTarget",
    "Target",
    "TcpTarget",
    "UdpConnection",
    "UdpTarget",
    "UnixTarget",
    "open_bridge",
    "open_stream",
    "parse_target",
]

log = logging.getLogger(LISTENER)

# A connected UDP socket whose send buffer holds more than this drops further datagrams.
_UDP_SEND_BUFFER: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class TcpTarget:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixTarget:
    path: str

    def __str__(self) -> str:
        return f"unix://{self.path}"


@dataclass(frozen=True, slots=True)
class UdpTarget:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp://{host}:{self.port}"


StreamTarget: TypeAlias = TcpTarget | UnixTarget | UdpTarget
Target: TypeAlias = StreamTarget | HttpTarget

_FORMS: Final = (
    "tcp://host:port, udp://host:port, unix:///absolute/path or http(s)://host[:port][/base]"
)


def parse_target(url: str) -> Target:
    """Parse a target URL.

    Args:
        url: ``tcp://host:port``, ``udp://host:port``, ``unix:///absolute/path`` or
            ``http(s)://host[:port][/base]``.

    Returns:
        A :class:`TcpTarget`, :class:`UnixTarget` or :class:`UdpTarget` (bridge accepted
        WebSocket connections), or an :class:`HttpTarget` (serve HTTP-mode requests;
        it opens no connection yet).

    Raises:
        ValueError: The URL is not one of those forms; the message says why.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid target URL {url!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return HttpTarget(url)
    if scheme == "unix":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"unix target {url!r} has a host; write unix:///absolute/path (three slashes)"
            )
        if not parts.path.startswith("/") or parts.path == "/":
            raise ValueError(f"unix target {url!r} needs an absolute socket path")
        if parts.query or parts.fragment:
            raise ValueError(f"unix target {url!r} must not have a query or fragment")
        return UnixTarget(parts.path)
    if scheme not in ("tcp", "udp"):
        raise ValueError(
            f"unsupported target scheme {parts.scheme!r} in {url!r} (expected {_FORMS})"
        )
    if not parts.hostname:
        raise ValueError(f"target {url!r} has no host (expected {scheme}://host:port)")
    if port is None or port == 0:
        raise ValueError(f"target {url!r} needs a port between 1 and 65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"target {url!r} must not have a path, query or fragment")
    if scheme == "udp":
        return UdpTarget(parts.hostname, port)
    return TcpTarget(parts.hostname, port)


async def open_stream(
    target: TcpTarget | UnixTarget,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a stream target (the caller bounds the time).

    Raises:
        OSError: The target refused or is unreachable (a missing socket file too).
    """
    if isinstance(target, UnixTarget):
        return await asyncio.open_unix_connection(target.path)
    return await asyncio.open_connection(target.host, target.port)


async def open_bridge(target: TcpTarget | UnixTarget) -> SocketBridge:
    """Connect to a stream target with a :class:`SocketBridge` as the socket's protocol
    (the caller bounds the time and runs the bridge).

    Raises:
        OSError: The target refused or is unreachable (a missing socket file too).
    """
    loop = asyncio.get_running_loop()
    if isinstance(target, UnixTarget):
        _, bridge = await loop.create_unix_connection(SocketBridge, target.path)
    else:
        _, bridge = await loop.create_connection(SocketBridge, target.host, target.port)
    return bridge


class UdpConnection(asyncio.DatagramProtocol):
    """One connected UDP socket to a ``udp://`` target, for one relayed stream.

    Connected (``remote_addr``), so the kernel accepts only the target's replies and
    an ICMP "port unreachable" comes back as an error on this socket; such errors are
    counted and logged, not fatal: UDP promises nothing, and the target may come up.
    """

    def __init__(self, target: UdpTarget) -> None:
        self.target = target
        self.errors = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._on_datagram: Callable[[bytes], None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, target: UdpTarget) -> UdpConnection:
        """Create the socket (the caller bounds the time: the name may need resolving).

        Raises:
            OSError: The host does not resolve or the socket cannot be created.
        """
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: cls(target), remote_addr=(target.host, target.port)
        )
        return protocol

    def attach(self, on_datagram: Callable[[bytes], None]) -> None:
        """Hand every datagram from the target to ``on_datagram`` (earlier ones are dropped)."""
        self._on_datagram = on_datagram

    def send(self, datagram: bytes) -> bool:
        """Send one datagram to the target; False when it was dropped (buffer full, closed)."""
        transport = self._transport
        if transport is None or self._closed or transport.is_closing():
            return False
        # Both asyncio's and uvloop's datagram transports buffer when the socket is
        # full and report the size; typeshed only lists it for WriteTransport.
        if cast(asyncio.WriteTransport, transport).get_write_buffer_size() > _UDP_SEND_BUFFER:
            return False
        transport.sendto(datagram)
        return True

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    # -- asyncio.DatagramProtocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self._on_datagram is not None:
            self._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("udp_target_error", extra={"target": str(self.target), "error": str(exc)})

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
