"""Token lifetime: a token that expires further ahead than ``max_token_lifetime`` is refused.

A leaked SAS token signed with ``se`` ten years ahead is a permanent credential. The
relay caps how far ahead an accepted token may expire, for rule SAS tokens, device SAS
tokens and JWTs, wherever tokens are checked (listen, connect, HTTP mode, renewals,
management API): 401, counted as ``hybridrelay_limit_refusals{limit="max_token_lifetime"}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from hybridrelay.errors import ConnectionClosedError
from hybridrelay.wsclient import ws_connect
from tests.conftest import RelayFactory, make_token
from tests.harness.device_certs import SAS_DEVICE_KEY, device_sas_token, sas_device
from tests.harness.metrics import limit_refusals
from tests.harness.peers import listen_url
from tests.harness.raw_http import exchange, http_request, upgrade_request
from tests.harness.relay import InProcessRelay, jwt_issuer_config
from tests.harness.timing import seconds

MAX = 3600  # max_token_lifetime in these tests
TOO_LONG = 2 * 86_400
FINE = 600
IDP = "https://idp.example"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def relay(relay_factory: RelayFactory, tmp_path: Path) -> InProcessRelay:
    issuer = jwt_issuer_config(tmp_path / "idp.pem", RSA_KEY, IDP)
    relay = await relay_factory(relay_extra=f"max_token_lifetime = {MAX}", extra=issuer)
    await relay.state.store.create_device(sas_device("dev-1", listen=("echo",), send=("echo",)))
    return relay


def host_of(relay: InProcessRelay) -> str:
    return urlsplit(relay.url).netloc


def tokens(relay: InProcessRelay, ttl: int) -> dict[str, str]:
    """One token of each kind, expiring ``ttl`` seconds from now."""
    now = int(time.time())
    grants = {"listen": ["*"], "send": ["*"], "manage": ["*"]}
    claims = {"iss": IDP, "aud": "hybridrelay", "sub": "svc", "exp": now + ttl, "hc": grants}
    return {
        "sas": make_token(f"http://{host_of(relay)}/", ttl=ttl),
        "device": device_sas_token(host_of(relay), "dev-1", SAS_DEVICE_KEY, ttl=ttl),
        "jwt": "Bearer " + jwt.encode(claims, RSA_KEY, algorithm="RS256"),
    }


async def refusals(relay: InProcessRelay) -> int:
    return int(await limit_refusals(relay.url, "max_token_lifetime"))


async def status(relay: InProcessRelay, request: bytes) -> int:
    return (await exchange(relay.url, request)).status


@pytest.mark.parametrize("kind", ["sas", "device", "jwt"])
async def test_far_future_tokens_are_refused_on_the_data_plane(
    relay: InProcessRelay, kind: str
) -> None:
    """Peer listens, connects and sends HTTP with a token expiring in 2 days (cap 1 h): 401 each."""
    host = host_of(relay)
    long, short = tokens(relay, TOO_LONG)[kind], tokens(relay, FINE)[kind]
    listen = "/$hc/echo?sb-hc-action=listen"
    connect = "/$hc/echo?sb-hc-action=connect"
    auth = {"ServiceBusAuthorization": long}
    assert await status(relay, upgrade_request(listen, host, auth)) == 401
    assert await status(relay, upgrade_request(connect, host, auth)) == 401
    assert await status(relay, http_request("GET", "/echo/x", host, auth)) == 401
    assert await refusals(relay) == 3
    # Inside the cap the same kind of token is fine (no listener: connect gets 404, HTTP 502).
    auth = {"ServiceBusAuthorization": short}
    assert await status(relay, upgrade_request(listen, host, auth)) == 101
    assert await status(relay, upgrade_request(connect, host, auth)) in (101, 404)
    assert await status(relay, http_request("GET", "/echo/x", host, auth)) in (200, 502)
    assert await refusals(relay) == 3


@pytest.mark.parametrize("kind", ["sas", "jwt"])
async def test_far_future_tokens_are_refused_by_the_management_api(
    relay: InProcessRelay, kind: str
) -> None:
    """Caller GETs /$mgmt/v1/hybridconnections with a token expiring in 2 days: 401."""
    host = host_of(relay)
    target = "/$mgmt/v1/hybridconnections"
    long, short = tokens(relay, TOO_LONG)[kind], tokens(relay, FINE)[kind]
    answer = await exchange(
        relay.http_url, http_request("GET", target, host, {"Authorization": long})
    )
    assert answer.status == 401, answer
    assert "max_token_lifetime" in json.loads(answer.body)["error"]["message"]
    ok = await exchange(relay.http_url, http_request("GET", target, host, {"Authorization": short}))
    assert ok.status == 200
    assert await refusals(relay) == 1


@pytest.mark.parametrize("kind", ["sas", "device", "jwt"])
async def test_renewing_with_a_far_future_token_closes_the_control_channel(
    relay: InProcessRelay, kind: str
) -> None:
    """Listener renews its control channel with a token expiring in 2 days: closed 1008."""
    url = listen_url(relay.url, "echo")
    control = await ws_connect(url, headers={"ServiceBusAuthorization": tokens(relay, FINE)[kind]})
    try:
        await control.send(json.dumps({"renewToken": {"token": tokens(relay, TOO_LONG)[kind]}}))
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(seconds(5)):
                await control.recv()
        assert closed.value.code == 1008
        assert "max_token_lifetime" in closed.value.reason
    finally:
        await control.close()
    assert await refusals(relay) == 1
