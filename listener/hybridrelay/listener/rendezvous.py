"""The listener's rendezvous dials: where it may dial (HC §2.4, §2.6) and how.

:class:`RendezvousHosts` decides whether an address the relay hands out may be dialled
at all; :class:`Dialer` dials one for an accept, a reject or a request, with the
listener's TLS settings, timeouts and message size limit.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from hybridrelay.protocol.addresses import reject_uri
from hybridrelay.wsclient import WsConnection, ws_connect

__all__ = ["Dialer", "RendezvousHosts"]


class RendezvousHosts:
    """Where a listener may dial the rendezvous addresses its relay hands out (HC §2.4, §2.6).

    The relay's ``public_url`` decides the address, and a listener dials it without a
    second thought in the SDKs; a compromised relay (or one that was configured wrong)
    would aim the listener at any host on its network. Only the hosts of the relay URLs
    the listener was given pass (``localhost``, ``127.0.0.1`` and ``::1`` count as one),
    plus the configured extra names (``*.example.com``: any name under example.com),
    compared without case; ports are not compared (relay nodes behind one name differ in
    port, see deploy/compose). A wss:// relay's addresses must be wss:// as well.
    """

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, relays: Sequence[str], extra: Sequence[str] = ()) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        for relay in relays:
            host = _host_of(relay)
            if host in _LOCALHOST:
                # "localhost" is the loopback address a relay's default public_url names
                # (ws://127.0.0.1:port); the rest of 127/8 is another host.
                exact.update(_LOCALHOST)
            elif host:
                exact.add(host)
        for item in extra:
            name = item.strip().lower().rstrip(".")
            if name.startswith("*."):
                suffixes.append(name[1:])  # ".example.com"
            elif name:
                exact.add(name.strip("[]"))
        self._exact = frozenset(exact)
        self._suffixes = tuple(suffixes)

    def refusal(self, address: str, relay: str) -> str | None:
        """Why ``address`` must not be dialled for the relay at ``relay``, or None."""
        try:
            parts = urlsplit(address)
            _ = parts.port
        except ValueError:
            return "not a URL"
        scheme = parts.scheme.lower()
        if scheme not in ("ws", "wss"):
            return f"scheme {scheme[:10]!r} is not ws or wss"
        if scheme == "ws" and _scheme_of(relay) == "wss":
            return "ws:// address from a wss:// relay (a TLS downgrade)"
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return "no host"
        if host in self._exact or any(host.endswith(suffix) for suffix in self._suffixes):
            return None
        return f"host {host[:100]!r} is neither the relay's nor in rendezvous_hosts"


_LOCALHOST: Final = frozenset({"localhost", "127.0.0.1", "::1"})


@functools.lru_cache(maxsize=16)
def _scheme_of(relay: str) -> str:
    # The listener's own relay URLs (a handful): parsed once, not on every accept.
    try:
        return urlsplit(relay).scheme.lower()
    except ValueError:
        return ""


def _host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""


@dataclass(frozen=True, slots=True)
class Dialer:
    """Dials the relay's rendezvous addresses; the address is the credential (HC §2.4)."""

    ssl: ssl.SSLContext | None
    connect_timeout: float
    ping_interval: float
    max_message_size: int | None

    async def accept(self, address: str, subprotocol: str | None, *, stream: bool) -> WsConnection:
        """Accept a sender's connection: the rendezvous socket that carries its stream."""
        return await ws_connect(
            address,
            subprotocols=(subprotocol,) if subprotocol else (),
            ssl=self.ssl,
            open_timeout=self.connect_timeout,
            # A relay that vanishes without closing (half-open) must not pin the target
            # connection forever: the relay answers pings per hop (splice.py).
            ping_interval=self.ping_interval,
            auto_close_echo=not stream,
            max_size=self.max_message_size,
        )

    async def reject(self, address: str, status: int, description: str) -> WsConnection:
        """Reject a sender's connection (HC §2.5); the relay answers the dial with 410
        (a HandshakeError) once the rejection is delivered."""
        return await ws_connect(
            reject_uri(address, status, description),
            ssl=self.ssl,
            open_timeout=self.connect_timeout,
        )

    async def request(self, address: str) -> WsConnection:
        """The rendezvous socket of one HTTP-mode request (HC §2.6): no token on this dial."""
        return await ws_connect(
            address,
            ssl=self.ssl,
            open_timeout=self.connect_timeout,
            max_size=self.max_message_size,
        )
