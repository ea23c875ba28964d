"""Forwarder config files: every file under config/forward_invalid/ is refused with the right
ConfigError (``# expect-key:`` / ``# expect-reason:`` as in config/invalid/), the valid ones load.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybridrelay.client.config import is_loopback, load_forward_config, parse_local
from hybridrelay.errors import ConfigError

HERE = Path(__file__).parent / "config"
INVALID = sorted((HERE / "forward_invalid").glob("*.toml"))
VALID = HERE / "forward_valid"
_EXPECT = re.compile(r"^# expect-(key|reason):[ \t]*(.*?)[ \t]*$", re.MULTILINE)
ENV = {"HYBRIDRELAY_TEST_SEND_KEY": "env-key-0123456789"}


def test_there_are_cases() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_file_is_refused(path: Path) -> None:
    expect = dict(_EXPECT.findall(path.read_text("utf-8")))
    assert set(expect) == {"key", "reason"}, f"{path.name}: needs expect-key and expect-reason"
    with pytest.raises(ConfigError) as info:
        load_forward_config(path, ENV)
    err = info.value
    assert err.path == str(path)
    assert err.key == expect["key"]
    assert expect["reason"] in err.reason
    assert str(err).startswith(f"{path}: ")
    assert "\n" not in str(err)


def test_full_file_loads_every_form() -> None:
    path = VALID / "full.toml"
    config = load_forward_config(path, ENV)
    assert config.relay == "wss://relay.example.com"
    assert config.ca_file == str(VALID / "ca.pem")  # relative to the config file
    mqtt, coap, ssh, anon = config.bindings
    assert (mqtt.transport, mqtt.host, mqtt.port, mqtt.hc) == ("tcp", "127.0.0.1", 11883, "mqtt")
    assert mqtt.key is not None
    assert mqtt.key.value == ENV["HYBRIDRELAY_TEST_SEND_KEY"]
    assert dict(mqtt.headers) == {"X-Device": "dev-1"}
    assert (mqtt.ping_interval, mqtt.open_timeout) == (5.0, 10.0)
    assert (coap.transport, coap.port, coap.udp_idle_timeout) == ("udp", 5683, 20.0)
    assert (coap.udp_max_flows, anon.udp_max_flows) == (8, 64)  # per binding, then the default
    assert coap.key is not None
    assert coap.key.value == "file-key-0123456789"
    assert (ssh.transport, ssh.host, ssh.port, ssh.ping_interval) == ("tcp", "::1", 2222, None)
    assert (anon.transport, anon.key_name, anon.key, anon.udp_idle_timeout) == (
        "udp",
        None,
        None,
        45.0,
    )
    # Keys never show in a repr.
    assert "inline-key-for-tests" not in repr(config)
    assert "env-key" not in repr(config)


def test_minimal_file_gets_defaults() -> None:
    config = load_forward_config(VALID / "minimal.toml", {})
    (binding,) = config.bindings
    assert (binding.ping_interval, binding.open_timeout, binding.udp_idle_timeout) == (
        10.0,
        30.0,
        60.0,
    )
    assert binding.udp_max_flows == 1024
    assert not config.allow_public_bind


def test_environment_overrides_relay() -> None:
    config = load_forward_config(VALID / "minimal.toml", {"HYBRIDRELAY_RELAY": "wss://other/"})
    assert config.relay == "wss://other"


def test_public_bind_allowed_with_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "forward.toml"
    path.write_text(
        'relay = "ws://r"\nallow_public_bind = true\n'
        '[[bindings]]\nlocal = "0.0.0.0:1883"\nhc = "mqtt"\n',
        "utf-8",
    )
    assert load_forward_config(path, {}).bindings[0].host == "0.0.0.0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1883", ("tcp", "127.0.0.1", 1883)),
        ("tcp://localhost:1", ("tcp", "localhost", 1)),
        ("udp://127.0.0.1:5683", ("udp", "127.0.0.1", 5683)),
        ("127.0.0.1:5683/udp", ("udp", "127.0.0.1", 5683)),
        ("[::1]:0", ("tcp", "::1", 0)),
    ],
)
def test_parse_local(text: str, expected: tuple[str, str, int]) -> None:
    assert parse_local(text) == expected


@pytest.mark.parametrize("text", ["1883", ":1883", "host", "udp://h", "h:1/x", "h:99999"])
def test_parse_local_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_local(text)


def test_loopback() -> None:
    assert is_loopback("127.0.0.2")
    assert is_loopback("::1")
    assert is_loopback("LOCALHOST")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("example.com")


def test_example_forward_config_loads() -> None:
    path = Path(__file__).parents[2] / "deploy" / "forward.example.toml"
    config = load_forward_config(path, {"HYBRIDRELAY_SEND_KEY": "k" * 32})
    assert [(b.transport, b.port, b.hc) for b in config.bindings] == [
        ("tcp", 11883, "mqtt"),
        ("udp", 5683, "coap"),
    ]
