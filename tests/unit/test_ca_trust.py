"""ca_trust: verified store CAs join a TLS context at start; deleted ones revoke devices."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.contract.stores import make_config
from tests.harness.device_certs import make_device_ca, make_device_cert

from hybridrelay.relay import ca_trust
from hybridrelay.relay.store.certificates import parse_ca_certificate
from hybridrelay.relay.store.sqlite import SqliteStore


async def test_startup_trust_and_revocation(tmp_path: Path) -> None:
    store = await SqliteStore.open(make_config(), path=tmp_path / "s.sqlite3")
    try:
        ca = make_device_ca(tmp_path)
        unverified = make_device_ca(tmp_path, "other CA")
        device = make_device_cert(tmp_path, "cam-1", ca=ca)
        der = x509.load_pem_x509_certificate(device.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        stored, _ = await store.put_certificate(parse_ca_certificate("fleet", ca.pem.read_text()))
        await store.put_certificate(parse_ca_certificate("other", unverified.pem.read_text()))
        await store.mark_verified("fleet", thumbprint=stored.thumbprint)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trust = ca_trust.attach(context, None)
        assert not await ca_trust.revoked(context, store, der)  # nothing loaded yet
        await trust.refresh(store)
        assert list(trust.loaded) == [stored.thumbprint]  # only the verified one
        assert context.cert_store_stats()["x509_ca"] == 1
        assert not await ca_trust.revoked(context, store, der)
        await store.delete_certificate("fleet")
        assert await ca_trust.revoked(context, store, der)
        # Unrelated certificates (e.g. chained to client_ca_file) are not affected.
        other = make_device_cert(tmp_path, "cam-2", ca=unverified)
        other_der = x509.load_pem_x509_certificate(other.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        assert not await ca_trust.revoked(context, store, other_der)
    finally:
        await store.close()
