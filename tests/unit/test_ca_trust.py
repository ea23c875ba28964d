"""ca_trust: verified store CAs join a TLS context; which chain anchors vouch for CA devices."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.contract.stores import make_config
from tests.harness.device_certs import as_ca, make_device_ca, make_device_cert, write_bundle

from hybridrelay.relay import ca_trust
from hybridrelay.relay.store.certificates import parse_ca_certificate
from hybridrelay.relay.store.models import Authentication, Device, X509Thumbprint
from hybridrelay.relay.store.sqlite import SqliteStore


def der_of(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


async def test_startup_trust_and_revocation(tmp_path: Path) -> None:
    store = await SqliteStore.open(make_config(), path=tmp_path / "s.sqlite3")
    try:
        ca = make_device_ca(tmp_path)
        unverified = make_device_ca(tmp_path, "other CA")
        chain = (der_of(make_device_cert(tmp_path, "cam-1", ca=ca).cert), der_of(ca.pem))
        stored, _ = await store.put_certificate(parse_ca_certificate("fleet", ca.pem.read_text()))
        await store.put_certificate(parse_ca_certificate("other", unverified.pem.read_text()))
        await store.mark_verified("fleet", thumbprint=stored.thumbprint)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trust = ca_trust.attach(context, None)
        assert not await trust.anchored(context, store, chain)  # nothing loaded yet
        await trust.refresh(store)
        assert list(trust.loaded) == [stored.thumbprint]  # only the verified one
        assert context.cert_store_stats()["x509_ca"] == 1
        assert await trust.anchored(context, store, chain)
        await store.delete_certificate("fleet")
        assert not await trust.anchored(context, store, chain)
        # Never a CA the relay did not load, and never a chain of one (its own anchor).
        other = make_device_cert(tmp_path, "cam-2", ca=unverified)
        assert not await trust.anchored(
            context, store, (der_of(other.cert), der_of(unverified.pem))
        )
        assert not await trust.anchored(context, store, chain[:1])
        assert not await trust.anchored(None, store, chain)
    finally:
        await store.close()


async def test_client_ca_file_anchors_are_cas_and_no_devices(tmp_path: Path) -> None:
    """A listed CA vouches for CA devices; a listed thumbprint device's certificate never does."""
    store = await SqliteStore.open(make_config(), path=tmp_path / "s.sqlite3")
    try:
        ca = make_device_ca(tmp_path, "fleet CA")
        thermostat = make_device_cert(tmp_path, "therm-9", ca_capable=True)  # CA:TRUE
        plain = make_device_cert(tmp_path, "therm-7")  # CA:FALSE, not a device here
        bundle = write_bundle(tmp_path / "bundle.pem", ca.pem, thermostat.cert, plain.cert)
        prints = X509Thumbprint(primary_thumbprint=thermostat.sha256)
        await store.create_device(
            Device(
                device_id="therm-9",
                authentication=Authentication(type="selfSigned", x509_thumbprint=prints),
            )
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trust = ca_trust.attach(context, str(bundle))
        genuine = make_device_cert(tmp_path, "cam-1", ca=ca)
        forged = make_device_cert(tmp_path, "cam-1", ca=as_ca(thermostat), file_stem="forged")
        assert await trust.anchored(context, store, (der_of(genuine.cert), der_of(ca.pem)))
        forged_chain = (der_of(forged.cert), der_of(thermostat.cert))
        assert not await trust.anchored(context, store, forged_chain)
        # Not a CA at all: never an anchor, registered device or not.
        assert not await trust.anchored(context, store, (der_of(genuine.cert), der_of(plain.cert)))
    finally:
        await store.close()
