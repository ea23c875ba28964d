"""Accept hooks: inspect each incoming connection and accept or reject it.

A hook is any callable ``hook(request) -> Reject | None`` (sync or async). It
sees the hybrid connection, the sender's ``connectHeaders`` and its remote
endpoint; returning :class:`Reject` makes the listener dial the rejection
address, so the sender's handshake fails with that status (HC §2.5).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from hybridrelay.protocol.messages import RemoteEndpoint

__all__ = ["AcceptHook", "AcceptRequest", "HeaderAllowList", "Reject"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptRequest:
    hc: str
    id: str
    headers: Mapping[str, str]  # lower-cased names
    remote: RemoteEndpoint | None
    subprotocols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reject:
    status: int = 400
    description: str = "Rejected by user code"


AcceptHook = Callable[[AcceptRequest], "Reject | Awaitable[Reject | None] | None"]


class HeaderAllowList:
    """Accept only senders whose header ``name`` has one of ``values`` (else 403)."""

    def __init__(self, name: str, values: set[str]) -> None:
        self._name = name.lower()
        self._values = values

    def __call__(self, request: AcceptRequest) -> Reject | None:
        if request.headers.get(self._name) in self._values:
            return None
        return Reject(403, f"header {self._name} not allowed")
