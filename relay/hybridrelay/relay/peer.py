"""Who is on the other end of a request: its remote endpoint as the protocol reports it."""

from __future__ import annotations

from aiohttp import web

from hybridrelay.protocol.messages import RemoteEndpoint

__all__ = ["remote_endpoint"]


def remote_endpoint(request: web.Request) -> RemoteEndpoint | None:
    """The sender's address and port for ``remoteEndpoint`` (HC §3.1, §3.2)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return RemoteEndpoint(address=str(peer[0]), port=int(peer[1]))
    return None
