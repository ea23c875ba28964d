"""hybridrelay.bridge and hybridrelay.socket_bridge between real sockets on 127.0.0.1.

    app --TCP-- [bridge under test] --WS-- RelayPeer --TCP-- target

Every test runs against both bridges (the ``engine`` fixture): ``stream`` is
:func:`hybridrelay.bridge.bridge` over asyncio streams (what accept hooks' wrapped streams
use), ``socket`` is :class:`hybridrelay.socket_bridge.SocketBridge` as the app socket's
protocol (the forwarder and the agent); they promise the same behaviour.

``RelayPeer`` is a raw WebSocket server (frames read with our FrameParser) that
pipes each connection to a new TCP connection to the target, with half-close in
both directions: the client's close frame becomes EOF towards the target, the
target's EOF becomes a close frame, and only after both does it close TCP. The
app and the target are test coroutines, so every test can check exactly which
bytes and which EOFs reached each end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.harness.timing import seconds

from hybridrelay.bridge import BridgeStats, bridge
from hybridrelay.protocol.frames import (
    FrameParser,
    Opcode,
    encode_close_payload,
    encode_frame,
    parse_close_payload,
)
from hybridrelay.socket_bridge import SocketBridge
from hybridrelay.wsclient import WsConnection, ws_connect

T = seconds(10.0)
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MiB = 1024 * 1024

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Target = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(T):
        return await reader.read()


async def read_until_error(reader: asyncio.StreamReader, into: bytearray) -> None:
    async with asyncio.timeout(T):
        while data := await reader.read(65536):
            into += data
    raise AssertionError("expected an error, got EOF")


# --------------------------------------------------------------------------- relay-like peer


@dataclass
class PeerResult:
    """What the relay-like peer saw on one WebSocket connection."""

    close_from_client: tuple[int, str] | None = None
    bytes_from_client: int = 0
    target_reset: bool = False
    client_lost: bool = False


class _Sink:
    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self.on_data = on_data
        self.close: tuple[int, str] | None = None

    def on_data_frame(self, fin: bool, opcode: int, length: int) -> None:
        assert opcode in (Opcode.BINARY, Opcode.CONTINUATION)

    def on_payload(self, data: bytes, frame_done: bool) -> None:
        self.on_data(data)

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == Opcode.CLOSE:
            self.close = parse_close_payload(payload)


class RelayPeer:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.results: asyncio.Queue[PeerResult] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.clients: list[asyncio.StreamWriter] = []  # our ends of the WebSocket connections
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> RelayPeer:
        self.server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/$hc/bridge"
        return self

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.clients.append(writer)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        accept = base64.b64encode(
            hashlib.sha1((key + GUID).encode(), usedforsecurity=False).digest()
        ).decode()
        writer.write(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        t_reader, t_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        result = PeerResult()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._ws_to_target(reader, t_writer, result))
                tg.create_task(self._target_to_ws(t_reader, t_writer, writer, result))
        finally:
            writer.close()  # RFC 6455 §7.1.1: the server closes TCP first
            t_writer.close()
            self.results.put_nowait(result)

    async def _ws_to_target(
        self, reader: asyncio.StreamReader, t_writer: asyncio.StreamWriter, result: PeerResult
    ) -> None:
        def forward(data: bytes) -> None:
            result.bytes_from_client += len(data)
            t_writer.write(data)

        sink = _Sink(forward)
        parser = FrameParser(sink, masked=True)
        while sink.close is None:
            try:
                data = await reader.read(65536)
            except ConnectionError:
                data = b""
            if not data:
                result.client_lost = True
                rst(t_writer)
                return
            parser.feed(data)
            with contextlib.suppress(ConnectionError):
                await t_writer.drain()
        result.close_from_client = sink.close
        if sink.close[0] == 1000:
            with contextlib.suppress(OSError):
                t_writer.write_eof()  # half-close towards the target
        else:
            rst(t_writer)

    async def _target_to_ws(
        self,
        t_reader: asyncio.StreamReader,
        t_writer: asyncio.StreamWriter,
        writer: asyncio.StreamWriter,
        result: PeerResult,
    ) -> None:
        close = encode_close_payload(1000)
        while True:
            try:
                data = await t_reader.read(65536)
            except ConnectionResetError:
                result.target_reset = True
                close = encode_close_payload(1011, "target reset")
                break
            if not data:
                break
            try:
                writer.write(encode_frame(fin=True, opcode=Opcode.BINARY, payload=data))
                await writer.drain()
            except ConnectionError:
                result.client_lost = True
                rst(t_writer)
                return
        with contextlib.suppress(ConnectionError):
            writer.write(encode_frame(fin=True, opcode=Opcode.CLOSE, payload=close))
            await writer.drain()

    async def result(self) -> PeerResult:
        async with asyncio.timeout(T):
            return await self.results.get()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()
        async with asyncio.timeout(T):
            await asyncio.gather(*self.tasks, return_exceptions=True)
            if self.server is not None:
                await self.server.wait_closed()


# --------------------------------------------------------------------------- fixtures


@dataclass
class Setup:
    """Target + relay peer + an app connection whose accepted end is bridged."""

    relay: RelayPeer
    target_done: asyncio.Queue[object]
    engine: str
    cleanup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    ws: list[WsConnection] = field(default_factory=list)
    bridges: list[WatchedBridge] = field(default_factory=list)  # the socket engine's

    async def start_bridge(
        self, kind: str, tmp_path: Path, **options: float
    ) -> tuple[Streams, asyncio.Task[BridgeStats]]:
        """Connect an app stream and bridge its server end to a new WebSocket."""
        if self.engine == "socket":
            return await self._start_socket_bridge(kind, tmp_path, **options)
        accepted: asyncio.Queue[Streams] = asyncio.Queue()

        async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.put_nowait((reader, writer))

        async with asyncio.timeout(T):
            if kind == "tcp":
                server = await asyncio.start_server(on_accept, "127.0.0.1", 0)
                app = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            else:
                path = str(tmp_path / "app.sock")
                server = await asyncio.start_unix_server(on_accept, path)
                app = await asyncio.open_unix_connection(path)
            reader, writer = await accepted.get()
            ws = await ws_connect(self.relay.url, auto_close_echo=False)
        self.ws.append(ws)

        async def close_server() -> None:
            app[1].transport.abort()
            writer.transport.abort()
            server.close()
            await server.wait_closed()

        self.cleanup.append(close_server)
        task = asyncio.create_task(bridge(ws, reader, writer, **options))  # type: ignore[arg-type]  # test passthrough
        return app, task

    async def _start_socket_bridge(
        self,
        kind: str,
        tmp_path: Path,
        chunk_size: float = 65536,
        idle_timeout: float | None = None,
    ) -> tuple[Streams, asyncio.Task[BridgeStats]]:
        accepted: asyncio.Queue[SocketBridge] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def factory() -> SocketBridge:
            bridge = WatchedBridge(chunk_size=int(chunk_size), on_connect=accepted.put_nowait)
            self.bridges.append(bridge)
            return bridge

        async with asyncio.timeout(T):
            if kind == "tcp":
                server = await loop.create_server(factory, "127.0.0.1", 0)
                app = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            else:
                path = str(tmp_path / "app.sock")
                server = await loop.create_unix_server(factory, path)
                app = await asyncio.open_unix_connection(path)
            local = await accepted.get()
            ws = await ws_connect(self.relay.url, auto_close_echo=False)
        self.ws.append(ws)

        async def close_server() -> None:
            app[1].transport.abort()
            local.abort()
            server.close()
            await server.wait_closed()

        self.cleanup.append(close_server)
        task = asyncio.create_task(local.run(ws, idle_timeout=idle_timeout))
        return app, task


class WatchedBridge(SocketBridge):
    """A SocketBridge that says when backpressure started, each way."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.socket_full = asyncio.Event()  # the app's socket took no more: WS held
        self.ws_full = asyncio.Event()  # the WebSocket took no more: the socket held
        self.hold_full = asyncio.Event()  # before run(): the hold took no more

    def pause_writing(self) -> None:
        super().pause_writing()
        self.socket_full.set()

    def ws_writable(self, writable: bool) -> None:
        super().ws_writable(writable)
        if not writable:
            self.ws_full.set()

    def buffer_updated(self, nbytes: int) -> None:
        super().buffer_updated(nbytes)
        if self.transport is not None and not self.transport.is_reading():
            self.hold_full.set()


@pytest.fixture(params=["stream", "socket"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_setup(engine: str) -> AsyncIterator[Callable[[Target], Awaitable[Setup]]]:
    setups: list[Setup] = []
    stops: list[Callable[[], Awaitable[None]]] = []

    async def make(target: Target) -> Setup:
        done: asyncio.Queue[object] = asyncio.Queue()
        handlers: set[asyncio.Task[None]] = set()

        async def on_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await target(reader, writer)
                done.put_nowait("ok")
            except (OSError, AssertionError, EOFError) as exc:  # reported through the queue
                done.put_nowait(exc)
            finally:
                writer.transport.abort()

        server = await asyncio.start_server(on_target, "127.0.0.1", 0)

        async def stop() -> None:
            server.close()
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()

        stops.append(stop)
        relay = await RelayPeer(server.sockets[0].getsockname()[1]).start()
        setup = Setup(relay, done, engine)
        setups.append(setup)
        return setup

    yield make
    async with asyncio.timeout(T):
        for setup in reversed(setups):
            for ws in setup.ws:
                ws.abort()
                await ws.wait_closed()
            for step in reversed(setup.cleanup):
                await step()
            await setup.relay.stop()
        for stop in reversed(stops):
            await stop()


async def target_outcome(setup: Setup) -> None:
    async with asyncio.timeout(T):
        outcome = await setup.target_done.get()
    if isinstance(outcome, BaseException):
        raise outcome


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_app_half_close_still_gets_reply(
    make_setup: Callable[[Target], Awaitable[Setup]], tmp_path: Path, kind: str
) -> None:
    """App shuts down its write side; the target reads to EOF and then replies."""
    tail = os.urandom(MiB)

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_all(reader)  # until the app's EOF arrives through the WS close
        writer.write(hashlib.sha256(request).digest() + tail)
        await writer.drain()
        writer.write_eof()

    setup = await make_setup(target)
    (app_r, app_w), task = await setup.start_bridge(kind, tmp_path)
    request = os.urandom(3 * MiB)
    app_w.write(request)
    await app_w.drain()
    app_w.write_eof()
    reply = await read_all(app_r)
    assert reply == hashlib.sha256(request).digest() + tail
    async with asyncio.timeout(T):
        stats = await task
    assert stats == BridgeStats(bytes_up=len(request), bytes_down=len(reply), close_code=1000)
    peer = await setup.relay.result()
    assert peer.close_from_client == (1000, "")
    assert peer.bytes_from_client == len(request)
    await target_outcome(setup)


async def test_target_half_close_keeps_app_sending(
    make_setup: Callable[[Target], Awaitable[Setup]], tmp_path: Path
) -> None:
    """The target finishes first; the app, already at EOF, still sends to it."""

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"greeting")
        await writer.drain()
        writer.write_eof()  # → WS close 1000 → write_eof on the app's connection
        assert await read_all(reader) == b"late data from the app"

    setup = await make_setup(target)
    (app_r, app_w), task = await setup.start_bridge("tcp", tmp_path)
    assert await read_all(app_r) == b"greeting"  # EOF came through
    app_w.write(b"late data ")
    app_w.write(b"from the app")
    await app_w.drain()
    app_w.write_eof()
    await target_outcome(setup)
    async with asyncio.timeout(T):
        stats = await task
    assert (stats.bytes_up, stats.bytes_down, stats.close_code) == (22, 8, 1000)


async def test_both_directions_at_once(
    make_setup: Callable[[Target], Awaitable[Setup]], tmp_path: Path
) -> None:
    down = os.urandom(4 * MiB)
    up = os.urandom(3 * MiB + 12345)
    target_got = hashlib.sha256()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send() -> None:
            for offset in range(0, len(down), 100_000):
                writer.write(down[offset : offset + 100_000])
                await writer.drain()
            writer.write_eof()

        async def receive() -> None:
            while data := await reader.read(65536):
                target_got.update(data)

        async with asyncio.timeout(T), asyncio.TaskGroup() as tg:
            tg.create_task(send())
            tg.create_task(receive())

    setup = await make_setup(target)
    (app_r, app_w), task = await setup.start_bridge("tcp", tmp_path, chunk_size=32768)
    app_got = hashlib.sha256()

    async def app_send() -> None:
        for offset in range(0, len(up), 70_000):
            app_w.write(up[offset : offset + 70_000])
            await app_w.drain()
        app_w.write_eof()

    async def app_receive() -> int:
        total = 0
        while data := await app_r.read(65536):
            app_got.update(data)
            total += len(data)
        return total

    async with asyncio.timeout(T), asyncio.TaskGroup() as tg:
        tg.create_task(app_send())
        received = tg.create_task(app_receive())
    await target_outcome(setup)
    async with asyncio.timeout(T):
        stats = await task
    assert received.result() == len(down)
    assert app_got.digest() == hashlib.sha256(down).digest()
    assert target_got.digest() == hashlib.sha256(up).digest()
    assert stats == BridgeStats(bytes_up=len(up), bytes_down=len(down), close_code=1000)


async def test_target_reset_drops_the_app_connection(
    make_setup: Callable[[Target], Awaitable[Setup]], tmp_path: Path
) -> None:
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(T):
            await reader.readexactly(5)
        writer.write(b"partial")
        await writer.drain()
        rst(writer)  # → the peer closes the WebSocket with 1011

    setup = await make_setup(target)
    (app_r, app_w), task = await setup.start_bridge("tcp", tmp_path)
    app_w.write(b"hello")
    await app_w.drain()
    async with asyncio.timeout(T):
        stats = await task
    assert stats.close_code == 1011
    assert stats.bytes_down in (0, len(b"partial"))  # a reset may discard unread bytes
    # The app sees its bytes and then a reset, not a clean EOF.
    received = bytearray()
    with pytest.raises(ConnectionResetError):
        await read_until_error(app_r, received)
    assert bytes(received) in (b"", b"partial")
    assert (await setup.relay.result()).target_reset


async def test_websocket_loss_resets_the_app_connection(
    make_setup: Callable[[Target], Awaitable[Setup]], tmp_path: Path
) -> None:
    got_data = asyncio.Event()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(T):
            await reader.readexactly(5)
        got_data.set()
        with contextlib.suppress(ConnectionResetError):
            await read_all(reader)

    setup = await make_setup(target)
    (app_r, app_w), task = await setup.start_bridge("tcp", tmp_path)
    app_w.write(b"hello")
    await app_w.drain()
    async with asyncio.timeout(T):
        await got_data.wait()
    setup.relay.clients[0].transport.abort()  # the WebSocket drops without a close frame
    async with asyncio.timeout(T):
        stats = await task
    assert stats == BridgeStats(bytes_up=5, bytes_down=0, close_code=1006)
    with pytest.raises(ConnectionResetError):
        await read_until_error(app_r, bytearray())


async def test_app_reset_after_half_close_drops_the_websocket(
    make_setup: Callable[[Target], Awaitable[Setup]], tmp_path: Path
) -> None:
    """Our close (1000) is already out, so a 1011 can't be sent: the WebSocket is dropped."""

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await read_all(reader) == b"request"
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(T):
                while True:  # stream until the far end gives up
                    writer.write(b"x" * 65536)
                    await writer.drain()

    setup = await make_setup(target)
    (app_r, app_w), task = await setup.start_bridge("tcp", tmp_path)
    app_w.write(b"request")
    app_w.write_eof()
    async with asyncio.timeout(T):
        await app_r.readexactly(65536)
    rst(app_w)
    async with asyncio.timeout(T):
        stats = await task
    assert stats.close_code == 1006
    peer = await setup.relay.result()
    assert peer.close_from_client == (1000, "")
    assert peer.client_lost


async def test_app_reset_closes_the_websocket_with_1011(
    make_setup: Callable[[Target], Awaitable[Setup]], tmp_path: Path
) -> None:
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionResetError):
            await read_all(reader)

    setup = await make_setup(target)
    (_app_r, app_w), task = await setup.start_bridge("tcp", tmp_path)
    app_w.write(b"some data")
    await app_w.drain()
    rst(app_w)
    async with asyncio.timeout(T):
        stats = await task
    peer = await setup.relay.result()
    assert peer.close_from_client == (1011, "target connection lost")
    assert stats.close_code == 1000  # the peer's answer to our 1011 close


async def test_idle_timeout_closes_both_ends(
    make_setup: Callable[[Target], Awaitable[Setup]], tmp_path: Path
) -> None:
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_all(reader)

    setup = await make_setup(target)
    (app_r, _app_w), task = await setup.start_bridge("tcp", tmp_path, idle_timeout=0.3)
    start = asyncio.get_running_loop().time()
    async with asyncio.timeout(T):
        stats = await task
    assert asyncio.get_running_loop().time() - start >= 0.3
    assert await read_all(app_r) == b""
    assert (await setup.relay.result()).close_from_client == (1001, "idle timeout")
    assert stats.close_code == 1000


async def test_refuses_a_websocket_that_echoes_close(
    make_setup: Callable[[Target], Awaitable[Setup]],
) -> None:
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_all(reader)

    setup = await make_setup(target)
    ws = await ws_connect(setup.relay.url)  # auto_close_echo=True
    setup.ws.append(ws)
    if setup.engine == "socket":
        with pytest.raises(ValueError, match="auto_close_echo"):
            await SocketBridge().run(ws)  # refused before its socket is even looked at
        return
    reader = asyncio.StreamReader()
    with pytest.raises(ValueError, match="auto_close_echo"):
        await bridge(ws, reader, None)  # type: ignore[arg-type]  # refused before use


async def test_cancel_aborts_both_ends_and_leaves_no_tasks(
    make_setup: Callable[[Target], Awaitable[Setup]], tmp_path: Path
) -> None:
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_all(reader)

    setup = await make_setup(target)
    (app_r, app_w), task = await setup.start_bridge("tcp", tmp_path)
    app_w.write(b"in flight")
    await app_w.drain()
    with pytest.raises(TimeoutError):  # the bridge is busy for good: nobody closes anything
        async with asyncio.timeout(0.2):
            await asyncio.shield(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(T):
            await task
    assert task.cancelled()
    leftovers = [t for t in asyncio.all_tasks() if "Bridge" in repr(t.get_coro())]
    assert leftovers == []
    async with asyncio.timeout(T):
        await setup.ws[0].wait_closed()
    assert setup.ws[0].close_code == 1006
    assert (await setup.relay.result()).client_lost
    with contextlib.suppress(ConnectionResetError):
        assert await read_all(app_r) == b""


# --------------------------------------------------------------------------- socket engine only


@pytest.mark.parametrize("engine", ["socket"])
async def test_app_that_stops_reading_stops_the_websocket_being_read(
    make_setup: Callable[[Target], Awaitable[Setup]], tmp_path: Path
) -> None:
    """Backpressure WebSocket -> socket: memory stays bounded, then everything arrives."""
    down = os.urandom(32 * MiB)

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for offset in range(0, len(down), 256 * 1024):
            writer.write(down[offset : offset + 256 * 1024])
            await writer.drain()
        writer.write_eof()
        assert await read_all(reader) == b""

    setup = await make_setup(target)
    (app_r, app_w), task = await setup.start_bridge("tcp", tmp_path)
    local, ws = setup.bridges[0], setup.ws[0]
    async with asyncio.timeout(T):
        await local.socket_full.wait()  # the app reads nothing yet
    assert ws.reading_paused  # the WebSocket is not read while the app's socket is full
    assert local.transport is not None
    # What the bridge holds: the socket's buffer (high-water mark 64 KiB) plus one read.
    assert local.transport.get_write_buffer_size() <= 64 * 1024 + 256 * 1024
    assert local.stats.bytes_down < len(down)
    app_w.write_eof()
    received = await read_all(app_r)
    assert hashlib.sha256(received).digest() == hashlib.sha256(down).digest()
    async with asyncio.timeout(T):
        stats = await task
    assert stats == BridgeStats(bytes_up=0, bytes_down=len(down), close_code=1000)
    await target_outcome(setup)


@pytest.mark.parametrize("engine", ["socket"])
async def test_websocket_that_stops_taking_stops_the_app_being_read(
    make_setup: Callable[[Target], Awaitable[Setup]], tmp_path: Path
) -> None:
    """Backpressure socket -> WebSocket: the app's socket is not read while the WebSocket's
    buffer is full (the relay-like peer forwards to a target that reads nothing yet)."""
    up = os.urandom(32 * MiB)
    release = asyncio.Event()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        received = await read_all(reader)
        assert hashlib.sha256(received).digest() == hashlib.sha256(up).digest()
        writer.write(b"ok")
        await writer.drain()
        writer.write_eof()

    setup = await make_setup(target)
    (app_r, app_w), task = await setup.start_bridge("unix", tmp_path)
    local = setup.bridges[0]

    async def app_send() -> None:
        for offset in range(0, len(up), 256 * 1024):
            app_w.write(up[offset : offset + 256 * 1024])
            await app_w.drain()
        app_w.write_eof()

    async with asyncio.timeout(T), asyncio.TaskGroup() as tg:
        sending = tg.create_task(app_send())
        await local.ws_full.wait()
        assert local.transport is not None
        assert not local.transport.is_reading()  # the app's socket waits for the WebSocket
        assert local.stats.bytes_up < len(up)
        assert not sending.done()
        release.set()
    assert await read_all(app_r) == b"ok"
    await target_outcome(setup)
    async with asyncio.timeout(T):
        stats = await task
    assert stats == BridgeStats(bytes_up=len(up), bytes_down=2, close_code=1000)


async def test_what_arrives_before_run_is_held_bounded_and_sent() -> None:
    """The forwarder opens the WebSocket after accepting: meanwhile the app's bytes (and
    its EOF) wait in the bridge, which stops reading once ``chunk_size`` is held."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[SocketBridge] = asyncio.Queue()
    bridges: list[WatchedBridge] = []

    def factory() -> SocketBridge:
        bridges.append(WatchedBridge(chunk_size=65536, on_connect=accepted.put_nowait))
        return bridges[-1]

    request = os.urandom(4 * MiB)
    target_got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_got.put_nowait(await read_all(reader))
            writer.write(b"reply")
            writer.write_eof()
            await writer.drain()
        finally:
            writer.close()

    target_server = await asyncio.start_server(on_target, "127.0.0.1", 0)
    relay = await RelayPeer(target_server.sockets[0].getsockname()[1]).start()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    app_r, app_w = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    ws: WsConnection | None = None
    try:
        async with asyncio.timeout(T):
            local = await accepted.get()
            app_w.write(request)
            app_w.write_eof()
            await bridges[0].hold_full.wait()
            assert local.transport is not None
            assert not local.transport.is_reading()
            ws = await ws_connect(relay.url, auto_close_echo=False)
            run = asyncio.create_task(local.run(ws))
            await app_w.drain()
            assert await read_all(app_r) == b"reply"
            stats = await run
            assert await target_got.get() == request
        assert stats == BridgeStats(bytes_up=len(request), bytes_down=5, close_code=1000)
    finally:
        app_w.transport.abort()
        if ws is not None:
            ws.abort()
        server.close()
        target_server.close()
        await relay.stop()
        await server.wait_closed()
        await target_server.wait_closed()
