"""RelayState: what the handlers share, held in the aiohttp app under one typed key."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from aiohttp import web

from hybridrelay.relay.admission import PendingShare
from hybridrelay.relay.auth import TokenCache
from hybridrelay.relay.cluster.base import ClusterState
from hybridrelay.relay.config import RelayConfig, RelaySettings
from hybridrelay.relay.control import ControlChannel
from hybridrelay.relay.metrics import RelayMetrics
from hybridrelay.relay.pending import PendingConnect, PendingRequest
from hybridrelay.relay.splice import Splice
from hybridrelay.relay.store.base import Store

if TYPE_CHECKING:
    from hybridrelay.relay.mgmt.events import EventHub

__all__ = ["HC_NAME", "STATE", "RelayState"]


def _event_hub() -> EventHub:
    # Imported late: the management package imports this module.
    from hybridrelay.relay.mgmt.events import EventHub

    return EventHub()


@dataclass(eq=False)
class RelayState:
    config: RelayConfig
    store: Store
    cluster: ClusterState
    metrics: RelayMetrics
    now: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    channels: set[ControlChannel] = field(default_factory=set)
    splices: set[Splice] = field(default_factory=set)
    http_requests: dict[str, PendingRequest] = field(default_factory=dict)
    waiting: set[PendingConnect] = field(default_factory=set)  # senders awaiting a dial
    # Pending work per hybrid connection (max_pending_per_hc): HTTP requests and senders.
    pending_share: PendingShare = field(
        default_factory=lambda: PendingShare(RelaySettings().max_pending_per_hc)
    )
    tokens: TokenCache = field(default_factory=TokenCache)
    draining: bool = False
    # Set once the process is shutting down (SIGTERM, app shutdown): an undrain request
    # (POST /nodes/{id}/undrain) then changes nothing, so a stopping node stays closed.
    stopping: bool = False
    # Where /metrics is served when [relay] metrics_listen moves it off the public port.
    metrics_address: tuple[str, int] | None = None
    events: EventHub = field(default_factory=_event_hub)
    # token_hosts, worked out once per (public_url, public_hosts): it is read per handshake.
    _token_hosts: tuple[tuple[str, tuple[str, ...]], frozenset[str]] | None = field(
        default=None, repr=False
    )

    @property
    def public_url(self) -> str:
        return self.config.relay.public_url

    @property
    def rendezvous_url(self) -> str:
        """Where listeners dial this process's rendezvous: a worker's own port, else public_url.

        Several workers share the public port and the kernel picks one per connection, so
        a rendezvous dialled there would reach the worker that holds its sender only by
        chance; each worker's own port always reaches it.
        """
        relay = self.config.relay
        return relay.rendezvous_url or relay.public_url

    @property
    def token_hosts(self) -> frozenset[str] | None:
        """The hosts a token may name with ``check_token_host`` on (else None: unchecked).

        The relay's own public names, from its configuration: ``public_url``'s host and
        ``public_hosts``. Never the request's ``Host`` header, which the sender chooses.
        """
        relay = self.config.relay
        if not relay.check_token_host:
            return None
        key = (relay.public_url, relay.public_hosts)
        if self._token_hosts is None or self._token_hosts[0] != key:
            names = {urlsplit(relay.public_url).hostname, *relay.public_hosts}
            self._token_hosts = (key, frozenset(n.lower() for n in names if n))
        return self._token_hosts[1]

    @property
    def via_name(self) -> str:
        """How this relay names itself in ``Via``: its public host, never a sender's Host."""
        return urlsplit(self.public_url).hostname or "hybridrelay"


STATE: Final = web.AppKey("hybridrelay_state", RelayState)
# The existing hybrid connection a request was found to address: its refusals are counted
# under that name (RelayMetrics.rejected). Never set for a name that is not an entity.
HC_NAME: Final = web.RequestKey("hybridrelay_hc_name", str)
