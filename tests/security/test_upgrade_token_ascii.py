"""An Upgrade value is an ASCII token: no Unicode case folding into "websocket".

``str.lower()`` folds some non-ASCII letters into ASCII ones (U+212A KELVIN SIGN becomes
"k"), so ``"WEBSOC\\u212aET".lower() == "websocket"``. HTTP tokens are ASCII and compare
case-insensitively only in ASCII, and aiohttp's parser (which does not fold) does not
treat such a request as an upgrade: the relay answered it 101 anyway and then parsed the
peer's WebSocket bytes as HTTP. It is refused 400 like any other non-WebSocket request.
"""

from __future__ import annotations

from tests.conftest import RelayFactory
from tests.harness.peers import RawListener, connect_url, token_for
from tests.harness.raw_http import open_raw, read_response, relay_address, upgrade_request

KELVIN_WEBSOCKET = "WEBSOC\u212aET"


async def test_an_upgrade_to_a_unicode_look_alike_of_websocket_is_refused(
    relay_factory: RelayFactory,
) -> None:
    relay = await relay_factory()
    listener = await RawListener(relay.url, "echo").start()
    try:
        url = connect_url(relay.url, "echo")
        target = url.split("://", 1)[1].split("/", 1)[1]
        host, port = relay_address(relay.url)
        head = upgrade_request(
            "/" + target, f"{host}:{port}", {"ServiceBusAuthorization": token_for(url)}
        ).replace(b"Upgrade: websocket", ("Upgrade: " + KELVIN_WEBSOCKET).encode())
        async with open_raw(relay.url) as (reader, writer):
            writer.write(head)
            response = await read_response(reader)
        assert response.status == 400, response
        assert b"web-socket" in response.body
        # The listener was never asked: nothing reached the private side.
        assert listener.accepts.empty()
    finally:
        await listener.stop()
