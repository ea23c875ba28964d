"""A thumbprint device impersonating CA devices over mutual TLS (issue 11).

Python's ``ssl`` cannot accept an unknown self-signed client certificate, so a thumbprint
device's certificate sits in ``client_ca_file`` and, with partial-chain verification, is
a trust anchor. Made with ``openssl req -x509`` (CA:TRUE by default), it can sign a leaf
with any CN, and a CA-authenticated device used to be accepted on "not self-issued"
alone: the thumbprint device's owner could listen and send as every CA device. A CA
device's chain must now end at a registered, verified CA or at a ``client_ca_file`` CA
certificate that is no device's; thumbprint devices match by exact thumbprint only.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest

from hybridrelay.relay.store.models import Authentication, Device, Grants, X509Thumbprint
from tests.conftest import RelayFactory
from tests.harness.device_certs import (
    DeviceCert,
    as_ca,
    make_device_ca,
    make_device_cert,
    write_bundle,
)
from tests.harness.raw_http import exchange, upgrade_request
from tests.harness.relay import InProcessRelay
from tests.harness.tls import TlsFiles


@dataclass
class Pki:
    tls: TlsFiles
    camera: DeviceCert  # cam-1: a CA device, its certificate signed by the fleet CA
    thermostat: DeviceCert  # therm-9: a thumbprint device, self-signed with CA:TRUE
    forged: DeviceCert  # CN=cam-1, signed with therm-9's key: the attack
    forged_by_second: DeviceCert  # CN=cam-1, signed by therm-2's listed certificate
    bundle: Path

    def context(self, cert: DeviceCert) -> ssl.SSLContext:
        return cert.client_context(self.tls.ca_cert)


@pytest.fixture
def pki(tls_files: TlsFiles, tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    fleet = make_device_ca(directory, "fleet CA")
    thermostat = make_device_cert(directory, "therm-9", ca_capable=True)
    # therm-2's certificate in client_ca_file is an old one (its registered thumbprint
    # has moved on): still a trust anchor to OpenSSL, and still a device's certificate.
    second = make_device_cert(directory, "therm-2", ca_capable=True)
    return Pki(
        tls=tls_files,
        camera=make_device_cert(directory, "cam-1", ca=fleet),
        thermostat=thermostat,
        forged=make_device_cert(directory, "cam-1", ca=as_ca(thermostat), file_stem="forged"),
        forged_by_second=make_device_cert(
            directory, "cam-1", ca=as_ca(second), file_stem="forged2"
        ),
        bundle=write_bundle(directory / "devices.pem", fleet.pem, thermostat.cert, second.cert),
    )


@pytest.fixture
async def relay(relay_factory: RelayFactory, pki: Pki) -> InProcessRelay:
    relay = await relay_factory(
        tls=pki.tls,
        relay_extra=f'client_cert = "optional"\nclient_ca_file = "{pki.bundle}"',
    )
    store = relay.state.store
    await store.create_device(
        Device(
            device_id="cam-1",
            authentication=Authentication(type="certificateAuthority"),
            grants=Grants(listen=("echo",), send=("echo",)),
        )
    )
    for device_id, cert in (("therm-9", pki.thermostat), ("therm-2", None)):
        prints = X509Thumbprint(primary_thumbprint=cert.sha256 if cert else "00" * 32)
        await store.create_device(
            Device(
                device_id=device_id,
                authentication=Authentication(type="selfSigned", x509_thumbprint=prints),
                grants=Grants(send=("echo",)),
            )
        )
    return relay


async def upgrade_status(relay: InProcessRelay, action: str, context: ssl.SSLContext) -> int:
    target = f"/$hc/echo?sb-hc-action={action}"
    request = upgrade_request(target, relay.url.split("://", 1)[1])
    return (await exchange(relay.url, request, ssl_context=context)).status


@pytest.mark.parametrize("action", ["listen", "connect"])
async def test_a_leaf_signed_by_a_thumbprint_device_is_not_a_ca_device(
    relay: InProcessRelay, pki: Pki, action: str
) -> None:
    """therm-9's owner presents a CN=cam-1 leaf signed with therm-9's key: 401, never cam-1."""
    assert await upgrade_status(relay, action, pki.context(pki.forged)) == 401
    assert await upgrade_status(relay, action, pki.context(pki.forged_by_second)) == 401


async def test_genuine_devices_still_authenticate(relay: InProcessRelay, pki: Pki) -> None:
    """cam-1 with its fleet-CA certificate listens; therm-9 with its own certificate sends."""
    assert await upgrade_status(relay, "listen", pki.context(pki.camera)) == 101
    # therm-9 is a sender only; no listener is connected, so the connect ends in 404
    # after authentication (a refused certificate would be 401).
    assert await upgrade_status(relay, "connect", pki.context(pki.thermostat)) == 404
