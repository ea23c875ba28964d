"""``--workers``: what the config must say, the worker's own URL, the shared port."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest
from tests.harness.relay import load, write_config

from hybridrelay.errors import ConfigError
from hybridrelay.relay.config import ClusterConfig, RelayConfig
from hybridrelay.relay.serve import worker_url
from hybridrelay.relay.workers import check_workers, reserve_port

_CLUSTER = ClusterConfig(redis_url="redis://127.0.0.1:6379/0")


def _with(config: RelayConfig, *, cluster: bool = True, **relay: object) -> RelayConfig:
    return replace(
        config,
        relay=replace(config.relay, **relay),  # type: ignore[arg-type] # RelaySettings' keywords
        cluster=_CLUSTER if cluster else None,
    )


def test_workers_key_and_environment_are_read(tmp_path: Path) -> None:
    path = write_config(tmp_path, relay_extra="workers = 3\nworker_port = 9100")
    config = load(path)
    assert (config.relay.workers, config.relay.worker_port) == (3, 9100)
    assert load(path, HYBRIDRELAY_WORKERS="4").relay.workers == 4
    with pytest.raises(ConfigError, match="workers"):
        load(write_config(tmp_path, relay_extra="workers = 0"))


def test_more_than_one_worker_needs_redis(tmp_path: Path) -> None:
    config = load(write_config(tmp_path))
    check_workers(_with(config, cluster=False, workers=1), "x.toml")  # one worker: no Redis
    with pytest.raises(ConfigError, match=r"relay\.workers: 2 workers need \[cluster\]"):
        check_workers(_with(config, cluster=False, workers=2), "x.toml")
    check_workers(_with(config, workers=2), "x.toml")


def test_a_public_url_needs_a_fixed_worker_port_range(tmp_path: Path) -> None:
    config = load(write_config(tmp_path))
    public = _with(config, workers=2, public_url="wss://relay.example.com")
    with pytest.raises(ConfigError, match=r"relay\.worker_port"):
        check_workers(public, "x.toml")
    check_workers(replace(public, relay=replace(public.relay, worker_port=9100)), "x.toml")
    with pytest.raises(ConfigError, match="exceeds 65535"):
        check_workers(_with(config, workers=4, worker_port=65533), "x.toml")


def test_each_worker_gets_a_dashboard_port_in_range(tmp_path: Path) -> None:
    config = load(write_config(tmp_path))
    check_workers(_with(config, workers=4, dashboard_listen=("127.0.0.1", 0)), "x.toml")
    check_workers(_with(config, workers=4, dashboard_listen=("127.0.0.1", 65532)), "x.toml")
    with pytest.raises(ConfigError, match=r"relay\.dashboard_listen: .*exceeds 65535"):
        check_workers(_with(config, workers=4, dashboard_listen=("127.0.0.1", 65533)), "x.toml")


@pytest.mark.parametrize(
    ("public", "port", "want"),
    [
        ("ws://127.0.0.1:8080", 9001, "ws://127.0.0.1:9001"),
        ("wss://relay.example.com", 9443, "wss://relay.example.com:9443"),
        ("wss://relay.example.com:443/base", 9443, "wss://relay.example.com:9443/base"),
        ("ws://[::1]:8080", 9001, "ws://[::1]:9001"),
    ],
)
def test_a_workers_url_is_the_public_host_at_its_own_port(
    public: str, port: int, want: str
) -> None:
    assert worker_url(public, port) == want


def test_the_reserved_port_admits_every_workers_listening_socket() -> None:
    port, held = reserve_port("127.0.0.1", 0)
    workers: list[socket.socket] = []
    try:
        assert port > 0
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            workers.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
        # The reservation listens on nothing: a connect reaches a worker's socket.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        # Without SO_REUSEPORT (another program) the port is taken.
        with socket.socket() as other, pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", port))
    finally:
        for sock in [*held, *workers]:
            sock.close()
