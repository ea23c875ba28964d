"""Rendezvous keys bound to their exact address and listener (issue 11, authorization).

A rendezvous address is a capability: its key opens exactly the dial it was
handed out for. A dial that carries the key on another path (a longer entity
name, another suffix, the other action) is refused with 403, and the refusal
leaves the rendezvous to the listener that dials the right address. Responses
on a control channel count only from the listener, and hybrid connection, the
request went to. Defence in depth: keys are unguessable, so these dials come from
a listener that got the address, or from whoever it leaked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.harness.peers import RawListener, listen_url, send, token_for
from tests.harness.raw_ws import RawWs, masked_frame
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds


def _redial(address: str, path: str) -> str:
    """The same address (key, id, query) with another path after ``/$hc/``."""
    head, _, rest = address.partition("/$hc/")
    _, _, query = rest.partition("?")
    return f"{head}/$hc/{path}?{query}"


async def _dial_status(url: str) -> int:
    peer = await RawWs.open(url)
    peer.close()
    return peer.status


@pytest.mark.parametrize(
    ("sender_path", "dialled_path"),
    [
        ("echo", "echoes"),  # a longer entity name with the same start
        ("echo", "echo/x"),  # a suffix the sender never sent
        ("echo", "ECHO/x"),
        ("echo/a/b", "echo"),  # the sender's suffix left out
        ("echo/a/b", "echo/a"),
        ("echo/a/b", "echo/a/bc"),
        ("nested/path", "nested"),  # the shorter of two registered entities
    ],
)
async def test_accept_dial_on_another_path_is_refused_and_the_sender_still_connects(
    relay: InProcessRelay, sender_path: str, dialled_path: str
) -> None:
    """A listener dials an accept key on another path: 403, and the real dial still splices."""
    entity = "nested/path" if sender_path.startswith("nested") else "echo"
    listener = await RawListener(relay.url, entity, behaviour=None).start()
    suffix = sender_path[len(entity) :]
    sender = asyncio.create_task(send(relay.url, entity, suffix=suffix))
    try:
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(10))
        address = str(accept["address"])
        assert await _dial_status(_redial(address, dialled_path)) == 403
        assert not sender.done()  # the sender still waits for its listener
        leg = await listener.dial(accept)
        ws = await asyncio.wait_for(sender, seconds(10))
        await ws.send(b"through")
        assert await asyncio.wait_for(leg.recv(), seconds(10)) == b"through"
        await ws.close()
        await leg.close()
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        await listener.stop()


async def test_accept_dial_with_the_exact_path_in_another_case_of_the_entity_is_accepted(
    relay: InProcessRelay,
) -> None:
    """Entity names ignore case: a dial to ECHO/a with the key for echo/a splices (no false 403)."""
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    sender = asyncio.create_task(send(relay.url, "echo", suffix="/a"))
    try:
        accept = await asyncio.wait_for(listener.accepts.get(), seconds(10))
        assert await _dial_status(_redial(str(accept["address"]), "ECHO/a")) == 101
        await asyncio.wait_for(sender, seconds(10))
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        await listener.stop()


class RawControl:
    """A listener's control channel as raw bytes: reads JSON messages, sends masked ones."""

    def __init__(self, peer: RawWs) -> None:
        self.peer = peer

    @classmethod
    async def open(
        cls, relay: InProcessRelay, hc: str, listener_id: str | None = None
    ) -> RawControl:
        url = listen_url(relay.url, hc, listener_id)
        peer = await RawWs.open(url, headers={"ServiceBusAuthorization": token_for(url)})
        assert peer.status == 101
        return cls(peer)

    async def next_message(self) -> dict[str, Any]:
        async with asyncio.timeout(seconds(10)):
            while True:
                opcode, payload = await self.peer.recv_frame()
                if opcode == 0x1:
                    message: dict[str, Any] = json.loads(payload)
                    return message

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.peer.send(masked_frame(0x1, json.dumps(message).encode()))

    async def processed(self) -> None:
        """Wait until the relay has read everything sent so far (it answers a ping in order)."""
        await self.peer.send(masked_frame(0x9, b"sync"))
        async with asyncio.timeout(seconds(10)):
            while await self.peer.recv_frame() != (0xA, b"sync"):
                pass


HttpSender = Callable[[str], "asyncio.Task[int]"]


@pytest.fixture
async def http_sender(relay: InProcessRelay) -> AsyncIterator[HttpSender]:
    """Starts GET requests to the relay's HTTP mode; cancels what is left at the end."""
    session = aiohttp.ClientSession()
    tasks: list[asyncio.Task[int]] = []

    async def status_of(url: str) -> int:
        async with session.get(url, headers={"ServiceBusAuthorization": token_for(url)}) as resp:
            await resp.read()
            return resp.status

    def start(path: str) -> asyncio.Task[int]:
        task = asyncio.create_task(status_of(f"{relay.http_url}/{path}"))
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await session.close()


@pytest.mark.parametrize(
    "redial",
    [
        lambda address: _redial(address, "other"),  # another entity
        lambda address: _redial(address, "echo/x"),  # a suffix request addresses never carry
        lambda address: _redial(address, "echoes"),
        # The accept action with a request's key must not take (and lose) it.
        lambda address: address.replace("sb-hc-action=request", "sb-hc-action=accept"),
    ],
)
async def test_request_dial_on_another_path_or_action_is_refused_and_the_request_completes(
    relay: InProcessRelay, http_sender: HttpSender, redial: Callable[[str], str]
) -> None:
    """A listener dials a request key on another path or action: 403; the real dial still works."""
    control = await RawControl.open(relay, "echo")
    try:
        request = http_sender("echo/x")
        message = (await control.next_message())["request"]
        address = message["address"]
        assert await _dial_status(redial(address)) == 403
        assert not request.done()
        socket = await RawWs.open(address)
        assert socket.status == 101
        response = {"response": {"requestId": message["id"], "statusCode": 204, "body": False}}
        await socket.send(masked_frame(0x1, json.dumps(response).encode()))
        assert await asyncio.wait_for(request, seconds(10)) == 204
        socket.close()
    finally:
        control.peer.close()


async def test_response_from_a_listener_of_another_entity_with_the_same_id_is_ignored(
    relay: InProcessRelay, http_sender: HttpSender
) -> None:
    """A listener of another entity, using the same sb-hc-id, answers a request: ignored."""
    right = await RawControl.open(relay, "echo", listener_id="same-id")
    other = await RawControl.open(relay, "other", listener_id="same-id")
    try:
        request = http_sender("echo/x")
        request_id = (await right.next_message())["request"]["id"]
        await other.send_json(
            {"response": {"requestId": request_id, "statusCode": 418, "body": False}}
        )
        await other.processed()
        assert not request.done()
        await right.send_json(
            {"response": {"requestId": request_id, "statusCode": 200, "body": False}}
        )
        assert await asyncio.wait_for(request, seconds(10)) == 200
    finally:
        right.peer.close()
        other.peer.close()
