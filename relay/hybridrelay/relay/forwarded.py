"""Proxy headers the relay sets itself on what it forwards to a listener (HC §2.10, §3.2).

Senders' headers reach the listener in ``requestHeaders`` (HTTP mode) and
``connectHeaders`` (WebSocket senders), and an HTTP target behind the listener agent
often allow-lists by the client address a proxy reports. A sender that writes its own
``X-Forwarded-For: 10.0.0.1`` must not pass for 10.0.0.1, so the relay behaves as
proxies do (nginx ``$proxy_add_x_forwarded_for``, RFC 7239 §4):

- ``X-Forwarded-For`` and ``Forwarded`` keep what the sender sent and get the address
  the relay saw appended, so the last element is always the relay's own observation;
- ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and ``X-Real-IP`` hold one value each,
  which only the relay can know: a sender's copies are replaced.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from aiohttp import web

from hybridrelay.protocol.messages import RemoteEndpoint
from hybridrelay.relay.peer import remote_endpoint

__all__ = ["add_forwarding_headers"]

_APPENDED: Final = ("x-forwarded-for", "forwarded")
_REPLACED: Final = frozenset({"x-forwarded-proto", "x-forwarded-host", "x-real-ip"})
_OURS: Final = _REPLACED | frozenset(_APPENDED)  # every name the relay sets itself
# RFC 7239 §4: a value that is not a token goes in a quoted-string.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _quoted(value: str) -> str:
    if _TOKEN.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _element(peer: str, proto: str, host: str | None) -> str:
    """The relay's own ``Forwarded`` element (RFC 7239 §4)."""
    element = f"for={_node(peer)};proto={proto}"
    return f"{element};host={_quoted(host)}" if host else element


def _node(address: str) -> str:
    # RFC 7239 §6: an IPv6 node is bracketed (and so quoted).
    return _quoted(f"[{address}]" if ":" in address else address)


def add_forwarding_headers(
    headers: dict[str, str],
    request: web.Request,
    endpoint: RemoteEndpoint | Literal[False] | None = False,
) -> dict[str, str]:
    """Return ``headers`` (a sender's, repeated names joined) with the relay's proxy headers.

    Args:
        headers: What would be forwarded, names in the sender's spelling.
        request: The sender's request: its peer address, TLS and ``Host``.
        endpoint: ``remote_endpoint(request)`` when the caller has it already (False:
            read it here).

    Returns:
        A new dict: the sender's ``X-Forwarded-For`` and ``Forwarded`` (any spelling, joined)
        with the peer appended, ``X-Forwarded-Proto``/``-Host``/``X-Real-IP`` the relay's.
    """
    if endpoint is False:
        endpoint = remote_endpoint(request)
    peer = endpoint.address if endpoint is not None else "unknown"
    proto = "https" if request.secure else "http"
    host = request.host
    out: dict[str, str] = {}
    earlier: dict[str, list[str]] | None = None  # the sender's own, by lower-case name
    for name, value in headers.items():
        lowered = name.lower()
        if lowered not in _OURS:  # the usual: one set lookup per header
            out[name] = value
        elif lowered in _APPENDED and value.strip():
            if earlier is None:
                earlier = {appended: [] for appended in _APPENDED}
            earlier[lowered].append(value.strip())
    if earlier is None:
        out["X-Forwarded-For"] = peer
        out["Forwarded"] = _element(peer, proto, host)
    else:
        out["X-Forwarded-For"] = ", ".join([*earlier["x-forwarded-for"], peer])
        out["Forwarded"] = ", ".join([*earlier["forwarded"], _element(peer, proto, host)])
    out["X-Forwarded-Proto"] = proto
    if host:
        out["X-Forwarded-Host"] = host
    out["X-Real-IP"] = peer
    return out
