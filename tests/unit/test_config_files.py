"""Relay config files: every file under config/invalid/ is refused with the right ConfigError,
every file under config/valid/ loads.

Each invalid file is one case and states what it expects in its first lines:

    # expect-key: relay.port
    # expect-reason: must be an integer

``expect-key`` is compared exactly (empty for errors about the whole file),
``expect-reason`` must occur in the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybridrelay.errors import ConfigError
from hybridrelay.relay.config import load_relay_config

HERE = Path(__file__).parent / "config"
INVALID = sorted((HERE / "invalid").glob("*.toml"))
VALID = sorted((HERE / "valid").glob("*.toml"))
_EXPECT = re.compile(r"^# expect-(key|reason):[ \t]*(.*?)[ \t]*$", re.MULTILINE)


def _expectations(path: Path) -> dict[str, str]:
    found = dict(_EXPECT.findall(path.read_text("utf-8")))
    assert set(found) == {"key", "reason"}, (
        f"{path.name}: needs '# expect-key:' and '# expect-reason:'"
    )
    return found


def test_there_are_cases() -> None:
    assert len(INVALID) >= 10
    assert len(VALID) >= 3


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_file_is_refused(path: Path) -> None:
    expect = _expectations(path)
    with pytest.raises(ConfigError) as info:
        load_relay_config(path, {})
    err = info.value
    assert err.path == str(path)
    assert err.key == expect["key"]
    assert expect["reason"] in err.reason
    # The one-line message the CLI prints names all three.
    assert str(err).startswith(f"{path}: ")
    assert expect["reason"] in str(err)
    assert "\n" not in str(err)


def test_nonexistent_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_relay_config(path, {})
    assert (info.value.path, info.value.key, info.value.reason) == (str(path), "", "file not found")


def test_bad_environment_override_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_relay_config(VALID[0], {"HYBRIDRELAY_PORT": "x"})
    assert (info.value.path, info.value.key) == ("<environment>", "HYBRIDRELAY_PORT")
    assert "int" in info.value.reason


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_file_loads(path: Path) -> None:
    config = load_relay_config(path, {})
    assert config.source == str(path)
    assert config.rules or any(hc.rules for hc in config.hybrid_connections)
    for rule in (*config.rules, *(r for hc in config.hybrid_connections for r in hc.rules)):
        assert rule.key.value not in repr(config)


def test_environment_overrides_the_file() -> None:
    path = HERE / "valid" / "minimal.toml"
    config = load_relay_config(path, {"HYBRIDRELAY_PORT": "9000", "HYBRIDRELAY_AUTO_CREATE": "yes"})
    assert config.relay.port == 9000
    assert config.relay.auto_create is True


def test_per_ip_limits_exempt_from_the_environment_is_a_comma_separated_list() -> None:
    path = HERE / "valid" / "minimal.toml"
    assert "127.0.0.0/8" in load_relay_config(path, {}).relay.per_ip_limits_exempt
    env = {"HYBRIDRELAY_PER_IP_LIMITS_EXEMPT": "198.51.100.7, 2001:db8::/32"}
    config = load_relay_config(path, env)
    assert config.relay.per_ip_limits_exempt == ("198.51.100.7", "2001:db8::/32")
    assert (
        load_relay_config(path, {"HYBRIDRELAY_PER_IP_LIMITS_EXEMPT": ""}).relay.per_ip_limits_exempt
        == ()
    )
    with pytest.raises(ConfigError) as info:
        load_relay_config(path, {"HYBRIDRELAY_PER_IP_LIMITS_EXEMPT": "10.0.0.0/8, nope"})
    assert info.value.key == "relay.per_ip_limits_exempt"


def test_full_file_values() -> None:
    config = load_relay_config(HERE / "valid" / "full.toml", {})
    assert config.relay.public_url == "wss://relay.example.com"
    assert config.relay.drain_timeout == 2.0
    assert config.relay.max_head_line_size == 16384
    assert config.relay.max_control_message_size == 65536
    assert config.relay.event_subscriber_queue == 16
    assert config.relay.metrics_listen == ("::1", 9180)
    assert config.relay.max_metrics_hc_labels == 20
    mqtt = config.hybrid_connection("MQTT")
    assert mqtt is not None
    assert mqtt.max_listeners == 2
    assert [r.name for r in mqtt.rules] == ["mqtt-listen", "mqtt-send"]
    web = config.hybrid_connection("web/api")
    assert web is not None
    assert web.http is True
    assert web.requires_client_authorization is False


def test_dashboard_listen_is_an_address_public_or_off() -> None:
    path = HERE / "valid" / "minimal.toml"
    assert load_relay_config(path, {}).relay.dashboard_listen == ("127.0.0.1", 0)
    for text, expected in (
        ("127.0.0.1:9190", ("127.0.0.1", 9190)),
        ("[::1]:9190", ("::1", 9190)),
        ("public", "public"),
        ("OFF", "off"),
    ):
        env = {"HYBRIDRELAY_DASHBOARD_LISTEN": text}
        assert load_relay_config(path, env).relay.dashboard_listen == expected
    for bad in ("9190", "somewhere", "127.0.0.1:70000"):
        with pytest.raises(ConfigError) as info:
            load_relay_config(path, {"HYBRIDRELAY_DASHBOARD_LISTEN": bad})
        assert info.value.key == "relay.dashboard_listen"
