"""What apps import: ``from hybridrelay.client import connect``."""

from hybridrelay.client.config import BindingConfig, ForwardConfig, load_forward_config
from hybridrelay.client.connection import RelayStream, connect, send_url
from hybridrelay.client.forward import (
    Forwarder,
    ForwarderStats,
    ForwardService,
    UdpForwarder,
    UdpForwarderStats,
)
from hybridrelay.client.http import RelayHttpClient, http_url, relay_session, request
from hybridrelay.protocol.device_sas import DeviceTokenProvider
from hybridrelay.protocol.sas import SasTokenProvider, TokenProvider

__all__ = [
    "BindingConfig",
    "DeviceTokenProvider",
    "ForwardConfig",
    "ForwardService",
    "Forwarder",
    "ForwarderStats",
    "RelayHttpClient",
    "RelayStream",
    "SasTokenProvider",
    "TokenProvider",
    "UdpForwarder",
    "UdpForwarderStats",
    "connect",
    "http_url",
    "load_forward_config",
    "relay_session",
    "request",
    "send_url",
]
