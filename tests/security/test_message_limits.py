"""Unbounded message reassembly: one huge fragmented message from a hostile peer.

``hybridrelay.wsclient`` assembled whole messages with no limit and no caller set one: a
hostile relay (or the peer behind it) sending one endless fragmented message grew the
client's or the listener agent's memory by every byte it sent. Now every receive that
assembles a message stops at ``max_size`` (1 MiB by default) and closes with 1009; the
streaming receives (an HTTP-mode request body above all) stay unlimited and flat.

The hostile side is a raw server writing frames with ``drain()``: it can only send what
the victim reads, so the bytes it got out before the victim's close frame bound what the
victim can have held. The victim runs in the test process, so its memory is measured
as the peak of Python allocations (tracemalloc) during the attack, which (unlike RSS)
previous tests' freed memory cannot hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from hybridrelay.client import connect
from hybridrelay.errors import PayloadTooBigError
from hybridrelay.listener import HttpTarget, Listener
from hybridrelay.protocol.sas import SasTokenProvider
from tests.conftest import ROOT
from tests.harness.hostile_server import HostileServer, ServerPeer
from tests.harness.raw_ws import (
    BINARY,
    CLOSE,
    CONTINUATION,
    TEXT,
    close_code,
    frame_head,
    read_frame,
    unmasked_frame,
)
from tests.harness.relay import ROOT_KEY
from tests.harness.timing import seconds

MIB = 1 << 20
HUGE = 64 * MIB  # what the attacker would send if nobody stopped it
PIECE = 64 * 1024
# The victim holds at most max_size (1 MiB) + read_limit (1 MiB); socket buffers on
# loopback add a few MiB in flight. Far below HUGE either way.
SENT_BOUND = 16 * MIB
PEAK_BOUND = 16 * MIB  # Python allocations at the attack's peak, the hostile side's included


@contextlib.contextmanager
def allocation_peak() -> Iterator[Callable[[], int]]:
    """Trace allocations; yields a function returning the peak since entry, in bytes."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()


@dataclass
class Flood:
    sent: int = 0
    close_code: int | None = None


async def flood_one_message(peer: ServerPeer, opcode: int, total: int = HUGE) -> Flood:
    """Send one fragmented message of ``total`` bytes (never finished) until the peer
    closes; watch for its close frame meanwhile."""
    flood = Flood()
    closed = asyncio.Event()

    async def watch() -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                _, op, payload = await read_frame(peer.reader)
                if op == CLOSE:
                    flood.close_code = close_code(payload)
                    break
        closed.set()

    watcher = asyncio.create_task(watch())
    piece = (b" " if opcode == TEXT else b"\x00") * PIECE
    first = True
    try:
        while flood.sent < total and not closed.is_set():
            peer.writer.write(unmasked_frame(opcode if first else CONTINUATION, piece, fin=False))
            first = False
            flood.sent += PIECE
            await peer.writer.drain()
    except ConnectionError:
        pass
    async with asyncio.timeout(seconds(10)):
        await closed.wait()
    await watcher
    return flood


def _assert_bounded(flood: Flood, peak: int) -> None:
    assert flood.close_code == 1009
    assert flood.sent < SENT_BOUND, f"the victim took {flood.sent / MIB:.0f} MiB of the message"
    assert peak < PEAK_BOUND, f"{peak / MIB:.1f} MiB allocated at the peak"


async def test_a_client_stream_closes_1009_on_a_huge_message() -> None:
    """Hostile relay sends a sender one endless fragmented message: recv() fails, close 1009."""
    floods: list[Flood] = []

    async def relay(peer: ServerPeer) -> None:
        floods.append(await flood_one_message(peer, BINARY))

    server = HostileServer(relay)
    async with server.running():
        with allocation_peak() as peak:
            stream = await connect(server.url, "hc", open_timeout=seconds(5))
            try:
                with pytest.raises(PayloadTooBigError):
                    async with asyncio.timeout(seconds(20)):
                        await stream.recv()
            finally:
                async with asyncio.timeout(seconds(10)):
                    await stream.close()  # its 1009 close frame is out already
            async with asyncio.timeout(seconds(10)):
                while not floods:
                    await asyncio.sleep(0.01)  # the server's handler records the flood at its end
            _assert_bounded(floods[0], peak())


def test_the_default_limit_is_public_and_configurable() -> None:
    """connect() takes max_size (default 1 MiB); None lifts it for trusted peers."""
    import inspect

    from hybridrelay.wsclient import DEFAULT_MAX_SIZE

    assert DEFAULT_MAX_SIZE == MIB
    assert inspect.signature(connect).parameters["max_size"].default == MIB


@contextlib.asynccontextmanager
async def _agent(relay_url: str, **options: object) -> AsyncIterator[Listener]:
    async def handler(request: object) -> object:
        raise AssertionError("no request may reach the handler")

    listener = Listener(
        relay_url,
        "hc",
        token_provider=SasTokenProvider(ROOT, ROOT_KEY),
        drain_timeout=0.1,  # the raw relay never answers a close frame
        **options,  # type: ignore[arg-type]  # test passthrough of Listener keywords
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        yield listener
    finally:
        stop.set()
        async with asyncio.timeout(seconds(20)):
            await task


async def test_the_agent_closes_its_control_channel_1009_and_reconnects() -> None:
    """Hostile relay sends an endless fragmented control message: 1009, then a new channel."""
    floods: list[Flood] = []
    second_channel = asyncio.Event()

    async def relay(peer: ServerPeer) -> None:
        if floods:
            second_channel.set()  # the agent came back
            await peer.reader.read()
            return
        floods.append(await flood_one_message(peer, TEXT))

    server = HostileServer(relay)
    async with server.running():
        with allocation_peak() as peak:
            async with _agent(server.url, http_handler=HttpTarget("http://127.0.0.1:9")):
                async with asyncio.timeout(seconds(20)):
                    await second_channel.wait()
            _assert_bounded(floods[0], peak())


async def test_the_agent_closes_a_rendezvous_socket_1009_on_a_huge_request() -> None:
    """Hostile relay answers the agent's request dial with an endless message: 1009."""
    floods: list[Flood] = []
    done = asyncio.Event()

    async def relay(peer: ServerPeer) -> None:
        if "sb-hc-action=listen" in peer.target:
            address = f"{server.url}/$hc/hc?sb-hc-action=request&sb-hc-id=1&sb-hc-rdv=k"
            await peer.send_text(json.dumps({"request": {"address": address, "id": "1"}}))
            await peer.reader.read()
        else:
            floods.append(await flood_one_message(peer, TEXT))
            done.set()

    server = HostileServer(relay)
    async with server.running():
        with allocation_peak() as peak:
            async with _agent(server.url, http_handler=HttpTarget("http://127.0.0.1:9")):
                async with asyncio.timeout(seconds(20)):
                    await done.wait()
            _assert_bounded(floods[0], peak())


@pytest.mark.parametrize("frame_size", [PIECE, 24 * MIB], ids=["fragmented", "one-frame"])
async def test_the_agent_streams_a_request_body_of_any_size(frame_size: int) -> None:
    """Hostile relay sends a 24 MiB request body: it streams to the target, memory stays flat."""
    body_size = 24 * MIB
    received = 0
    answer: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

    async def target(request: web.Request) -> web.Response:
        nonlocal received
        async for chunk in request.content.iter_any():
            received += len(chunk)
        return web.Response(text="stored")

    async def relay(peer: ServerPeer) -> None:
        if "sb-hc-action=listen" in peer.target:
            address = f"{server.url}/$hc/hc?sb-hc-action=request&sb-hc-id=1&sb-hc-rdv=k"
            await peer.send_text(json.dumps({"request": {"address": address, "id": "1"}}))
            await peer.reader.read()
            return
        head = {
            "address": "x",
            "id": "1",
            "requestTarget": "/hc/upload",
            "method": "POST",
            "requestHeaders": {},
            "body": True,
        }
        await peer.send_text(json.dumps({"request": head}))
        # Frames of frame_size bytes, each written in 64 KiB pieces: the attacker holds
        # no big buffer, so the peak below is the agent's.
        piece = b"\x00" * PIECE
        for start in range(0, body_size, frame_size):
            opcode = BINARY if start == 0 else CONTINUATION
            fin = start + frame_size >= body_size
            peer.writer.write(frame_head(opcode, frame_size, fin=fin))
            for _ in range(frame_size // PIECE):
                peer.writer.write(piece)
                await peer.writer.drain()
        while True:
            _, op, payload = await read_frame(peer.reader)
            if op == TEXT:
                answer.set_result(json.loads(payload))
                break

    app = web.Application(client_max_size=body_size * 2)
    app.router.add_post("/upload", target)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        server = HostileServer(relay)
        async with server.running():
            target_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            async with _agent(server.url, http_handler=HttpTarget(target_url)):
                with allocation_peak() as peak:
                    async with asyncio.timeout(seconds(30)):
                        response = await answer
                    allocated = peak()
    finally:
        await runner.cleanup()
    assert response["response"]["statusCode"] == 200  # type: ignore[index]
    assert received == body_size
    assert allocated < PEAK_BOUND, f"{allocated / MIB:.1f} MiB at the peak for a 24 MiB body"
