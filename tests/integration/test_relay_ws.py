"""The relay's WebSocket mode end to end over loopback: listen, connect, accept, reject, splice."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time

import aiohttp
import pytest
from tests.harness.peers import RawListener, connect_url, listen_url, send, token_for
from tests.harness.relay import (
    LISTEN_KEY,
    OTHER_KEY,
    ROOT_KEY,
    SEND_KEY,
    InProcessRelay,
    RelayProcess,
)
from tests.harness.timing import seconds

from hybridrelay.errors import ConnectionClosedError, HandshakeError
from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.wsclient import WsConnection, ws_connect


@pytest.fixture(params=["in-process", "subprocess"])
async def relay(
    request: pytest.FixtureRequest, relay_factory, relay_process_factory
) -> InProcessRelay | RelayProcess:
    """Every test here runs against the relay in-process and as a real subprocess."""
    started: InProcessRelay | RelayProcess
    if request.param == "in-process":
        started = await relay_factory()
    else:
        started = await relay_process_factory()
    return started


async def test_text_and_binary_echo(relay: InProcessRelay | RelayProcess) -> None:
    listener = await RawListener(relay.url, "echo").start()
    try:
        ws = await send(relay.url, "echo")
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\xff" * 10)
        assert await ws.recv() == b"\x00\xff" * 10
        await ws.send(b"")
        assert await ws.recv() == b""
        await ws.close()
        assert ws.close_code == 1000
    finally:
        await listener.stop()


async def test_32_mib_message_streams_through(relay: InProcessRelay | RelayProcess) -> None:
    # Both ends assemble the whole message: past wsclient's 1 MiB default (issue 11).
    listener = await RawListener(relay.url, "echo", max_size=None).start()
    try:
        ws = await send(relay.url, "echo", max_size=None)
        blob = random.randbytes(32 << 20)
        await ws.send(blob)
        echoed = await ws.recv()
        assert isinstance(echoed, bytes)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(blob).digest()
        await ws.close()
    finally:
        await listener.stop()


async def test_fragmentation_preserved_both_ways(relay: InProcessRelay | RelayProcess) -> None:
    seen: asyncio.Queue[list[bytes | str]] = asyncio.Queue()

    async def fragment_echo(ws: WsConnection) -> None:
        fragments = [f async for f in ws.recv_fragments()]
        await seen.put(fragments)
        await ws.send_fragments(fragments)
        await ws.send_fragments(["a", "b", "c", "d"])

    listener = await RawListener(relay.url, "echo", behaviour=fragment_echo).start()
    try:
        ws = await send(relay.url, "echo")
        parts = [b"one", b"", b"three" * 1000, b"4"]
        await ws.send_fragments(parts)
        got = await asyncio.wait_for(seen.get(), seconds(10))
        assert got == parts
        back = [f async for f in ws.recv_fragments()]
        assert back == parts
        assert [f async for f in ws.recv_fragments()] == ["a", "b", "c", "d"]
        await ws.close()
    finally:
        await listener.stop()


async def test_300_concurrent_streams_sha256_both_ways(
    relay: InProcessRelay | RelayProcess,
) -> None:
    listener = await RawListener(relay.url, "echo").start()
    rng = random.Random(7)

    async def one(i: int) -> None:
        ws = await send(relay.url, "echo")
        try:
            for _ in range(3):
                blob = rng.randbytes(rng.randint(0, 200_000))
                await ws.send(blob)
                back = await ws.recv()
                assert isinstance(back, bytes)
                assert hashlib.sha256(back).hexdigest() == hashlib.sha256(blob).hexdigest(), i
        finally:
            await ws.close()

    try:
        async with asyncio.timeout(seconds(120)):
            await asyncio.gather(*(one(i) for i in range(300)))
    finally:
        await listener.stop()


async def test_subprotocol_echoed_on_both_legs(relay: InProcessRelay | RelayProcess) -> None:
    listener = await RawListener(relay.url, "echo", subprotocol_choice="mqttv5").start()
    try:
        ws = await send(relay.url, "echo", subprotocols=("mqtt", "mqttv5"))
        assert ws.subprotocol == "mqttv5"
        await ws.send("x")
        assert await ws.recv() == "x"
        assert listener.legs[0].subprotocol == "mqttv5"
        await ws.close()
    finally:
        await listener.stop()


async def test_no_subprotocol_when_none_offered(relay: InProcessRelay | RelayProcess) -> None:
    listener = await RawListener(relay.url, "echo").start()
    try:
        ws = await send(relay.url, "echo")
        assert ws.subprotocol is None
        assert "sec-websocket-extensions" not in ws.response_headers
        await ws.close()
    finally:
        await listener.stop()


async def test_accept_message_shape(relay: InProcessRelay | RelayProcess) -> None:
    listener = await RawListener(relay.url, "nested/path", behaviour=None).start()
    try:
        sender = asyncio.create_task(
            send(
                relay.url,
                "nested/path",
                suffix="/sub/dir",
                query="x=1&y=%2B",
                headers={"X-App": "v"},
            )
        )
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(10))
        address = str(accept["address"])
        assert address.startswith(
            relay.url + "/$hc/nested/path/sub/dir?x=1&y=%2B&sb-hc-action=accept"
        )
        assert "sb-hc-id=" in address
        headers = accept["connectHeaders"]
        assert isinstance(headers, dict)
        assert headers["X-App"] == "v"
        assert "Sec-WebSocket-Key" in headers
        assert "ServiceBusAuthorization" not in headers
        assert accept["remoteEndpoint"]["address"] == "127.0.0.1"  # type: ignore[index]
        assert str(accept["id"]) in address
        leg = await listener.dial(accept)
        ws = await asyncio.wait_for(sender, seconds(10))
        await ws.send(b"ping")
        assert await leg.recv() == b"ping"
        await ws.close()
        await leg.close()
    finally:
        await listener.stop()


async def test_sender_tracking_id_becomes_accept_id(relay: InProcessRelay | RelayProcess) -> None:
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        url = connect_url(relay.url, "echo") + "&sb-hc-id=my-id-42"
        task = asyncio.create_task(
            ws_connect(url, headers={"ServiceBusAuthorization": token_for(url)})
        )
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(10))
        assert accept["id"] == "my-id-42"
        leg = await listener.dial(accept)
        ws = await task
        await ws.close()
        await leg.close()
    finally:
        await listener.stop()


@pytest.mark.parametrize("bare", [False, True])
async def test_reject_both_spellings(relay: InProcessRelay | RelayProcess, bare: bool) -> None:
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        sender = asyncio.create_task(send(relay.url, "echo"))
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(10))
        status = await RawListener.reject(accept, 401, "Status Description from test", bare=bare)
        assert status == 410
        with pytest.raises(HandshakeError) as info:
            await asyncio.wait_for(sender, seconds(10))
        assert info.value.status == 401
        assert "Status Description from test" in info.value.reason
    finally:
        await listener.stop()


async def test_rendezvous_address_is_single_use(relay: InProcessRelay | RelayProcess) -> None:
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        sender = asyncio.create_task(send(relay.url, "echo"))
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(10))
        leg = await listener.dial(accept)
        ws = await sender
        with pytest.raises(HandshakeError) as info:
            await listener.dial(accept)
        assert info.value.status == 403
        await ws.close()
        await leg.close()
    finally:
        await listener.stop()


async def test_forged_rendezvous_address_is_403(relay: InProcessRelay | RelayProcess) -> None:
    forged = relay.url + "/$hc/echo?sb-hc-action=accept&sb-hc-id=x&sb-hc-rdv=not-a-real-key"
    with pytest.raises(HandshakeError) as info:
        await ws_connect(forged)
    assert info.value.status == 403
    with pytest.raises(HandshakeError) as missing:
        await ws_connect(relay.url + "/$hc/echo?sb-hc-action=accept&sb-hc-id=x")
    assert missing.value.status == 403


async def test_504_when_listener_never_dials_then_address_expired(relay_factory) -> None:
    relay = await relay_factory(relay_extra="rendezvous_timeout = 0.5")
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        started = time.monotonic()
        with pytest.raises(HandshakeError) as info:
            await send(relay.url, "echo")
        assert info.value.status == 504
        assert time.monotonic() - started < seconds(5)
        accept = listener.accepts.get_nowait()
        with pytest.raises(HandshakeError) as late:
            await listener.dial(accept)
        assert late.value.status == 403
    finally:
        await listener.stop()


async def test_26th_listener_refused(relay: InProcessRelay | RelayProcess) -> None:
    listeners = [await RawListener(relay.url, "echo").start() for _ in range(25)]
    try:
        with pytest.raises(HandshakeError) as info:
            await RawListener(relay.url, "echo").start()
        assert info.value.status == 403
        assert "MaximumListenersPerEndpoint" in info.value.body
        # Connections spread over the listeners (fewest active first).
        senders = [await send(relay.url, "echo") for _ in range(25)]
        assert sum(1 for lst in listeners if lst.legs) == 25
        for ws in senders:
            await ws.close()
    finally:
        for lst in listeners:
            await lst.stop()


async def test_load_balancing_two_listeners(relay: InProcessRelay | RelayProcess) -> None:
    a = await RawListener(relay.url, "echo").start()
    b = await RawListener(relay.url, "echo").start()
    try:
        for _ in range(20):
            ws = await send(relay.url, "echo")
            await ws.send("x")
            await ws.recv()
            await ws.close()
        assert len(a.legs) >= 1
        assert len(b.legs) >= 1
        assert len(a.legs) + len(b.legs) == 20
    finally:
        await a.stop()
        await b.stop()


def _expired(url: str) -> str:
    return create_sas_token(
        "http://127.0.0.1/" + url.split("/$hc/")[1].split("?")[0],
        "RootManageSharedAccessKey",
        ROOT_KEY,
        int(time.time()) - 10,
    )


AUTH_CASES = [
    # (name, key_name, key, hc, action, expected)
    ("no token", None, None, "hc-ws", "both", 401),
    (
        "bad signature",
        "RootManageSharedAccessKey",
        "wrong-key-0123456789abcdef",
        "hc-ws",
        "both",
        401,
    ),
    ("unknown rule", "nobody", ROOT_KEY, "hc-ws", "both", 401),
    ("entity rule used on another entity", "other-rule", OTHER_KEY, "hc-ws", "both", 401),
    ("send-only listening", "send-only", SEND_KEY, "hc-ws", "listen", 403),
    ("listen-only connecting", "listen-only", LISTEN_KEY, "hc-ws", "connect", 403),
]


@pytest.mark.parametrize(("name", "key_name", "key", "hc", "action", "expected"), AUTH_CASES)
async def test_auth_matrix(
    relay: InProcessRelay,
    name: str,
    key_name: str | None,
    key: str | None,
    hc: str,
    action: str,
    expected: int,
) -> None:
    keeper = await RawListener(relay.url, hc).start()  # so connects get past "no listener"
    try:
        for act in ("listen", "connect") if action == "both" else (action,):
            url = listen_url(relay.url, hc) if act == "listen" else connect_url(relay.url, hc)
            headers = {}
            if key_name is not None and key is not None:
                headers["ServiceBusAuthorization"] = token_for(url, key_name, key)
            with pytest.raises(HandshakeError) as info:
                await ws_connect(url, headers=headers)
            assert info.value.status == expected, (name, act)
            assert "TrackingId" in info.value.reason
    finally:
        await keeper.stop()


async def test_expired_token_and_wrong_scope(relay: InProcessRelay | RelayProcess) -> None:
    keeper = await RawListener(relay.url, "hc-ws").start()
    try:
        for url in (listen_url(relay.url, "hc-ws"), connect_url(relay.url, "hc-ws")):
            with pytest.raises(HandshakeError) as info:
                await ws_connect(url, headers={"ServiceBusAuthorization": token_for(url, ttl=-60)})
            assert info.value.status == 401
            # A valid namespace token scoped to another entity: 403.
            other = token_for(url.replace("/hc-ws", "/other"))
            with pytest.raises(HandshakeError) as scoped:
                await ws_connect(url, headers={"ServiceBusAuthorization": other})
            assert scoped.value.status == 403
    finally:
        await keeper.stop()


async def test_token_in_query_and_namespace_wide_token(
    relay: InProcessRelay | RelayProcess,
) -> None:
    namespace_token = create_sas_token(
        "http://127.0.0.1/", "RootManageSharedAccessKey", ROOT_KEY, int(time.time()) + 600
    )
    url = listen_url(relay.url, "hc-ws")
    from urllib.parse import quote

    control = await ws_connect(url + "&sb-hc-token=" + quote(namespace_token, safe=""))
    await control.close()


async def test_anonymous_sender_allowed_only_where_configured(
    relay: InProcessRelay | RelayProcess,
) -> None:
    listener = await RawListener(relay.url, "anon").start()
    keeper = await RawListener(relay.url, "echo").start()
    try:
        ws = await send(relay.url, "anon", token="")
        await ws.send("hi")
        assert await ws.recv() == "hi"
        await ws.close()
        with pytest.raises(HandshakeError) as info:
            await send(relay.url, "echo", token="")
        assert info.value.status == 401
    finally:
        await listener.stop()
        await keeper.stop()


async def test_unknown_entity_and_no_listener(relay: InProcessRelay | RelayProcess) -> None:
    for url in (listen_url(relay.url, "nope"), connect_url(relay.url, "nope")):
        with pytest.raises(HandshakeError) as info:
            await ws_connect(url, headers={"ServiceBusAuthorization": token_for(url)})
        assert info.value.status == 404
        assert "Endpoint does not exist" in info.value.reason
    with pytest.raises(HandshakeError) as info:
        await send(relay.url, "echo")
    assert info.value.status == 404


async def test_longest_entity_wins(relay: InProcessRelay | RelayProcess) -> None:
    short = await RawListener(relay.url, "nested").start()
    long = await RawListener(relay.url, "nested/path").start()
    try:
        ws = await send(relay.url, "nested/path", suffix="/x")
        await ws.close()
        ws = await send(relay.url, "nested", suffix="/pathology")
        await ws.close()
        assert len(long.legs) == 1
        assert len(short.legs) == 1
    finally:
        await short.stop()
        await long.stop()


@pytest.mark.parametrize("closer", ["sender", "listener"])
async def test_close_code_and_reason_forwarded(
    relay: InProcessRelay | RelayProcess, closer: str
) -> None:
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        task = asyncio.create_task(send(relay.url, "echo"))
        leg = await listener.dial(await asyncio.wait_for(listener.accepts.get(), seconds(10)))
        ws = await task
        first, second = (ws, leg) if closer == "sender" else (leg, ws)
        await first.close(4001, "bye now")
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(second.recv(), seconds(10))
        assert (info.value.code, info.value.reason) == (4001, "bye now")
        await second.close()
        assert first.close_code == 4001
    finally:
        await listener.stop()


async def test_half_close_keeps_other_direction(relay: InProcessRelay | RelayProcess) -> None:
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        task = asyncio.create_task(send(relay.url, "echo", auto_close_echo=False))
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(10))
        leg = await listener.dial(accept, auto_close_echo=False)
        ws = await task
        await ws.close_write(1000, "done sending")
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(leg.recv(), seconds(10))
        # The listener keeps talking after the sender's close (NET's half-close).
        await leg.send(b"late reply")
        assert await asyncio.wait_for(ws.recv(), seconds(10)) == b"late reply"
        await leg.close()
        await asyncio.wait_for(ws.wait_closed(), seconds(10))
    finally:
        await listener.stop()


async def test_listener_leg_lost_gives_sender_1011(relay: InProcessRelay | RelayProcess) -> None:
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        task = asyncio.create_task(send(relay.url, "echo"))
        leg = await listener.dial(await asyncio.wait_for(listener.accepts.get(), seconds(10)))
        ws = await task
        leg.abort()
        started = time.monotonic()
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), seconds(10))
        assert info.value.code == 1011
        assert time.monotonic() - started < seconds(3)
    finally:
        await listener.stop()


async def test_ping_answered_per_hop(relay: InProcessRelay | RelayProcess) -> None:
    listener = await RawListener(relay.url, "echo").start()
    try:
        ws = await send(relay.url, "echo", ping_interval=0.05, ping_timeout=2.0)
        for _ in range(5):
            await ws.send("a")
            assert await ws.recv() == "a"
        await asyncio.sleep(0.2)  # let several keepalive pings go round (the relay must answer)
        assert not ws.closed
        await ws.close()
    finally:
        await listener.stop()


async def test_health_ready_and_metrics(relay: InProcessRelay | RelayProcess) -> None:
    listener = await RawListener(relay.url, "echo").start()
    try:
        ws = await send(relay.url, "echo")
        await ws.send(b"12345")
        await ws.recv()
        await ws.close()
        async with aiohttp.ClientSession() as session:
            async with session.get(relay.http_url + "/healthz") as resp:
                assert resp.status == 200
            async with session.get(relay.http_url + "/readyz") as resp:
                assert resp.status == 200
            async with session.get(relay.http_url + "/metrics") as resp:
                text = await resp.text()
        assert "hybridrelay_listeners 1.0" in text
        assert "hybridrelay_connections_total 1.0" in text
        assert "hybridrelay_rendezvous_seconds_bucket" in text
        assert 'hybridrelay_bytes_relayed_total{direction="sender_to_listener"}' in text
    finally:
        await listener.stop()


async def test_hc_path_without_upgrade_is_400(relay: InProcessRelay | RelayProcess) -> None:
    url = relay.http_url + "/$hc/echo?sb-hc-action=connect"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 400
        body = json.loads(await resp.text())
    assert body["error"]["message"] == "This endpoint is only for web-socket requests."
