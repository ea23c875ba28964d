"""What apps import: ``from hybridrelay.client import connect``."""

from hybridrelay.client.connection import RelayStream, connect, send_url
from hybridrelay.client.forward import Forwarder, ForwarderStats
from hybridrelay.client.http import RelayHttpClient, http_url, relay_session, request
from hybridrelay.protocol.sas import SasTokenProvider, TokenProvider

__all__ = [
    "Forwarder",
    "ForwarderStats",
    "RelayHttpClient",
    "RelayStream",
    "SasTokenProvider",
    "TokenProvider",
    "connect",
    "http_url",
    "relay_session",
    "request",
    "send_url",
]
