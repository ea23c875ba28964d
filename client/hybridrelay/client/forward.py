"""Local port forwarder: every TCP connection to a local port becomes a relayed stream.

Unmodified programs (an MQTT client, ssh, a database client) connect to
``127.0.0.1:PORT`` and reach the listener's target. A connection the relay
refuses is closed at once, and the forwarder keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from dataclasses import dataclass

from hybridrelay.bridge import bridge
from hybridrelay.client.connection import connect
from hybridrelay.errors import HybridRelayError
from hybridrelay.logs import CLIENT
from hybridrelay.protocol.sas import TokenProvider

__all__ = ["Forwarder", "ForwarderStats"]

log = logging.getLogger(CLIENT)


@dataclass
class ForwarderStats:
    accepted: int = 0
    failed: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class Forwarder:
    """Listens on ``host:port`` and tunnels each connection through the relay to ``hc``."""

    def __init__(
        self,
        relay: str,
        hc: str,
        *,
        token_provider: TokenProvider | None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        open_timeout: float = 30.0,
        drain_timeout: float = 5.0,
    ) -> None:
        self.relay = relay
        self.hc = hc
        self._tokens = token_provider
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._open_timeout = open_timeout
        self._drain_timeout = drain_timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = ForwarderStats()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._on_client, self.host, self.port, backlog=512)
        self.port = server.sockets[0].getsockname()[1]
        log.info("forwarder_listening", extra={"local": f"{self.host}:{self.port}", "hc": self.hc})
        self.ready.set()
        try:
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=self._drain_timeout)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending)

    def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._tunnel(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            ws = await connect(
                self.relay,
                self.hc,
                token_provider=self._tokens,
                ssl_context=self._ssl,
                open_timeout=self._open_timeout,
                stream_mode=True,
            )
        except (OSError, TimeoutError, HybridRelayError) as exc:
            self.stats.failed += 1
            log.warning(
                "tunnel_refused", extra={"peer": str(peer), "error": str(exc) or type(exc).__name__}
            )
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        self.stats.accepted += 1
        self.stats.active += 1
        started = time.monotonic()
        try:
            result = await bridge(ws, reader, writer)
            self.stats.bytes_up += result.bytes_up
            self.stats.bytes_down += result.bytes_down
            log.info(
                "tunnel_closed",
                extra={
                    "peer": str(peer),
                    "bytes_up": result.bytes_up,
                    "bytes_down": result.bytes_down,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
        except (OSError, HybridRelayError) as exc:
            log.warning("tunnel_failed", extra={"peer": str(peer), "error": str(exc)})
        finally:
            self.stats.active -= 1
