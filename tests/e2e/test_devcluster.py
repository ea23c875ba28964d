"""``hybridrelay dev cluster`` (scripts/cluster): starts Redis, nodes and nginx, stops them all.

The cluster runs as a child process; its banner names every child with its pid. Each child
is the leader of its own process group, so "gone" means ``killpg(pid, 0)`` finds nothing:
the child and anything it spawned (nginx workers). The checks run right after the cluster
process has exited, which it does only once it has reaped every child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from tests.harness.processes import CliProcess
from tests.harness.timing import seconds

from hybridrelay.client import connect
from hybridrelay.dev.cluster import nginx_config, node_config
from hybridrelay.errors import ConnectionClosedError
from hybridrelay.listener import AcceptRequest, Listener
from hybridrelay.listener.config import load_agent_config
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.relay.config import load_relay_config
from hybridrelay.wsclient import WsConnection

ROOT = Path(__file__).resolve().parents[2]
RULE = "RootManageSharedAccessKey"
HAS_NGINX = shutil.which("nginx") is not None
_CHILD = re.compile(r"^  (?P<name>redis|node-\d+|load balancer)\s+(?P<url>\S+)\s+pid (?P<pid>\d+)")
_KEY = re.compile(r"export HYBRIDRELAY_KEY='(?P<key>[^']+)'")
_FILES = re.compile(r"^  files\s+(?P<dir>\S+)")
_AGENT = re.compile(r"hybridrelay listen --config (?P<path>\S+)")


@pytest.fixture
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[CliProcess]:
    proc = CliProcess(["dev", "cluster", "--nodes", "2"], name="dev cluster")
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop(timeout=20)
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            print(proc.output())  # noqa: T201 - the cluster's log, shown only for a failed test


def _children(output: str) -> dict[str, tuple[str, int]]:
    found = {}
    for line in output.splitlines():
        if match := _CHILD.match(line):
            found[match["name"]] = (match["url"], int(match["pid"]))
    return found


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, someone else's: the pid was reused
    return True


async def _status(session: aiohttp.ClientSession, ws_url: str, path: str) -> int:
    async with session.get(ws_url.replace("ws://", "http://", 1) + path) as resp:
        return resp.status


async def _echo(ws: WsConnection, request: AcceptRequest) -> None:
    with contextlib.suppress(ConnectionClosedError):
        while True:
            await ws.send(await ws.recv())


@pytest.mark.e2e
async def test_cluster_starts_serves_and_stops_everything(cluster: CliProcess) -> None:
    await cluster.wait_for_line(r"^cluster ready: 2 nodes behind ws://127\.0\.0\.1:\d+", 30)
    output = cluster.output()
    children = _children(output)
    nodes = {name: v for name, v in children.items() if name.startswith("node-")}
    assert set(nodes) == {"node-1", "node-2"}
    assert "redis" in children
    assert ("load balancer" in children) is HAS_NGINX
    key_match = _KEY.search(output)
    files_match = re.search(_FILES.pattern, output, re.M)
    agent_match = _AGENT.search(output)
    assert key_match
    assert files_match
    assert agent_match
    workdir = Path(files_match["dir"])
    assert await asyncio.to_thread(workdir.is_dir)

    # The agent config it prints keeps a control channel on every node.
    agent = load_agent_config(
        agent_match["path"], env={"HYBRIDRELAY_KEY": key_match["key"]}, hostname="test"
    )
    assert set(agent.relays) == {url for url, _ in nodes.values()}
    assert agent.mappings[0].connections == len(nodes)

    async with aiohttp.ClientSession() as session:
        for url, _ in nodes.values():
            assert await _status(session, url, "/healthz") == 200
            assert await _status(session, url, "/readyz") == 200
        if HAS_NGINX:
            assert await _status(session, children["load balancer"][0], "/healthz") == 200
        # Each node's dashboard, on its own loopback port, is listed and answers.
        dashboards = re.findall(r"^  dashboard\s+(http://\S+/\$dashboard/)\s+node-\d", output, re.M)
        assert len(dashboards) == len(nodes)
        for url in dashboards:
            async with session.get(url) as page:
                assert page.status == 200

    # The printed key works: a listener on every node, so a sender finds one whichever
    # node the load balancer (a WebSocket upgrade through nginx) picks.
    tokens = SasTokenProvider(RULE, key_match["key"])
    stop = asyncio.Event()
    listeners = [
        Listener(url, "demo", token_provider=tokens, handler=_echo) for url, _ in nodes.values()
    ]
    tasks = [asyncio.create_task(listener.run(stop)) for listener in listeners]
    try:
        async with asyncio.timeout(seconds(10)):
            await asyncio.gather(*(listener.connected.wait() for listener in listeners))
            entry = children.get("load balancer", nodes["node-1"])[0]
            for _ in range(4):
                conn = await connect(entry, "demo", token_provider=tokens)
                try:
                    await conn.send(b"ping")
                    assert await conn.recv() == b"ping"
                finally:
                    await conn.close()
    finally:
        stop.set()
        async with asyncio.timeout(seconds(10)):
            await asyncio.gather(*tasks, return_exceptions=True)

    cluster.send_signal(signal.SIGTERM)
    assert await cluster.wait(timeout=20) == 0
    assert "cluster stopped" in cluster.output()
    for name, (_, pid) in children.items():
        assert not _group_alive(pid), name
    assert not await asyncio.to_thread(workdir.exists)


@pytest.mark.e2e
async def test_cluster_that_cannot_start_exits_1() -> None:
    # Nothing listens on port 1: the node cannot reach Redis and exits.
    proc = CliProcess(
        ["dev", "cluster", "--nodes", "1", "--no-nginx", "--redis-url", "redis://127.0.0.1:1/0"],
        name="dev cluster",
    )
    await proc.start()
    try:
        assert await proc.wait(timeout=20) == 1
    finally:
        await proc.stop()
    output = proc.output()
    assert "hybridrelay dev cluster: node-1 exited" in output, output
    assert "cluster ready" not in output


@pytest.mark.e2e
async def test_bad_options_are_config_errors() -> None:
    proc = CliProcess(["dev", "cluster", "--nodes", "0"], name="dev cluster")
    await proc.start()
    try:
        assert await proc.wait(timeout=20) == 2
    finally:
        await proc.stop()
    assert "--nodes: must be between 1 and 32" in proc.output()


def test_script_runs_the_cli() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "cluster"), "--help"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=seconds(20),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: hybridrelay dev cluster" in result.stdout
    for option in ("--nodes", "--base-port", "--redis-url", "--no-nginx"):
        assert option in result.stdout


def test_node_config_is_a_cluster_node_with_its_own_public_url(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(
        node_config(
            port=41001,
            data_dir=tmp_path / "data",
            redis_url="redis://127.0.0.1:41000/0",
            prefix="dev",
            node_id="node-1",
            key="k" * 43,
            hc="demo",
            drain_timeout=5.0,
        ),
        "utf-8",
    )
    config = load_relay_config(path, env={})
    assert config.relay.public_url == "ws://127.0.0.1:41001"
    assert config.relay.port == 41001
    assert config.relay.drain_timeout == 5.0
    assert config.cluster is not None
    assert (config.cluster.redis_url, config.cluster.prefix) == ("redis://127.0.0.1:41000/0", "dev")
    assert config.cluster.node_id == "node-1"
    assert config.hybrid_connection("demo") is not None


@pytest.mark.skipif(not HAS_NGINX, reason="nginx is not installed")
def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx")
    assert nginx
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        nginx_config(workdir=tmp_path, listen_port=41000, node_ports=[41001, 41002]), "utf-8"
    )
    result = subprocess.run(
        [nginx, "-e", "stderr", "-t", "-p", f"{tmp_path}/", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=seconds(10),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = conf.read_text("utf-8")
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "daemon off;" in text
