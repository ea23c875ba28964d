"""CA certificates registered at run time (issue 5): upload, proof of possession, trust, delete.

The relay starts with TLS, ``client_cert = "optional"`` and a placeholder
``client_ca_file`` that trusts nothing the test uses. A device CA uploaded through
``/$mgmt/v1/certificates`` is trusted only once a proof-of-possession certificate
verifies it; after its deletion the devices it signed are refused (401).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.conftest import RelayFactory
from tests.harness.device_certs import DeviceCa, DeviceCert, make_device_ca, make_device_cert
from tests.harness.peers import listen_url
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles

from hybridrelay.errors import ConnectionClosedError, HandshakeError
from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.relay.store.models import Authentication, Device, Grants
from hybridrelay.wsclient import ws_connect


@dataclass
class Api:
    session: aiohttp.ClientSession
    base: str
    token: str
    tls: ssl.SSLContext

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        headers = {"Authorization": self.token, "Content-Type": "application/json"}
        data = json.dumps(body) if body is not None else None
        async with self.session.request(
            method, self.base + path, data=data, headers=headers, ssl=self.tls
        ) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None


@dataclass
class Setup:
    relay: InProcessRelay
    api: Api
    ca: DeviceCa
    device: DeviceCert
    directory: Path
    server_ca: Path

    def device_context(self) -> ssl.SSLContext:
        return self.device.client_context(self.server_ca)

    async def listen_status(self) -> int | str:
        """101, the HTTP status of a refused handshake, or "tls" when TLS refused it."""
        try:
            ws = await ws_connect(
                listen_url(self.relay.url, "echo"),
                ssl=self.device_context(),
                open_timeout=seconds(5),
            )
        except HandshakeError as exc:
            return exc.status
        except (OSError, ConnectionClosedError):
            return "tls"
        await ws.close()
        return 101


@pytest.fixture
async def setup(
    relay_factory: RelayFactory, tls_files: TlsFiles, tmp_path: Path
) -> AsyncIterator[Setup]:
    directory = tmp_path / "pki"
    directory.mkdir()
    placeholder = make_device_ca(directory, "placeholder CA")
    ca = make_device_ca(directory, "fleet CA")
    device = make_device_cert(directory, "cam-1", ca=ca)
    relay = await relay_factory(
        tls=tls_files,
        relay_extra=f'client_cert = "optional"\nclient_ca_file = "{placeholder.pem}"',
    )
    await relay.state.store.create_device(
        Device(
            device_id="cam-1",
            authentication=Authentication(type="certificateAuthority"),
            grants=Grants(listen=("echo",)),
        )
    )
    token = create_sas_token(
        "http://127.0.0.1/", "RootManageSharedAccessKey", ROOT_KEY, int(time.time()) + 600
    )
    tls = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    async with aiohttp.ClientSession() as session:
        api = Api(session, relay.http_url + "/$mgmt/v1", token, tls)
        yield Setup(relay, api, ca, device, directory, tls_files.ca_cert)


async def _eventually(setup: Setup, expected: int | str) -> None:
    deadline = time.monotonic() + seconds(3)
    status = await setup.listen_status()
    while status != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        status = await setup.listen_status()
    assert status == expected


async def test_upload_prove_trust_and_delete(setup: Setup) -> None:
    api = setup.api
    assert await setup.listen_status() == "tls"  # nobody trusts the fleet CA yet
    # Only CA certificates are accepted.
    status, _ = await api.call("PUT", "/certificates/fleet", {"certificate": "nope"})
    assert status == 400
    status, _ = await api.call(
        "PUT", "/certificates/fleet", {"certificate": setup.device.cert.read_text()}
    )
    assert status == 400
    status, doc = await api.call(
        "PUT", "/certificates/fleet", {"certificate": setup.ca.pem.read_text()}
    )
    assert status == 201
    assert doc["isVerified"] is False
    status, listing = await api.call("GET", "/certificates")
    assert status == 200
    assert [c["name"] for c in listing["value"]] == ["fleet"]
    # Unverified: still not trusted; a proof before any code is refused.
    proof = make_device_cert(setup.directory, "early", ca=setup.ca)
    status, _ = await api.call(
        "POST", "/certificates/fleet/verify", {"certificate": proof.cert.read_text()}
    )
    assert status == 400
    status, doc = await api.call("POST", "/certificates/fleet/generateVerificationCode")
    assert status == 200
    code = doc["verificationCode"]
    assert code
    # Wrong proofs: another CN signed by the CA; the code signed by another key.
    wrong_cn = make_device_cert(setup.directory, "not-the-code", ca=setup.ca)
    forged_ca = replace(setup.ca, key=ec.generate_private_key(ec.SECP256R1()))
    forged = make_device_cert(setup.directory, code, ca=forged_ca, file_stem="forged")
    for bad in (wrong_cn, forged):
        status, _ = await api.call(
            "POST", "/certificates/fleet/verify", {"certificate": bad.cert.read_text()}
        )
        assert status == 400
    status, doc = await api.call("GET", "/certificates/fleet")
    assert doc["isVerified"] is False
    assert await setup.listen_status() == "tls"
    # The right proof: verified, and the device signed by the CA connects.
    good = make_device_cert(setup.directory, code, ca=setup.ca, file_stem="proof")
    status, doc = await api.call(
        "POST", "/certificates/fleet/verify", {"certificate": good.cert.read_text()}
    )
    assert status == 200
    assert doc["isVerified"] is True
    await _eventually(setup, 101)
    # Deleted: the live TLS context still trusts the CA, device auth does not.
    status, _ = await api.call("DELETE", "/certificates/fleet")
    assert status == 204
    assert await setup.listen_status() == 401
    status, _ = await api.call("GET", "/certificates/fleet")
    assert status == 404


async def test_reuploading_a_deleted_ca_needs_a_new_proof(setup: Setup) -> None:
    api = setup.api
    pem = {"certificate": setup.ca.pem.read_text()}
    await api.call("PUT", "/certificates/fleet", pem)
    _, doc = await api.call("POST", "/certificates/fleet/generateVerificationCode")
    proof = make_device_cert(setup.directory, doc["verificationCode"], ca=setup.ca)
    await api.call("POST", "/certificates/fleet/verify", {"certificate": proof.cert.read_text()})
    await _eventually(setup, 101)
    await api.call("DELETE", "/certificates/fleet")
    status, doc = await api.call("PUT", "/certificates/fleet", pem)
    assert status == 201
    assert doc["isVerified"] is False
    assert await setup.listen_status() == 401


async def test_certificates_need_manage(setup: Setup) -> None:
    async with setup.api.session.get(setup.api.base + "/certificates", ssl=setup.api.tls) as resp:
        assert resp.status == 401
