"""Config schemas, unknown keys first, and where relative paths resolve (issue 12).

Every relative path written in a relay, agent or forwarder config resolves against the
config file's directory; values from the environment stay relative to the working
directory. The schemas that report unknown keys first must know every key the readers
accept: every valid config of the test suite and every shipped example passes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridrelay.check import check_config, detect_kind
from hybridrelay.client.config import FORWARD_SCHEMA, load_forward_config
from hybridrelay.config import Schema, file_problems, load_toml, suggest, unknown_keys
from hybridrelay.errors import ConfigError, MultiConfigError
from hybridrelay.listener.config import AGENT_SCHEMA, load_agent_config
from hybridrelay.relay.config import RELAY_SCHEMA, development_config, load_relay_config

ROOT = Path(__file__).parents[2]
CONFIGS = Path(__file__).parent / "config"
KEY = "0123456789abcdef"
RULE = f'[[rules]]\nname = "root"\nkey = "{KEY}"\n'

_VALID: list[tuple[Path, Schema]] = [
    *((p, RELAY_SCHEMA) for p in sorted((CONFIGS / "valid").glob("*.toml"))),
    *((p, FORWARD_SCHEMA) for p in sorted((CONFIGS / "forward_valid").glob("*.toml"))),
    (ROOT / "deploy" / "relay.example.toml", RELAY_SCHEMA),
    (ROOT / "deploy" / "compose" / "relay.toml", RELAY_SCHEMA),
    (ROOT / "deploy" / "agent.example.toml", AGENT_SCHEMA),
    (ROOT / "deploy" / "forward.example.toml", FORWARD_SCHEMA),
]


@pytest.mark.parametrize(
    ("path", "schema"), _VALID, ids=[str(p.relative_to(ROOT)) for p, _ in _VALID]
)
def test_schemas_know_every_key_of_the_valid_and_shipped_configs(
    path: Path, schema: Schema
) -> None:
    assert unknown_keys(load_toml(path), schema, path=str(path)) == []


def test_every_unknown_key_is_reported_at_once_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(
        f'[relay]\nprot = 8080\nhost = "127.0.0.1"\ntls_crt = "c.pem"\n'
        f"{RULE}rigths = ['Listen']\n"
        '[[hybrid_connections]]\nname = "a"\nmax_listners = 2\n',
        "utf-8",
    )
    with pytest.raises(MultiConfigError) as info:
        load_relay_config(path, {})
    lines = [str(e) for e in info.value.errors]
    assert lines == [
        f"{path}: relay.prot: unknown key (did you mean port?)",
        f"{path}: relay.tls_crt: unknown key (did you mean tls_cert?)",
        f"{path}: rules[0].rigths: unknown key (did you mean rights?)",
        f"{path}: hybrid_connections[0].max_listners: unknown key (did you mean max_listeners?)",
    ]
    # It still reads as its first error where one ConfigError is expected.
    assert (info.value.key, str(info.value)) == ("relay.prot", lines[0])


def test_a_required_key_misspelt_reports_the_spelling_not_the_missing_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'relay = "ws://127.0.0.1:1"\n[[mappings]]\nhc = "a"\ntarget = "tcp://127.0.0.1:1"\n'
        'key_nmae = "r"\nkey = "k"\n[[mappings.hooks]]\npaht = "m:f"\n',
        "utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, {})
    assert isinstance(info.value, MultiConfigError)
    assert [(e.key, e.reason) for e in info.value.errors] == [
        ("mappings[0].key_nmae", "unknown key (did you mean key_name?)"),
        ("mappings[0].hooks[0].paht", "unknown key (did you mean path?)"),
    ]


def test_free_tables_take_any_key() -> None:
    data = {"mappings": [{"allow_headers": {"x-anything": ["a"]}, "hooks": [{"args": {"z": 1}}]}]}
    assert unknown_keys(data, AGENT_SCHEMA, path="a.toml") == []


def test_suggest_only_close_names() -> None:
    assert suggest("key_nmae", ["key_name", "key", "hc"]) == " (did you mean key_name?)"
    assert suggest("zzz", ["key_name", "hc"]) == ""


def test_relay_paths_in_the_file_resolve_against_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    (conf / "tls").mkdir(parents=True)
    for name in ("cert.pem", "key.pem", "cas.pem"):
        (conf / "tls" / name).write_text("x")
    (conf / "relay.toml").write_text(
        '[relay]\ntls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n'
        'client_cert = "optional"\nclient_ca_file = "tls/cas.pem"\ndata_dir = "state"\n' + RULE,
        "utf-8",
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_relay_config(conf / "relay.toml", {}).relay
    assert (s.tls_cert, s.tls_key, s.client_ca_file, s.data_dir) == (
        str(conf / "tls" / "cert.pem"),
        str(conf / "tls" / "key.pem"),
        str(conf / "tls" / "cas.pem"),
        str(conf / "state"),
    )
    # A relative --config path: still the file's own directory.
    relative = load_relay_config(Path("..") / "etc" / "relay.toml", {}).relay
    assert Path(relative.tls_cert or "").resolve() == (conf / "tls" / "cert.pem").resolve()


def test_relay_paths_from_the_environment_stay_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "relay.toml").write_text(RULE, "utf-8")
    monkeypatch.chdir(tmp_path)
    env = {"HYBRIDRELAY_DATA_DIR": "from-env", "HYBRIDRELAY_TLS_CERT": "missing.pem"}
    env["HYBRIDRELAY_TLS_KEY"] = "missing.pem"
    with pytest.raises(ConfigError) as info:
        load_relay_config(tmp_path / "relay.toml", env)
    assert (info.value.path, info.value.key) == ("<environment>", "HYBRIDRELAY_TLS_CERT")
    assert info.value.reason == "cannot read missing.pem: No such file or directory"
    del env["HYBRIDRELAY_TLS_CERT"], env["HYBRIDRELAY_TLS_KEY"]
    assert load_relay_config(tmp_path / "relay.toml", env).relay.data_dir == "from-env"
    # Without a file (the development default), the default data_dir is the working
    # directory's, as before.
    assert development_config({}).relay.data_dir == ".hybridrelay"


def test_forwarder_ca_file_resolves_and_must_be_readable(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    text = '[[bindings]]\nlocal = "127.0.0.1:0"\nhc = "a"\n'
    path = tmp_path / "forward.toml"
    path.write_text('relay = "wss://r.example"\nca_file = "ca.pem"\n' + text, "utf-8")
    assert load_forward_config(path, {}).ca_file == str(tmp_path / "ca.pem")
    path.write_text('relay = "wss://r.example"\nca_file = "nope.pem"\n' + text, "utf-8")
    with pytest.raises(ConfigError) as info:
        load_forward_config(path, {})
    assert str(info.value) == (
        f"{path}: ca_file: cannot read {tmp_path / 'nope.pem'}: No such file or directory"
    )


def test_file_problems_lists_every_unusable_file(tmp_path: Path) -> None:
    (tmp_path / "ok.pem").write_text("x")
    (tmp_path / "dir.pem").mkdir()
    data = {
        "relay": {"tls_cert": "ok.pem", "tls_key": "gone.pem", "data_dir": "ok.pem"},
        "jwt_issuers": [{"public_keys": ["ok.pem", "dir.pem"], "jwks_file": "gone.json"}],
    }
    source = str(tmp_path / "relay.toml")
    found = [(e.key, e.reason) for e in file_problems(data, RELAY_SCHEMA, path=source)]
    assert found == [
        ("relay.tls_key", f"cannot read {tmp_path / 'gone.pem'}: No such file or directory"),
        ("relay.data_dir", f"{tmp_path / 'ok.pem'} is not a directory"),
        ("jwt_issuers[0].public_keys[1]", f"cannot read {tmp_path / 'dir.pem'}: Is a directory"),
        (
            "jwt_issuers[0].jwks_file",
            f"cannot read {tmp_path / 'gone.json'}: No such file or directory",
        ),
    ]


def test_check_tells_the_kind_or_asks_for_it(tmp_path: Path) -> None:
    assert detect_kind({"relay": {}}, "r.toml") == "relay"
    assert detect_kind({"relay": "ws://x", "mappings": []}, "a.toml") == "agent"
    assert detect_kind({"relay": "ws://x", "bindings": []}, "f.toml") == "forwarder"
    with pytest.raises(ConfigError) as info:
        detect_kind({"relay": "ws://x", "binding": []}, "odd.toml")
    assert str(info.value) == (
        "odd.toml: cannot tell a relay, agent or forwarder config: has no [relay], [[rules]],"
        " [[mappings]] or [[bindings]] table; 'binding' (did you mean bindings?);"
        " give --kind relay|agent|forwarder"
    )
    with pytest.raises(ConfigError, match="has tables of agent and forwarder configs"):
        detect_kind({"mappings": [], "bindings": []}, "both.toml")


def test_check_as_the_wrong_kind_reports_its_keys_as_unknown(tmp_path: Path) -> None:
    path = tmp_path / "forward.toml"
    path.write_text('relay = "ws://127.0.0.1:9"\n[[bindings]]\nlocal = "127.0.0.1:0"\nhc = "a"\n')
    assert check_config(str(path), env={}).kind == "forwarder"
    with pytest.raises(MultiConfigError) as info:
        check_config(str(path), "agent", env={})
    assert info.value.errors[0].key == "bindings"


def test_check_follows_the_environment_for_relay_paths(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(f'[relay]\ndata_dir = "relay.toml"\n{RULE}', "utf-8")
    with pytest.raises(MultiConfigError, match=r"relay\.data_dir: .* is not a directory"):
        check_config(str(path), env={})
    env = {"HYBRIDRELAY_DATA_DIR": str(tmp_path / "state")}
    assert check_config(str(path), env=env).summary[2] == f"  store: SQLite in {tmp_path / 'state'}"


def test_check_knows_device_keys_and_names_the_device(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "dev.key").write_text("MDEyMzQ1Njc4OWFiY2RlZg==\n")  # base64 of 16 bytes
    path = tmp_path / "forward.toml"
    path.write_text(
        'relay = "ws://127.0.0.1:9"\n[[bindings]]\nlocal = "127.0.0.1:0"\nhc = "a"\n'
        'device_id = "dev-1"\ndevice_key_file = "keys/dev.key"\n',
        "utf-8",
    )
    assert (
        check_config(str(path), env={}).summary[-1] == "  binding 127.0.0.1:0 -> a (device dev-1)"
    )
    path.write_text(path.read_text().replace("keys/dev.key", "keys/gone.key") + "devise = 1\n")
    with pytest.raises(MultiConfigError) as info:
        check_config(str(path), env={})
    assert [(e.key, e.reason) for e in info.value.errors][:2] == [
        ("bindings[0].devise", "unknown key (did you mean device_id?)"),
        (
            "bindings[0].device_key_file",
            f"cannot read {tmp_path / 'keys' / 'gone.key'}: No such file or directory",
        ),
    ]
