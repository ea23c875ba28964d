"""Config mistakes and ``hybridrelay check``, run as a user types them (issue 12).

A missing file is named with its key and the OS's reason (exit 2); relative paths in a
config resolve against the config file's directory, whatever the working directory; a
misspelt key is reported as unknown with a did-you-mean, every one at once; ``check``
validates a relay, agent or forwarder config without running it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tests.harness.processes import CliProcess
from tests.harness.relay import LISTEN_KEY, ROOT_KEY, RelayProcess
from tests.harness.timing import seconds
from tests.harness.tls import make_tls_files

pytestmark = pytest.mark.e2e

KEY = "0123456789abcdef0123"
RULE = f'[[rules]]\nname = "root"\nkey = "{KEY}"\nrights = ["Listen", "Send", "Manage"]\n'


def hybridrelay(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m hybridrelay ARGS`` in ``cwd``; the developer's HYBRIDRELAY_* stay out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDRELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "hybridrelay", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
    )


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory that is not the config's."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


# -- missing files and relative paths --------------------------------------------------------


def test_relay_serve_names_the_missing_tls_file_and_its_key(
    tmp_path: Path, elsewhere: Path
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "key.pem").write_text("x")
    config = conf / "relay.toml"
    config.write_text(f'[relay]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n{RULE}', "utf-8")
    done = hybridrelay("relay", "serve", "--config", str(config), cwd=elsewhere)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"hybridrelay: config error: {config}: relay.tls_cert: cannot read"
        f" {conf / 'cert.pem'}: No such file or directory"
    ]


async def test_relay_serve_finds_relative_tls_files_and_data_dir_next_to_its_config(
    tmp_path: Path, elsewhere: Path
) -> None:
    conf = tmp_path / "etc"
    (conf / "tls").mkdir(parents=True)
    tls = make_tls_files(conf / "tls")
    config = conf / "relay.toml"
    config.write_text(
        '[relay]\nport = 0\ntls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n'
        f'data_dir = "state"\n{RULE}',
        "utf-8",
    )
    async with CliProcess(["relay", "serve", "--config", str(config)], cwd=elsewhere) as relay:
        ready = await relay.wait_for_line(r"relay ready at wss://127\.0\.0\.1:(\d+)", timeout=30)
        port = int(ready.group(1))
        # The certificate it serves is the one next to the config, and chains to its CA.
        context = ssl.create_default_context(cafile=tls.ca_cert)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=seconds(10)) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls_socket,
        ):
            assert tls_socket.version() is not None
        assert (conf / "state" / "hybridrelay.sqlite3").is_file()
        assert not (elsewhere / "state").exists()


def test_a_missing_ca_file_on_the_command_line_is_named_relative_to_the_working_directory(
    elsewhere: Path,
) -> None:
    done = hybridrelay(
        "forward",
        *("--relay", "wss://127.0.0.1:9", "--hc", "mqtt", "--key-name", "send"),
        *("--key", "secret", "--ca-file", "ca.pem"),
        cwd=elsewhere,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "hybridrelay: config error: <command line>: --ca-file: cannot read ca.pem:"
        " No such file or directory"
    ]


# -- unknown keys first ------------------------------------------------------------------------


def test_listen_config_with_a_misspelt_required_key_names_the_spelling(
    tmp_path: Path, elsewhere: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'relay = "ws://127.0.0.1:9"\n[[mappings]]\nhc = "mqtt"\ntarget = "tcp://127.0.0.1:1883"\n'
        'key_nmae = "listen"\nkey = "secret"\n',
        "utf-8",
    )
    done = hybridrelay("listen", "--config", str(config), cwd=elsewhere)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"hybridrelay: config error: {config}: mappings[0].key_nmae:"
        " unknown key (did you mean key_name?)"
    ]


# -- hybridrelay check ----------------------------------------------------------------------


def test_check_relay_config_prints_what_it_found(tmp_path: Path, elsewhere: Path) -> None:
    tls = make_tls_files(tmp_path)
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\nport = 8443\ntls_cert = "cert.pem"\ntls_key = "key.pem"\ndata_dir = "state"\n'
        f'{RULE}[[hybrid_connections]]\nname = "mqtt"\n',
        "utf-8",
    )
    done = hybridrelay("check", "--config", str(config), cwd=elsewhere)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        f"relay config {config}: OK",
        f"  listens on 127.0.0.1:8443, TLS {tls.cert}; public URL wss://127.0.0.1:8443",
        f"  store: SQLite in {tmp_path / 'state'}",
        "  1 namespace rule: root (Listen+Send+Manage)",
        "  1 hybrid connection: mqtt",
    ]
    assert KEY not in done.stdout


def test_check_reports_every_mistake_of_an_agent_config(tmp_path: Path, elsewhere: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'relay = "ws://127.0.0.1:9"\nca_file = "ca.pem"\nping_intervall = 5\n'
        '[[mappings]]\nhc = "mqtt"\ntarget = "tcp://127.0.0.1:1883"\n'
        'key_nmae = "listen"\nkey_file = "keys/mqtt.key"\n',
        "utf-8",
    )
    done = hybridrelay("check", "--config", str(config), cwd=elsewhere)
    assert (done.returncode, done.stdout) == (2, "")
    prefix = f"hybridrelay: config error: {config}: "
    assert done.stderr.splitlines() == [
        f"{prefix}ping_intervall: unknown key (did you mean ping_interval?)",
        f"{prefix}mappings[0].key_nmae: unknown key (did you mean key_name?)",
        f"{prefix}ca_file: cannot read {tmp_path / 'ca.pem'}: No such file or directory",
        f"{prefix}mappings[0].key_file: cannot read {tmp_path / 'keys' / 'mqtt.key'}:"
        " No such file or directory",
    ]


def test_check_forwarder_config_prints_its_bindings(tmp_path: Path, elsewhere: Path) -> None:
    (tmp_path / "send.key").write_text("secret\n")
    config = tmp_path / "forward.toml"
    config.write_text(
        'relay = "ws://127.0.0.1:9"\n[[bindings]]\nlocal = "127.0.0.1:11883"\nhc = "mqtt"\n'
        'key_name = "send"\nkey_file = "send.key"\n'
        '[[bindings]]\nlocal = "udp://127.0.0.1:5683"\nhc = "coap"\n',
        "utf-8",
    )
    done = hybridrelay("check", "--config", str(config), cwd=elsewhere)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        f"forwarder config {config}: OK",
        "  relay ws://127.0.0.1:9",
        "  binding 127.0.0.1:11883 -> mqtt (rule send)",
        "  binding udp://127.0.0.1:5683 -> coap (anonymous)",
    ]


# -- hybridrelay check --probe ----------------------------------------------------------------


async def test_check_probe_asks_the_relay_about_each_mapping(
    relay_process_factory: Callable[..., Awaitable[RelayProcess]], tmp_path: Path, elsewhere: Path
) -> None:
    relay = await relay_process_factory()
    good = tmp_path / "agent.toml"
    mapping = '[[mappings]]\nhc = "{hc}"\ntarget = "tcp://127.0.0.1:1883"\nkey_name = "{rule}"\n'
    good.write_text(
        f'relay = "{relay.url}"\nagent_id = "gw"\n'
        + mapping.format(hc="hc-ws", rule="listen-only")
        + f'key = "{LISTEN_KEY}"\n',
        "utf-8",
    )
    done = await asyncio.to_thread(
        hybridrelay, "check", "--config", str(good), "--probe", cwd=elsewhere
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[-1] == (
        f"  probe mappings[0]: hc-ws at {relay.url} (listen): accepted, 0 listeners online"
    )

    # The listen-only rule of hc-ws is no rule of "other", and "nope" does not exist.
    bad = tmp_path / "bad.toml"
    bad.write_text(
        good.read_text("utf-8")
        + mapping.format(hc="other", rule="listen-only")
        + f'key = "{LISTEN_KEY}"\n'
        + mapping.format(hc="nope", rule="RootManageSharedAccessKey")
        + f'key = "{ROOT_KEY}"\n',
        "utf-8",
    )
    done = await asyncio.to_thread(
        hybridrelay, "check", "--config", str(bad), "--probe", cwd=elsewhere
    )
    assert done.returncode == 2
    errors = done.stderr.splitlines()
    prefix = f"hybridrelay: config error: {bad}: "
    assert errors[0].startswith(f"{prefix}mappings[1]: other at {relay.url} (listen): bad-token: ")
    assert errors[1].startswith(
        f"{prefix}mappings[2]: nope at {relay.url} (listen): no-such-entity: "
    )
    assert len(errors) == 2
    assert LISTEN_KEY not in done.stdout + done.stderr

    # A relay config probes its own hybrid connections at its public URL.
    assert relay.config_path is not None
    served = tmp_path / "relay.toml"
    served.write_text(
        relay.config_path.read_text("utf-8").replace(
            "[relay]\n", f'[relay]\npublic_url = "{relay.url}"\n', 1
        ),
        "utf-8",
    )
    done = await asyncio.to_thread(
        hybridrelay, "check", "--config", str(served), "--probe", cwd=elsewhere
    )
    assert (done.returncode, done.stderr) == (0, "")
    probes = [line for line in done.stdout.splitlines() if line.startswith("  probe ")]
    assert len(probes) == 8  # every [[hybrid_connections]] of the test config
    assert all(line.endswith("(listen): accepted, 0 listeners online") for line in probes)


def test_check_probe_of_an_unreachable_relay_exits_1(tmp_path: Path, elsewhere: Path) -> None:
    with socket.socket() as closed:  # a free port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = tmp_path / "forward.toml"
    config.write_text(
        f'relay = "ws://127.0.0.1:{port}"\n[[bindings]]\nlocal = "127.0.0.1:0"\nhc = "mqtt"\n',
        "utf-8",
    )
    done = hybridrelay("check", "--config", str(config), "--probe", cwd=elsewhere)
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"hybridrelay: probe bindings[0]: mqtt at ws://127.0.0.1:{port} (connect): unreachable: "
    )
