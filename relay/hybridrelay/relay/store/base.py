"""The store of hybrid connections and their SAS rules, as one small Protocol.

The relay asks the store which hybrid connection a path names and which rules
may sign tokens for it. Issue-5 adds SQLite and Redis implementations behind
the same Protocol; nothing else in the relay may assume where the data lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hybridrelay.protocol.codes import MAX_LISTENERS_PER_HC
from hybridrelay.protocol.sas import Rights

__all__ = ["HybridConnection", "Rule", "Store"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A SAS authorization rule on the namespace or on one hybrid connection."""

    name: str
    primary_key: str
    secondary_key: str | None
    rights: Rights

    def __repr__(self) -> str:  # keys never reach a log line
        return f"Rule(name={self.name!r}, rights={self.rights!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class HybridConnection:
    name: str
    requires_client_authorization: bool = True
    http: bool | None = None
    max_listeners: int = MAX_LISTENERS_PER_HC
    request_timeout: float | None = None  # HTTP mode; None: the relay-wide value
    rules: tuple[Rule, ...] = ()
    config_owned: bool = False


class Store(Protocol):
    """Hybrid connections and rules; lookups are case-insensitive (HC §2.1)."""

    async def resolve(self, path: str) -> tuple[HybridConnection, str] | None:
        """Return the longest HC that ``path`` names on a '/' boundary, and the suffix."""
        ...

    async def get(self, name: str) -> HybridConnection | None: ...

    async def create(self, hc: HybridConnection) -> HybridConnection:
        """Create a hybrid connection; returns the existing one when the name is taken."""
        ...

    async def namespace_rules(self) -> tuple[Rule, ...]: ...

    async def close(self) -> None: ...
