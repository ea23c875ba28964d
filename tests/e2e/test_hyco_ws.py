"""Microsoft's hyco-ws 1.0.5 (unchanged) against the relay running as a real subprocess.

The Node side is driven through ``tests/e2e/node`` (``hyco_ws_listener.js``,
``hyco_ws_sender.js``) by ``tests/harness/node.py``. URIs are hand-built as hyco's helpers
would shape them (protocol doc Part 2 §2/§3): ``ws://127.0.0.1:PORT/$hc/hyco?sb-hc-action=…``
in plain mode and ``wss://localhost:PORT/…`` over TLS, where the Node processes trust the
test CA through ``NODE_EXTRA_CA_CERTS`` and the Python side through an ``SSLContext``.

Only hyco-ws listeners use the hybrid connection ``hyco``; our own listener uses ``echo``.
Every wait is bounded and waits on an event (``listening``, ``connection``, ``result`` …).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.harness.node import (
    NodeProcess,
    NodeSetupError,
    ensure_node_modules,
    hyco_uri,
    node_available,
    pattern_bytes,
)
from tests.harness.relay import ROOT_KEY, RelayProcess
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles

from hybridrelay.client import connect
from hybridrelay.errors import ConnectionClosedError
from hybridrelay.listener import Listener
from hybridrelay.listener.hooks import AcceptRequest
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection

pytestmark = [pytest.mark.node, pytest.mark.e2e]

ROOT = "RootManageSharedAccessKey"
HYCO = "hyco"  # hyco-ws listeners only
ECHO = "echo"  # our own Listener

TEXT = "hello from hybridrelay - ünïcödé ✓"
BINARY = bytes(range(256)) * 4
ONE_MIB = 1 << 20

ProcessFactory = Callable[..., Awaitable[RelayProcess]]


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """hyco-ws installed; a missing toolchain is a failure, never a silent skip."""
    if not node_available():
        pytest.fail(
            "node (>= 18) and npm must be on PATH to run the hyco-ws compatibility tests "
            "(install Node.js; deselect explicitly with -m 'not node' if you really mean to)",
            pytrace=False,
        )
    try:
        return ensure_node_modules()
    except NodeSetupError as exc:
        pytest.fail(f"installing tests/e2e/node dependencies failed:\n{exc}", pytrace=False)


@dataclass
class Setup:
    """A relay subprocess and how each side reaches it."""

    relay: RelayProcess
    base: str  # ws://127.0.0.1:PORT or wss://localhost:PORT
    ssl_context: ssl.SSLContext | None
    node_env: dict[str, str | None]

    def uri(self, path: str, action: str) -> str:
        return hyco_uri(self.base, path, action)

    def hyco_listener(self, **params: Any) -> NodeProcess:
        return NodeProcess(
            "hyco_ws_listener.js",
            {"uri": self.uri(HYCO, "listen"), "keyName": ROOT, "key": ROOT_KEY, **params},
            env=self.node_env,
        )

    def hyco_sender(self, path: str, messages: list[dict[str, Any]], **params: Any) -> NodeProcess:
        return NodeProcess(
            "hyco_ws_sender.js",
            {
                "uri": self.uri(path, "connect"),
                "keyName": ROOT,
                "key": ROOT_KEY,
                "messages": messages,
                "timeoutMs": int(seconds(15) * 1000),
                **params,
            },
            env=self.node_env,
        )


async def start_setup(factory: ProcessFactory, tls: TlsFiles | None) -> Setup:
    relay = await factory(tls=tls)
    port = urlsplit(relay.url).port
    assert port is not None, relay.url
    if tls is None:
        # NODE_EXTRA_CA_CERTS must not leak in from the developer's environment either way.
        return Setup(relay, f"ws://127.0.0.1:{port}", None, {"NODE_EXTRA_CA_CERTS": None})
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    return Setup(relay, f"wss://localhost:{port}", ctx, {"NODE_EXTRA_CA_CERTS": str(tls.ca_cert)})


@pytest.fixture(params=["ws", "wss"])
async def relay_setup(
    request: pytest.FixtureRequest,
    node_modules: Path,
    relay_process_factory: ProcessFactory,
    tls_files: TlsFiles,
) -> Setup:
    return await start_setup(relay_process_factory, tls_files if request.param == "wss" else None)


@pytest.fixture
async def plain_relay_setup(node_modules: Path, relay_process_factory: ProcessFactory) -> Setup:
    return await start_setup(relay_process_factory, None)


@contextlib.asynccontextmanager
async def hyco_listening(relay_setup: Setup, **params: Any) -> AsyncIterator[NodeProcess]:
    async with relay_setup.hyco_listener(**params) as listener:
        await listener.next_event("listening", timeout=seconds(10))
        yield listener


async def run_sender(sender: NodeProcess) -> dict[str, Any]:
    """Wait for the sender's result and its clean exit; returns the result event."""
    async with sender:
        result = await sender.next_event("result", timeout=seconds(20))
        closed = await sender.next_event("closed", timeout=seconds(10))
        code = await sender.wait(timeout=seconds(10))
    assert closed["code"] == 1000, sender.diagnostics()
    assert code == 0, sender.diagnostics()
    return result


def text_msg(data: str) -> dict[str, Any]:
    return {"type": "text", "data": data}


def binary_msg(data: bytes) -> dict[str, Any]:
    return {"type": "binary", "data": base64.b64encode(data).decode()}


def summary(kind: str, data: bytes) -> dict[str, Any]:
    return {"type": kind, "length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def echo_handler(ws: WsConnection, request: AcceptRequest) -> None:
    while True:
        try:
            message = await ws.recv()
        except ConnectionClosedError:
            return
        await ws.send(message)


@contextlib.asynccontextmanager
async def our_listener(relay_setup: Setup, hc: str) -> AsyncIterator[Listener]:
    listener = Listener(
        relay_setup.base,
        hc,
        token_provider=SasTokenProvider(ROOT, ROOT_KEY),
        handler=echo_handler,
        ssl_context=relay_setup.ssl_context,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        connected = asyncio.create_task(listener.connected.wait())
        done, _ = await asyncio.wait(
            {connected, task}, timeout=seconds(10), return_when=asyncio.FIRST_COMPLETED
        )
        if connected not in done:
            connected.cancel()
            if task.done():
                task.result()  # raises what ended the listener
            pytest.fail(f"our listener did not connect within 10 s (stats: {listener.stats})")
        yield listener
    finally:
        stop.set()
        async with asyncio.timeout(seconds(15)):
            await task


async def listen_rejections(relay_setup: Setup, status: int) -> float:
    """``hybridrelay_rejections_total{status=…,action="listen"}`` from the relay's /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            relay_setup.relay.http_url + "/metrics", ssl=relay_setup.ssl_context or True
        ) as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "hybridrelay_rejections_total"
                and sample.labels.get("status") == str(status)
                and sample.labels.get("action") == "listen"
            ):
                total += sample.value
    return total


# -- 1. hyco-ws listener + our client ---------------------------------------------------------


async def test_hyco_listener_our_client_echo(relay_setup: Setup) -> None:
    big = pattern_bytes(ONE_MIB)
    async with hyco_listening(relay_setup) as listener:
        async with connect(
            relay_setup.base, HYCO, key_name=ROOT, key=ROOT_KEY, ssl_context=relay_setup.ssl_context
        ) as stream:
            assert stream.subprotocol is None
            connection = await listener.next_event("connection", timeout=seconds(10))
            assert connection["protocol"] is None

            await stream.send(TEXT)
            echoed = await asyncio.wait_for(stream.recv(), seconds(10))
            assert isinstance(echoed, str)
            assert echoed == TEXT

            await stream.send(BINARY)
            echoed = await asyncio.wait_for(stream.recv(), seconds(10))
            assert isinstance(echoed, bytes)
            assert echoed == BINARY

            await stream.send(big)
            echoed = await asyncio.wait_for(stream.recv(), seconds(20))
            assert isinstance(echoed, bytes)
            assert len(echoed) == len(big)
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(big).digest()

        assert stream.close_code == 1000
        seen = [
            (m["type"], m["length"])
            for m in [await listener.next_event("message", timeout=seconds(5)) for _ in range(3)]
        ]
        assert seen == [("text", len(TEXT.encode())), ("binary", len(BINARY)), ("binary", ONE_MIB)]
        closed = await listener.next_event("connection-close", timeout=seconds(10))
        assert closed["code"] == 1000, listener.diagnostics()
        assert not listener.events_of("connection-error"), listener.diagnostics()
        assert not listener.events_of("control-close"), listener.diagnostics()


# -- 2. our listener + hyco-ws sender ---------------------------------------------------------


async def test_our_listener_hyco_sender_echo(relay_setup: Setup) -> None:
    async with our_listener(relay_setup, ECHO) as listener:
        sender = relay_setup.hyco_sender(ECHO, [text_msg(TEXT), binary_msg(BINARY), text_msg("")])
        result = await run_sender(sender)
        assert result["protocol"] is None
        assert result["echoes"] == [text_msg(TEXT), binary_msg(BINARY), text_msg("")]
        assert listener.stats.accepted == 1


# -- 3. hyco-ws listener + hyco-ws sender -----------------------------------------------------


async def test_hyco_listener_hyco_sender_echo(relay_setup: Setup) -> None:
    big = pattern_bytes(256 * 1024)
    async with hyco_listening(relay_setup) as listener:
        sender = relay_setup.hyco_sender(
            HYCO,
            [text_msg(TEXT), binary_msg(BINARY), {"type": "binary", "size": len(big)}],
            summary=True,
        )
        result = await run_sender(sender)
        assert result["protocol"] is None
        assert result["echoes"] == [
            summary("text", TEXT.encode()),
            summary("binary", BINARY),
            summary("binary", big),
        ]
        accept = await listener.next_event("accept", timeout=seconds(5))
        headers = {k.lower(): v for k, v in accept["connectHeaders"].items()}
        assert headers.get("sec-websocket-key"), accept  # hyco-ws needs it (Part 2 §5.1)
        address, base = urlsplit(accept["address"]), urlsplit(relay_setup.base)
        assert (address.scheme, address.port) == (base.scheme, base.port), accept
        closed = await listener.next_event("connection-close", timeout=seconds(10))
        assert closed["code"] == 1000, listener.diagnostics()
        assert not listener.events_of("connection-error"), listener.diagnostics()


# -- 4. sub-protocols -------------------------------------------------------------------------


async def test_hyco_sender_subprotocol_picked_by_hyco_listener(plain_relay_setup: Setup) -> None:
    async with hyco_listening(plain_relay_setup) as listener:
        sender = plain_relay_setup.hyco_sender(
            HYCO, [text_msg("with protocol")], protocol="proto", useRelayedConnect=False
        )
        result = await run_sender(sender)
        assert result["protocol"] == "proto"
        assert result["echoes"] == [text_msg("with protocol")]
        connection = await listener.next_event("connection", timeout=seconds(5))
        assert connection["protocol"] == "proto"
        accept = await listener.next_event("accept", timeout=seconds(5))
        headers = {k.lower(): v for k, v in accept["connectHeaders"].items()}
        assert headers.get("sec-websocket-protocol") == "proto", accept


async def test_hyco_listener_chooses_among_offered_subprotocols(plain_relay_setup: Setup) -> None:
    async with hyco_listening(plain_relay_setup, protocol="second") as listener:
        sender = plain_relay_setup.hyco_sender(
            HYCO, [binary_msg(b"\x01\x02")], protocol=["first", "second"], useRelayedConnect=False
        )
        result = await run_sender(sender)
        assert result["protocol"] == "second"
        assert result["echoes"] == [binary_msg(b"\x01\x02")]
        connection = await listener.next_event("connection", timeout=seconds(5))
        assert connection["protocol"] == "second"


async def test_our_client_subprotocol_picked_by_hyco_listener(plain_relay_setup: Setup) -> None:
    async with hyco_listening(plain_relay_setup) as listener:
        async with connect(
            plain_relay_setup.base, HYCO, key_name=ROOT, key=ROOT_KEY, subprotocols=("mqtt",)
        ) as stream:
            assert stream.subprotocol == "mqtt"
            assert stream.response_headers.get("sec-websocket-protocol") == "mqtt"
            await stream.send(b"\x10\x00")
            assert await asyncio.wait_for(stream.recv(), seconds(10)) == b"\x10\x00"
        connection = await listener.next_event("connection", timeout=seconds(5))
        assert connection["protocol"] == "mqtt"


# -- 6. invalid token: one 401, the hyco-ws listener stops (no reconnect storm) ----------------


async def test_hyco_listener_with_invalid_token_gets_401_and_exits(
    plain_relay_setup: Setup,
) -> None:
    assert await listen_rejections(plain_relay_setup, 401) == 0
    async with plain_relay_setup.hyco_listener(key="not-the-key-0123456789abcdef0123") as listener:
        error = await listener.next_event("error", timeout=seconds(10))
        assert error.get("status") == 401, listener.diagnostics()
        assert await listener.wait(timeout=seconds(10)) == 1, listener.diagnostics()
    assert not listener.events_of("listening"), listener.diagnostics()
    rejections = await listen_rejections(plain_relay_setup, 401)
    # hyco-ws retries from both onerror and onclose before the script exits; a storm would be
    # dozens or thousands (Part 2 §5.1).
    assert 1 <= rejections <= 2, f"{rejections} listen 401s\n{plain_relay_setup.relay.log()}"
