"""Targets, UDP, hooks and the forwarder against an in-process relay.

- UDP: a CoAP-like echo target behind the listener, a UDP forwarder in front; three
  local peers, 1,000 datagrams of random sizes, every reply back at its own peer with
  boundaries and contents intact; idle flows expire on either side.
- A unix socket target with half-close.
- Hooks: the claims allow-list (403), the per-address rate limit (429, injected clock),
  the zlib stream wrapper against a client-side inverse written here.
- The forwarder product: a config file with a TCP and a UDP binding; a relay restart
  (the forwarder keeps running and serves again) and a half-open relay (the local
  client sees its socket closed within seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import pytest
from tests.conftest import RelayFactory
from tests.harness.listeners import running_listener as running
from tests.harness.proxies import HalfOpenProxy
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

from hybridrelay.backoff import Backoff
from hybridrelay.client import (
    Forwarder,
    ForwardService,
    UdpForwarder,
    connect,
    load_forward_config,
)
from hybridrelay.errors import HandshakeError
from hybridrelay.listener import (
    AcceptRequest,
    HeaderAllowList,
    Listener,
    RateLimit,
    Reject,
    TcpTarget,
    UdpTarget,
    UnixTarget,
    load_hook,
    parse_target,
)
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection

ROOT = "RootManageSharedAccessKey"


def tokens() -> SasTokenProvider:
    return SasTokenProvider(ROOT, ROOT_KEY)


def fast_backoff() -> Backoff:
    return Backoff(base=0.05, cap=0.2, rng=random.Random(7))


@contextlib.asynccontextmanager
async def serving(forwarder: Forwarder | UdpForwarder | ForwardService) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    try:
        async with asyncio.timeout(seconds(10)):
            done, _ = await asyncio.wait(
                {task, asyncio.ensure_future(forwarder.ready.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
        if task in done:
            task.result()
        yield
    finally:
        stop.set()
        async with asyncio.timeout(seconds(20)):
            await task


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a counter until it holds (no event exists for it); fail after ``timeout``."""
    async with asyncio.timeout(seconds(timeout)):
        while not predicate():
            await asyncio.sleep(0.01)


# -- UDP peers and targets ----------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received += 1
        assert self.transport is not None
        self.transport.sendto(data, addr)


@pytest.fixture
async def udp_echo() -> AsyncIterator[tuple[str, int, _Echo]]:
    """A CoAP-like target: answers every datagram with the same datagram."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    yield "127.0.0.1", transport.get_extra_info("sockname")[1], protocol
    transport.close()


@pytest.fixture
async def tcp_echo() -> AsyncIterator[tuple[str, int]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield "127.0.0.1", server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


class UdpPeer(asyncio.DatagramProtocol):
    """A local UDP client of the forwarder; collects its replies."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.replies.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def reply(self) -> bytes:
        async with asyncio.timeout(seconds(10)):
            return await self.replies.get()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def udp_peer(port: int) -> UdpPeer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(UdpPeer, remote_addr=("127.0.0.1", port))
    return peer


# -- UDP ------------------------------------------------------------------------------------


async def test_udp_datagrams_reach_their_own_peer(relay: InProcessRelay, udp_echo) -> None:
    host, port, echo = udp_echo
    listener = Listener(relay.url, "echo", token_provider=tokens(), target=UdpTarget(host, port))
    forwarder = UdpForwarder(relay.url, "echo", token_provider=tokens())
    rng = random.Random(4711)
    counts = [334, 333, 333]  # 1,000 datagrams over 3 peers
    async with running(listener), serving(forwarder):
        peers = [await udp_peer(forwarder.port) for _ in counts]
        sent: list[list[bytes]] = [[] for _ in counts]
        got: list[list[bytes]] = [[] for _ in counts]

        async def converse(index: int, peer: UdpPeer, count: int) -> None:
            # A window of outstanding datagrams: concurrent, yet never more than the
            # sockets on the way buffer (loopback UDP drops nothing then).
            window = asyncio.Semaphore(16)

            async def collect() -> None:
                for _ in range(count):
                    got[index].append(await peer.reply())
                    window.release()

            collector = asyncio.create_task(collect())
            for seq in range(count):
                await window.acquire()
                # From 1 byte: asyncio before 3.13 does not send empty datagrams at all.
                size = rng.randint(1, 1400)
                datagram = bytes([index, seq % 256])[:size] + rng.randbytes(max(size - 2, 0))
                sent[index].append(datagram)
                peer.send(datagram)
            await collector

        try:
            await asyncio.gather(
                *(converse(i, p, n) for i, (p, n) in enumerate(zip(peers, counts, strict=True)))
            )
        finally:
            for peer in peers:
                peer.close()
        for index in range(len(counts)):
            assert got[index] == sent[index], f"peer {index}: replies differ"
        assert sum(len(s) for s in sent) == 1000
        assert echo.received == 1000
        assert forwarder.stats.flows == 3  # one relayed stream per local peer
        assert listener.stats.accepted == 3
    assert forwarder.stats.dropped == 0
    assert listener.stats.datagrams_dropped == 0
    assert forwarder.stats.datagrams_up == forwarder.stats.datagrams_down == 1000


async def test_udp_idle_flows_expire_on_either_side(relay: InProcessRelay, udp_echo) -> None:
    host, port, _ = udp_echo
    # The forwarder expires its flow first.
    listener = Listener(relay.url, "echo", token_provider=tokens(), target=UdpTarget(host, port))
    forwarder = UdpForwarder(relay.url, "echo", token_provider=tokens(), idle_timeout=0.3)
    async with running(listener), serving(forwarder):
        peer = await udp_peer(forwarder.port)
        peer.send(b"ping-1")
        assert await peer.reply() == b"ping-1"
        assert forwarder.flows == 1
        await eventually(lambda: forwarder.flows == 0)
        assert forwarder.stats.expired == 1
        async with asyncio.timeout(seconds(5)):
            await listener.idle.wait()  # its stream was closed by the forwarder's expiry
        # The same peer's next datagram opens a new flow.
        peer.send(b"ping-2")
        assert await peer.reply() == b"ping-2"
        assert forwarder.stats.flows == 2
        peer.close()

    # The listener expires the stream first: the forwarder drops the flow (no expiry of its own).
    listener = Listener(
        relay.url,
        "echo",
        token_provider=tokens(),
        target=UdpTarget(host, port),
        udp_idle_timeout=0.3,
    )
    forwarder = UdpForwarder(relay.url, "echo", token_provider=tokens(), idle_timeout=60)
    async with running(listener), serving(forwarder):
        peer = await udp_peer(forwarder.port)
        peer.send(b"hello")
        assert await peer.reply() == b"hello"
        await eventually(lambda: forwarder.flows == 0)
        assert forwarder.stats.expired == 0
        assert listener.stats.active == 0
        peer.send(b"again")
        assert await peer.reply() == b"again"
        peer.close()


async def test_udp_target_that_does_not_resolve_rejects_with_502(relay: InProcessRelay) -> None:
    listener = Listener(
        relay.url,
        "echo",
        token_provider=tokens(),
        target=UdpTarget("no-such-host.invalid", 5683),
        connect_timeout=5,
    )
    async with running(listener):
        with pytest.raises(HandshakeError) as info:
            await connect(relay.url, "echo", key_name=ROOT, key=ROOT_KEY)
        assert info.value.status == 502


# -- unix socket target ----------------------------------------------------------------------


async def read_all(ws: WsConnection) -> bytes:
    out = bytearray()
    while chunk := await ws.read():
        out += chunk
    return bytes(out)


async def test_unix_socket_target_with_half_close(relay: InProcessRelay, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    received = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
            writer.write(data)
            await writer.drain()
        writer.write(b"|eof seen")  # still writable after the sender's half-close
        writer.write_eof()
        writer.close()

    server = await asyncio.start_unix_server(handle, str(path))
    target = parse_target(f"unix://{path}")
    assert target == UnixTarget(str(path))
    listener = Listener(relay.url, "echo", token_provider=tokens(), target=target)
    try:
        async with running(listener):
            blob = random.Random(1).randbytes(200_000)
            async with connect(
                relay.url, "echo", key_name=ROOT, key=ROOT_KEY, stream_mode=True
            ) as ws:
                await ws.write(blob)
                await ws.close_write()  # no more from us; the target answers and closes
                async with asyncio.timeout(seconds(10)):
                    echoed = await read_all(ws)
            assert echoed == blob + b"|eof seen"
            assert bytes(received) == blob
    finally:
        server.close()
        await server.wait_closed()


async def test_unix_target_missing_socket_rejects_with_502(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    listener = Listener(
        relay.url, "echo", token_provider=tokens(), target=UnixTarget(str(tmp_path / "nope"))
    )
    async with running(listener):
        with pytest.raises(HandshakeError) as info:
            await connect(relay.url, "echo", key_name=ROOT, key=ROOT_KEY)
        assert info.value.status == 502


# -- hooks ------------------------------------------------------------------------------------


async def round_trip(relay: InProcessRelay, headers: dict[str, str] | None = None) -> bytes:
    async with connect(
        relay.url, "echo", key_name=ROOT, key=ROOT_KEY, stream_mode=True, headers=headers
    ) as ws:
        await ws.write(b"hi")
        await ws.close_write()
        async with asyncio.timeout(seconds(10)):
            return await read_all(ws)


async def rejected_status(relay: InProcessRelay, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(HandshakeError) as info:
        await connect(relay.url, "echo", key_name=ROOT, key=ROOT_KEY, headers=headers)
    return info.value.status


async def test_claims_allow_list_rejects_and_accepts(relay: InProcessRelay, tcp_echo) -> None:
    hook = load_hook(
        {
            "path": "hybridrelay.listener.hooks:HeaderAllowList",
            "args": {"claims": {"X-Device": ["dev-1", "dev-2"], "x-tenant": ["t1"]}},
        }
    )
    assert isinstance(hook, HeaderAllowList)
    listener = Listener(
        relay.url, "echo", token_provider=tokens(), target=TcpTarget(*tcp_echo), hooks=[hook]
    )
    async with running(listener):
        assert await rejected_status(relay) == 403
        assert await rejected_status(relay, {"X-Device": "dev-1"}) == 403  # tenant missing
        assert await rejected_status(relay, {"X-Device": "evil", "X-Tenant": "t1"}) == 403
        assert await round_trip(relay, {"x-device": "dev-2", "X-TENANT": "t1"}) == b"hi"
        assert listener.stats.rejected == 3


async def test_rate_limit_rejects_the_burst_plus_first_then_refills(
    relay: InProcessRelay, tcp_echo
) -> None:
    now = [1000.0]
    limit = RateLimit(per_address=0.5, burst=3, clock=lambda: now[0])
    seen: list[AcceptRequest] = []

    def record(request: AcceptRequest) -> None:
        seen.append(request)

    listener = Listener(
        relay.url,
        "echo",
        token_provider=tokens(),
        target=TcpTarget(*tcp_echo),
        hooks=[record, limit],
    )
    async with running(listener):
        for _ in range(3):
            assert await round_trip(relay) == b"hi"
        assert await rejected_status(relay) == 429
        assert seen[0].remote is not None
        assert seen[0].remote.address == "127.0.0.1"
        now[0] += 1.0  # half a token: still nothing
        assert await rejected_status(relay) == 429
        now[0] += 1.0  # one token back
        assert await round_trip(relay) == b"hi"
        assert await rejected_status(relay) == 429
        assert limit.rejected == 3


async def test_failing_hook_rejects_with_500(relay: InProcessRelay, tcp_echo) -> None:
    def broken(request: AcceptRequest) -> Reject | None:
        raise RuntimeError("plugin bug")

    async def wrong_type(request: AcceptRequest) -> object:
        return True

    for hook in (broken, wrong_type):
        listener = Listener(
            relay.url,
            "echo",
            token_provider=tokens(),
            target=TcpTarget(*tcp_echo),
            hooks=[hook],  # type: ignore[list-item] # wrong_type breaks the contract on purpose
        )
        async with running(listener):
            assert await rejected_status(relay) == 500


class ClientZlib:
    """The sender's inverse of ZlibStream, written independently: raw deflate per direction,
    a sync flush after every message."""

    def __init__(self, ws: WsConnection) -> None:
        self.ws = ws
        self.deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self.wire_up = 0
        self.wire_down = 0

    async def send(self, data: bytes) -> None:
        payload = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.wire_up += len(payload)
        await self.ws.send(payload)

    async def receive_all(self) -> bytes:
        out = bytearray()
        while chunk := await self.ws.read():
            self.wire_down += len(chunk)
            out += self.inflate.decompress(chunk)
        return bytes(out)


async def test_zlib_wrapper_round_trip(relay: InProcessRelay, tcp_echo) -> None:
    received = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    target = TcpTarget("127.0.0.1", server.sockets[0].getsockname()[1])
    hook = load_hook("hybridrelay.listener.hooks:ZlibCompression")
    listener = Listener(relay.url, "echo", token_provider=tokens(), target=target, hooks=[hook])
    text = b"".join(b"sensor %d temperature %d\n" % (i, i % 37) for i in range(20_000))
    try:
        async with running(listener):
            async with connect(
                relay.url, "echo", key_name=ROOT, key=ROOT_KEY, stream_mode=True
            ) as ws:
                client = ClientZlib(ws)
                for start in range(0, len(text), 50_000):  # several messages, one deflate stream
                    await client.send(text[start : start + 50_000])
                await ws.close_write()
                async with asyncio.timeout(seconds(10)):
                    echoed = await client.receive_all()
            assert bytes(received) == text  # the target saw plain bytes
            assert echoed == text  # and the sender gets them back after inflating
            # Compression happened on the wire both ways.
            assert client.wire_up < len(text) // 4
            assert client.wire_down < len(text) // 4
    finally:
        server.close()
        await server.wait_closed()


async def test_garbage_to_a_zlib_stream_closes_it_1007(relay: InProcessRelay, tcp_echo) -> None:
    hook = load_hook({"path": "hybridrelay.listener.hooks:ZlibCompression", "args": {"level": 1}})
    listener = Listener(
        relay.url, "echo", token_provider=tokens(), target=TcpTarget(*tcp_echo), hooks=[hook]
    )
    async with (
        running(listener),
        connect(relay.url, "echo", key_name=ROOT, key=ROOT_KEY, stream_mode=True) as ws,
    ):
        await ws.send(b"\xff\xff\xff not deflate")
        async with asyncio.timeout(seconds(10)):
            while await ws.read():
                pass
        assert ws.close_code == 1007


# -- the forwarder product -------------------------------------------------------------------


async def tcp_round_trip(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        async with asyncio.timeout(seconds(10)):
            return await reader.read()
    finally:
        writer.close()


async def test_forward_config_with_tcp_and_udp_bindings(
    relay: InProcessRelay, tcp_echo, udp_echo, tmp_path: Path
) -> None:
    host, port, _ = udp_echo
    path = tmp_path / "forward.toml"
    path.write_text(
        f"""
relay = "{relay.url}"
ping_interval = 5

[[bindings]]
local = "127.0.0.1:0"
hc = "echo"
key_name = "{ROOT}"
key_env = "TEST_SEND_KEY"

[[bindings]]
local = "udp://127.0.0.1:0"
hc = "mqtt"
key_name = "{ROOT}"
key_file = "send.key"
udp_idle_timeout = 30
""",
        "utf-8",
    )
    (tmp_path / "send.key").write_text(ROOT_KEY + "\n", "utf-8")
    config = load_forward_config(path, {"TEST_SEND_KEY": ROOT_KEY})
    service = ForwardService.from_config(config)
    tcp_forwarder, udp_forwarder = service.forwarders
    assert isinstance(tcp_forwarder, Forwarder)
    assert isinstance(udp_forwarder, UdpForwarder)
    tcp_listener = Listener(relay.url, "echo", token_provider=tokens(), target=TcpTarget(*tcp_echo))
    udp_listener = Listener(
        relay.url, "mqtt", token_provider=tokens(), target=UdpTarget(host, port)
    )
    async with running(tcp_listener), running(udp_listener), serving(service):
        assert await tcp_round_trip(tcp_forwarder.port, b"over tcp") == b"over tcp"
        peer = await udp_peer(udp_forwarder.port)
        try:
            for datagram in (b"one", b"2", b"three" * 200):
                peer.send(datagram)
                assert await peer.reply() == datagram
        finally:
            peer.close()
    assert tcp_forwarder.stats.accepted == 1
    assert udp_forwarder.stats.flows == 1


async def test_forward_service_reports_a_busy_port(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    busy = blocker.sockets[0].getsockname()[1]
    path = tmp_path / "forward.toml"
    path.write_text(
        f'relay = "ws://127.0.0.1:1"\n[[bindings]]\nlocal = "127.0.0.1:0"\nhc = "a"\n'
        f'[[bindings]]\nlocal = "127.0.0.1:{busy}"\nhc = "b"\n',
        "utf-8",
    )
    from hybridrelay.errors import ConfigError

    service = ForwardService.from_config(load_forward_config(path, {}))
    try:
        with pytest.raises(ConfigError) as info:
            async with asyncio.timeout(seconds(10)):
                await service.run(asyncio.Event())
        assert info.value.key == "bindings[1].local"
        assert "cannot bind" in info.value.reason
    finally:
        blocker.close()
        await blocker.wait_closed()


async def closed_within(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the local socket is closed or reset (must be under ``limit``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(limit):
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
    return loop.time() - started


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


async def test_forwarder_survives_a_relay_restart(
    relay_factory: RelayFactory, tcp_echo, udp_echo
) -> None:
    # No drain: the relay drops its streams at once, as a crashed or killed one would.
    relay = await relay_factory(relay_extra="drain_timeout = 0")
    host, port, _ = udp_echo
    tcp_listener = Listener(
        relay.url,
        "echo",
        token_provider=tokens(),
        target=TcpTarget(*tcp_echo),
        backoff=fast_backoff(),
    )
    udp_listener = Listener(
        relay.url,
        "mqtt",
        token_provider=tokens(),
        target=UdpTarget(host, port),
        backoff=fast_backoff(),
    )
    tcp_forwarder = Forwarder(relay.url, "echo", token_provider=tokens(), ping_interval=1.0)
    udp_forwarder = UdpForwarder(
        relay.url, "mqtt", token_provider=tokens(), ping_interval=1.0, retry_delay=0.1
    )
    async with (
        running(tcp_listener),
        running(udp_listener),
        serving(tcp_forwarder),
        serving(udp_forwarder),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_forwarder.port)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        peer = await udp_peer(udp_forwarder.port)
        peer.send(b"before")
        assert await peer.reply() == b"before"

        stopping = asyncio.create_task(relay.stop())
        # The local client of the dead stream sees its socket closed (or reset) at once.
        assert await closed_within(reader, seconds(3)) < seconds(3)
        await stopping
        writer.close()
        await eventually(lambda: udp_forwarder.flows == 0, 3)
        # While the relay is away, new local connections are closed, not left hanging.
        assert await tcp_round_trip(tcp_forwarder.port, b"nobody home") == b""

        connects = tcp_listener.stats.connects
        relay = await relay_factory(port=port_of(relay.url), relay_extra="drain_timeout = 0")
        await eventually(lambda: tcp_listener.stats.connects > connects, 5)
        await eventually(udp_listener.connected.is_set, 5)
        assert await tcp_round_trip(tcp_forwarder.port, b"after") == b"after"
        async with asyncio.timeout(seconds(10)):
            while True:  # the first datagrams may meet a flow still waiting out retry_delay
                peer.send(b"after")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        if await peer.replies.get() == b"after":
                            break
        peer.close()
    assert tcp_forwarder.stats.failed >= 1


async def test_half_open_relay_resets_the_local_client(relay: InProcessRelay, tcp_echo) -> None:
    relay_port = port_of(relay.url)
    proxy = await HalfOpenProxy("127.0.0.1", relay_port).start()
    listener = Listener(
        relay.url,
        "echo",
        token_provider=tokens(),
        target=TcpTarget(*tcp_echo),
        drain_timeout=2,
    )
    forwarder = Forwarder(
        f"ws://127.0.0.1:{proxy.port}", "echo", token_provider=tokens(), ping_interval=0.5
    )
    try:
        async with running(listener), serving(forwarder):
            reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
            writer.write(b"alive?")
            assert await reader.readexactly(6) == b"alive?"
            proxy.blackhole()  # the relay stops answering, its socket stays open
            elapsed = await closed_within(reader, seconds(3))
            assert elapsed < seconds(3)
            writer.close()
            await proxy.stop()  # now the relay sees the sender leg go, and ends the stream
    finally:
        await proxy.stop()
