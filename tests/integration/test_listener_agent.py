"""The listener agent against a real relay: TCP bridging, hooks, reconnects, renewal, drain."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time

import pytest
from tests.harness.listeners import running_listener as running
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

from hybridrelay.backoff import Backoff
from hybridrelay.client import connect
from hybridrelay.errors import ConnectionClosedError, EntityNotFoundError, HandshakeError
from hybridrelay.listener import AcceptRequest, HeaderAllowList, Listener, Reject, TcpTarget
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection

ROOT = "RootManageSharedAccessKey"


def tokens(key_name: str = ROOT, key: str = ROOT_KEY, ttl: int = 3600) -> SasTokenProvider:
    return SasTokenProvider(key_name, key, ttl=ttl)


async def read_all(ws: WsConnection, size: int | None = None) -> bytes:
    out = bytearray()
    while size is None or len(out) < size:
        chunk = await ws.read()
        if not chunk:
            break
        out += chunk
    return bytes(out)


async def test_tcp_target_bridge_with_half_close(relay: InProcessRelay, echo_server) -> None:
    host, port = echo_server
    listener = Listener(relay.url, "echo", token_provider=tokens(), target=TcpTarget(host, port))
    async with running(listener):
        async with connect(relay.url, "echo", key_name=ROOT, key=ROOT_KEY, stream_mode=True) as ws:
            blob = random.randbytes(3 << 20)
            writer = asyncio.create_task(ws.write(blob))
            echoed = await read_all(ws, len(blob))
            await writer
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(blob).digest()
            # Half-close: our close means "no more data"; the echo service answers and closes too.
            await ws.write(b"last words")
            await ws.close_write()
            assert await asyncio.wait_for(read_all(ws), seconds(10)) == b"last words"
        assert listener.stats.accepted == 1


async def test_unreachable_target_rejects_sender_with_502(relay: InProcessRelay) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # closed again: nothing listens there
    listener = Listener(
        relay.url, "echo", token_provider=tokens(), target=TcpTarget("127.0.0.1", dead_port)
    )
    async with running(listener):
        with pytest.raises(HandshakeError) as info:
            await connect(relay.url, "echo", key_name=ROOT, key=ROOT_KEY)
        assert info.value.status == 502
        assert listener.stats.rejected == 1


async def echo_handler(ws: WsConnection, request: AcceptRequest) -> None:
    with contextlib.suppress(ConnectionClosedError):
        while True:
            await ws.send(await ws.recv())


async def test_accept_hooks_reject_and_accept(relay: InProcessRelay) -> None:
    seen: list[AcceptRequest] = []

    async def recording_hook(request: AcceptRequest) -> Reject | None:
        seen.append(request)
        return None

    listener = Listener(
        relay.url,
        "echo",
        token_provider=tokens(),
        handler=echo_handler,
        hooks=[recording_hook, HeaderAllowList("X-Device", {"dev-1"})],
    )
    async with running(listener):
        with pytest.raises(HandshakeError) as info:
            await connect(
                relay.url, "echo", key_name=ROOT, key=ROOT_KEY, headers={"X-Device": "evil"}
            )
        assert info.value.status == 403
        async with connect(
            relay.url,
            "echo",
            key_name=ROOT,
            key=ROOT_KEY,
            headers={"X-Device": "dev-1"},
            subprotocols=("p1", "p2"),
        ) as ws:
            assert ws.subprotocol == "p1"
            await ws.send("hi")
            assert await ws.recv() == "hi"
    assert [r.headers["x-device"] for r in seen] == ["evil", "dev-1"]
    assert seen[1].subprotocols == ("p1", "p2")
    assert seen[1].remote is not None


async def test_unknown_hybrid_connection_stops_listener(relay: InProcessRelay) -> None:
    listener = Listener(relay.url, "does-not-exist", token_provider=tokens(), handler=echo_handler)
    started = time.monotonic()
    with pytest.raises(EntityNotFoundError):
        async with asyncio.timeout(seconds(10)):
            await listener.run(asyncio.Event())
    assert time.monotonic() - started < seconds(3)
    assert listener.stats.attempts == 1


async def test_auth_failure_backs_off_without_storm(relay: InProcessRelay) -> None:
    listener = Listener(
        relay.url,
        "echo",
        token_provider=tokens(key="wrong-key-0123456789abcdef"),
        handler=echo_handler,
        backoff=Backoff(cap=30.0),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    await asyncio.sleep(1.0)  # observe a window of time: how many attempts happen in it
    stop.set()
    await asyncio.wait_for(task, seconds(5))
    assert listener.stats.attempts == 1
    assert listener.stats.connects == 0


async def test_listener_reconnects_after_relay_restart(relay_factory) -> None:
    first = await relay_factory()
    port = int(first.url.rsplit(":", 1)[1])
    listener = Listener(
        first.url,
        "echo",
        token_provider=tokens(),
        handler=echo_handler,
        backoff=Backoff(base=0.2, cap=1.0),
    )
    async with running(listener):
        await first.stop()
        await asyncio.wait_for(_until_disconnected(listener), seconds(10))
        second = await relay_factory(port=port)
        started = time.monotonic()
        await asyncio.wait_for(listener.connected.wait(), seconds(10))
        assert time.monotonic() - started < seconds(3)
        async with connect(second.url, "echo", key_name=ROOT, key=ROOT_KEY) as ws:
            await ws.send(b"back")
            assert await ws.recv() == b"back"
        assert listener.stats.connects == 2


async def _until_disconnected(listener: Listener) -> None:
    while listener.connected.is_set():
        await asyncio.sleep(0.01)


async def test_token_renewed_before_expiry(relay_factory) -> None:
    relay = await relay_factory(relay_extra="token_grace = 0.5")
    listener = Listener(relay.url, "echo", token_provider=tokens(ttl=3), handler=echo_handler)
    async with running(listener):
        (channel,) = relay.listeners
        first_expiry = channel.expires_at or 0
        await asyncio.sleep(4.5)  # past the first token's expiry plus grace
        assert set(relay.listeners) == {channel}
        assert (channel.expires_at or 0) > first_expiry
        assert listener.stats.connects == 1


async def test_stop_drains_open_streams(relay: InProcessRelay) -> None:
    listener = Listener(relay.url, "echo", token_provider=tokens(), handler=echo_handler)
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    await asyncio.wait_for(listener.connected.wait(), seconds(10))
    async with connect(relay.url, "echo", key_name=ROOT, key=ROOT_KEY) as ws:
        stop.set()
        await asyncio.wait_for(_until_disconnected(listener), seconds(5))
        # No new connections are accepted, but the open one still works.
        await ws.send("during drain")
        assert await ws.recv() == "during drain"
    await asyncio.wait_for(task, seconds(15))
