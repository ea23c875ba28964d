"""Devices in the agent's ``[[mappings]]`` and the forwarder's ``[[bindings]]`` (issue 12):
``device_id`` with one of ``device_key``, ``device_key_file``, ``device_key_env``.
(Refusals are cases under config/agent_invalid/ and config/forward_invalid/.)
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

from hybridrelay.client.config import load_forward_config
from hybridrelay.config import Secret
from hybridrelay.listener.config import load_agent_config
from hybridrelay.protocol.device_sas import DeviceTokenProvider
from hybridrelay.protocol.sas import SasTokenProvider, parse_device_token

KEY = base64.b64encode(b"device-key-0123456789abcdef-0123").decode()
OTHER = base64.b64encode(b"other-key-0123456789abcdef-01234").decode()
NOW = 1_700_000_000


def test_agent_mapping_signs_as_the_device_with_a_key_file_beside_the_config(
    tmp_path: Path,
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "gw-1.key").write_text(KEY + "\n", "utf-8")
    path = tmp_path / "agent.toml"
    path.write_text(
        'relay = "ws://127.0.0.1:8080"\n'
        '[[mappings]]\nhc = "mqtt"\ntarget = "tcp://127.0.0.1:1883"\n'
        'device_id = "gw-1"\ndevice_key_file = "keys/gw-1.key"\n'
        '[[mappings]]\nhc = "web"\ntarget = "http://127.0.0.1:8000"\n'
        'key_name = "listen"\nkey = "rule-key"\n',
        "utf-8",
    )
    config = load_agent_config(path, {}, hostname="gw")
    device, rule = config.mappings
    assert (device.device_id, device.key_name, device.key.value) == ("gw-1", "", KEY)
    assert KEY not in repr(config)
    provider = device.token_provider()
    assert isinstance(provider, DeviceTokenProvider)
    parsed = parse_device_token(provider.token_for("http://127.0.0.1:8080/mqtt", NOW))
    assert parsed is not None
    assert (parsed.device_id, parsed.host) == ("gw-1", "127.0.0.1")
    assert rule.device_id is None
    assert isinstance(rule.token_provider(), SasTokenProvider)
    # A reload that only rotates the device key (or swaps rule for device) rekeys in place.
    assert device.same_but_key(replace(device, key=Secret(OTHER)))
    assert rule.same_but_key(replace(rule, key_name="", device_id="gw-1", key=Secret(KEY)))
    assert not device.same_but_key(replace(device, connections=2))


def test_forward_binding_signs_as_the_device_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "forward.toml"
    path.write_text(
        'relay = "ws://127.0.0.1:8080"\n'
        '[[bindings]]\nlocal = "127.0.0.1:0"\nhc = "mqtt"\n'
        'device_id = "dev-42"\ndevice_key_env = "DEV42_KEY"\n'
        '[[bindings]]\nlocal = "127.0.0.1:0"\nhc = "anon"\n',
        "utf-8",
    )
    config = load_forward_config(path, {"DEV42_KEY": KEY})
    device, anonymous = config.bindings
    assert (device.device_id, device.key_name) == ("dev-42", None)
    provider = device.token_provider()
    assert isinstance(provider, DeviceTokenProvider)
    assert provider.device_id == "dev-42"
    assert anonymous.token_provider() is None
    assert KEY not in repr(config)
