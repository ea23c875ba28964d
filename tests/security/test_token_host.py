"""Token host: with ``check_token_host`` a token must name the relay's own public host (issue 11).

The check used to compare the token's host with the request's ``Host`` header, which the
sender writes: a token minted for another relay (or another tenant's name) passed when
the attacker sent a matching ``Host``, and HTTP mode did not check at all. The relay now
compares with its configured public names (``public_url``'s host and ``public_hosts``)
on every action: listen, connect, HTTP mode, token renewal and the management API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from hybridrelay.listener import HttpRequest, HttpResponse, Listener
from hybridrelay.protocol.sas import SasTokenProvider
from tests.conftest import RelayFactory, make_token
from tests.harness.device_certs import SAS_DEVICE_KEY, device_sas_token, sas_device
from tests.harness.listeners import running_listener
from tests.harness.peers import RawListener
from tests.harness.raw_http import exchange, http_request, upgrade_request
from tests.harness.relay import ROOT_KEY, InProcessRelay

EVIL = "evil.example.com"
ALIAS = "relay.example.com"  # a second public name of the relay (public_hosts)


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> InProcessRelay:
    return await relay_factory(relay_extra=f'check_token_host = true\npublic_hosts = ["{ALIAS}"]')


def own_host(relay: InProcessRelay) -> str:
    return urlsplit(relay.url).netloc


def token(host: str, path: str = "") -> str:
    return make_token(f"http://{host}/{path}")


async def upgrade_status(relay: InProcessRelay, target: str, host: str, auth: str) -> int:
    request = upgrade_request(target, host, {"ServiceBusAuthorization": auth})
    return (await exchange(relay.url, request)).status


@pytest.fixture
async def http_listener(relay: InProcessRelay) -> AsyncIterator[Listener]:
    async def ok(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, {}, b"served")

    listener = Listener(
        relay.url,
        "echo",
        token_provider=SasTokenProvider("RootManageSharedAccessKey", ROOT_KEY),
        http_handler=ok,
    )
    async with running_listener(listener):
        yield listener


@pytest.mark.parametrize("action", ["listen", "connect"])
async def test_websocket_token_for_another_host_is_refused_whatever_host_is_sent(
    relay: InProcessRelay, action: str
) -> None:
    """Peer upgrades with a token for evil.example.com and Host: evil.example.com: 403."""
    listener = await RawListener(relay.url, "echo").start() if action == "connect" else None
    try:
        target = f"/$hc/echo?sb-hc-action={action}"
        for sent_host in (EVIL, own_host(relay), ALIAS):
            assert await upgrade_status(relay, target, sent_host, token(EVIL)) == 403, sent_host
        # A token for one of the relay's own names is good whatever Host comes with it.
        for named in (own_host(relay), ALIAS):
            assert await upgrade_status(relay, target, EVIL, token(named)) == 101, named
    finally:
        if listener is not None:
            await listener.stop()


async def test_http_mode_token_for_another_host_is_refused(
    relay: InProcessRelay, http_listener: Listener
) -> None:
    """Sender POSTs /echo with a token for evil.example.com (any Host): 403, never relayed."""
    for sent_host in (EVIL, own_host(relay)):
        request = http_request(
            "GET", "/echo/x", sent_host, {"ServiceBusAuthorization": token(EVIL, "echo")}
        )
        answer = await exchange(relay.http_url, request)
        assert answer.status == 403, (sent_host, answer)
    assert http_listener.stats.requests == 0
    good = http_request(
        "GET", "/echo/x", EVIL, {"ServiceBusAuthorization": token(own_host(relay), "echo")}
    )
    assert (await exchange(relay.http_url, good)).status == 200


async def test_management_token_for_another_host_is_refused(relay: InProcessRelay) -> None:
    """Caller GETs /$mgmt/v1/hybridconnections with a token for evil.example.com: 403."""
    target = "/$mgmt/v1/hybridconnections"
    for sent_host in (EVIL, own_host(relay)):
        request = http_request("GET", target, sent_host, {"Authorization": token(EVIL)})
        assert (await exchange(relay.http_url, request)).status == 403, sent_host
    good = http_request("GET", target, EVIL, {"Authorization": token(ALIAS)})
    assert (await exchange(relay.http_url, good)).status == 200


async def test_device_token_for_another_host_is_refused(relay: InProcessRelay) -> None:
    """Device upgrades with a device token whose sr names evil.example.com (any Host): 403."""
    await relay.state.store.create_device(sas_device("dev-1", listen=("echo",)))
    target = "/$hc/echo?sb-hc-action=listen"
    evil = device_sas_token(EVIL, "dev-1", SAS_DEVICE_KEY)
    for sent_host in (EVIL, own_host(relay)):
        assert await upgrade_status(relay, target, sent_host, evil) == 403, sent_host
    good = device_sas_token(own_host(relay), "dev-1", SAS_DEVICE_KEY)
    assert await upgrade_status(relay, target, EVIL, good) == 101
