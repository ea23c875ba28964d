"""URL injection into rendezvous addresses: the sender's query must not change the address.

The relay copies a sender's application query into the ``accept.address`` the listener
dials (HC §2.4). A raw ``#`` there made everything after it (``sb-hc-action`` and the
rendezvous key) a fragment: the listener's dial was refused and the sender hung for the
whole rendezvous timeout.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, urlsplit

from hybridrelay.listener import Listener
from hybridrelay.listener.hooks import AcceptRequest
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection
from tests.conftest import ROOT, RelayFactory
from tests.harness.listeners import running_listener
from tests.harness.peers import RawListener
from tests.harness.raw_http import connect_raw, read_response, upgrade
from tests.harness.raw_ws import BINARY, masked_frame, read_frame
from tests.harness.relay import ROOT_KEY
from tests.harness.timing import seconds

# Raw in the request line: "#" (a fragment), brackets, quotes, braces, a pipe, a caret,
# a backtick, a stray "%" and an escape that must stay one.
HOSTILE_QUERY = 'app=1#frag&list=[1,2]&q="x"&o={a|b}^`&pct=%zz&esc=%41&sb-hc-action=connect'


async def test_a_sender_with_url_specials_in_its_query_gets_its_stream(
    relay_factory: RelayFactory,
) -> None:
    """Sender puts '#', brackets, quotes and braces in its query: the listener's dial works."""
    relay = await relay_factory()

    async def echo(ws: WsConnection, request: AcceptRequest) -> None:
        await ws.send(await ws.recv())

    listener = Listener(
        relay.url, "anon", token_provider=SasTokenProvider(ROOT, ROOT_KEY), handler=echo
    )
    async with running_listener(listener):
        # Far below the 30 s rendezvous timeout the sender used to wait out.
        async with asyncio.timeout(seconds(5)):
            reader, writer, head = await upgrade(relay.url, f"/$hc/anon?{HOSTILE_QUERY}")
            try:
                assert (head.version, head.status) == ("HTTP/1.1", 101), head
                writer.write(masked_frame(BINARY, b"through"))
                assert await read_frame(reader) == (True, BINARY, b"through")
            finally:
                writer.close()
                await writer.wait_closed()


async def test_the_listener_reads_the_senders_query_values_back(
    relay_factory: RelayFactory,
) -> None:
    """Sender puts URL specials in its query: the accept address decodes to the same values."""
    relay = await relay_factory()
    listener = await RawListener(relay.url, "anon", behaviour=None).start()
    writer = None
    try:
        sender = asyncio.ensure_future(upgrade(relay.url, f"/$hc/anon?{HOSTILE_QUERY}"))
        async with asyncio.timeout(seconds(5)):
            accept = await listener.accepts.get()
        address = urlsplit(str(accept["address"]))
        assert address.fragment == ""
        pairs = parse_qsl(address.query, keep_blank_values=True)
        assert pairs[:6] == [
            ("app", "1#frag"),
            ("list", "[1,2]"),
            ("q", '"x"'),
            ("o", "{a|b}^`"),
            ("pct", "%zz"),
            ("esc", "A"),
        ]
        assert [name for name, _ in pairs[6:]] == ["sb-hc-action", "sb-hc-id", "sb-hc-rdv"]
        ws = await listener.dial(accept)  # the dial the '#' used to break
        async with asyncio.timeout(seconds(5)):
            _, writer, head = await sender
        assert (head.version, head.status) == ("HTTP/1.1", 101), head
        ws.abort()  # the raw sender would never answer a closing handshake
    finally:
        if writer is not None:
            writer.close()
        await listener.stop()


async def test_an_http_request_target_with_a_raw_hash_is_refused(
    relay_factory: RelayFactory,
) -> None:
    """HTTP-mode sender puts a raw '#' in its request target: 400, nothing reaches a listener."""
    relay = await relay_factory()
    for target in ("/anon/a#b", "/anon/a?x=1#b", "/anon#?sb-hc-action=listen"):
        reader, writer = await connect_raw(relay.url)
        try:
            writer.write(f"GET {target} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
            async with asyncio.timeout(seconds(5)):
                answer = await read_response(reader)
            assert answer.status == 400, target
        finally:
            writer.close()
            await writer.wait_closed()
