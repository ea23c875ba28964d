"""The relay server: aiohttp app speaking the Hybrid Connections protocol."""

from hybridrelay.relay.app import create_app
from hybridrelay.relay.serve import run

__all__ = ["create_app", "run"]
