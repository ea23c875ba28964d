"""Local port forwarder: local TCP connections and UDP flows become relayed streams.

Unmodified programs (an MQTT client, ssh, a CoAP/LWM2M device manager) talk to
``127.0.0.1:PORT`` and reach the listener's target:

- :class:`Forwarder` (TCP): every local connection gets its own relayed stream,
  bridged byte for byte with half-close. A connection the relay refuses is closed
  at once. A relayed stream that dies (the relay stops, or stops answering pings:
  ``ping_interval``) resets the local connection, so the local client notices within
  seconds instead of hanging.
- :class:`UdpForwarder` (UDP): every distinct local peer (address, port) is a
  *flow* with its own relayed stream; its datagrams are length-prefixed inside the
  stream (:mod:`hybridrelay.datagrams`) and the replies go back to that peer. Idle
  flows expire; a flow whose stream dies is dropped, and the peer's next datagram
  opens a new one. Queues are bounded: when the relay is slower than the peer the
  oldest datagrams are dropped and counted, as UDP would.
- :class:`ForwardService` runs several bindings at once (``forward --config``).

In every case the forwarder itself keeps running while the relay is away, and
serves again as soon as the relay is back: each connection or flow dials anew.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, cast

from hybridrelay.client.config import BindingConfig, ForwardConfig
from hybridrelay.client.connection import connect
from hybridrelay.datagram_bridge import DatagramBridge, DatagramStats
from hybridrelay.errors import ConfigError, HandshakeError, HybridRelayError
from hybridrelay.logs import CLIENT, host_port, peer_text
from hybridrelay.outage import OutageReport
from hybridrelay.probe import ProbeResult, probe_relay
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.sas import TokenProvider
from hybridrelay.socket_bridge import SocketBridge
from hybridrelay.wsclient import WsConnection

__all__ = [
    "ForwardService",
    "Forwarder",
    "ForwarderStats",
    "UdpForwarder",
    "UdpForwarderStats",
    "forwarder_for",
]

log = logging.getLogger(CLIENT)

# The local UDP socket's send buffer may hold this much before replies are dropped.
_UDP_SEND_BUFFER: Final = 1 << 20


@dataclass(frozen=True)
class _StreamOpener:
    """How one binding opens its relayed byte streams (TCP tunnels and UDP flows alike)."""

    relay: str
    hc: str
    tokens: TokenProvider | None
    ssl_context: ssl.SSLContext | None
    open_timeout: float
    ping_interval: float | None
    headers: Mapping[str, str]

    outage: OutageReport = field(default_factory=OutageReport, compare=False)

    async def open(self) -> WsConnection:
        ws = await connect(
            self.relay,
            self.hc,
            token_provider=self.tokens,
            headers=self.headers,
            ssl_context=self.ssl_context,
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            stream_mode=True,
        )
        if (outage := self.outage.succeeded(time.monotonic())) is not None:
            log.info(
                "relay_reachable_again",
                extra={
                    "hc": self.hc,
                    "down_s": round(outage.seconds, 1),
                    "attempts": outage.attempts,
                },
            )
        return ws

    async def probe(self) -> ProbeResult:
        return await probe_relay(
            self.relay, self.hc, token_provider=self.tokens, ssl_context=self.ssl_context
        )

    def open_failed(self, event: str, exc: BaseException, peer: str) -> None:
        """Log why a stream could not be opened: every refusal by the relay or the
        listener (it names the cause), but an unreachable relay once, then a summary a
        minute, however many local clients keep arriving meanwhile."""
        fields: dict[str, object] = {"peer": peer, "error": str(exc) or type(exc).__name__}
        if isinstance(exc, HandshakeError):
            log.warning(event, extra=fields)
            return
        verdict, outage = self.outage.failed(time.monotonic())
        if verdict == "first":
            log.warning(event, extra=fields)
        elif verdict == "summary":
            summary = {
                "hc": self.hc,
                "down_s": round(outage.seconds, 1),
                "attempts": outage.attempts,
            }
            log.warning("relay_still_unreachable", extra=summary | fields)
        else:
            log.debug(event, extra=fields)


@dataclass
class ForwarderStats:
    accepted: int = 0
    failed: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class Forwarder:
    """Listens on ``host:port`` (TCP) and tunnels each connection through the relay to ``hc``.

    Args:
        relay: relay base URL (``ws://host:port`` or ``wss://host``).
        hc: hybrid connection name.
        token_provider: issues Send tokens (None: anonymous sender).
        host, port: where to listen (port 0 picks one; see :attr:`port` once ready).
        open_timeout: how long to wait for the listener to accept.
        ping_interval: keepalive on each relayed stream, so a relay that stops answering
            is noticed and the local connection reset (None: no pings).
        headers: sent with each connect; the listener sees them in ``connectHeaders``.
        drain_timeout: on stop, open tunnels get this long before they are cut.
    """

    transport: Final = "tcp"

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
        ping_interval: float | None = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.relay = relay
        self.hc = hc
        self.host = host
        self.port = port
        self._drain_timeout = drain_timeout
        self._headers = dict(headers or {})
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = ForwarderStats()
        self._opener = _StreamOpener(
            relay, hc, token_provider, ssl_context, open_timeout, ping_interval, self._headers
        )
        self.ready = asyncio.Event()

    async def probe(self) -> ProbeResult:
        """Check the relay URL, TLS, the token and the hybrid connection, opening no
        stream (:func:`hybridrelay.probe.probe_relay`)."""
        return await self._opener.probe()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set.

        Raises:
            OSError: The local port cannot be bound.
        """
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SocketBridge(on_connect=self._on_client), self.host, self.port, backlog=512
        )
        self.port = server.sockets[0].getsockname()[1]
        log.info(
            "forwarder_listening",
            extra={"local": f"tcp {host_port(self.host, self.port)}", "hc": self.hc},
        )
        self.ready.set()
        try:
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()
            await _drain(self._tasks, self._drain_timeout)

    def _on_client(self, local: SocketBridge) -> None:
        task = asyncio.ensure_future(self._tunnel(local))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tunnel(self, local: SocketBridge) -> None:
        # What the local client sends meanwhile waits in `local` (bounded; then the
        # socket is not read until the bridge runs).
        peer = peer_text(local.peername())
        try:
            ws = await self._opener.open()
        except (OSError, TimeoutError, HybridRelayError) as exc:
            self.stats.failed += 1
            self._opener.open_failed("tunnel_refused", exc, peer)
            local.close()
            return
        except BaseException:
            local.abort()
            raise
        self.stats.accepted += 1
        self.stats.active += 1
        started = time.monotonic()
        try:
            result = await local.run(ws)
            self.stats.bytes_up += result.bytes_up
            self.stats.bytes_down += result.bytes_down
            log.info(
                "tunnel_closed",
                extra={
                    "peer": peer,
                    "bytes_up": result.bytes_up,
                    "bytes_down": result.bytes_down,
                    "code": result.close_code,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
        except (OSError, HybridRelayError) as exc:
            log.warning("tunnel_failed", extra={"peer": peer, "error": str(exc)})
        finally:
            self.stats.active -= 1


# -- UDP ---------------------------------------------------------------------------------

Peer = tuple[str | int, ...]  # (host, port) for IPv4, (host, port, flowinfo, scope) for IPv6
_FlowState = Literal["connecting", "open", "failed"]


@dataclass
class UdpForwarderStats:
    """Counters of a :class:`UdpForwarder`.

    Attributes:
        flows: Relayed streams opened (one per flow).
        failed: Flows whose stream could not be opened.
        active: Flows open now.
        expired: Flows closed for being idle.
        datagrams_up, datagrams_down: Datagrams carried (local → relay, relay → local).
        bytes_up, bytes_down: Their payload bytes.
        dropped: Datagrams dropped either way (queue full, flow table full, stream
            refused or lost, local send buffer full).
    """

    flows: int = 0
    failed: int = 0
    active: int = 0
    expired: int = 0
    datagrams_up: int = 0
    datagrams_down: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped: int = 0


@dataclass(eq=False)
class _Flow:
    peer: Peer
    bridge: DatagramBridge
    state: _FlowState = "connecting"
    task: asyncio.Task[None] | None = None


class _UdpSocket(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpForwarder) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._owner._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for replies to a peer that went away: nothing to do, UDP.
        log.debug("udp_local_error", extra={"error": str(exc)})


class UdpForwarder:
    """Listens on ``host:port`` (UDP); each local peer gets its own relayed stream to ``hc``.

    Args:
        relay, hc, token_provider, ssl_context, open_timeout, ping_interval, headers:
            as for :class:`Forwarder`.
        host, port: the local UDP socket (port 0 picks one; see :attr:`port`).
        idle_timeout: a flow with no datagram either way for this long is closed.
        queue_limit: datagrams queued per flow towards the relay before the oldest drop.
        max_flows: most flows at once; datagrams from further peers are dropped.
        retry_delay: after a flow's stream could not be opened, that peer's datagrams are
            dropped for this long before the next attempt (no connect per datagram).
        drain_timeout: on stop, flows get this long to close their streams.
    """

    transport: Final = "udp"

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
        ping_interval: float | None = 10.0,
        headers: Mapping[str, str] | None = None,
        idle_timeout: float = 60.0,
        queue_limit: int = 256,
        max_flows: int = 1024,
        retry_delay: float = 1.0,
        drain_timeout: float = 5.0,
    ) -> None:
        self.relay = relay
        self.hc = hc
        self.host = host
        self.port = port
        self._headers = dict(headers or {})
        self._opener = _StreamOpener(
            relay, hc, token_provider, ssl_context, open_timeout, ping_interval, self._headers
        )
        self._idle_timeout = idle_timeout
        self._queue_limit = queue_limit
        self._max_flows = max_flows
        self._retry_delay = retry_delay
        self._drain_timeout = drain_timeout
        self._transport: asyncio.DatagramTransport | None = None
        self._flows: dict[Peer, _Flow] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.stats = UdpForwarderStats()
        self.ready = asyncio.Event()

    @property
    def flows(self) -> int:
        """Flows in the table now (connecting, open, or waiting out ``retry_delay``)."""
        return len(self._flows)

    async def probe(self) -> ProbeResult:
        """Check the relay URL, TLS, the token and the hybrid connection, opening no
        stream (:func:`hybridrelay.probe.probe_relay`)."""
        return await self._opener.probe()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set.

        Raises:
            OSError: The local port cannot be bound.
        """
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpSocket(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        log.info(
            "forwarder_listening",
            extra={"local": f"udp {host_port(self.host, self.port)}", "hc": self.hc},
        )
        self.ready.set()
        try:
            await stop.wait()
        finally:
            self._closing = True
            for flow in list(self._flows.values()):
                if flow.state == "open":
                    flow.bridge.stop(CloseCode.GOING_AWAY, "forwarder stopping")
                elif flow.task is not None:
                    flow.task.cancel()
            await _drain(self._tasks, self._drain_timeout)
            transport.close()

    def _on_datagram(self, data: bytes, addr: Peer) -> None:
        flow = self._flows.get(addr)
        if flow is None:
            if self._closing or len(self._flows) >= self._max_flows:
                self.stats.dropped += 1
                return
            flow = _Flow(
                addr,
                DatagramBridge(
                    self._deliver_to(addr),
                    idle_timeout=self._idle_timeout,
                    queue_limit=self._queue_limit,
                ),
            )
            self._flows[addr] = flow
            task = asyncio.ensure_future(self._run_flow(flow))
            flow.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        flow.bridge.push(data)

    def _deliver_to(self, addr: Peer) -> Callable[[bytes], bool]:
        def deliver(datagram: bytes) -> bool:
            transport = self._transport
            if transport is None or transport.is_closing():
                return False
            # asyncio's and uvloop's datagram transports both report their buffer;
            # typeshed lists the method only for WriteTransport.
            if cast(asyncio.WriteTransport, transport).get_write_buffer_size() > _UDP_SEND_BUFFER:
                return False
            transport.sendto(datagram, addr)
            return True

        return deliver

    async def _run_flow(self, flow: _Flow) -> None:
        peer = peer_text(flow.peer)
        try:
            ws = await self._open(flow, peer)
            if ws is None:
                return
            flow.state = "open"
            self.stats.flows += 1
            self.stats.active += 1
            try:
                result = await flow.bridge.run(ws)
            finally:
                self.stats.active -= 1
            if result.outcome == "idle":
                self.stats.expired += 1
            log.info(
                "udp_flow_closed",
                extra={
                    "peer": peer,
                    "outcome": result.outcome,
                    "code": result.close_code,
                    "datagrams_up": result.datagrams_up,
                    "datagrams_down": result.datagrams_down,
                    "dropped": result.dropped_up + result.dropped_down,
                },
            )
        except Exception:
            log.exception("udp_flow_crashed", extra={"peer": peer})
        finally:
            self._account(flow.bridge.stats)
            if self._flows.get(flow.peer) is flow:
                del self._flows[flow.peer]

    async def _open(self, flow: _Flow, peer: str) -> WsConnection | None:
        """The flow's relayed stream, or None (after ``retry_delay``) when refused."""
        try:
            return await self._opener.open()
        except (OSError, TimeoutError, HybridRelayError) as exc:
            self.stats.failed += 1
            self._opener.open_failed("udp_flow_refused", exc, peer)
        flow.state = "failed"
        flow.bridge.stop()  # drops what is queued and what arrives while we wait
        await asyncio.sleep(self._retry_delay)
        return None

    def _account(self, stats: DatagramStats) -> None:
        self.stats.datagrams_up += stats.datagrams_up
        self.stats.datagrams_down += stats.datagrams_down
        self.stats.bytes_up += stats.bytes_up
        self.stats.bytes_down += stats.bytes_down
        self.stats.dropped += stats.dropped_up + stats.dropped_down


# -- several bindings ----------------------------------------------------------------------

AnyForwarder = Forwarder | UdpForwarder


def forwarder_for(
    binding: BindingConfig, relay: str, ssl_context: ssl.SSLContext | None = None
) -> AnyForwarder:
    """The forwarder serving one ``[[bindings]]`` entry of a forward config."""
    tokens = binding.token_provider()
    if binding.transport == "udp":
        return UdpForwarder(
            relay,
            binding.hc,
            token_provider=tokens,
            host=binding.host,
            port=binding.port,
            ssl_context=ssl_context,
            open_timeout=binding.open_timeout,
            ping_interval=binding.ping_interval,
            headers=binding.headers,
            idle_timeout=binding.udp_idle_timeout,
            max_flows=binding.udp_max_flows,
        )
    return Forwarder(
        relay,
        binding.hc,
        token_provider=tokens,
        host=binding.host,
        port=binding.port,
        ssl_context=ssl_context,
        open_timeout=binding.open_timeout,
        ping_interval=binding.ping_interval,
        headers=binding.headers,
    )


class ForwardService:
    """Runs several forwarders (one per binding) until ``stop``.

    Args:
        forwarders: what to run; see :meth:`from_config`.
        source: the config file, named in errors.
    """

    def __init__(self, forwarders: Sequence[AnyForwarder], *, source: str = "") -> None:
        if not forwarders:
            raise ValueError("a ForwardService needs at least one forwarder")
        self.forwarders = tuple(forwarders)
        self._source = source
        self.ready = asyncio.Event()

    @classmethod
    def from_config(cls, config: ForwardConfig) -> ForwardService:
        ssl_context = ssl.create_default_context(cafile=config.ca_file) if config.ca_file else None
        return cls(
            [forwarder_for(b, config.relay, ssl_context) for b in config.bindings],
            source=config.source,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve every binding until ``stop`` is set.

        Raises:
            ConfigError: A binding's local port cannot be bound (names ``bindings[i].local``);
                the others are stopped.
        """
        try:
            async with asyncio.TaskGroup() as tg:
                for index, forwarder in enumerate(self.forwarders):
                    tg.create_task(self._run_one(index, forwarder, stop))
                await asyncio.gather(*(f.ready.wait() for f in self.forwarders))
                self.ready.set()
        except BaseExceptionGroup as group:
            errors = group.exceptions
            if len(errors) == 1 and isinstance(errors[0], ConfigError):
                raise errors[0] from None
            raise

    async def _run_one(self, index: int, forwarder: AnyForwarder, stop: asyncio.Event) -> None:
        try:
            await forwarder.run(stop)
        except OSError as exc:
            if forwarder.ready.is_set():
                raise
            raise ConfigError(
                self._source or "<command line>",
                f"bindings[{index}].local" if self._source else "--local",
                f"cannot bind {forwarder.transport} {host_port(forwarder.host, forwarder.port)}: "
                f"{exc.strerror or exc}",
            ) from exc


async def _drain(tasks: set[asyncio.Task[None]], deadline_s: float) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(set(tasks), timeout=deadline_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
