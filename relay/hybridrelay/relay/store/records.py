"""How a write becomes a stored record, the same way in every store.

Server-generated values (etags, generationIds, keys) come from one injected byte
source and times from one injected clock, so tests need no patching (style §3.9).
Continuation tokens are opaque to clients but identical across stores: both list
in byte order of the key (lower-cased name, or the case-sensitive deviceId).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from hybridrelay.errors import ValidationError
from hybridrelay.relay.config import RelayConfig, RuleConfig
from hybridrelay.relay.store.models import (
    MAX_PAGE,
    Authentication,
    ChangeDetail,
    Device,
    HybridConnection,
    Rule,
    SymmetricKey,
    check_hybrid_connection,
)

__all__ = [
    "Clock",
    "Minter",
    "RandomBytes",
    "check_limit",
    "config_hybrid_connections",
    "config_namespace_rules",
    "decode_continuation",
    "device_change_detail",
    "encode_continuation",
    "etag_matches",
    "hc_key",
    "new_device",
    "next_page_token",
    "page_start",
    "replaced_device",
    "same_settings",
    "status_detail",
    "stored_hybrid_connection",
]

RandomBytes = Callable[[int], bytes]
Clock = Callable[[], float]
_CURSOR_PREFIX: Final = "c1."
_CURSOR_BODY: Final = re.compile(r"^[A-Za-z0-9_-]{1,700}$")


class Minter:
    """Makes the server-set values: times, etags, generationIds and SAS keys."""

    __slots__ = ("_now", "_rng")

    def __init__(self, *, now: Clock = time.time, rng: RandomBytes = secrets.token_bytes) -> None:
        self._now = now
        self._rng = rng

    def now(self) -> float:
        # Microseconds, so a time survives the ISO 8601 round trip of the JSON codecs.
        return round(self._now(), 6)

    def etag(self) -> str:
        return base64.urlsafe_b64encode(self._rng(12)).decode("ascii")

    def generation_id(self) -> str:
        # IoT Hub's look: 18 decimal digits.
        return str(int.from_bytes(self._rng(8), "big") % 10**18).zfill(18)

    def key(self) -> str:
        return base64.b64encode(self._rng(32)).decode("ascii")


def hc_key(name: str) -> str:
    """The storage key of a hybrid connection name (names are case-insensitive, HC §2.1)."""
    return name.strip("/").lower()


def etag_matches(current: str, if_match: str) -> bool:
    """Compare an ``If-Match`` value with a stored etag; ``*`` matches anything.

    The HTTP spellings ``"x"`` and ``W/"x"`` are accepted as well as the bare value.
    """
    wanted = if_match.strip()
    if wanted == "*":
        return True
    wanted = wanted.removeprefix("W/").strip('"')
    return secrets.compare_digest(wanted.encode(), current.encode())


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError("limit", f"must be between 1 and {MAX_PAGE}")


def encode_continuation(after: str) -> str:
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(after.encode("utf-8")).decode().rstrip("=")


def decode_continuation(token: str) -> str:
    """Return the key a continuation token resumes after; raises ValidationError."""
    if not token.startswith(_CURSOR_PREFIX):
        raise ValidationError("continuation", "not a continuation token from this relay")
    body = token[len(_CURSOR_PREFIX) :]
    if not _CURSOR_BODY.match(body):
        raise ValidationError("continuation", "not a continuation token from this relay")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise ValidationError("continuation", "not a continuation token from this relay") from exc


def page_start(limit: int, continuation: str | None) -> str:
    """Check a listing's ``limit``; return the key its page starts after ("" = first)."""
    check_limit(limit)
    return decode_continuation(continuation) if continuation is not None else ""


def next_page_token(keys: list[str], limit: int) -> str | None:
    """The continuation after a page read as ``limit + 1`` keys; None on the last page."""
    return encode_continuation(keys[limit - 1]) if len(keys) > limit else None


def same_settings(a: HybridConnection, b: HybridConnection) -> bool:
    """Tell whether two hybrid connections agree on everything but times, etag and rules."""
    return (
        a.name == b.name
        and a.requires_client_authorization == b.requires_client_authorization
        and a.http == b.http
        and a.max_listeners == b.max_listeners
        and a.request_timeout == b.request_timeout
        and a.user_metadata == b.user_metadata
        and a.config_owned == b.config_owned
        and a.status == b.status
    )


def stored_hybrid_connection(
    hc: HybridConnection,
    *,
    existing: HybridConnection | None,
    minter: Minter,
    config_owned: bool = False,
) -> HybridConnection:
    """Validate ``hc`` and stamp it for storage; rules are kept from ``existing``.

    Raises:
        ValidationError: A client-settable field is invalid.
    """
    check_hybrid_connection(hc)
    now = minter.now()
    return replace(
        hc,
        rules=existing.rules if existing is not None else (),
        config_owned=config_owned,
        created_at=existing.created_at if existing is not None else now,
        updated_at=now,
        etag=minter.etag(),
    )


def _generated_keys(minter: Minter) -> SymmetricKey:
    return SymmetricKey(primary_key=minter.key(), secondary_key=minter.key())


def new_device(device: Device, minter: Minter) -> Device:
    """Stamp a device being created: fresh generationId and etag, keys when none given."""
    now = minter.now()
    auth = device.authentication
    if auth.type == "sas" and auth.symmetric_key is None:
        auth = replace(auth, symmetric_key=_generated_keys(minter))
    return replace(
        device,
        generation_id=minter.generation_id(),
        etag=minter.etag(),
        status_update_time=now,
        connection_state="disconnected",
        connection_state_updated_time=None,
        last_activity_time=None,
        authentication=auth,
    )


def replaced_device(current: Device, device: Device, minter: Minter) -> Device:
    """Stamp a replacement: server-set fields come from ``current``, the etag is new.

    A SAS identity replaced without keys keeps its current keys (or gets new ones when
    it was not SAS before).
    """
    auth: Authentication = device.authentication
    if auth.type == "sas" and auth.symmetric_key is None:
        keys = current.authentication.symmetric_key or _generated_keys(minter)
        auth = replace(auth, symmetric_key=keys)
    status_changed = device.status != current.status
    return replace(
        device,
        generation_id=current.generation_id,
        etag=minter.etag(),
        status_update_time=minter.now() if status_changed else current.status_update_time,
        connection_state=current.connection_state,
        connection_state_updated_time=current.connection_state_updated_time,
        last_activity_time=current.last_activity_time,
        authentication=auth,
    )


def status_detail(before: str, after: str) -> ChangeDetail | None:
    """``disabled``/``enabled`` when a status changed (for the change event), else None."""
    if before == after:
        return None
    return "disabled" if after == "disabled" else "enabled"


def device_change_detail(current: Device, record: Device) -> ChangeDetail | None:
    """What replacing ``current`` by ``record`` was: a status change, new keys, or None."""
    status = status_detail(current.status, record.status)
    if status is not None:
        return status
    if current.authentication.symmetric_key != record.authentication.symmetric_key:
        return "keys"
    return None


def _config_rule(rc: RuleConfig) -> Rule:
    return Rule(
        name=rc.name,
        primary_key=rc.key.value,
        secondary_key=rc.secondary_key.value if rc.secondary_key else None,
        rights=rc.rights,
        config_owned=True,
    )


def config_namespace_rules(config: RelayConfig) -> tuple[Rule, ...]:
    """The namespace rules the config owns."""
    return tuple(_config_rule(r) for r in config.rules)


def config_hybrid_connections(config: RelayConfig) -> tuple[HybridConnection, ...]:
    """The hybrid connections the config owns, each with its config-owned rules."""
    return tuple(
        HybridConnection(
            name=hc.name,
            requires_client_authorization=hc.requires_client_authorization,
            http=hc.http,
            max_listeners=hc.max_listeners,
            request_timeout=hc.request_timeout,
            rules=tuple(_config_rule(r) for r in hc.rules),
            config_owned=True,
        )
        for hc in config.hybrid_connections
    )
