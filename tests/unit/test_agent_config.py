"""Agent config files: each file under config/agent_invalid/ is refused with the right
ConfigError (same ``# expect-key:`` / ``# expect-reason:`` header as the relay's cases),
valid files load with their defaults completed, and the status collector renders them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hybridrelay.config import Secret
from hybridrelay.errors import ConfigError
from hybridrelay.listener import HeaderAllowList, RateLimit
from hybridrelay.listener.config import load_agent_config, parse_status_address
from hybridrelay.listener.status import AgentCollector
from hybridrelay.listener.supervisor import (
    Agent,
    AgentStatus,
    MappingStatus,
    _MappingRun,
    _targets,
    build_hooks,
)

HERE = Path(__file__).parent / "config"
INVALID = sorted((HERE / "agent_invalid").glob("*.toml"))
EXAMPLE = Path(__file__).parents[2] / "deploy" / "agent.example.toml"
_EXPECT = re.compile(r"^# expect-(key|reason):[ \t]*(.*?)[ \t]*$", re.MULTILINE)

MINIMAL = """
relay = "ws://127.0.0.1:8080/"
[[mappings]]
hc = "/mqtt/"
target = "tcp://127.0.0.1:1883"
key_name = "listen"
key = "secret-key-value"
"""


def _write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def test_there_are_cases() -> None:
    assert len(INVALID) >= 20


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_file_is_refused(path: Path) -> None:
    found = dict(_EXPECT.findall(path.read_text("utf-8")))
    assert set(found) == {"key", "reason"}, f"{path.name}: needs both expect lines"
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, {}, hostname="gw")
    err = info.value
    assert (err.path, err.key) == (str(path), found["key"])
    assert found["reason"] in err.reason
    assert str(err).startswith(f"{path}: ")
    assert "\n" not in str(err)


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, 'relay = "ws://x:1"\n\n[[mappings]]\nhc = \n')
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, {})
    assert info.value.key == ""
    assert "invalid TOML" in info.value.reason
    assert "line 4" in info.value.reason


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_agent_config(tmp_path / "nope.toml", {})
    assert info.value.reason == "file not found"


def test_minimal_file_is_completed(tmp_path: Path) -> None:
    config = load_agent_config(_write(tmp_path, MINIMAL), {}, hostname="gw-17.example.com")
    assert config.relays == ("ws://127.0.0.1:8080",)
    assert config.agent_id == "gw-17"
    assert (config.ping_interval, config.drain_timeout, config.status) == (30.0, 10.0, None)
    (m,) = config.mappings
    assert (m.hc, m.target, m.key_name) == ("mqtt", "tcp://127.0.0.1:1883", "listen")
    assert m.key == Secret("secret-key-value")
    assert (m.connections, m.max_streams, m.connect_timeout) == (1, 1024, 10.0)
    assert m.ident == ("mqtt", "tcp://127.0.0.1:1883")
    assert "secret-key-value" not in repr(config)


def test_every_target_scheme_loads(tmp_path: Path) -> None:
    targets = [
        "tcp://127.0.0.1:1883",
        "http://127.0.0.1:8081/api",
        "https://127.0.0.1:8443",
        "unix:///run/app.sock",
        "udp://127.0.0.1:5683",
    ]
    text = 'relays = ["ws://a:1", "ws://b:2"]\n' + "".join(
        f'[[mappings]]\nhc = "hc{i}"\ntarget = "{t}"\nkey_name = "r"\nkey = "k"\n'
        for i, t in enumerate(targets)
    )
    config = load_agent_config(_write(tmp_path, text), {})
    assert [m.target for m in config.mappings] == targets
    assert config.relays == ("ws://a:1", "ws://b:2")


def test_key_file_is_relative_to_the_config_and_key_env_reads_env(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.key").write_text("file-key\n", "utf-8")
    text = """
relay = "ws://127.0.0.1:8080"
[[mappings]]
hc = "a"
target = "tcp://127.0.0.1:1"
key_name = "r"
key_file = "keys/a.key"
[[mappings]]
hc = "b"
target = "tcp://127.0.0.1:2"
key_name = "r"
key_env = "B_KEY"
"""
    config = load_agent_config(_write(tmp_path, text), {"B_KEY": "env-key"})
    assert [m.key.value for m in config.mappings] == ["file-key", "env-key"]


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "HYBRIDRELAY_AGENT_ID": "from-env",
        "HYBRIDRELAY_AGENT_STATUS": "127.0.0.1:0",
        "HYBRIDRELAY_AGENT_PING_INTERVAL": "2.5",
    }
    config = load_agent_config(_write(tmp_path, MINIMAL), env)
    assert (config.agent_id, config.status, config.ping_interval) == (
        "from-env",
        ("127.0.0.1", 0),
        2.5,
    )
    with pytest.raises(ConfigError) as info:
        load_agent_config(_write(tmp_path, MINIMAL), {"HYBRIDRELAY_AGENT_DRAIN_TIMEOUT": "x"})
    assert (info.value.path, info.value.key) == ("<environment>", "HYBRIDRELAY_AGENT_DRAIN_TIMEOUT")


def test_rendezvous_hosts_are_normalised(tmp_path: Path) -> None:
    text = 'rendezvous_hosts = ["*.Nodes.Example.com", "[::1]", "10.0.0.7", "relay-2.example."]\n'
    config = load_agent_config(_write(tmp_path, text + MINIMAL), {})
    assert config.rendezvous_hosts == ("*.nodes.example.com", "::1", "10.0.0.7", "relay-2.example")
    assert load_agent_config(_write(tmp_path, MINIMAL), {}).rendezvous_hosts == ()


def test_max_message_size(tmp_path: Path) -> None:
    assert load_agent_config(_write(tmp_path, MINIMAL), {}).max_message_size == 1 << 20
    config = load_agent_config(_write(tmp_path, "max_message_size = 65536\n" + MINIMAL), {})
    assert config.max_message_size == 65536


def test_max_bad_control_messages(tmp_path: Path) -> None:
    assert load_agent_config(_write(tmp_path, MINIMAL), {}).max_bad_control_messages == 16
    text = "max_bad_control_messages = 3\n" + MINIMAL
    config = load_agent_config(_write(tmp_path, text), {})
    assert config.max_bad_control_messages == 3
    # A change restarts the mappings' listeners, which take it when they are built.
    assert (
        config.listener_settings()
        != load_agent_config(_write(tmp_path, MINIMAL, "b.toml"), {}).listener_settings()
    )
    with pytest.raises(ConfigError, match="max_bad_control_messages"):
        load_agent_config(_write(tmp_path, "max_bad_control_messages = 0\n" + MINIMAL), {})


def test_same_but_key(tmp_path: Path) -> None:
    a = load_agent_config(_write(tmp_path, MINIMAL), {}).mappings[0]
    rotated = load_agent_config(
        _write(tmp_path, MINIMAL.replace("secret-key-value", "new-key"), "b.toml"), {}
    ).mappings[0]
    resized = load_agent_config(
        _write(tmp_path, MINIMAL + "connections = 3\n", "c.toml"), {}
    ).mappings[0]
    assert a.same_but_key(rotated)
    assert a != rotated
    assert not a.same_but_key(resized)


@pytest.mark.parametrize(
    ("text", "allow_public", "expected"),
    [
        ("127.0.0.1:9100", False, ("127.0.0.1", 9100)),
        ("[::1]:0", False, ("::1", 0)),
        ("localhost:1", False, ("localhost", 1)),
        ("0.0.0.0:9100", True, ("0.0.0.0", 9100)),
    ],
)
def test_status_address(text: str, allow_public: bool, expected: tuple[str, int]) -> None:
    assert parse_status_address(text, allow_public=allow_public) == expected


def test_hooks_are_built_in_order(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + 'allow_headers = { "X-Device" = ["a", "b"] }\n'
        + 'hooks = [{ path = "hybridrelay.listener.hooks:RateLimit",'
        + " args = { per_address = 1.5, burst = 3 } }]\n"
    )
    config = load_agent_config(_write(tmp_path, text), {})
    assert config.mappings[0].allow_headers == (("x-device", ("a", "b")),)
    hooks = build_hooks(config, 0)
    assert [type(h) for h in hooks] == [HeaderAllowList, RateLimit]


def test_unloadable_hook_fails_the_start(tmp_path: Path) -> None:
    text = MINIMAL + 'hooks = ["hybridrelay.no_such_module:hook"]\n'
    config = load_agent_config(_write(tmp_path, text), {})
    with pytest.raises(ConfigError) as info:
        Agent(config)
    assert (info.value.path, info.value.key) == (config.source, "mappings[0].hooks[0]")


def test_example_config_loads(tmp_path: Path) -> None:
    for name in ("mqtt.key", "dashboard.key"):
        (tmp_path / name).write_text(f"{name}-value\n", "utf-8")
    text = EXAMPLE.read_text("utf-8").replace("/etc/hybridrelay/", f"{tmp_path}/")
    config = load_agent_config(_write(tmp_path, text), {"HYBRIDRELAY_COAP_KEY": "coap-value"})
    assert config.relays == ("wss://relay.example.com",)
    assert config.rendezvous_hosts == ("*.relay.example.com",)
    assert config.status == ("127.0.0.1", 9100)
    assert [(m.hc, m.connections) for m in config.mappings] == [
        ("mqtt", 2),
        ("coap", 1),
        ("dashboard", 1),
    ]
    assert [m.key.value for m in config.mappings] == [
        "mqtt.key-value",
        "coap-value",
        "dashboard.key-value",
    ]
    assert len(build_hooks(config, 0)) == 2


def _status(**changes: object) -> MappingStatus:
    values: dict[str, object] = {
        "hc": "mqtt",
        "target": "tcp://127.0.0.1:1883",
        "state": "online",
        "connections": 2,
        "connections_online": 2,
        "attempts": 3,
        "connects": 2,
        "reconnects": 1,
        "active_streams": 1,
        "accepted": 5,
        "rejected": 1,
        "requests": 0,
        "bytes_up": 10,
        "bytes_down": 20,
        "error": None,
    }
    values.update(changes)
    return MappingStatus(**values)  # type: ignore[arg-type]  # test data, checked by the dataclass


def test_metrics_have_per_mapping_series() -> None:
    snapshot = AgentStatus(
        agent_id="gw",
        ready=True,
        reloads=1,
        reload_failures=0,
        mappings=(_status(), _status(hc="coap", target="udp://127.0.0.1:5683", state="failed")),
    )
    registry = CollectorRegistry()
    registry.register(AgentCollector(lambda: snapshot))
    text = generate_latest(registry).decode()
    assert 'hybridrelay_agent_mapping_up{hc="mqtt",target="tcp://127.0.0.1:1883"} 1.0' in text
    assert 'hybridrelay_agent_mapping_up{hc="coap",target="udp://127.0.0.1:5683"} 0.0' in text
    assert (
        'hybridrelay_agent_connection_attempts_total{hc="mqtt",target="tcp://127.0.0.1:1883"} 3.0'
        in text
    )
    assert 'hybridrelay_agent_mapping_state{hc="coap",state="failed"' in text
    assert 'hybridrelay_agent_reloads_total{result="applied"} 1.0' in text
    assert snapshot.to_json()["mappings"][1]["state"] == "failed"  # type: ignore[index]  # JSON


async def test_target_limits_reach_the_listener(tmp_path: Path) -> None:
    """max_target_connections bounds an HTTP target's pool; udp_idle_timeout a udp flow."""
    text = MINIMAL.replace("tcp://127.0.0.1:1883", "http://127.0.0.1:8081/api") + (
        "max_target_connections = 7\n"
        '[[mappings]]\nhc = "coap"\ntarget = "udp://127.0.0.1:5683"\n'
        'key_name = "listen"\nkey = "k"\nudp_idle_timeout = 5\n'
    )
    config = load_agent_config(_write(tmp_path, text), {})
    web, coap = config.mappings
    assert (web.max_target_connections, web.udp_idle_timeout) == (7, 60.0)
    assert (coap.max_target_connections, coap.udp_idle_timeout) == (100, 5.0)
    run = _MappingRun(coap, config, (), lambda: None)
    assert run.channels[0].listener._udp_idle_timeout == 5.0
    _, http = _targets(web)
    assert http is not None
    assert http._limit == 7
