"""hybridrelay.wsclient against real servers on 127.0.0.1.

Two kinds of server: aiohttp's WebSocketResponse (a mainstream peer, but it
reassembles fragments and always echoes close frames), and a raw asyncio server
that reads frames with our FrameParser, so that tests can see frame boundaries,
send frames aiohttp won't (fragments, bad UTF-8, reserved bits) and hold a
connection half-closed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import WSMsgType, web
from pytest_aiohttp import AiohttpServer
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles

from hybridrelay import errors
from hybridrelay.protocol.frames import (
    FrameParser,
    Opcode,
    encode_close_payload,
    encode_frame,
    parse_close_payload,
)
from hybridrelay.wsclient import WsConnection, ws_connect

T = seconds(5.0)
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Frame = tuple[bool, int, bytes]  # (fin, opcode, unmasked payload)


# --------------------------------------------------------------------------- raw server


class _Collector:
    """FrameSink that keeps whole frames."""

    def __init__(self) -> None:
        self.frames: deque[Frame] = deque()
        self._fin = False
        self._opcode = 0
        self._buf = bytearray()

    def on_data_frame(self, fin: bool, opcode: int, length: int) -> None:
        self._fin, self._opcode = fin, opcode
        self._buf = bytearray()

    def on_payload(self, data: bytes, frame_done: bool) -> None:
        self._buf += data
        if frame_done:
            self.frames.append((self._fin, self._opcode, bytes(self._buf)))

    def on_control_frame(self, opcode: int, payload: bytes) -> None:
        self.frames.append((True, opcode, payload))


class RawPeer:
    """Server end of one WebSocket connection, driven frame by frame by the test."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.head = head
        self._sink = _Collector()
        self._parser = FrameParser(self._sink, masked=True)

    async def frame(self) -> Frame:
        async with asyncio.timeout(T):
            while not self._sink.frames:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("client closed TCP")
                self._parser.feed(data)
        return self._sink.frames.popleft()

    async def close_frame(self) -> tuple[int, str]:
        fin, opcode, payload = await self.frame()
        assert (fin, opcode) == (True, Opcode.CLOSE)
        return parse_close_payload(payload)

    async def at_eof(self) -> bool:
        """True when the client closed TCP with no further frames."""
        async with asyncio.timeout(T):
            data = await self.reader.read(65536)
        return data == b""

    def send(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        self.writer.write(encode_frame(fin=fin, opcode=opcode, payload=payload))

    def send_close(self, code: int, reason: str = "") -> None:
        self.send(Opcode.CLOSE, encode_close_payload(code, reason))

    async def drain(self) -> None:
        async with asyncio.timeout(T):
            await self.writer.drain()

    def abort(self) -> None:
        self.writer.transport.abort()


Respond = Callable[[str, dict[str, str]], bytes]


def accept_key(key: str) -> str:
    return base64.b64encode(
        hashlib.sha1((key + GUID).encode(), usedforsecurity=False).digest()
    ).decode()


def good_101(key: str, request_headers: dict[str, str], extra: str = "") -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n{extra}\r\n"
    ).encode()


class RawServer:
    def __init__(self, respond: Respond) -> None:
        self._respond = respond
        self._peers: asyncio.Queue[RawPeer] = asyncio.Queue()
        self.all_peers: list[RawPeer] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    def url(self, path: str = "/$hc/test") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        writer.write(self._respond(headers.get("sec-websocket-key", ""), headers))
        peer = RawPeer(reader, writer, head)
        self.all_peers.append(peer)
        self._peers.put_nowait(peer)

    async def accept(self) -> RawPeer:
        async with asyncio.timeout(T):
            return await self._peers.get()

    async def stop(self) -> None:
        for peer in self.all_peers:
            peer.writer.transport.abort()
        if self.server is not None:
            self.server.close()
            async with asyncio.timeout(T):
                await self.server.wait_closed()


RawServerFactory = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServerFactory]:
    servers: list[RawServer] = []

    async def start(respond: Respond = good_101) -> RawServer:
        server = RawServer(respond)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def connections() -> AsyncIterator[list[WsConnection]]:
    """Connections a test opened; aborted at the end so that nothing outlives the test."""
    opened: list[WsConnection] = []
    yield opened
    for conn in opened:
        conn.abort()
        async with asyncio.timeout(T):
            await conn.wait_closed()


async def open_raw(
    server: RawServer, opened: list[WsConnection], **kwargs: object
) -> tuple[WsConnection, RawPeer]:
    conn = await ws_connect(server.url(), **kwargs)  # type: ignore[arg-type]  # test passthrough
    opened.append(conn)
    return conn, await server.accept()


# --------------------------------------------------------------------------- aiohttp server


async def echo_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("chat.v2",), compress=False, max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def start_echo(aiohttp_server: AiohttpServer, tls: ssl.SSLContext | None = None) -> str:
    app = web.Application()
    app.router.add_get("/{tail:.*}", echo_handler)
    server = await aiohttp_server(app, ssl=tls)
    scheme = "wss" if tls else "ws"
    return f"{scheme}://127.0.0.1:{server.port}"


# --------------------------------------------------------------------------- handshake


async def test_handshake_subprotocol_and_verbatim_target(
    aiohttp_server: AiohttpServer, connections: list[WsConnection]
) -> None:
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        seen["raw_path"] = request.raw_path
        seen["host"] = request.headers["Host"]
        seen["x-test"] = request.headers.get("X-Test", "")
        seen["extensions"] = request.headers.get("Sec-WebSocket-Extensions", "")
        return await echo_handler(request)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    target = "/$hc/my%20hc/sub?sb-hc-action=connect&sb-hc-id=a%2Fb&x=$"
    conn = await ws_connect(
        f"ws://127.0.0.1:{server.port}{target}",
        subprotocols=("chat.v1", "chat.v2"),
        headers={"X-Test": "yes"},
    )
    connections.append(conn)
    assert conn.subprotocol == "chat.v2"
    assert conn.response_headers["upgrade"].lower() == "websocket"
    assert conn.response_headers["sec-websocket-protocol"] == "chat.v2"
    assert seen == {
        "raw_path": target,
        "host": f"127.0.0.1:{server.port}",
        "x-test": "yes",
        "extensions": "",
    }
    assert conn.remote_address == ("127.0.0.1", server.port)
    assert conn.local_address[0] == "127.0.0.1"
    assert conn.local_address[1] > 0
    await conn.close()
    assert conn.closed


def _bad_accept(key: str, headers: dict[str, str]) -> bytes:
    return good_101(base64.b64encode(b"0123456789abcdef").decode(), headers)


def _unoffered_subprotocol(key: str, headers: dict[str, str]) -> bytes:
    return good_101(key, headers, "Sec-WebSocket-Protocol: other\r\n")


def _extension(key: str, headers: dict[str, str]) -> bytes:
    return good_101(key, headers, "Sec-WebSocket-Extensions: permessage-deflate\r\n")


def _no_upgrade(key: str, headers: dict[str, str]) -> bytes:
    return good_101(key, headers).replace(b"Upgrade: websocket\r\n", b"")


def _garbage(key: str, headers: dict[str, str]) -> bytes:
    return b"SSH-2.0-OpenSSH_9.6\r\n\r\n"


def _huge_head(key: str, headers: dict[str, str]) -> bytes:
    return b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n"


@pytest.mark.parametrize(
    ("respond", "message"),
    [
        (_bad_accept, "Sec-WebSocket-Accept"),
        (_unoffered_subprotocol, "not offered"),
        (_extension, "extension"),
        (_no_upgrade, "Upgrade"),
        (_garbage, "status line"),
        (_huge_head, "64 KiB"),
    ],
)
async def test_invalid_101_is_a_protocol_error(
    raw_server: RawServerFactory, respond: Respond, message: str
) -> None:
    server = await raw_server(respond)
    with pytest.raises(errors.ProtocolError, match=message):
        await ws_connect(server.url(), subprotocols=("chat",), open_timeout=T)


async def test_subprotocol_not_chosen_is_none(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    server = await raw_server()
    conn, peer = await open_raw(server, connections, subprotocols=("a", "b"))
    assert conn.subprotocol is None
    assert b"\r\nSec-WebSocket-Protocol: a, b\r\n" in peer.head
    assert b"Sec-WebSocket-Version: 13\r\n" in peer.head
    assert b"sec-websocket-extensions" not in peer.head.lower()


@pytest.mark.parametrize(
    ("status", "reason"), [(401, "Unauthorized"), (404, "Not Found"), (410, "Gone")]
)
async def test_non_101_raises_handshake_error_with_body(
    aiohttp_server: AiohttpServer, status: int, reason: str
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text=f"no luck: {status}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    with pytest.raises(errors.HandshakeError) as info:
        await ws_connect(f"ws://127.0.0.1:{server.port}/$hc/x", open_timeout=T)
    assert (info.value.status, info.value.reason, info.value.body) == (
        status,
        reason,
        f"no luck: {status}",
    )


def _chunked_403(key: str, headers: dict[str, str]) -> bytes:
    return (
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )


def _long_body_404(key: str, headers: dict[str, str]) -> bytes:
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: 10000\r\n\r\n" + b"x" * 10000


async def test_handshake_error_body_variants(raw_server: RawServerFactory) -> None:
    server = await raw_server(_chunked_403)
    with pytest.raises(errors.HandshakeError) as info:
        await ws_connect(server.url(), open_timeout=T)
    assert (info.value.status, info.value.body) == (403, "hello world")

    server = await raw_server(_long_body_404)
    with pytest.raises(errors.HandshakeError) as info:
        await ws_connect(server.url(), open_timeout=T)
    assert info.value.status == 404
    assert info.value.body == "x" * 4096  # capped


async def test_open_timeout(raw_server: RawServerFactory) -> None:
    server = await raw_server(lambda key, headers: b"")  # never answers
    with pytest.raises(TimeoutError):
        await ws_connect(server.url(), open_timeout=0.2)


async def test_invalid_arguments() -> None:
    with pytest.raises(errors.InvalidAddressError):
        await ws_connect("http://127.0.0.1/")
    with pytest.raises(errors.InvalidAddressError):
        await ws_connect("ws://127.0.0.1:99999/")
    with pytest.raises(ValueError, match="set by the WebSocket client"):
        await ws_connect("ws://127.0.0.1:1/", headers={"Sec-WebSocket-Key": "x"})
    with pytest.raises(ValueError, match="invalid value"):
        await ws_connect("ws://127.0.0.1:1/", headers={"X-A": "a\r\nX-B: b"})
    with pytest.raises(ValueError, match="wss"):
        await ws_connect("ws://127.0.0.1:1/", ssl=ssl.create_default_context())


# --------------------------------------------------------------------------- messages


async def test_echo_text_and_binary(
    aiohttp_server: AiohttpServer, connections: list[WsConnection]
) -> None:
    conn = await ws_connect(await start_echo(aiohttp_server) + "/echo")
    connections.append(conn)
    async with asyncio.timeout(T):
        messages: list[str | bytes] = ["héllo ✓", b"\x00\x01\xff", "", b""]
        for message in messages:
            await conn.send(message)
            assert await conn.recv() == message
        await conn.send(bytearray(b"abc"))
        assert await conn.recv() == b"abc"
        await conn.send(memoryview(struct.pack("!2H", 1, 2)))
        assert await conn.recv() == b"\x00\x01\x00\x02"
        await conn.close()
    assert conn.close_code == 1000


async def test_five_mib_message(
    aiohttp_server: AiohttpServer, connections: list[WsConnection]
) -> None:
    # recv() assembles at most 1 MiB by default (issue 11); a trusted peer's 5 MiB
    # message needs the limit raised explicitly.
    conn = await ws_connect(await start_echo(aiohttp_server) + "/echo", max_size=8 * 1024 * 1024)
    connections.append(conn)
    payload = os.urandom(5 * 1024 * 1024)
    async with asyncio.timeout(T * 4):
        await conn.send(payload)
        answer = await conn.recv()
        await conn.close()
    assert answer == payload


async def test_wss_echo(
    aiohttp_server: AiohttpServer, connections: list[WsConnection], tls_files: TlsFiles
) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls_files.cert, tls_files.key)
    client_ctx = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    url = await start_echo(aiohttp_server, server_ctx)
    conn = await ws_connect(url + "/$hc/tls", ssl=client_ctx, subprotocols=("chat.v2",))
    connections.append(conn)
    async with asyncio.timeout(T):
        await conn.send("over tls")
        assert await conn.recv() == "over tls"
        await conn.close()
    # The default context checks certificates: our self-signed one is refused.
    with pytest.raises(ssl.SSLCertVerificationError):
        await ws_connect(url + "/$hc/tls", open_timeout=T)


async def test_send_fragments_are_separate_frames(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections)

    await conn.send_fragments([b"ab", b"cd", b"ef"])
    assert [await peer.frame() for _ in range(3)] == [
        (False, Opcode.BINARY, b"ab"),
        (False, Opcode.CONTINUATION, b"cd"),
        (True, Opcode.CONTINUATION, b"ef"),
    ]

    async def text_parts() -> AsyncIterator[str]:
        yield "hé"
        yield "llo"

    await conn.send_fragments(text_parts())
    assert [await peer.frame() for _ in range(2)] == [
        (False, Opcode.TEXT, "hé".encode()),
        (True, Opcode.CONTINUATION, b"llo"),
    ]

    await conn.send_fragments([b"single"])
    assert await peer.frame() == (True, Opcode.BINARY, b"single")

    await conn.send_fragments([])  # nothing at all
    with pytest.raises(TypeError):  # caught before any frame went out: connection stays usable
        await conn.send_fragments([b"a", "b"])
    await conn.send(b"marker")
    assert await peer.frame() == (True, Opcode.BINARY, b"marker")

    # A type change after frames went out can't be undone: the message is cut with 1011.
    with pytest.raises(TypeError):
        await conn.send_fragments([b"a", b"b", "c"])
    assert await peer.frame() == (False, Opcode.BINARY, b"a")
    assert await peer.close_frame() == (1011, "incomplete fragmented message")
    with pytest.raises(errors.ConnectionClosedError):
        await conn.send(b"more")


async def test_recv_fragments_preserves_frames(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections)
    peer.send(Opcode.TEXT, b"h\xc3", fin=False)  # "é" split across two frames
    peer.send(Opcode.CONTINUATION, b"\xa9llo", fin=False)
    peer.send(Opcode.PING, b"in between")  # control frames may interleave
    peer.send(Opcode.CONTINUATION, b"!")
    peer.send(Opcode.BINARY, b"12", fin=False)
    peer.send(Opcode.CONTINUATION, b"34")
    peer.send(Opcode.BINARY, b"", fin=False)
    peer.send(Opcode.CONTINUATION, b"x", fin=False)
    peer.send(Opcode.CONTINUATION, b"y")
    peer.send(Opcode.TEXT, b"whole")
    async with asyncio.timeout(T):
        assert [f async for f in conn.recv_fragments()] == ["h", "éllo", "!"]
        assert [f async for f in conn.recv_fragments()] == [b"12", b"34"]
        async for fragment in conn.recv_fragments():
            assert fragment == b""
            break  # the rest of this message is skipped by the next receive
        assert await conn.recv() == "whole"
    assert await peer.frame() == (True, Opcode.PONG, b"in between")


async def test_recv_joins_fragments_and_survives_cancellation(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections)
    peer.send(Opcode.BINARY, b"first-", fin=False)
    # recv() times out holding half a message; cancelling it must lose nothing.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await conn.recv()
    peer.send(Opcode.CONTINUATION, b"second")
    async with asyncio.timeout(T):
        assert await conn.recv() == b"first-second"


async def test_recv_stream_streams_a_message_over_max_size(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections, max_size=1000)
    peer.send(Opcode.BINARY, b"a" * 1500, fin=False)
    peer.send(Opcode.CONTINUATION, b"b" * 1500)
    peer.send(Opcode.TEXT, "é".encode()[:1], fin=False)
    peer.send(Opcode.CONTINUATION, "é".encode()[1:] + b"!")
    async with asyncio.timeout(T):
        pieces = [p async for p in conn.recv_stream()]
        assert all(isinstance(p, bytes) for p in pieces)
        assert b"".join(p for p in pieces if isinstance(p, bytes)) == b"a" * 1500 + b"b" * 1500
        assert "".join([str(p) async for p in conn.recv_stream()]) == "é!"


async def test_the_default_max_size_is_one_mib(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections)
    peer.send(Opcode.BINARY, b"a" * (1 << 20))
    peer.send(Opcode.BINARY, b"a" * ((1 << 20) + 1))
    async with asyncio.timeout(T):
        assert len(await conn.recv()) == 1 << 20
        with pytest.raises(errors.PayloadTooBigError):
            await conn.recv()
    assert (await peer.close_frame())[0] == 1009


async def test_max_size_fails_with_1009(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections, max_size=1000)
    peer.send(Opcode.BINARY, b"a" * 1001)
    with pytest.raises(errors.PayloadTooBigError):
        async with asyncio.timeout(T):
            await conn.recv()
    assert (await peer.close_frame())[0] == 1009


async def test_invalid_utf8_fails_with_1007(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections)
    peer.send(Opcode.TEXT, b"ok")
    peer.send(Opcode.TEXT, b"bad \xff\xfe")
    async with asyncio.timeout(T):
        assert await conn.recv() == "ok"
        with pytest.raises(errors.ConnectionClosedError) as info:
            await conn.recv()
    assert info.value.code == 1007
    assert (await peer.close_frame())[0] == 1007
    assert await peer.at_eof()
    async with asyncio.timeout(T):
        await conn.wait_closed()


async def test_frame_error_fails_with_its_code(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections)
    peer.writer.write(bytes([0xC1, 0x01, 0x41]))  # RSV1 set, no extension negotiated
    with pytest.raises(errors.ConnectionClosedError) as info:
        async with asyncio.timeout(T):
            await conn.recv()
    assert info.value.code == 1002
    assert (await peer.close_frame())[0] == 1002
    assert await peer.at_eof()


async def test_connection_lost_is_1006(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections)
    peer.send(Opcode.BINARY, b"last words")
    await peer.drain()
    peer.abort()
    async with asyncio.timeout(T):
        assert await conn.recv() == b"last words"  # buffered data comes first
        with pytest.raises(errors.ConnectionClosedError) as info:
            await conn.recv()
        await conn.wait_closed()
    assert info.value.code == 1006
    assert conn.close_code == 1006
    with pytest.raises(errors.ConnectionClosedError):
        await conn.read()
    with pytest.raises(errors.ConnectionClosedError):
        await conn.send(b"x")


# --------------------------------------------------------------------------- ping / keepalive


async def test_ping_gets_pong(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    _conn, peer = await open_raw(await raw_server(), connections)
    peer.send(Opcode.PING, b"hello")
    assert await peer.frame() == (True, Opcode.PONG, b"hello")
    peer.send(Opcode.PING, b"")
    assert await peer.frame() == (True, Opcode.PONG, b"")


async def test_keepalive_detects_silent_server(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    interval = 0.2
    conn, peer = await open_raw(await raw_server(), connections, ping_interval=interval)
    start = asyncio.get_running_loop().time()
    async with asyncio.timeout(T):
        with pytest.raises(errors.ConnectionClosedError) as info:
            await conn.recv()  # the peer never answers the pings
        await conn.wait_closed()
    elapsed = asyncio.get_running_loop().time() - start
    assert info.value.code == 1006
    assert "keepalive" in info.value.reason
    assert conn.close_code == 1006
    assert elapsed < 4 * interval + 0.5  # ping after 1 interval, give up 1 interval later
    _fin, opcode, _ = await peer.frame()
    assert opcode == Opcode.PING


async def test_keepalive_keeps_a_live_connection(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections, ping_interval=0.05)
    for _ in range(4):
        _fin, opcode, payload = await peer.frame()
        assert opcode == Opcode.PING
        peer.send(Opcode.PONG, payload)
    assert not conn.closed
    peer.send(Opcode.TEXT, b"still here")
    async with asyncio.timeout(T):
        assert await conn.recv() == "still here"
        close = asyncio.create_task(conn.close())
        while (frame := await peer.frame())[1] == Opcode.PING:
            pass
        assert frame[1] == Opcode.CLOSE
        peer.send_close(1000)
        peer.writer.close()
        await close
    assert conn._keepalive_task is not None
    assert conn._keepalive_task.done()


# --------------------------------------------------------------------------- closing


async def test_client_close_code_reaches_server(
    aiohttp_server: AiohttpServer, connections: list[WsConnection]
) -> None:
    received: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        msg = await ws.receive()
        assert msg.type is WSMsgType.CLOSE
        received.set_result((int(msg.data), str(msg.extra)))
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    conn = await ws_connect(f"ws://127.0.0.1:{server.port}/x")
    connections.append(conn)
    async with asyncio.timeout(T):
        await conn.close(4001, "client bye")
        assert await received == (4001, "client bye")
    assert conn.closed
    assert conn.close_code is not None
    assert conn.close_code in (1000, 4001)  # aiohttp answers with its own code


async def test_server_close_code_reaches_client(
    aiohttp_server: AiohttpServer, connections: list[WsConnection]
) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        await ws.send_str("before close")
        await ws.close(code=4002, message=b"server bye")
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    conn = await ws_connect(f"ws://127.0.0.1:{server.port}/x")
    connections.append(conn)
    async with asyncio.timeout(T):
        assert await conn.recv() == "before close"
        with pytest.raises(errors.ConnectionClosedError) as info:
            await conn.recv()
        await conn.wait_closed()  # the close was echoed; aiohttp then closed TCP
    assert (info.value.code, info.value.reason) == (4002, "server bye")
    assert (conn.close_code, conn.close_reason) == (4002, "server bye")


async def test_peer_close_is_echoed_by_default(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections)
    peer.send_close(1001, "going")
    assert await peer.close_frame() == (1001, "going")
    with pytest.raises(errors.ConnectionClosedError) as info:
        await conn.send(b"too late")
    assert info.value.code == 1001
    peer.writer.close()
    async with asyncio.timeout(T):
        await conn.wait_closed()


async def test_close_without_peer_answer_times_out(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections, close_timeout=0.2)
    async with asyncio.timeout(T):
        await conn.close()  # the peer never answers: aborted after close_timeout
    assert conn.closed
    assert conn.close_code == 1006
    assert await peer.close_frame() == (1000, "")


async def test_half_close_client_first(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections, auto_close_echo=False)
    await conn.write(b"request")
    await conn.close_write(1000, "done sending")
    assert await peer.frame() == (True, Opcode.BINARY, b"request")
    assert await peer.close_frame() == (1000, "done sending")
    with pytest.raises(errors.ConnectionClosedError):
        await conn.write(b"after close")

    # The peer keeps sending after our close; we keep receiving.
    peer.send(Opcode.BINARY, b"reply-1")
    peer.send(Opcode.TEXT, b"reply-2")
    peer.send_close(1000, "done too")
    async with asyncio.timeout(T):
        assert await conn.read() == b"reply-1"
        assert await conn.read() == b"reply-2"
        assert await conn.read() == b""
        assert await conn.read() == b""  # EOF stays EOF
    assert (conn.close_code, conn.close_reason) == (1000, "done too")
    peer.writer.close()  # §7.1.1: the server closes TCP first
    async with asyncio.timeout(T):
        await conn.wait_closed()


async def test_half_close_server_first(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections, auto_close_echo=False)
    peer.send(Opcode.BINARY, b"data")
    peer.send_close(1000, "Shutdown")  # NET's CloseOutputAsync
    async with asyncio.timeout(T):
        assert await conn.read() == b"data"
        assert await conn.read() == b""
    assert (conn.close_code, conn.close_reason) == (1000, "Shutdown")

    # No echo: we may still send until we close.
    await conn.write(b"late-1")
    await conn.send("late-2")
    assert await peer.frame() == (True, Opcode.BINARY, b"late-1")
    assert await peer.frame() == (True, Opcode.TEXT, b"late-2")
    async with asyncio.timeout(T):
        closing = asyncio.create_task(conn.close())
        assert await peer.close_frame() == (1000, "")
        peer.writer.close()
        await closing
    assert conn.closed
    assert conn.close_code == 1000


async def test_half_close_client_closes_tcp_if_server_does_not(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    conn, peer = await open_raw(await raw_server(), connections, auto_close_echo=False)
    peer.send_close(1000)
    async with asyncio.timeout(T):
        assert await conn.read() == b""
        await conn.close_write()
        assert await peer.close_frame() == (1000, "")
        assert await peer.at_eof()  # closed by us after a short grace period
        await conn.wait_closed()


# --------------------------------------------------------------------------- flow control


async def test_slow_reader_pauses_transport(
    raw_server: RawServerFactory, connections: list[WsConnection]
) -> None:
    limit = 64 * 1024
    conn, peer = await open_raw(await raw_server(), connections, read_limit=limit)
    transport = conn._transport
    assert transport is not None
    paused = asyncio.Event()
    buffered_at_pause: list[int] = []
    resumes = 0
    pause, resume = conn._pause_reading, conn._resume_reading

    def on_pause() -> None:
        if not conn._reading_paused:
            buffered_at_pause.append(conn._rx_bytes)
            paused.set()
        pause()

    def on_resume() -> None:
        nonlocal resumes
        if conn._reading_paused:
            resumes += 1
        resume()

    # Instrument the connection, not the transport: uvloop's transports are read-only.
    conn._pause_reading = on_pause  # type: ignore[method-assign]  # test instrumentation
    conn._resume_reading = on_resume  # type: ignore[method-assign]

    # More than loopback's kernel buffers can hold, so the sender must block.
    payload = os.urandom(32 * 1024 * 1024)

    async def pump() -> None:
        for offset in range(0, len(payload), 64 * 1024):
            peer.send(Opcode.BINARY, payload[offset : offset + 64 * 1024])
            await peer.writer.drain()
        peer.send_close(1000)
        await peer.writer.drain()

    async with asyncio.timeout(T * 4), asyncio.TaskGroup() as tg:
        sender = tg.create_task(pump())
        await paused.wait()  # nobody reads yet: the client stops reading the socket
        assert not transport.is_reading()
        assert not sender.done()  # and the sender is held back by TCP flow control
        received = hashlib.sha256()
        total = 0
        while chunk := await conn.read():
            received.update(chunk)
            total += len(chunk)
            assert conn._rx_bytes <= limit + 256 * 1024
        await sender
    assert total == len(payload)
    assert received.digest() == hashlib.sha256(payload).digest()
    # One socket read (256 KiB at most on selector loops) may land on top of the limit.
    assert max(buffered_at_pause) <= limit + 256 * 1024
    assert len(buffered_at_pause) >= 2
    assert resumes >= 2


# --------------------------------------------------------------------------- logging


async def test_query_string_is_never_logged(
    raw_server: RawServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hybridrelay.client")
    server = await raw_server()
    conn = await ws_connect(server.url("/$hc/entity?sb-hc-action=connect&sb-hc-token=SECRET"))
    peer = await server.accept()
    assert b"sb-hc-token=SECRET" in peer.head
    await conn.send("x")
    peer.send_close(1000)
    async with asyncio.timeout(T):
        with pytest.raises(errors.ConnectionClosedError):
            await conn.recv()
        peer.writer.close()
        await conn.close()
    assert f"ws://127.0.0.1:{server.port}/$hc/entity" in caplog.text
    assert "SECRET" not in caplog.text
    assert "sb-hc-action" not in caplog.text
