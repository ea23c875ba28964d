"""Authorization that outlives itself: long-lived streams end when what authorized them goes.

- Management event streams (``/$mgmt/v1/events``, SSE and WebSocket) were authorized
  once: a stream opened with a token whose rule key was then regenerated, whose rule was
  deleted, or which expired, kept receiving events. It now ends within a second, with a
  final ``AuthorizationRevoked`` error event (and 1008 on a WebSocket).
- Disabling a device closed its control channel, but a stream already spliced to the
  device's rendezvous socket (the device as *listener*) kept flowing. It is cut too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from hybridrelay.wsclient import ws_connect
from tests.conftest import make_token
from tests.harness.device_certs import SAS_DEVICE_KEY, device_sas_token, sas_device
from tests.harness.peers import RawListener, listen_url
from tests.harness.raw_http import exchange, http_request, open_raw, read_head, upgrade_request
from tests.harness.raw_ws import masked_frame, read_close_code, read_frame
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds


def host_of(relay: InProcessRelay) -> str:
    return urlsplit(relay.url).netloc


async def mgmt(
    relay: InProcessRelay, method: str, path: str, body: object = None, **headers: str
) -> dict[str, object]:
    """A management call with the root token, as an operator's tool would make it."""
    data = b"" if body is None else json.dumps(body).encode()
    fields = {
        "Authorization": make_token(f"http://{host_of(relay)}/"),
        "Content-Type": "application/json",
        "Content-Length": str(len(data)),
        **{name.replace("_", "-"): value for name, value in headers.items()},
    }
    head = http_request(method, f"/$mgmt/v1{path}", host_of(relay), fields)
    answer = await exchange(relay.http_url, head + data)
    assert 200 <= answer.status < 300, answer
    return json.loads(answer.body) if answer.body else {}


# --- management event streams ---------------------------------------------------------------


@dataclass
class Ops:
    """A namespace rule with Manage, created through the API (so it can be changed)."""

    primary: str
    secondary: str


@pytest.fixture
async def ops(relay: InProcessRelay) -> Ops:
    rule = await mgmt(relay, "PUT", "/rules/ops", {"rights": ["Manage"]})
    return Ops(str(rule["primaryKey"]), str(rule["secondaryKey"]))


def ops_token(relay: InProcessRelay, key: str, ttl: int = 3600) -> str:
    return make_token(f"http://{host_of(relay)}/", "ops", key, ttl=ttl)


@contextlib.asynccontextmanager
async def event_stream(
    relay: InProcessRelay, token: str, transport: str
) -> AsyncIterator[asyncio.StreamReader]:
    """An open ``/$mgmt/v1/events`` stream (its answer head read), as a raw socket."""
    async with open_raw(relay.url) as (reader, writer):
        auth = {"Authorization": token}
        if transport == "websocket":
            writer.write(upgrade_request("/$mgmt/v1/events", host_of(relay), auth))
            assert (await read_head(reader)).status == 101
        else:
            lines = [
                "GET /$mgmt/v1/events HTTP/1.1",
                f"Host: {host_of(relay)}",
                "Accept: text/event-stream",
                f"Authorization: {token}",
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            assert (await read_head(reader)).status == 200  # its body: the event stream
            async with asyncio.timeout(seconds(5)):
                await reader.readuntil(b": connected\n\n")
        yield reader


async def stream_end(reader: asyncio.StreamReader, transport: str) -> object:
    """Wait for the stream's end: the WebSocket close code, or the SSE error event seen."""
    async with asyncio.timeout(seconds(5)):
        if transport == "websocket":
            while True:
                _, opcode, payload = await read_frame(reader)
                if opcode == 0x1 and b"AuthorizationRevoked" in payload:
                    return await read_close_code(reader)
                assert opcode != 0x8, payload
        # Until the last chunk of the (chunked) event stream: the relay ended the response.
        rest = await reader.readuntil(b"\r\n0\r\n\r\n")
        assert b"event: error" in rest, rest
        assert b"AuthorizationRevoked" in rest, rest
        return "ended"


async def still_flowing(
    reader: asyncio.StreamReader, transport: str, relay: InProcessRelay
) -> None:
    """The stream still delivers events: one is caused now and must arrive (after the
    events of the changes that revoked the other stream)."""
    await mgmt(relay, "PUT", "/devices/probe-device", {})
    async with asyncio.timeout(seconds(5)):
        if transport == "websocket":
            while True:
                _, opcode, payload = await read_frame(reader)
                assert opcode == 0x1, payload
                if b"createDeviceIdentity" in payload:
                    break
        else:
            await reader.readuntil(b"event: createDeviceIdentity")


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_regenerating_the_key_ends_event_streams_signed_with_it(
    relay: InProcessRelay, ops: Ops, transport: str
) -> None:
    """Subscriber holds /events with a token of the primary key; it is regenerated: stream ends."""
    primary_token = ops_token(relay, ops.primary)
    secondary_token = ops_token(relay, ops.secondary)
    async with (
        event_stream(relay, primary_token, transport) as revoked,
        event_stream(relay, secondary_token, transport) as kept,
    ):
        await mgmt(relay, "POST", "/rules/ops/regenerate", {"keyType": "primary"})
        ended = await stream_end(revoked, transport)
        assert ended == (1008 if transport == "websocket" else "ended")
        await still_flowing(kept, transport, relay)  # the secondary key still stands


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_deleting_the_rule_ends_its_event_streams(
    relay: InProcessRelay, ops: Ops, transport: str
) -> None:
    """Subscriber holds /events open with a rule's token; the rule is deleted: stream ends."""
    async with event_stream(relay, ops_token(relay, ops.primary), transport) as stream:
        await mgmt(relay, "DELETE", "/rules/ops")
        assert await stream_end(stream, transport) == (
            1008 if transport == "websocket" else "ended"
        )


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_an_expiring_token_ends_its_event_stream(
    relay: InProcessRelay, ops: Ops, transport: str
) -> None:
    """Subscriber holds /events open with a token that expires in ~2 s: the stream ends then."""
    async with event_stream(relay, ops_token(relay, ops.primary, ttl=2), transport) as stream:
        assert await stream_end(stream, transport) == (
            1008 if transport == "websocket" else "ended"
        )


# --- a disabled device's streams, where the device is the listener ----------------------------


@dataclass
class DeviceListener(RawListener):
    """A device listening with its device SAS token (echoing what it is sent)."""

    token: str = ""

    async def start(self) -> DeviceListener:
        url = listen_url(self.relay, self.hc, self.listener_id)
        self.control = await ws_connect(url, headers={"ServiceBusAuthorization": self.token})
        self.control_closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        return self


async def test_disabling_a_listening_device_cuts_the_streams_spliced_to_it(
    relay: InProcessRelay,
) -> None:
    """A device listens, a sender connects, the device is disabled by PUT: the stream is cut."""
    await relay.state.store.create_device(sas_device("gateway-1", listen=("echo",)))
    token = device_sas_token(host_of(relay), "gateway-1", SAS_DEVICE_KEY)
    listener = await DeviceListener(relay.url, "echo", token=token).start()
    try:
        async with open_raw(relay.url) as (reader, writer):
            auth = {"ServiceBusAuthorization": make_token(f"http://{host_of(relay)}/echo")}
            writer.write(upgrade_request("/$hc/echo?sb-hc-action=connect", host_of(relay), auth))
            assert (await read_head(reader)).status == 101
            writer.write(masked_frame(0x1, b"before"))
            async with asyncio.timeout(seconds(5)):
                _, opcode, payload = await read_frame(reader)
                assert (opcode, payload) == (0x1, b"before")
            disabled = {
                "status": "disabled",
                "statusReason": "stolen",
                "authentication": {
                    "type": "sas",
                    "symmetricKey": {"primaryKey": SAS_DEVICE_KEY, "secondaryKey": SAS_DEVICE_KEY},
                },
                "grants": {"listen": ["echo"]},
            }
            await mgmt(relay, "PUT", "/devices/gateway-1", disabled, If_Match="*")
            code, _ = await listener.wait_control_closed(seconds(5))
            assert code == 1008
            async with asyncio.timeout(seconds(5)):
                assert await read_close_code(reader) == 1008  # the stream, not only the channel
    finally:
        await listener.stop()
