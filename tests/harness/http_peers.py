"""A protocol-level HTTP-mode listener for tests: every frame is the test's choice (HC §3-4).

``HttpListener`` opens a control channel with :func:`hybridrelay.wsclient.ws_connect` and
queues each ``request`` it receives (with its body message when ``body`` is true). The
test answers by hand: :meth:`HttpListener.respond` sends a ``response`` header and its body
message on the control channel or on a rendezvous socket, :meth:`HttpListener.fetch`
dials a request's address and reads the full request a rendezvous-only ``request`` promises,
and :meth:`HttpListener.send_text` / :meth:`HttpListener.send_binary` put raw frames on
the control channel. Nothing here is smart on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from hybridrelay.errors import ConnectionClosedError
from hybridrelay.wsclient import WsConnection, ws_connect

from .peers import listen_url, token_for
from .timing import seconds

__all__ = ["HttpListener", "ReceivedRequest"]


@dataclass
class ReceivedRequest:
    """One ``request`` as the listener saw it."""

    message: dict[str, Any]  # the object under the "request" key
    body: bytes | None = None  # the binary message that followed a "body": true header
    ws: WsConnection | None = None  # the rendezvous socket it came on (None: control channel)

    @property
    def id(self) -> str:
        return str(self.message["id"])

    @property
    def address(self) -> str:
        return str(self.message["address"])

    @property
    def inline(self) -> bool:
        return "method" in self.message

    @property
    def target(self) -> str:
        return str(self.message.get("requestTarget", ""))

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.message.get("requestHeaders") or {})


def response_text(
    request_id: str,
    status: int | str = 200,
    *,
    headers: dict[str, str] | None = None,
    description: str | None = None,
    body: bool,
) -> str:
    obj: dict[str, Any] = {"requestId": request_id, "statusCode": status}
    if description is not None:
        obj["statusDescription"] = description
    obj["responseHeaders"] = headers or {}
    obj["body"] = body
    return json.dumps({"response": obj})


@dataclass
class HttpListener:
    relay: str  # ws://host:port
    hc: str
    token: bool = True
    requests: asyncio.Queue[ReceivedRequest] = field(default_factory=asyncio.Queue)
    others: list[dict[str, Any]] = field(default_factory=list)  # any other control message
    control: WsConnection | None = None
    control_closed: asyncio.Future[tuple[int, str]] | None = None
    rendezvous: list[WsConnection] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def start(self) -> HttpListener:
        url = listen_url(self.relay, self.hc)
        headers = {"ServiceBusAuthorization": token_for(url)} if self.token else {}
        self.control = await ws_connect(url, headers=headers, close_timeout=seconds(3))
        self.control_closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.control is not None
        assert self.control_closed is not None
        try:
            while True:
                raw = await self.control.recv()
                assert isinstance(raw, str), f"expected a text control message, got {raw!r:.80}"
                document = json.loads(raw)
                if "request" not in document:
                    self.others.append(document)
                    continue
                message = document["request"]
                body = None
                if message.get("body") is True:
                    data = await self.control.recv()
                    assert isinstance(data, bytes), "a request body must be a binary message"
                    body = data
                await self.requests.put(ReceivedRequest(message, body))
        except ConnectionClosedError as exc:
            self.control_closed.set_result((exc.code, exc.reason))

    async def next_request(self, timeout: float = 10.0) -> ReceivedRequest:
        return await asyncio.wait_for(self.requests.get(), seconds(timeout))

    async def wait_control_closed(self, timeout: float = 10.0) -> tuple[int, str]:
        assert self.control_closed is not None
        return await asyncio.wait_for(asyncio.shield(self.control_closed), seconds(timeout))

    async def dial(self, request: ReceivedRequest) -> WsConnection:
        """Open a rendezvous socket to the request's address (no token, HC §2.6)."""
        ws = await ws_connect(request.address, close_timeout=seconds(3))
        self.rendezvous.append(ws)
        return ws

    async def fetch(self, request: ReceivedRequest) -> ReceivedRequest:
        """Dial a rendezvous-only request's address and read the full request sent there."""
        ws = await self.dial(request)
        async with asyncio.timeout(seconds(10)):
            raw = await ws.recv()
            assert isinstance(raw, str), f"expected the request header, got {raw!r:.80}"
            message = json.loads(raw)["request"]
            body = None
            if message.get("body") is True:
                data = await ws.recv()
                assert isinstance(data, bytes), "a request body must be a binary message"
                body = data
        return ReceivedRequest(message, body, ws)

    async def respond(
        self,
        request_id: str,
        status: int | str = 200,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        description: str | None = None,
        ws: WsConnection | None = None,
    ) -> None:
        """Send a response header and (if ``body`` is not None) one body message."""
        target = ws or self.control
        assert target is not None
        text = response_text(
            request_id, status, headers=headers, description=description, body=body is not None
        )
        await target.send(text)
        if body is not None:
            await target.send(body)

    async def send_text(self, text: str) -> None:
        assert self.control is not None
        await self.control.send(text)

    async def send_binary(self, data: bytes) -> None:
        assert self.control is not None
        await self.control.send(data)

    async def stop(self) -> None:
        for ws in self.rendezvous:
            with contextlib.suppress(ConnectionClosedError, OSError):
                await ws.close()
        if self.control is not None:
            with contextlib.suppress(ConnectionClosedError, OSError):
                await self.control.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader})
