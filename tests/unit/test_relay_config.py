"""RelayConfig: parse, env-override, validate, freeze; every refusal names path, key and reason.

Files are written to ``tmp_path`` and the environment is always passed explicitly,
so nothing depends on the process environment.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hybridrelay.config import Secret
from hybridrelay.errors import ConfigError
from hybridrelay.protocol.codes import MAX_LISTENERS_PER_HC
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.config import (
    DEV_RULE_NAME,
    RelayConfig,
    RelaySettings,
    RuleConfig,
    complete,
    development_config,
    load_relay_config,
)

KEY = "0123456789abcdef"  # exactly the 16-character minimum
RULE = f'[[rules]]\nname = "root"\nkey = "{KEY}"\nrights = ["Manage", "Listen", "Send"]\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text, "utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> RelayConfig:
    return load_relay_config(write(tmp_path, text), {} if env is None else env)


def refuse(
    tmp_path: Path, text: str, key: str, reason: str, env: dict[str, str] | None = None
) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_relay_config(path, {} if env is None else env)
    err = info.value
    assert err.path == str(path)
    assert err.key == key
    assert reason in err.reason
    assert str(err) == f"{path}: {key}: {err.reason}" if key else f"{path}: {err.reason}"
    return err


def rules(n: int, *, prefix: str = "r") -> str:
    return "".join(f'[[rules]]\nname = "{prefix}{i}"\nkey = "{KEY}"\n' for i in range(n))


def hc_rules(n: int) -> str:
    return "".join(
        f'[[hybrid_connections.rules]]\nname = "r{i}"\nkey = "{KEY}"\n' for i in range(n)
    )


# --- valid files --------------------------------------------------------------------------


def test_minimal(tmp_path: Path) -> None:
    config = load(tmp_path, f'[[rules]]\nname = "root"\nkey = "{KEY}"\n')
    assert config.relay == RelaySettings()
    assert config.rules == (
        RuleConfig(name="root", key=Secret(KEY), rights=Rights.LISTEN | Rights.SEND),
    )
    assert config.hybrid_connections == ()
    assert config.source == str(tmp_path / "relay.toml")
    assert KEY not in repr(config)


def test_full(tmp_path: Path) -> None:
    # The TLS files must be readable; written relative, they are the config file's neighbours.
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    text = f"""
[relay]
host = "0.0.0.0"
port = 8443
public_url = "wss://relay.example.com:8443"
tls_cert = "tls/cert.pem"
tls_key = "{tmp_path / "key.pem"}"
data_dir = "/var/lib/relay"
auto_create = true
max_listeners_per_hc = 7
ping_interval = 12.5
token_grace = 60
rendezvous_timeout = 20
close_timeout = 3
max_pending_rendezvous = 500
check_token_host = true
drain_timeout = 2.5

[[rules]]
name = "RootManageSharedAccessKey"
key = "{KEY}{KEY}"
secondary_key = "secondary-{KEY}"
rights = ["manage", " LISTEN ", "Send"]

[[rules]]
name = "sender.only_1"
key = "{KEY}"
rights = ["Send"]
"""
    config = load(tmp_path, text)
    assert config.relay == RelaySettings(
        host="0.0.0.0",
        port=8443,
        public_url="wss://relay.example.com:8443",
        tls_cert=str(tmp_path / "tls" / "cert.pem"),
        tls_key=str(tmp_path / "key.pem"),
        data_dir="/var/lib/relay",
        auto_create=True,
        max_listeners_per_hc=7,
        ping_interval=12.5,
        token_grace=60.0,
        rendezvous_timeout=20.0,
        close_timeout=3.0,
        max_pending_rendezvous=500,
        check_token_host=True,
        drain_timeout=2.5,
    )
    assert isinstance(config.relay.token_grace, float)
    root, sender = config.rules
    assert root.name == "RootManageSharedAccessKey"
    assert root.key == Secret(KEY + KEY)
    assert root.secondary_key == Secret(f"secondary-{KEY}")
    assert root.rights == Rights.MANAGE | Rights.LISTEN | Rights.SEND
    assert sender.secondary_key is None
    assert sender.rights == Rights.SEND
    assert KEY not in repr(config)


def test_entity_level_rules_only(tmp_path: Path) -> None:
    text = f"""
[relay]
max_listeners_per_hc = 4

[[hybrid_connections]]
name = "/Tenants/Mqtt/"
requires_client_authorization = false
http = false
[[hybrid_connections.rules]]
name = "listen"
key = "{KEY}"
rights = ["Listen"]
[[hybrid_connections.rules]]
name = "send"
key = "{KEY}"
rights = ["Send"]

[[hybrid_connections]]
name = "web"
max_listeners = 25
"""
    config = load(tmp_path, text)
    assert config.rules == ()
    mqtt, web = config.hybrid_connections
    assert mqtt.name == "Tenants/Mqtt"  # surrounding slashes dropped, case kept
    assert mqtt.requires_client_authorization is False
    assert mqtt.http is False
    assert mqtt.max_listeners == 4  # from [relay] max_listeners_per_hc
    assert [(r.name, r.rights) for r in mqtt.rules] == [
        ("listen", Rights.LISTEN),
        ("send", Rights.SEND),
    ]
    assert web.requires_client_authorization is True
    assert web.http is None
    assert web.max_listeners == MAX_LISTENERS_PER_HC
    assert config.hybrid_connection("tenants/mqtt") is mqtt
    assert config.hybrid_connection("WEB") is web
    assert config.hybrid_connection("other") is None


def test_twelve_rules_per_scope_are_fine(tmp_path: Path) -> None:
    config = load(tmp_path, rules(12) + '[[hybrid_connections]]\nname = "hc"\n' + hc_rules(12))
    assert len(config.rules) == 12
    assert len(config.hybrid_connections[0].rules) == 12


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load(tmp_path, RULE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.relay.port = 1  # type: ignore[misc]  # proving it is read-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rules = ()  # type: ignore[misc]  # proving it is read-only


# --- environment overrides ----------------------------------------------------------------


def test_env_overrides_the_file(tmp_path: Path) -> None:
    config = load(tmp_path, "[relay]\nport = 1234\n" + RULE, {"HYBRIDRELAY_PORT": "9000"})
    assert config.relay.port == 9000


def test_env_overrides_every_kind(tmp_path: Path) -> None:
    env = {
        "HYBRIDRELAY_HOST": "0.0.0.0",
        "HYBRIDRELAY_PUBLIC_URL": "wss://relay.example.com",
        "HYBRIDRELAY_AUTO_CREATE": "TRUE",
        "HYBRIDRELAY_CHECK_TOKEN_HOST": "no",
        "HYBRIDRELAY_TOKEN_GRACE": "1.5",
        "HYBRIDRELAY_MAX_PENDING_RENDEZVOUS": "42",
        "HYBRIDRELAY_UNRELATED": "ignored",
    }
    config = load(tmp_path, "[relay]\ncheck_token_host = true\n" + RULE, env)
    assert config.relay.host == "0.0.0.0"
    assert config.relay.public_url == "wss://relay.example.com"
    assert config.relay.auto_create is True
    assert config.relay.check_token_host is False
    assert config.relay.token_grace == 1.5
    assert config.relay.max_pending_rendezvous == 42


def test_public_hosts_are_host_names_from_file_or_env(tmp_path: Path) -> None:
    text = '[relay]\npublic_hosts = ["Relay.Example.com:443", "relay.example.com", "[::1]"]\n'
    config = load(tmp_path, text + RULE)
    assert config.relay.public_hosts == ("relay.example.com", "::1")
    env = {"HYBRIDRELAY_PUBLIC_HOSTS": "a.example.com, b.example.com:8443,"}
    assert load(tmp_path, RULE, env).relay.public_hosts == ("a.example.com", "b.example.com")


@pytest.mark.parametrize(
    "value", ['["wss://relay.example.com"]', '["relay.example.com/x"]', '[""]', '["a@b"]', '"x"']
)
def test_public_hosts_refuses_anything_but_host_names(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"[relay]\npublic_hosts = {value}\n" + RULE)
    assert info.value.key == "relay.public_hosts"


def test_env_applies_without_a_relay_table(tmp_path: Path) -> None:
    config = load(tmp_path, RULE, {"HYBRIDRELAY_PORT": "0"})
    assert config.relay.port == 0


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("HYBRIDRELAY_PORT", "abc", "integer"),
        ("HYBRIDRELAY_PORT", "80.5", "integer"),
        ("HYBRIDRELAY_PORT", "", "integer"),
        ("HYBRIDRELAY_AUTO_CREATE", "maybe", "true or false"),
        ("HYBRIDRELAY_PING_INTERVAL", "fast", "number"),
    ],
)
def test_bad_env_value_names_the_variable(tmp_path: Path, name: str, value: str, kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, RULE, {name: value})
    assert info.value.path == "<environment>"
    assert info.value.key == name
    assert kind in info.value.reason


def test_env_value_is_range_checked_like_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, RULE, {"HYBRIDRELAY_PORT": "70000"})
    assert info.value.key == "relay.port"
    assert "between 0 and 65535" in info.value.reason


# --- invalid files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1\n" + RULE, "bogus"),
        (RULE + "[extra]\nx = 1\n", "extra"),
        ("[relay]\nbogus = 1\n" + RULE, "relay.bogus"),
        ("[relay]\nPort = 8080\n" + RULE, "relay.Port"),
        (RULE + "bogus = 1\n", "rules[0].bogus"),
        (f'[[rules]]\nname = "r"\nkey = "{KEY}"\nprimary_key = "x"\n', "rules[0].primary_key"),
        (
            RULE + '[[hybrid_connections]]\nname = "hc"\nbogus = true\n',
            "hybrid_connections[0].bogus",
        ),
        (
            RULE + f'[[hybrid_connections]]\nname = "hc"\n[[hybrid_connections.rules]]\n'
            f'name = "r"\nkey = "{KEY}"\nright = ["Send"]\n',
            "hybrid_connections[0].rules[0].right",
        ),
    ],
    ids=[
        "top-level",
        "top-level-table",
        "relay",
        "relay-case",
        "rule",
        "rule-other",
        "hc",
        "hc-rule",
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, key: str) -> None:
    refuse(tmp_path, text, key, "unknown key")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[relay]\nport = "80"\n', "relay.port", "must be an integer"),
        ("[relay]\nport = true\n", "relay.port", "must be an integer"),
        ("[relay]\nport = 80.0\n", "relay.port", "must be an integer"),
        ("[relay]\nhost = 127\n", "relay.host", "must be a string"),
        ('[relay]\nauto_create = "yes"\n', "relay.auto_create", "must be true or false"),
        ("[relay]\ncheck_token_host = 1\n", "relay.check_token_host", "must be true or false"),
        ('[relay]\nping_interval = "30s"\n', "relay.ping_interval", "must be a number"),
        ("[relay]\ntoken_grace = false\n", "relay.token_grace", "must be a number"),
        ("[relay]\nping_interval = 0.0\n", "relay.ping_interval", "between"),
        ("[relay]\nrendezvous_timeout = 31\n", "relay.rendezvous_timeout", "between"),
        ("[relay]\nmax_listeners_per_hc = 0\n", "relay.max_listeners_per_hc", "between"),
        ("[relay]\ntls_cert = ['a']\ntls_key = 'b'\n", "relay.tls_cert", "must be a string"),
        ('relay = "x"\n', "relay", "must be a table"),
        ('rules = "x"\n', "rules", "array of tables"),
        ("[rules]\nname = 'r'\n", "rules", "array of tables"),
        ('hybrid_connections = ["hc"]\n', "hybrid_connections", "array of tables"),
    ],
)
def test_wrong_types_in_relay_and_top_level(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    extra = "" if text.startswith(("rules", "[rules]")) else RULE
    refuse(tmp_path, text + extra, key, reason)


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        (f'name = "r"\nkey = "{KEY}"\nrights = "Listen"\n', "rules[0].rights", "list of strings"),
        (f'name = "r"\nkey = "{KEY}"\nrights = [1]\n', "rules[0].rights", "list of strings"),
        (f'name = 5\nkey = "{KEY}"\n', "rules[0].name", "must be a string"),
        ('name = "r"\nkey = 1234567890123456789\n', "rules[0].key", "must be a string"),
        (f'name = "r"\nkey = "{KEY}"\nsecondary_key = 1\n', "rules[0].secondary_key", "string"),
        (f'key = "{KEY}"\n', "rules[0].name", "is required"),
        ('name = "r"\n', "rules[0].key", "is required"),
        (f'name = "bad name"\nkey = "{KEY}"\n', "rules[0].name", "letters, digits"),
        (f'name = "-r"\nkey = "{KEY}"\n', "rules[0].name", "letters, digits"),
    ],
)
def test_invalid_namespace_rule(tmp_path: Path, body: str, key: str, reason: str) -> None:
    refuse(tmp_path, "[[rules]]\n" + body, key, reason)


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        (
            'requires_client_authorization = "no"\n',
            "requires_client_authorization",
            "true or false",
        ),
        ('http = "yes"\n', "http", "must be true or false"),
        ("http = 1\n", "http", "must be true or false"),
        ("max_listeners = 0\n", "max_listeners", "between 1 and"),
        ('max_listeners = "5"\n', "max_listeners", "must be an integer"),
        ('rules = "x"\n', "rules", "array of tables"),
    ],
)
def test_invalid_hybrid_connection_values(tmp_path: Path, body: str, key: str, reason: str) -> None:
    text = RULE + '[[hybrid_connections]]\nname = "hc"\n' + body
    refuse(tmp_path, text, f"hybrid_connections[0].{key}", reason)


@pytest.mark.parametrize("port", [-1, 65536, 100000])
def test_port_out_of_range(tmp_path: Path, port: int) -> None:
    refuse(tmp_path, f"[relay]\nport = {port}\n" + RULE, "relay.port", "between 0 and 65535")


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_port_edges_are_fine(tmp_path: Path, port: int) -> None:
    assert load(tmp_path, f"[relay]\nport = {port}\n" + RULE).relay.port == port


@pytest.mark.parametrize("given", ['tls_cert = "c.pem"', 'tls_key = "k.pem"'])
def test_tls_cert_and_key_come_together(tmp_path: Path, given: str) -> None:
    refuse(tmp_path, f"[relay]\n{given}\n" + RULE, "relay.tls_cert", "together")


def test_tls_from_env_is_checked_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, RULE, {"HYBRIDRELAY_TLS_CERT": "c.pem"})
    assert info.value.key == "relay.tls_cert"


@pytest.mark.parametrize(
    "url",
    [
        "http://relay.example.com",
        "https://relay.example.com",
        "relay.example.com",
        "relay.example.com:8080",
        "ws://",
        "wss:///path",
        "ws://relay.example.com/?sb-hc-action=listen",
    ],
)
def test_bad_public_url(tmp_path: Path, url: str) -> None:
    refuse(tmp_path, f'[relay]\npublic_url = "{url}"\n' + RULE, "relay.public_url", "ws://")


@pytest.mark.parametrize("url", ["ws://:8080", "ws://relay.example.com:notaport"])
def test_public_url_without_a_host_or_with_a_bad_port(tmp_path: Path, url: str) -> None:
    # Neither looks like ws://host:port; accept addresses built on them would be unusable.
    refuse(tmp_path, f'[relay]\npublic_url = "{url}"\n' + RULE, "relay.public_url", "ws://")


@pytest.mark.parametrize(
    "url", ["ws://127.0.0.1:8080", "wss://relay.example.com", "wss://relay.example.com/base/"]
)
def test_good_public_url(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, f'[relay]\npublic_url = "{url}"\n' + RULE).relay.public_url == url


def test_rule_key_too_short(tmp_path: Path) -> None:
    refuse(tmp_path, f'[[rules]]\nname = "r"\nkey = "{KEY[:-1]}"\n', "rules[0].key", "at least 16")


def test_hc_rule_key_too_short(tmp_path: Path) -> None:
    text = (
        '[[hybrid_connections]]\nname = "hc"\n'
        '[[hybrid_connections.rules]]\nname = "r"\nkey = "short"\n'
    )
    refuse(tmp_path, text, "hybrid_connections[0].rules[0].key", "at least 16")


@pytest.mark.parametrize("rights", ['["Read"]', '["Listen", "Admin"]', '[""]', '["Listen,Send"]'])
def test_unknown_right(tmp_path: Path, rights: str) -> None:
    text = f'[[rules]]\nname = "r"\nkey = "{KEY}"\nrights = {rights}\n'
    refuse(tmp_path, text, "rules[0].rights", "unknown right")


def test_more_than_twelve_namespace_rules(tmp_path: Path) -> None:
    refuse(tmp_path, rules(13), "rules", "at most 12")


def test_more_than_twelve_hc_rules(tmp_path: Path) -> None:
    text = RULE + '[[hybrid_connections]]\nname = "hc"\n' + hc_rules(13)
    refuse(tmp_path, text, "hybrid_connections[0].rules", "at most 12")


def test_duplicate_rule_name_is_case_insensitive(tmp_path: Path) -> None:
    text = RULE + f'[[rules]]\nname = "ROOT"\nkey = "{KEY}"\n'
    refuse(tmp_path, text, "rules", "defined twice")


def test_duplicate_hc_rule_name(tmp_path: Path) -> None:
    text = (
        '[[hybrid_connections]]\nname = "hc"\n'
        + f'[[hybrid_connections.rules]]\nname = "a"\nkey = "{KEY}"\n' * 2
    )
    refuse(tmp_path, text, "hybrid_connections[0].rules", "defined twice")


def test_same_rule_name_in_different_scopes_is_fine(tmp_path: Path) -> None:
    text = (
        RULE
        + '[[hybrid_connections]]\nname = "hc"\n'
        + f'[[hybrid_connections.rules]]\nname = "root"\nkey = "{KEY}"\n'
    )
    assert load(tmp_path, text).hybrid_connections[0].rules[0].name == "root"


@pytest.mark.parametrize(("first", "second"), [("hc", "hc"), ("hc", "HC"), ("a/B", "/A/b/")])
def test_duplicate_hybrid_connection_is_case_insensitive(
    tmp_path: Path, first: str, second: str
) -> None:
    text = (
        RULE
        + f'[[hybrid_connections]]\nname = "{first}"\n[[hybrid_connections]]\nname = "{second}"\n'
    )
    refuse(tmp_path, text, "hybrid_connections", "defined twice")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "is required"),
        ("/", "1 to 260"),
        ("a//b", "segments"),
        ("$hc", "segments"),
        ("a/$hc", "segments"),
        ("-x", "segments"),
        (".x", "segments"),
        ("a b", "segments"),
        ("é", "segments"),
        ("healthz", "reserved"),
        ("Metrics/x", "reserved"),
        ("a" * 261, "1 to 260"),
    ],
)
def test_invalid_entity_names(tmp_path: Path, name: str, reason: str) -> None:
    text = RULE + f'[[hybrid_connections]]\nname = "{name}"\n'
    refuse(tmp_path, text, "hybrid_connections[0].name", reason)


@pytest.mark.parametrize("name", ["a", "A1", "a.b_c-d", "x/y/z", "1", "a" * 260])
def test_valid_entity_names(tmp_path: Path, name: str) -> None:
    text = RULE + f'[[hybrid_connections]]\nname = "{name}"\n'
    assert load(tmp_path, text).hybrid_connections[0].name == name


@pytest.mark.parametrize(
    "text",
    ["", "[relay]\nport = 1\n", '[[hybrid_connections]]\nname = "hc"\n'],
    ids=["empty", "relay-only", "hc-without-rules"],
)
def test_no_rules_at_all(tmp_path: Path, text: str) -> None:
    refuse(tmp_path, text, "rules", "no SAS rule")


def test_toml_syntax_error(tmp_path: Path) -> None:
    refuse(tmp_path, "[relay\n", "", "invalid TOML")


# --- development default ------------------------------------------------------------------


def test_development_config() -> None:
    config = development_config({})
    assert config.relay == RelaySettings(auto_create=True)
    assert config.hybrid_connections == ()
    assert config.source == "<development default>"
    (rule,) = config.rules
    assert rule.name == DEV_RULE_NAME
    assert rule.rights == Rights.MANAGE | Rights.LISTEN | Rights.SEND
    assert rule.secondary_key is None
    assert len(rule.key.value) >= 32
    assert rule.key.value not in repr(config)


def test_development_keys_are_random() -> None:
    a = development_config({}).rules[0].key
    b = development_config({}).rules[0].key
    assert a != b


def test_development_key_from_env() -> None:
    env = {"HYBRIDRELAY_DEV_KEY": "my-fixed-dev-key-123"}
    assert development_config(env).rules[0].key == Secret("my-fixed-dev-key-123")
    assert development_config(env).rules[0].key == development_config(env).rules[0].key


def test_development_config_takes_env_overrides() -> None:
    config = development_config({"HYBRIDRELAY_PORT": "9001", "HYBRIDRELAY_HOST": "0.0.0.0"})
    assert config.relay.port == 9001
    assert config.relay.host == "0.0.0.0"
    assert config.relay.auto_create is True
    with pytest.raises(ConfigError) as info:
        development_config({"HYBRIDRELAY_PORT": "abc"})
    assert info.value.key == "HYBRIDRELAY_PORT"


# --- complete() ---------------------------------------------------------------------------


def settings_config(**kwargs: object) -> RelayConfig:
    return RelayConfig(relay=RelaySettings(**kwargs))  # type: ignore[arg-type]  # test helper


@pytest.mark.parametrize(
    ("kwargs", "bound", "expected"),
    [
        ({}, None, "ws://127.0.0.1:8080"),
        ({"host": "0.0.0.0", "port": 9000}, None, "ws://127.0.0.1:9000"),
        ({"host": "::"}, None, "ws://127.0.0.1:8080"),
        ({"host": "::1"}, None, "ws://[::1]:8080"),
        ({"host": "relay.local", "port": 0}, 43210, "ws://relay.local:43210"),
        ({"host": "0.0.0.0", "tls_cert": "c", "tls_key": "k"}, None, "wss://127.0.0.1:8080"),
        ({"tls_cert": "c", "tls_key": "k", "port": 0}, 8443, "wss://127.0.0.1:8443"),
    ],
)
def test_complete_fills_public_url(
    kwargs: dict[str, object], bound: int | None, expected: str
) -> None:
    config = settings_config(**kwargs)
    done = complete(config, bound)
    assert done.relay.public_url == expected
    assert config.relay.public_url == ""  # the original is untouched
    assert dataclasses.replace(done.relay, public_url="") == config.relay


def test_complete_keeps_an_explicit_public_url() -> None:
    config = settings_config(public_url="wss://relay.example.com", host="0.0.0.0")
    assert complete(config, 1234) is config


def test_complete_after_load(tmp_path: Path) -> None:
    config = load(tmp_path, '[relay]\nhost = "0.0.0.0"\nport = 0\n' + RULE)
    assert complete(config, 5555).relay.public_url == "ws://127.0.0.1:5555"


# --- [cluster] ----------------------------------------------------------------------------


def test_cluster_table_and_its_environment_overrides(tmp_path: Path) -> None:
    text = RULE + '[cluster]\nredis_url = "redis://r:6379/0"\nnode_id = "n1"\npresence_ttl = 4\n'
    config = load(tmp_path, text)
    assert config.cluster is not None
    assert (config.cluster.redis_url, config.cluster.node_id) == ("redis://r:6379/0", "n1")
    assert config.cluster.presence_ttl == 4.0
    assert config.cluster.prefix == "default"
    env = {
        "HYBRIDRELAY_REDIS_URL": "redis://other:6379/1",
        "HYBRIDRELAY_NODE_ID": "pod-2",
        "HYBRIDRELAY_PUBLIC_URL": "ws://pod-2.relay:8080",
    }
    config = load(tmp_path, text, env)
    assert config.cluster is not None
    assert (config.cluster.redis_url, config.cluster.node_id) == ("redis://other:6379/1", "pod-2")
    assert config.relay.public_url == "ws://pod-2.relay:8080"
    assert load(tmp_path, RULE).cluster is None  # no Redis: the single-node default
    only_env = load(tmp_path, RULE, {"HYBRIDRELAY_REDIS_URL": "redis://r/0"}).cluster
    assert only_env is not None
    assert only_env.presence_ttl == 10.0


@pytest.mark.parametrize(
    ("line", "key", "reason"),
    [
        ('redis_url = "http://r:6379"', "redis_url", "redis://"),
        ('redis_url = "redis://r"\npresence_ttl = 0.5', "presence_ttl", "between 1 and 300"),
        ('redis_url = "redis://r"\npresence_ttl = "ten"', "presence_ttl", "number"),
        ('redis_url = "redis://r"\nheartbeat = 3', "heartbeat", "unknown"),
        ('redis_url = "redis://r"\nnode_id = "a{b}"', "node_id", "letters, digits"),
        ('redis_url = "redis://r"\nprefix = "has space"', "prefix", "letters, digits"),
    ],
)
def test_cluster_table_refusals(tmp_path: Path, line: str, key: str, reason: str) -> None:
    refuse(tmp_path, RULE + f"[cluster]\n{line}\n", f"cluster.{key}", reason)
