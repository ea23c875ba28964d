"""JWT bearer tokens end to end (issue 5): an in-process relay with two ``[[jwt_issuers]]``.

The listener authenticates with ``ServiceBusAuthorization: Bearer <jwt>`` (RS256,
PEM key), senders with the raw JWT (ES256, JWKS) in the header or in
``sb-hc-token``, as the .NET SDK does with Entra ID tokens (HC §8.4).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.conftest import RelayFactory
from tests.harness.http_peers import HttpListener
from tests.harness.peers import RawListener, listen_url, send
from tests.harness.relay import InProcessRelay
from tests.harness.timing import seconds

from hybridrelay.errors import HandshakeError
from hybridrelay.wsclient import ws_connect

IDP = "https://idp.example"
DEVICES = "https://devices.example"
AUD = "hybridrelay"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def idp_token(grants: dict[str, list[str]], *, sub: str = "svc-listener", **extra: Any) -> str:
    now = int(time.time())
    payload = {"iss": IDP, "aud": AUD, "sub": sub, "iat": now, "exp": now + 600, "hc": grants}
    payload.update(extra)
    return jwt.encode(payload, RSA_KEY, algorithm="RS256")


def device_token(scope: str, *, sub: str = "device-1") -> str:
    now = int(time.time())
    payload = {"iss": DEVICES, "aud": AUD, "sub": sub, "exp": now + 600, "scope": scope}
    return jwt.encode(payload, EC_KEY, algorithm="ES256", headers={"kid": "dev-1"})


@dataclass
class JwtListener(RawListener):
    """RawListener whose control channel authenticates with a given token, not SAS."""

    token: str = ""

    async def start(self) -> JwtListener:
        url = listen_url(self.relay, self.hc, self.listener_id)
        self.control = await ws_connect(url, headers={"ServiceBusAuthorization": self.token})
        self.control_closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        return self


@pytest.fixture
async def relay(relay_factory: RelayFactory, tmp_path: Path) -> InProcessRelay:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "idp.pem").write_bytes(
        RSA_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    (keys / "devices.json").write_text(json.dumps({"keys": [{**jwk, "kid": "dev-1"}]}))
    extra = f"""
[[jwt_issuers]]
issuer = "{IDP}"
audience = "{AUD}"
public_keys = ['{keys / "idp.pem"}']

[[jwt_issuers]]
issuer = "{DEVICES}"
audience = ["{AUD}", "something-else"]
jwks_file = '{keys / "devices.json"}'
algorithms = ["ES256"]
"""
    return await relay_factory(extra=extra)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


async def handshake_status(url: str, token: str) -> int:
    try:
        ws = await ws_connect(url, headers={"ServiceBusAuthorization": token})
    except HandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_websocket_relay_works_end_to_end_with_jwts(relay: InProcessRelay) -> None:
    bearer = f"Bearer {idp_token({'listen': ['ech*']})}"
    listener = await JwtListener(relay.url, "echo", token=bearer).start()
    try:
        sender = await send(relay.url, "echo", token=device_token("openid hc:send:echo"))
        await sender.send("hello over a JWT")
        assert await sender.recv() == "hello over a JWT"
        await sender.send(b"\x00\x01")
        assert await sender.recv() == b"\x00\x01"
        await sender.close()
        assert sender.close_code == 1000

        # The raw JWT in sb-hc-token works too (percent-encoded once).
        query = "sb-hc-token=" + quote(device_token("hc:send:*"), safe="")
        sender = await send(relay.url, "echo", token="", query=query)
        await sender.send("via query")
        assert await sender.recv() == "via query"
        await sender.close()
        assert listener.accepts.qsize() == 2
    finally:
        await listener.stop()


async def test_jwt_with_only_send_rights_cannot_listen(relay: InProcessRelay) -> None:
    url = listen_url(relay.url, "echo")
    assert await handshake_status(url, device_token("hc:send:echo")) == 403
    assert await handshake_status(url, f"Bearer {idp_token({'send': ['*']})}") == 403
    # Listen rights on another hybrid connection do not help either.
    assert await handshake_status(url, idp_token({"listen": ["other"]})) == 403


async def test_invalid_jwts_are_401(relay: InProcessRelay) -> None:
    url = listen_url(relay.url, "echo")
    good_grants = {"listen": ["*"]}
    assert await handshake_status(url, idp_token(good_grants, aud="someone-else")) == 401
    assert await handshake_status(url, idp_token(good_grants, exp=int(time.time()) - 120)) == 401
    assert await handshake_status(url, idp_token(good_grants, iss="https://evil.example")) == 401
    signed = idp_token(good_grants).split(".")
    unsigned = f"{_b64url(json.dumps({'alg': 'none'}).encode())}.{signed[1]}."
    assert await handshake_status(url, unsigned) == 401
    assert await handshake_status(url, "Bearer not-a-jwt") == 401
    # SAS still works beside JWTs.
    listener = await RawListener(relay.url, "echo").start()
    await listener.stop()


async def test_listen_only_jwt_cannot_send(relay: InProcessRelay) -> None:
    listener = await JwtListener(
        relay.url, "echo", token=f"Bearer {idp_token({'listen': ['echo']})}"
    ).start()
    try:
        with pytest.raises(HandshakeError) as info:
            await send(relay.url, "echo", token=f"Bearer {idp_token({'listen': ['echo']})}")
        assert info.value.status == 403
    finally:
        await listener.stop()


async def test_renew_token_is_checked_as_a_jwt(relay: InProcessRelay) -> None:
    listener = await JwtListener(
        relay.url, "echo", token=idp_token({"listen": ["echo"]}), behaviour=None
    ).start()
    try:
        assert listener.control is not None
        # A valid JWT renews; a JWT without the Listen right then closes with 1008.
        fresh = idp_token({"manage": ["echo"]})
        await listener.control.send(json.dumps({"renewToken": {"token": f"Bearer {fresh}"}}))
        refused = device_token("hc:send:echo")
        await listener.control.send(json.dumps({"renewToken": {"token": refused}}))
        code, reason = await listener.wait_control_closed(seconds(10))
        assert code == 1008
        assert "Listen right" in reason
        assert refused not in reason
    finally:
        await listener.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_http_mode_sender_with_authorization_bearer(
    relay: InProcessRelay, session: aiohttp.ClientSession
) -> None:
    listener = await HttpListener(relay.url, "echo").start()
    try:
        base = relay.url.replace("ws://", "http://", 1)
        bearer = f"Bearer {device_token('hc:send:echo')}"
        pending = asyncio.create_task(
            session.get(f"{base}/echo/status", headers={"Authorization": bearer})
        )
        request = await listener.next_request()
        assert "Authorization" not in request.headers  # consumed by the relay
        await listener.respond(request.id, 200, body=b"ok")
        async with await pending as response:
            assert response.status == 200
            assert await response.read() == b"ok"

        denied = f"Bearer {idp_token({'listen': ['echo']})}"
        async with session.get(f"{base}/echo", headers={"Authorization": denied}) as response:
            assert response.status == 403
    finally:
        await listener.stop()
