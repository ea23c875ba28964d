"""Every public module declares __all__, and the names in it exist."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

MODULES = [
    "hybridrelay.errors",
    "hybridrelay.config",
    "hybridrelay.logs",
    "hybridrelay.backoff",
    "hybridrelay.protocol",
    "hybridrelay.protocol.addresses",
    "hybridrelay.protocol.codes",
    "hybridrelay.protocol.frames",
    "hybridrelay.protocol.http_response",
    "hybridrelay.protocol.messages",
    "hybridrelay.protocol.sas",
    "hybridrelay.protocol.device_sas",
    "hybridrelay.wsclient",
    "hybridrelay.ws_send",
    "hybridrelay.ws_receive",
    "hybridrelay.ws_sink",
    "hybridrelay.ws_handshake",
    "hybridrelay.ws_keepalive",
    "hybridrelay.bridge",
    "hybridrelay.datagrams",
    "hybridrelay.datagram_bridge",
    "hybridrelay.dev.children",
    "hybridrelay.dev.cluster",
    "hybridrelay.relay",
    "hybridrelay.relay.config",
    "hybridrelay.relay.splice",
    "hybridrelay.relay.jwt_auth",
    "hybridrelay.relay.rendezvous",
    "hybridrelay.relay.balancer",
    "hybridrelay.relay.cluster.memory",
    "hybridrelay.relay.cluster.redis",
    "hybridrelay.relay.store.last_known",
    "hybridrelay.relay.remote_listeners",
    "hybridrelay.listener",
    "hybridrelay.listener.config",
    "hybridrelay.listener.supervisor",
    "hybridrelay.listener.status",
    "hybridrelay.listener.hooks",
    "hybridrelay.listener.targets",
    "hybridrelay.client",
    "hybridrelay.client.config",
    "hybridrelay.client.forward",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_declared_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported, name
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


def test_apps_import_connect_from_client() -> None:
    from hybridrelay.client import connect

    assert callable(connect)


def test_example_relay_config_loads(tmp_path: Path) -> None:
    from hybridrelay.relay.config import load_relay_config

    # Its TLS files live under /etc/hybridrelay on a real host: stand-ins from the environment.
    env = {"HYBRIDRELAY_TLS_CERT": str(tmp_path / "cert.pem")}
    env["HYBRIDRELAY_TLS_KEY"] = str(tmp_path / "key.pem")
    for name in env.values():
        Path(name).write_text("x")
    config = load_relay_config(Path(__file__).parents[2] / "deploy" / "relay.example.toml", env)
    assert config.relay.public_url == "wss://relay.example.com"
    assert config.hybrid_connections[0].name == "mqtt"
