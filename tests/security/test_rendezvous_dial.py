"""A hostile relay aiming the listener agent elsewhere: it dials only the relay's own hosts.

``accept.address`` and ``request.address`` come from the relay (HC §2.4, §2.6), and the
agent used to dial whatever they said: a compromised or misconfigured relay could make
it connect to any host on the on-prem network, or downgrade a wss:// relay's traffic to
ws://. The relay here is a raw server speaking the control channel; a second server at
another address counts every TCP connection that reaches it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable

import pytest

from hybridrelay.listener import Listener
from hybridrelay.listener.agent import RendezvousHosts
from hybridrelay.listener.hooks import AcceptRequest
from hybridrelay.listener.http_target import HttpRequest, HttpResponse
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection
from tests.conftest import ROOT
from tests.harness.hostile_server import HostileServer, ServerPeer
from tests.harness.relay import ROOT_KEY
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles


class Elsewhere:
    """A plain TCP server at another address: where no dial may ever arrive."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.arrivals = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.arrivals += 1
        writer.close()

    async def __aenter__(self) -> Elsewhere:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])


def _accept(address: str, tracking_id: str) -> str:
    headers = {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    return json.dumps(
        {"accept": {"address": address, "id": tracking_id, "connectHeaders": headers}}
    )


def _request(address: str, tracking_id: str) -> str:
    return json.dumps(
        {
            "request": {
                "address": address,
                "id": tracking_id,
                "requestTarget": "/hc/x",
                "method": "GET",
                "requestHeaders": {},
                "body": False,
            }
        }
    )


def _rendezvous(base: str, tracking_id: str, action: str = "accept") -> str:
    return f"{base}/$hc/hc?sb-hc-action={action}&sb-hc-id={tracking_id}&sb-hc-rdv=key"


async def _attack(
    elsewhere_host: str,
    relay_ssl: ssl.SSLContext | None,
    client_ssl: ssl.SSLContext | None,
    hostile_addresses: Callable[[str, Elsewhere], list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Run the agent against a relay that sends ``hostile_addresses`` as accepts and
    requests, then one valid accept (the sentinel); check nothing reached elsewhere."""
    hostile_count = 0
    async with Elsewhere(elsewhere_host) as elsewhere:
        sentinel_dialled = asyncio.Event()
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def relay_behaviour(peer: ServerPeer) -> None:
            nonlocal hostile_count
            if "sb-hc-action=listen" in peer.target:
                hostile = hostile_addresses(server.url, elsewhere)
                hostile_count = len(hostile)
                for i, address in enumerate(hostile):
                    await peer.send_text(_accept(address, f"a{i}"))
                    request_address = address.replace("action=accept", "action=request")
                    await peer.send_text(_request(request_address, f"r{i}"))
                await peer.send_text(_accept(_rendezvous(server.url, "sentinel"), "sentinel"))
                sent.set_result(None)
            elif "sb-hc-id=sentinel" in peer.target:
                sentinel_dialled.set()
            await peer.reader.read()  # hold the connection until the agent closes it

        server = HostileServer(relay_behaviour, ssl=relay_ssl)

        async def handler(ws: WsConnection, request: AcceptRequest) -> None:
            ws.abort()

        async def http_handler(request: HttpRequest) -> HttpResponse:
            return HttpResponse(200, {}, b"")

        async with server.running():
            listener = Listener(
                server.url,
                "hc",
                token_provider=SasTokenProvider(ROOT, ROOT_KEY),
                handler=handler,
                http_handler=http_handler,
                ssl_context=client_ssl,
                drain_timeout=0.1,  # the raw relay never answers a close frame
            )
            stop = asyncio.Event()
            task = asyncio.create_task(listener.run(stop))
            try:
                async with asyncio.timeout(seconds(10)):
                    await sent
                    await sentinel_dialled.wait()
            finally:
                stop.set()
                async with asyncio.timeout(seconds(20)):
                    await task
        # The agent handles control messages in order: every hostile one came first.
        assert elsewhere.arrivals == 0
        dialled = [peer.target for peer in server.peers if "sb-hc-action=listen" not in peer.target]
        assert all("sentinel" in target for target in dialled), dialled
    refused = [r for r in caplog.records if r.getMessage() == "rendezvous_address_refused"]
    assert len(refused) == 2 * hostile_count
    assert all(r.levelno == logging.WARNING for r in refused)


@pytest.fixture
def tls_contexts(tls_files: TlsFiles) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls_files.cert, tls_files.key)
    client = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    return server, client


async def test_the_agent_never_dials_another_host(caplog: pytest.LogCaptureFixture) -> None:
    """Relay sends accept/request addresses for another host: the agent refuses, dials nothing."""
    caplog.set_level(logging.WARNING, "hybridrelay.listener")

    def addresses(relay: str, elsewhere: Elsewhere) -> list[str]:
        return [
            _rendezvous(f"ws://127.0.0.2:{elsewhere.port}", "x"),
            _rendezvous(f"ws://127.0.0.2:{elsewhere.port}/..", "y"),
            f"http://127.0.0.2:{elsewhere.port}/?sb-hc-action=accept",
            f"ws://127.0.0.1@127.0.0.2:{elsewhere.port}/$hc/hc?sb-hc-action=accept",
        ]

    await _attack("127.0.0.2", None, None, addresses, caplog)


async def test_the_agent_never_downgrades_a_wss_relay_to_ws(
    caplog: pytest.LogCaptureFixture,
    tls_files: TlsFiles,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """wss:// relay sends ws:// addresses for its own host: the agent refuses, dials nothing."""
    caplog.set_level(logging.WARNING, "hybridrelay.listener")
    server_ctx, _ = tls_contexts
    # The usual deployment: no ssl_context, the system trust store (here: the test CA).
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca_cert))

    def addresses(relay: str, elsewhere: Elsewhere) -> list[str]:
        # The relay's own host (127.0.0.1), a plain port: only the scheme is wrong.
        return [
            _rendezvous(f"ws://127.0.0.1:{elsewhere.port}", "plain"),
            _rendezvous(relay.replace("wss://", "ws://"), "plain-same-port"),
        ]

    await _attack("127.0.0.1", server_ctx, None, addresses, caplog)


def test_rendezvous_hosts_rules() -> None:
    """The host allow-list: the relays' hosts, configured names and *.domain, no downgrade."""
    hosts = RendezvousHosts(
        ["wss://Relay.Example.com", "ws://10.0.0.5:81"], ["*.nodes.example.com"]
    )
    ok = "wss://relay.example.com:8443/$hc/x?sb-hc-action=accept"
    assert hosts.refusal(ok, "wss://relay.example.com") is None
    assert hosts.refusal("wss://n-1.nodes.example.com/$hc/x", "wss://relay.example.com") is None
    assert hosts.refusal("ws://10.0.0.5:9/$hc/x", "ws://10.0.0.5:81") is None
    assert hosts.refusal("wss://10.0.0.5/$hc/x", "ws://10.0.0.5:81") is None  # upgrade: fine
    assert hosts.refusal("ws://relay.example.com/$hc/x", "wss://relay.example.com")
    assert hosts.refusal("wss://nodes.example.com/$hc/x", "wss://relay.example.com")
    assert hosts.refusal("wss://evilrelay.example.com/$hc/x", "wss://relay.example.com")
    assert hosts.refusal("wss://relay.example.com.evil/$hc/x", "wss://relay.example.com")
    assert hosts.refusal("https://relay.example.com/$hc/x", "wss://relay.example.com")
    local = RendezvousHosts(["wss://localhost:8443"])
    assert local.refusal("wss://127.0.0.1:8443/$hc/x", "wss://localhost:8443") is None
    assert local.refusal("wss://[::1]:8443/$hc/x", "wss://localhost:8443") is None
    assert local.refusal("wss://127.0.0.2:8443/$hc/x", "wss://localhost:8443")
    assert hosts.refusal("wss://relay.example.com:bad/$hc/x", "wss://relay.example.com")


def test_rendezvous_hosts_remembered_verdicts_are_the_verdicts() -> None:
    """Verdicts are remembered per scheme://netloc; what urlsplit would read differently
    (whitespace, controls, non-ASCII) is always decided afresh, and the memory is bounded."""
    hosts = RendezvousHosts(["wss://relay.example.com"])
    relay = "wss://relay.example.com"
    for _ in range(2):  # the second round answers from memory
        assert hosts.refusal("wss://relay.example.com/$hc/x?sb-hc-id=1", relay) is None
        assert hosts.refusal("wss://relay.example.com?sb-hc-id=2", relay) is None
        assert hosts.refusal("wss://relay.example.com#x", relay) is None
        assert hosts.refusal("ws://relay.example.com/$hc/x", relay)
        assert hosts.refusal("wss://relay.example.com@evil.example/$hc/x", relay)
        assert hosts.refusal("wss://relay.example.com:bad/$hc/x", relay)
        # urlsplit drops tabs and newlines: "relay.example.com" after all, and a
        # remembered verdict for the text before the tab must not decide it.
        assert hosts.refusal("wss://evil\t.example/$hc/x", relay)
        assert hosts.refusal("wss://relay.example.com\t/$hc/x", relay) is None
        assert hosts.refusal(" wss://evil.example/$hc/x", relay)
        assert hosts.refusal("wss://relay.example.com\u00e9/$hc/x", relay)
    for n in range(200):  # a relay naming a new host each time
        assert hosts.refusal(f"wss://h{n}.evil.example/$hc/x", relay)
    assert hosts.refusal("wss://relay.example.com/$hc/y", relay) is None
    assert hosts.refusal("wss://h199.evil.example/$hc/y", relay)
