"""The Store contract for CA certificate records, against SQLite and real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.contract.stores import StoreFactory
from tests.harness.device_certs import make_device_ca, make_device_cert

from hybridrelay.errors import EntityNotFoundError, PreconditionFailedError, ValidationError
from hybridrelay.relay.store.certificates import CaCertificate, parse_ca_certificate
from hybridrelay.relay.store.models import ChangeEvent


def _ca(directory: Path, name: str, label: str = "device CA") -> CaCertificate:
    ca = make_device_ca(directory, label)
    return parse_ca_certificate(name, ca.pem.read_text())


async def test_put_get_list_delete(open_store: StoreFactory, tmp_path: Path) -> None:
    store = await open_store()
    events: list[ChangeEvent] = []
    store.subscribe(events.append)
    record = _ca(tmp_path, "fleet-ca")
    stored, created = await store.put_certificate(record)
    assert created
    assert stored.etag
    assert stored.created is not None
    assert not stored.is_verified
    assert stored.verification_code is None
    assert stored.thumbprint == record.thumbprint
    assert len(stored.thumbprint) == 64
    assert await store.get_certificate("fleet-ca") == stored
    assert await store.get_certificate("nope") is None
    other, _ = await store.put_certificate(_ca(tmp_path, "a-ca", "other CA"))
    assert [c.name for c in await store.list_certificates()] == ["a-ca", "fleet-ca"]
    assert await store.delete_certificate("a-ca") == other
    with pytest.raises(EntityNotFoundError):
        await store.delete_certificate("a-ca")
    assert [c.name for c in await store.list_certificates()] == ["fleet-ca"]
    await asyncio.sleep(0.05)  # SQLite publishes through the loop
    assert [(e.kind, e.op, e.name) for e in events] == [
        ("certificate", "created", "fleet-ca"),
        ("certificate", "created", "a-ca"),
        ("certificate", "deleted", "a-ca"),
    ]


async def test_verification_code_and_mark_verified(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    store = await open_store()
    stored, _ = await store.put_certificate(_ca(tmp_path, "fleet-ca"))
    coded = await store.set_verification_code("fleet-ca", "ABC123")
    assert coded.verification_code == "ABC123"
    assert coded.etag != stored.etag
    with pytest.raises(PreconditionFailedError):
        await store.mark_verified("fleet-ca", thumbprint="00" * 32)
    verified = await store.mark_verified("fleet-ca", thumbprint=stored.thumbprint)
    assert verified.is_verified
    # Re-uploading the same certificate keeps the verification, another one resets it.
    same, created = await store.put_certificate(parse_ca_certificate("fleet-ca", stored.pem))
    assert not created
    assert same.is_verified
    assert same.created == stored.created
    replaced, _ = await store.put_certificate(_ca(tmp_path, "fleet-ca", "new CA"))
    assert not replaced.is_verified
    assert replaced.verification_code is None
    with pytest.raises(EntityNotFoundError):
        await store.set_verification_code("missing", "x")
    with pytest.raises(EntityNotFoundError):
        await store.mark_verified("missing", thumbprint="x")


async def test_certificates_survive_a_reopen(open_store: StoreFactory, tmp_path: Path) -> None:
    store = await open_store()
    stored, _ = await store.put_certificate(_ca(tmp_path, "fleet-ca"))
    verified = await store.mark_verified("fleet-ca", thumbprint=stored.thumbprint)
    await store.close()
    again = await open_store()
    assert await again.get_certificate("fleet-ca") == verified


def test_only_ca_certificates_are_accepted(tmp_path: Path) -> None:
    leaf = make_device_cert(tmp_path, "cam-1")
    with pytest.raises(ValidationError):
        parse_ca_certificate("leaf", leaf.cert.read_text())
    with pytest.raises(ValidationError):
        parse_ca_certificate("junk", "not a pem")
    ca = make_device_ca(tmp_path)
    with pytest.raises(ValidationError):
        parse_ca_certificate("bad name/", ca.pem.read_text())
