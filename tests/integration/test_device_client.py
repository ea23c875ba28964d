"""The Python client and listener as devices (issue 12): ``DeviceTokenProvider`` given as
``token_provider`` to ``connect``, ``Listener`` and ``request``, against an in-process relay
whose devices are in its store. A device listener renews its token like any other.
"""

from __future__ import annotations

import asyncio
import base64

from tests.conftest import RelayFactory
from tests.harness.listeners import running_listener
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds

from hybridrelay.client import DeviceTokenProvider, connect, request
from hybridrelay.listener import AcceptRequest, HttpRequest, HttpResponse, Listener
from hybridrelay.relay.store.models import Authentication, Device, Grants, SymmetricKey
from hybridrelay.wsclient import WsConnection

GW_KEY = base64.b64encode(b"gateway-key-0123456789abcdef0123").decode()
DEV_KEY = base64.b64encode(b"device-key-0123456789abcdef01234").decode()


async def add_device(relay: InProcessRelay, device_id: str, key: str, grants: Grants) -> None:
    keys = SymmetricKey(primary_key=key, secondary_key=key)
    await relay.state.store.create_device(
        Device(
            device_id=device_id,
            authentication=Authentication(type="sas", symmetric_key=keys),
            grants=grants,
        )
    )


async def echo_handler(ws: WsConnection, request: AcceptRequest) -> None:
    while True:
        message = await ws.recv()
        await ws.send(message)


async def test_device_sender_and_device_listener_talk_through_the_relay(
    relay: InProcessRelay,
) -> None:
    await add_device(relay, "gw-1", GW_KEY, Grants(listen=("echo",)))
    await add_device(relay, "dev-42", DEV_KEY, Grants(send=("echo",)))

    async def http_handler(req: HttpRequest) -> HttpResponse:
        return HttpResponse(200, body=b"hello " + await req.body.read())

    listener = Listener(
        relay.url,
        "echo",
        token_provider=DeviceTokenProvider("gw-1", GW_KEY),
        handler=echo_handler,
        http_handler=http_handler,
    )
    async with running_listener(listener):
        sender = DeviceTokenProvider("dev-42", DEV_KEY)
        async with connect(relay.url, "echo", token_provider=sender) as ws:
            await ws.send(b"as a device")
            async with asyncio.timeout(seconds(10)):
                assert await ws.recv() == b"as a device"
        async with request(
            "POST", relay.url, "echo", "/", data=b"device", token_provider=sender
        ) as response:
            assert response.status == 200
            assert await response.read() == b"hello device"
        gw = await relay.state.store.get_device("gw-1")
        assert gw is not None
        assert gw.connection_state == "connected"


async def test_device_listener_renews_its_token_before_expiry(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(relay_extra="token_grace = 0.5")
    await add_device(relay, "gw-1", GW_KEY, Grants(listen=("echo",)))
    listener = Listener(
        relay.url,
        "echo",
        token_provider=DeviceTokenProvider("gw-1", GW_KEY, ttl=3),
        handler=echo_handler,
    )
    async with running_listener(listener):
        (channel,) = relay.listeners
        first_expiry = channel.expires_at or 0
        # Renewed on the same channel before the first token (plus grace) runs out; a
        # listener that could not read a device token's expiry never renewed and was cut.
        async with asyncio.timeout(seconds(10)):
            while (channel.expires_at or 0) <= first_expiry:
                await asyncio.sleep(0.05)
        assert set(relay.listeners) == {channel}
        assert listener.stats.connects == 1
