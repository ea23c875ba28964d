"""The refusals and record edits every store makes the same way, whatever holds the data.

Each store reads the current record (inside its transaction, or before its optimistic
write), asks these functions whether the write may go ahead, and stores what they
return. Keeping them here keeps the answers (404, 409, 412, 400) identical across
SQLite and Redis; ``tests/contract`` runs the same suite over both.
"""

from __future__ import annotations

import json
from dataclasses import replace

from hybridrelay.errors import (
    ConflictError,
    EntityNotFoundError,
    PreconditionFailedError,
    ValidationError,
)
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.store.certificates import CaCertificate
from hybridrelay.relay.store.models import (
    ChangeDetail,
    Device,
    HybridConnection,
    KeyKind,
    Rule,
    check_rule_name,
    validate_device_id,
)
from hybridrelay.relay.store.records import Minter, etag_matches

__all__ = [
    "check_certificate_update",
    "check_device_write",
    "check_hc_delete",
    "check_hc_put",
    "check_key_request",
    "check_rule_request",
    "check_rule_writable",
    "compact_json",
    "is_device_id",
    "put_rule_record",
    "rekeyed_rule",
    "updated_certificate",
]


def compact_json(doc: dict[str, object]) -> str:
    """The JSON text a store keeps: no spaces, keys in the document's order."""
    return json.dumps(doc, separators=(",", ":"))


def is_device_id(device_id: str) -> bool:
    """Tell whether ``device_id`` could name a device (lookups of anything else miss)."""
    try:
        validate_device_id(device_id)
    except ValidationError:
        return False
    return True


def check_hc_put(existing: HybridConnection | None, name: str, if_match: str | None) -> None:
    """Refuse a create-or-replace of hybrid connection ``name`` over ``existing``."""
    if existing is None:
        if if_match is not None:
            raise PreconditionFailedError(f"hybrid connection {name!r} does not exist")
        return
    if existing.config_owned:
        raise ConflictError(f"hybrid connection {existing.name!r} is owned by the config file")
    if if_match is not None and not etag_matches(existing.etag, if_match):
        raise PreconditionFailedError("the etag does not match")


def check_hc_delete(
    existing: HybridConnection | None, name: str, if_match: str | None
) -> HybridConnection:
    """Refuse deleting hybrid connection ``name``; return the record that goes."""
    if existing is None:
        raise EntityNotFoundError(f"hybrid connection {name!r} does not exist")
    if existing.config_owned:
        raise ConflictError(f"hybrid connection {existing.name!r} is owned by the config file")
    if if_match is not None and not etag_matches(existing.etag, if_match):
        raise PreconditionFailedError("the etag does not match")
    return existing


def check_rule_request(name: str, rights: Rights) -> None:
    """Refuse a rule create-or-replace before any read: bad name, no rights."""
    check_rule_name(name)
    if not rights:
        raise ValidationError("rights", "must list at least one of Listen, Send, Manage")


def check_key_request(which: KeyKind, key: str | None) -> None:
    """Refuse a key regeneration before any read: unknown key type, short key."""
    if which not in ("primary", "secondary"):
        raise ValidationError("keyType", "must be primary or secondary")
    if key is not None and len(key) < 16:
        raise ValidationError("key", "must be at least 16 characters")


def check_rule_writable(current: Rule | None, name: str) -> Rule:
    """Refuse changing rule ``name`` when it is missing or config-owned; return it."""
    if current is None:
        raise EntityNotFoundError(f"rule {name!r} does not exist")
    if current.config_owned:
        raise ConflictError(f"rule {current.name!r} is owned by the config file")
    return current


def put_rule_record(current: Rule | None, name: str, rights: Rights, minter: Minter) -> Rule:
    """The rule a create-or-replace stores: new keys for a new rule, kept keys otherwise."""
    if current is None:
        return Rule(name=name, primary_key=minter.key(), secondary_key=minter.key(), rights=rights)
    if current.config_owned:
        raise ConflictError(f"rule {current.name!r} is owned by the config file")
    return replace(current, name=name, rights=rights)


def rekeyed_rule(current: Rule, which: KeyKind, key: str | None, minter: Minter) -> Rule:
    """``current`` with its ``which`` key set to ``key`` (or a fresh one)."""
    fresh = key if key is not None else minter.key()
    if which == "primary":
        return replace(current, primary_key=fresh)
    return replace(current, secondary_key=fresh)


def check_device_write(current: Device | None, device_id: str, if_match: str) -> Device:
    """Refuse replacing or deleting device ``device_id``; return its current record."""
    if current is None:
        raise EntityNotFoundError(f"device {device_id!r} does not exist")
    if not etag_matches(current.etag, if_match):
        raise PreconditionFailedError("the etag does not match")
    return current


def check_certificate_update(
    current: CaCertificate | None, name: str, thumbprint: str | None
) -> CaCertificate:
    """Refuse updating certificate ``name`` when missing or replaced since ``thumbprint``."""
    if current is None:
        raise EntityNotFoundError(f"certificate {name!r} does not exist")
    if thumbprint is not None and current.thumbprint != thumbprint:
        raise PreconditionFailedError("the certificate was replaced meanwhile")
    return current


def updated_certificate(
    current: CaCertificate, minter: Minter, *, verification_code: str | None
) -> tuple[CaCertificate, ChangeDetail]:
    """``current`` verified (no code) or with a new verification code; the event detail."""
    if verification_code is None:
        return replace(current, etag=minter.etag(), is_verified=True), "verified"
    return (
        replace(current, etag=minter.etag(), verification_code=verification_code),
        "verificationCode",
    )
