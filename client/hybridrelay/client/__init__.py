"""What apps import: ``from hybridrelay.client import connect``."""

from hybridrelay.client.connection import RelayStream, connect, send_url
from hybridrelay.client.forward import Forwarder, ForwarderStats
from hybridrelay.protocol.sas import SasTokenProvider, TokenProvider

__all__ = [
    "Forwarder",
    "ForwarderStats",
    "RelayStream",
    "SasTokenProvider",
    "TokenProvider",
    "connect",
    "send_url",
]
