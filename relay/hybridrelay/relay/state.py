"""RelayState: the relay's configuration, clock and the services every handler reads.

Live state has owners of its own, each under its own typed key built in ``app.py``:
the token cache (``auth.TOKENS``), the device registry (``devices.DEVICES``), CA trust
(``ca_trust.CA_TRUST``), the event hub (``mgmt.events.EVENTS``), the listener registry
(``listeners.LISTENERS``), the splices (``splices.SPLICES``), pending work
(``pending.PENDING``) and whether the node takes new work (``lifecycle.LIFECYCLE``).
This module imports only leaves (config, store, cluster, metrics), so that any module
may import it without closing an import cycle.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from hybridrelay.relay.cluster.base import ClusterState
from hybridrelay.relay.config import RelayConfig, RelaySettings
from hybridrelay.relay.metrics import RelayMetrics
from hybridrelay.relay.splice import SpliceSettings
from hybridrelay.relay.store.base import Store

__all__ = ["HC_NAME", "STATE", "RelayState"]


@dataclass(eq=False)
class RelayState:
    config: RelayConfig
    store: Store
    cluster: ClusterState
    metrics: RelayMetrics
    now: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    # token_hosts, worked out once per (public_url, public_hosts): it is read per handshake.
    _token_hosts: tuple[tuple[str, tuple[str, ...]], frozenset[str]] | None = field(
        default=None, repr=False
    )
    # via, worked out once per public_url: it is written into every HTTP-mode response.
    _via: tuple[str, str] | None = field(default=None, repr=False)
    # splice_settings, made once per [relay] section and metrics: every splice shares it.
    _splice_settings: tuple[RelaySettings, RelayMetrics, SpliceSettings] | None = field(
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

    @property
    def via(self) -> str:
        """This relay's ``Via`` entry (``1.1 {via_name}``), parsed once per public URL."""
        url = self.public_url
        if self._via is None or self._via[0] != url:
            self._via = (url, f"1.1 {self.via_name}")
        return self._via[1]

    @property
    def splice_settings(self) -> SpliceSettings:
        """What every splice is made with, from ``[relay]``: one object they all share."""
        relay, metrics, cached = self.config.relay, self.metrics, self._splice_settings
        if cached is None or cached[0] is not relay or cached[1] is not metrics:
            settings = SpliceSettings(
                close_timeout=relay.close_timeout,
                max_queued_control=relay.max_queued_control_frames,
                write_buffer=relay.stream_buffer_size,
                limit_hit=metrics.limit_hit,
            )
            self._splice_settings = cached = (relay, metrics, settings)
        return cached[2]


STATE: Final = web.AppKey("hybridrelay_state", RelayState)
# The existing hybrid connection a request was found to address: its refusals are counted
# under that name (RelayMetrics.rejected). Never set for a name that is not an entity.
HC_NAME: Final = web.RequestKey("hybridrelay_hc_name", str)
