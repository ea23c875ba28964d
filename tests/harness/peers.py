"""Protocol-level test peers built on hybridrelay.wsclient (no listener agent in between).

``RawListener`` opens a control channel and hands each ``accept`` to a
behaviour: echo, reject, or keep for the test to drive by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hybridrelay.errors import ConnectionClosedError, HandshakeError
from hybridrelay.protocol.sas import audience_for, create_sas_token
from hybridrelay.wsclient import DEFAULT_MAX_SIZE, WsConnection, ws_connect

from .relay import ROOT_KEY

ROOT = "RootManageSharedAccessKey"


def token_for(url: str, key_name: str = ROOT, key: str = ROOT_KEY, *, ttl: int = 3600) -> str:
    return create_sas_token(audience_for(url), key_name, key, int(time.time()) + ttl)


def listen_url(relay: str, hc: str, listener_id: str | None = None) -> str:
    url = f"{relay}/$hc/{hc}?sb-hc-action=listen"
    if listener_id:
        url += f"&sb-hc-id={quote(listener_id)}"
    return url


def connect_url(relay: str, hc: str, query: str = "") -> str:
    return f"{relay}/$hc/{hc}?{query + '&' if query else ''}sb-hc-action=connect"


async def send(
    relay: str,
    hc: str,
    *,
    key_name: str = ROOT,
    key: str = ROOT_KEY,
    token: str | None = None,
    subprotocols: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    query: str = "",
    suffix: str = "",
    **options: Any,
) -> WsConnection:
    url = connect_url(relay, hc + suffix, query)
    all_headers = dict(headers or {})
    if token is None:
        token = token_for(url, key_name, key)
    if token:
        all_headers["ServiceBusAuthorization"] = token
    return await ws_connect(
        url, headers=all_headers, subprotocols=subprotocols, open_timeout=20, **options
    )


async def echo_behaviour(ws: WsConnection) -> None:
    with contextlib.suppress(ConnectionClosedError):
        while True:
            await ws.send(await ws.recv())


Behaviour = Callable[[WsConnection], Awaitable[None]]


@dataclass
class RawListener:
    relay: str
    hc: str
    behaviour: Behaviour | None = echo_behaviour
    key_name: str = ROOT
    key: str = ROOT_KEY
    listener_id: str | None = None
    subprotocol_choice: str | None = None
    max_size: int | None = DEFAULT_MAX_SIZE  # what recv() on a dialled leg assembles
    accepts: asyncio.Queue[dict[str, object]] = field(default_factory=asyncio.Queue)
    legs: list[WsConnection] = field(default_factory=list)
    control: WsConnection | None = None
    control_closed: asyncio.Future[tuple[int, str]] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _reader: asyncio.Task[None] | None = None

    async def start(self) -> RawListener:
        url = listen_url(self.relay, self.hc, self.listener_id)
        self.control = await ws_connect(
            url, headers={"ServiceBusAuthorization": token_for(url, self.key_name, self.key)}
        )
        self.control_closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.control is not None
        assert self.control_closed is not None
        try:
            while True:
                message = json.loads(await self.control.recv())
                accept = message["accept"]
                await self.accepts.put(accept)
                if self.behaviour is not None:
                    task = asyncio.create_task(self._serve(accept))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except ConnectionClosedError as exc:
            self.control_closed.set_result((exc.code, exc.reason))

    async def wait_control_closed(self, timeout: float) -> tuple[int, str]:
        assert self.control_closed is not None
        return await asyncio.wait_for(asyncio.shield(self.control_closed), timeout)

    async def _serve(self, accept: dict[str, object]) -> None:
        assert self.behaviour is not None
        ws = await self.dial(accept)
        self.legs.append(ws)
        try:
            await self.behaviour(ws)
        finally:
            await ws.close()

    async def dial(self, accept: dict[str, object], **options: object) -> WsConnection:
        protocols: tuple[str, ...] = ()
        headers = {k.lower(): v for k, v in accept["connectHeaders"].items()}  # type: ignore[attr-defined]
        offered = [
            p.strip()
            for p in str(headers.get("sec-websocket-protocol", "")).split(",")
            if p.strip()
        ]
        choice = self.subprotocol_choice or (offered[0] if offered else None)
        if choice:
            protocols = (choice,)
        options.setdefault("max_size", self.max_size)
        return await ws_connect(str(accept["address"]), subprotocols=protocols, **options)  # type: ignore[arg-type] # test passthrough

    @staticmethod
    async def reject(
        accept: dict[str, object], status: int, description: str, *, bare: bool = False
    ) -> int:
        prefix = "" if bare else "sb-hc-"
        url = (
            f"{accept['address']}&{prefix}statusCode={status}"
            f"&{prefix}statusDescription={quote(description)}"
        )
        try:
            ws = await ws_connect(url)
        except HandshakeError as exc:
            return exc.status
        ws.abort()
        return 101

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.control is not None:
            await self.control.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
