"""A hostile relay's bad control messages against the listener agent's policy.

listener/control_protocol.py decides it: a bad message is dropped and logged once per
kind, too many in a row close the channel 1008, and a body message with no request
before it closes it 1002 at once. Either way the agent dials a new channel (a broken
relay is redialled with backoff), logs no traceback and hands nothing to its handler.
The relay here is a raw server that writes whatever frames it likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import pytest

from hybridrelay.listener import Listener
from hybridrelay.listener.http_messages import HttpHandler, HttpRequest, HttpResponse
from hybridrelay.protocol.sas import SasTokenProvider
from tests.harness.hostile_server import HostileServer, ServerPeer
from tests.harness.raw_ws import (
    BINARY,
    CLOSE,
    TEXT,
    Frame,
    close_payload,
    read_close_code,
    read_frame,
    unmasked_frame,
)
from tests.harness.relay import ROOT_KEY
from tests.harness.timing import seconds

ROOT = "RootManageSharedAccessKey"


@contextlib.asynccontextmanager
async def _agent(
    relay_url: str, handler: HttpHandler | None = None, **options: object
) -> AsyncIterator[Listener]:
    async def refuse(request: HttpRequest) -> HttpResponse:
        raise AssertionError("no request may reach the handler")

    listener = Listener(
        relay_url,
        "hc",
        token_provider=SasTokenProvider(ROOT, ROOT_KEY),
        http_handler=handler or refuse,
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


class _Relay:
    """Sends ``frames`` on the first control channel and records the agent's close code;
    ``second`` is set when the agent dials again."""

    def __init__(self, *frames: bytes) -> None:
        self.frames = frames
        self.close_codes: list[int | None] = []
        self.second = asyncio.Event()

    async def __call__(self, peer: ServerPeer) -> None:
        if self.close_codes:
            self.second.set()
            await peer.reader.read()
            return
        for frame in self.frames:
            peer.writer.write(frame)
        await peer.writer.drain()
        self.close_codes.append(await read_close_code(peer.reader))
        # Answer the close so the agent need not wait for its close timeout.
        peer.writer.write(unmasked_frame(CLOSE, close_payload(1000)))
        await peer.writer.drain()


def _text(message: object) -> bytes:
    return unmasked_frame(TEXT, json.dumps(message).encode())


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_bad_messages_in_a_row_close_the_channel_1008_and_it_is_dialled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="hybridrelay")
    bad = [
        unmasked_frame(TEXT, b"not json \x1b[31m"),
        _text({"accept": {"address": "x"}}),  # fields missing
        _text({"response": {"requestId": "1", "statusCode": 200, "body": False}}),
        _text({"aNewKind": {}}),  # tolerated: not counted
        unmasked_frame(TEXT, b"[]"),
    ]
    relay = _Relay(*bad)
    server = HostileServer(relay)
    async with server.running(), _agent(server.url, max_bad_control_messages=4):
        async with asyncio.timeout(seconds(20)):
            await relay.second.wait()
    assert relay.close_codes == [1008]
    dropped = _events(caplog, "control_message_dropped")
    kinds = [(r.__dict__["kind"], r.levelno) for r in dropped]
    assert kinds == [
        ("invalid", logging.WARNING),
        ("invalid", logging.DEBUG),  # once per kind: the second is not a warning
        ("not_for_listener", logging.WARNING),
        ("unknown_kind", logging.WARNING),
        ("invalid", logging.DEBUG),
    ]
    (failing,) = _events(caplog, "control_channel_failing")
    assert failing.__dict__["dropped"] == {"invalid": 3, "not_for_listener": 1, "unknown_kind": 1}
    assert not _tracebacks(caplog)


async def test_a_body_message_without_a_request_closes_the_channel_1002_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The request after the orphan body is never read: nothing after it can be trusted.
    address = "ws://127.0.0.1:9/$hc/hc?sb-hc-action=request&sb-hc-id=1&sb-hc-rdv=k"
    request = {
        "request": {
            "address": address,
            "id": "1",
            "requestTarget": "/hc/",
            "method": "GET",
            "body": False,
        }
    }
    relay = _Relay(unmasked_frame(BINARY, b"orphan body"), _text(request))
    server = HostileServer(relay)
    async with server.running(), _agent(server.url) as listener:
        async with asyncio.timeout(seconds(20)):
            await relay.second.wait()
        assert listener.stats.requests == 0
    assert relay.close_codes == [1002]
    (failing,) = _events(caplog, "control_channel_failing")
    assert failing.__dict__["reason"] == "binary message without a request"
    assert not _tracebacks(caplog)


async def test_below_the_limit_the_agent_goes_on_and_answers_the_next_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bad messages short of the limit are dropped; the request after them is answered
    inline on the same channel, header and body adjacent (HC §4)."""
    answered: asyncio.Future[list[Frame]] = asyncio.get_running_loop().create_future()

    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, {"Content-Type": "text/plain"}, b"still here")

    async def relay(peer: ServerPeer) -> None:
        address = f"{server.url}/$hc/hc?sb-hc-action=request&sb-hc-id=7&sb-hc-rdv=k"
        request = {
            "request": {
                "address": address,
                "id": "7",
                "requestTarget": "/hc/x",
                "method": "POST",
                "requestHeaders": {},
                "body": True,
            }
        }
        peer.writer.write(unmasked_frame(TEXT, b"{"))  # not JSON
        peer.writer.write(_text({"renewToken": {"token": "t"}}))  # a listener's message
        peer.writer.write(_text(request))
        peer.writer.write(unmasked_frame(BINARY, b"request body"))
        await peer.writer.drain()
        frames = [await read_frame(peer.reader), await read_frame(peer.reader)]
        answered.set_result(frames)
        await peer.reader.read()

    server = HostileServer(relay)
    async with server.running(), _agent(server.url, max_bad_control_messages=3, handler=handler):
        async with asyncio.timeout(seconds(20)):
            header, body = await answered
    assert (header.opcode, body.opcode) == (TEXT, BINARY)
    response = json.loads(header.payload)["response"]
    assert (response["requestId"], response["statusCode"], response["body"]) == ("7", 200, True)
    assert body.payload == b"still here"
    kinds = [r.__dict__["kind"] for r in _events(caplog, "control_message_dropped")]
    assert kinds == ["invalid", "not_for_listener"]
    assert not _events(caplog, "control_channel_failing")
    assert not _tracebacks(caplog)
