"""What a listener counts; read by the agent's status endpoint and metrics."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ListenerStats"]


@dataclass
class ListenerStats:
    connects: int = 0  # control channel connections made
    attempts: int = 0  # control channel connection attempts
    accepted: int = 0
    rejected: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    requests: int = 0  # HTTP-mode requests received
    requests_rendezvous: int = 0  # of which rendezvous-only (fetched from a rendezvous socket)
    responses_inline: int = 0  # answered on the control channel
    responses_rendezvous: int = 0  # answered over a rendezvous socket
    request_failures: int = 0  # requests that got no complete response from us
    datagrams_dropped: int = 0  # udp:// targets: datagrams dropped either way (UDP semantics)
