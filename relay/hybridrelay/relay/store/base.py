"""The store of hybrid connections, SAS rules and device identities, as one Protocol.

The relay asks the store which hybrid connection a path names and which rules may
sign tokens for it (the hot path, :class:`LookupStore`); the management API creates,
replaces, lists and deletes what the store holds (:class:`Store`). Two
implementations share one contract suite (``tests/contract``): ``SqliteStore``
(the embedded default, one file under the data dir) and ``RedisStore`` (for several
relay nodes). Nothing else in the relay may assume where the data lives.

Config-owned hybrid connections and rules are imported when a store opens; the
config wins on every start, and the API can neither change nor delete them
(:class:`~hybridrelay.errors.ConflictError`). What the API creates persists.

Errors (``hybridrelay.errors``): ``ValidationError`` (400) for invalid input,
``EntityNotFoundError`` (404), ``ConflictError`` (409: exists already, config-owned),
``PreconditionFailedError`` (412: ``If-Match`` names another etag) and
``QuotaExceededError`` (more than 12 rules in a scope).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.config import RelayConfig
from hybridrelay.relay.store.certificates import CaCertificate
from hybridrelay.relay.store.device_query import DEFAULT_SCAN_LIMIT, DeviceQuery
from hybridrelay.relay.store.models import (
    ChangeEvent,
    Device,
    HybridConnection,
    KeyKind,
    Page,
    Rule,
)

__all__ = ["ChangeCallback", "HybridConnection", "LookupStore", "Rule", "Store"]

ChangeCallback = Callable[[ChangeEvent], None]


class LookupStore(Protocol):
    """The relay's hot path: lookups are case-insensitive (HC §2.1) and cheap."""

    async def resolve(self, path: str) -> tuple[HybridConnection, str] | None:
        """Return the longest HC that ``path`` names on a '/' boundary, and the suffix."""
        ...

    async def get(self, name: str) -> HybridConnection | None:
        """Return a hybrid connection with all its rules, or None."""
        ...

    async def create(self, hc: HybridConnection) -> HybridConnection:
        """Create a hybrid connection; returns the existing one when the name is taken."""
        ...

    async def namespace_rules(self) -> tuple[Rule, ...]: ...

    async def close(self) -> None: ...


class Store(LookupStore, Protocol):
    """Everything the management API needs, on top of the hot path."""

    async def import_config(self, config: RelayConfig) -> None:
        """Make the config's hybrid connections and rules the config-owned ones.

        Changed entries are overwritten, config-owned entries no longer in the config
        are deleted, and API-created entries are left alone. A store calls this when it
        opens; calling it again (a config reload) is safe.
        """
        ...

    # --- hybrid connections ---

    async def put_hybrid_connection(
        self, hc: HybridConnection, *, if_match: str | None = None
    ) -> tuple[HybridConnection, bool]:
        """Create or replace a hybrid connection's settings; its rules are kept.

        ``hc.rules``, ``config_owned``, times and etag are ignored. ``if_match`` None
        writes unconditionally; ``"*"`` requires an existing entity; an etag requires
        that exact version.

        Returns:
            The stored hybrid connection and whether it was created.

        Raises:
            ValidationError, ConflictError (config-owned), PreconditionFailedError.
        """
        ...

    async def delete_hybrid_connection(
        self, name: str, *, if_match: str | None = None
    ) -> HybridConnection:
        """Delete a hybrid connection and its rules; returns what was deleted.

        Raises:
            EntityNotFoundError, ConflictError (config-owned), PreconditionFailedError.
        """
        ...

    async def list_hybrid_connections(
        self, *, limit: int = 100, continuation: str | None = None
    ) -> Page[HybridConnection]:
        """One page (1 to 1,000) in order of the lower-cased name.

        Raises:
            ValidationError: A bad limit or continuation token.
        """
        ...

    # --- rules; scope None is the namespace, else a hybrid connection name ---

    async def list_rules(self, scope: str | None) -> tuple[Rule, ...]:
        """The scope's rules in order of the lower-cased name.

        Raises:
            EntityNotFoundError: ``scope`` names no hybrid connection.
        """
        ...

    async def put_rule(self, scope: str | None, name: str, rights: Rights) -> tuple[Rule, bool]:
        """Create a rule with two fresh keys, or change an existing rule's rights.

        Returns:
            The stored rule and whether it was created.

        Raises:
            ValidationError, EntityNotFoundError, ConflictError (config-owned),
            QuotaExceededError (a 13th rule in the scope).
        """
        ...

    async def delete_rule(self, scope: str | None, name: str) -> Rule:
        """Delete a rule; returns what was deleted.

        Raises:
            EntityNotFoundError, ConflictError (config-owned).
        """
        ...

    async def regenerate_key(
        self, scope: str | None, name: str, which: KeyKind, *, key: str | None = None
    ) -> Rule:
        """Replace the primary or secondary key (with ``key``, else a fresh one).

        Tokens signed with the old key fail as soon as this returns (on this node; on
        the others once they see the change event).

        Raises:
            ValidationError (a key under 16 characters), EntityNotFoundError,
            ConflictError (config-owned).
        """
        ...

    # --- devices ---

    async def get_device(self, device_id: str) -> Device | None: ...

    async def create_device(self, device: Device) -> Device:
        """Create an identity with a new generationId and etag (SAS keys when none given).

        Raises:
            ConflictError: The deviceId exists.
        """
        ...

    async def replace_device(self, device: Device, *, if_match: str) -> Device:
        """Replace an identity's settable fields (status, reason, authentication, grants).

        Raises:
            EntityNotFoundError, PreconditionFailedError (``if_match`` is neither ``"*"``
            nor the current etag).
        """
        ...

    async def delete_device(self, device_id: str, *, if_match: str) -> Device:
        """Delete an identity; returns what was deleted.

        Raises:
            EntityNotFoundError, PreconditionFailedError.
        """
        ...

    async def list_devices(
        self,
        *,
        limit: int = 1000,
        continuation: str | None = None,
        query: DeviceQuery | None = None,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
    ) -> Page[Device]:
        """One page (1 to 1,000) in byte order of the deviceId.

        A device that exists for the whole walk is seen exactly once. With a ``query``
        only matching devices are listed, and a page examines at most ``scan_limit``
        devices: it may be short, even empty, and still have a continuation
        (``device_query.py``).

        Raises:
            ValidationError: A bad limit or continuation token.
        """
        ...

    async def set_connection_state(self, device_id: str, connected: bool, now: float) -> None:
        """Record connectionState and its time (not a write: the etag stays); unknown ids: no-op."""
        ...

    async def touch_activity(self, device_id: str, now: float) -> None:
        """Record lastActivityTime (about 1 s resolution, cheap); unknown ids are ignored."""
        ...

    # --- CA certificates (store/certificates.py) ---

    async def put_certificate(self, cert: CaCertificate) -> tuple[CaCertificate, bool]:
        """Create or replace a CA certificate; a replaced one is unverified again.

        ``is_verified``, ``verification_code``, ``etag`` and ``created`` are server-set.

        Returns:
            The stored record and whether it was created.
        """
        ...

    async def get_certificate(self, name: str) -> CaCertificate | None: ...

    async def list_certificates(self) -> tuple[CaCertificate, ...]:
        """Every CA certificate, in order of the name."""
        ...

    async def delete_certificate(self, name: str) -> CaCertificate:
        """Delete a CA certificate; returns what was deleted. Raises EntityNotFoundError."""
        ...

    async def set_verification_code(self, name: str, code: str) -> CaCertificate:
        """Store a fresh proof-of-possession code. Raises EntityNotFoundError."""
        ...

    async def mark_verified(self, name: str, *, thumbprint: str) -> CaCertificate:
        """Mark the certificate verified if it still has ``thumbprint``.

        Raises:
            EntityNotFoundError, PreconditionFailedError (the certificate was replaced).
        """
        ...

    # --- change events ---

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback`` on the event loop for every change, from any node.

        The callback must not block or raise. Returns a function that unsubscribes.
        """
        ...
