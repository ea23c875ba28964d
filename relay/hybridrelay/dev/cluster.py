"""``hybridrelay dev cluster`` (``scripts/cluster``): a throwaway relay cluster on loopback.

Starts, each as a child process in its own process group:

* a private ``redis-server`` on a free port, no persistence, in a temp dir (or uses
  ``--redis-url``);
* N relay nodes, ``python -m hybridrelay relay serve --config <tmp>/node-i/relay.toml``, each
  with ``[cluster]`` (one shared prefix, its own ``node_id``) and ``public_url`` set to its own
  loopback port, since listeners dial the rendezvous address on the sender's node;
* nginx, when installed, as a WebSocket-aware load balancer in front of the nodes.

Once every node answers ``/readyz`` (and nginx ``/healthz``) it prints the URLs, the SAS key
and example commands, then ``cluster ready: ...``. SIGINT/SIGTERM stop nginx, then the nodes
(which drain), then Redis: SIGTERM to each process group, SIGKILL after a grace period. The
temp dir goes with them. Development only: the key is printed on purpose. POSIX only.
If this process is killed with SIGKILL its children live on: the banner prints their pids,
each the id of its process group (``kill -TERM -- -PID``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hybridrelay.dev.children import ChildProcess, free_port
from hybridrelay.durations import duration_arg
from hybridrelay.errors import ConfigError, UnavailableError

__all__ = [
    "ChildProcess",
    "ClusterOptions",
    "add_dev_parser",
    "http_status",
    "nginx_config",
    "node_config",
    "run_cluster",
    "start_redis",
]

RULE: Final = "RootManageSharedAccessKey"
HOST: Final = "127.0.0.1"
READY_LINE: Final = "cluster ready:"
_RELAY_READY: Final = re.compile(r"relay ready at (\S+)(?: \(dashboard: (\S+)\))?")
_POLL_S: Final = 0.05
_START_ATTEMPTS: Final = 3  # a free port can be taken between choosing and binding it
_NODE_START_S: Final = 30.0
_SERVICE_START_S: Final = 10.0
_STOP_GRACE_S: Final = 5.0


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _toml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


_PORT_TAKEN: Final = re.compile(r"address already in use", re.IGNORECASE)


def _port_taken(child: ChildProcess) -> bool:
    """Did ``child`` fail because its port was taken (by someone else, after we chose it)?"""
    return child.search(_PORT_TAKEN) is not None


class _StopRequestedError(Exception):
    """SIGINT/SIGTERM arrived while the cluster was still starting."""


async def _poll(
    ready: Callable[[], Awaitable[bool]],
    *,
    what: str,
    child: ChildProcess,
    within: float,
    stop: asyncio.Event | None = None,
) -> None:
    """Until ``ready()`` holds; UnavailableError if ``child`` exits or time runs out."""
    deadline = time.monotonic() + within
    while True:
        if stop is not None and stop.is_set():
            raise _StopRequestedError
        if child.returncode is not None:
            raise UnavailableError(
                f"{child.name} exited with {child.returncode} before {what}:\n{child.tail()}"
            )
        if await ready():
            return
        if time.monotonic() > deadline:
            raise UnavailableError(
                f"{child.name}: no {what} within {within:.0f} s:\n{child.tail()}"
            )
        await asyncio.sleep(_POLL_S)  # polling an endpoint, not synchronising by delay


async def http_status(host: str, port: int, path: str, *, limit_s: float = 2.0) -> int | None:
    """The status of ``GET path`` on ``host:port`` (plain HTTP/1.1), None if unreachable."""
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
                writer.write(request.encode("ascii"))
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None
    parts = status_line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


async def _redis_answers(port: int) -> bool:
    try:
        async with asyncio.timeout(1):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(b"PING\r\n")
                await writer.drain()
                return (await reader.readline()).startswith(b"+PONG")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False


async def start_redis(
    workdir: Path,
    *,
    port: int | None = None,
    echo: bool = False,
    stop: asyncio.Event | None = None,
    started: list[ChildProcess] | None = None,
) -> tuple[ChildProcess, str]:
    """A private ``redis-server`` on loopback (no persistence, files in ``workdir``).

    Args:
        workdir: Its working directory (an existing, private directory).
        port: Fixed port; default a free one (retried if it is taken meanwhile).
        echo: Print its output as ``[redis] ...``.
        stop: Give up (without error) when it is set.
        started: Each child is appended here as soon as it exists, for the caller to stop.

    Returns:
        The child (stop it when done) and its ``redis://`` URL.

    Raises:
        UnavailableError: No ``redis-server`` on PATH, or it did not answer PING.
    """
    executable = shutil.which("redis-server")
    if executable is None:
        raise UnavailableError(
            "redis-server is not on PATH: install it (apt-get install redis-server) "
            "or give --redis-url"
        )
    for attempt in range(1, _START_ATTEMPTS + 1):
        chosen = port if port is not None else free_port()
        # fmt: off
        argv = [
            executable,
            "--port", str(chosen), "--bind", HOST, "--protected-mode", "yes",
            "--save", "", "--appendonly", "no", "--dir", str(workdir),
            "--daemonize", "no", "--loglevel", "warning",
        ]
        # fmt: on
        child = ChildProcess("redis", argv, cwd=workdir, echo=echo, own_group=True)
        if started is not None:
            started.append(child)
        await child.start()
        try:
            await _poll(
                functools.partial(_redis_answers, chosen),
                what="answering PING",
                child=child,
                within=_SERVICE_START_S,
                stop=stop,
            )
        except UnavailableError:
            await child.stop()
            if port is not None or attempt == _START_ATTEMPTS or not _port_taken(child):
                raise
            continue
        return child, f"redis://{HOST}:{chosen}/0"
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


# ---------------------------------------------------------------------------- configs


def node_config(
    *,
    port: int,
    data_dir: Path,
    redis_url: str,
    prefix: str,
    node_id: str,
    key: str,
    hc: str,
    drain_timeout: float,
) -> str:
    """The TOML of one cluster node: its own port and public URL, the shared Redis."""
    return f"""\
# Written by `hybridrelay dev cluster` (development only: the key is in the clear).
[relay]
host = "{HOST}"
port = {port}
# Listeners dial the rendezvous address on the sender's node: this node's own address.
public_url = "ws://{HOST}:{port}"
data_dir = {_toml_str(str(data_dir))}
auto_create = true
drain_timeout = {drain_timeout}

[cluster]
redis_url = {_toml_str(redis_url)}
prefix = {_toml_str(prefix)}
node_id = {_toml_str(node_id)}

[[rules]]
name = "{RULE}"
key = {_toml_str(key)}
rights = ["Manage", "Listen", "Send"]

[[hybrid_connections]]
name = {_toml_str(hc)}
"""


def nginx_config(*, workdir: Path, listen_port: int, node_ports: Sequence[int]) -> str:
    """A non-daemon nginx balancing WebSockets over the nodes; every path under ``workdir``.

    The proxy settings are those of ``deploy/nginx/hybridrelay.conf``.
    """
    servers = "\n".join(
        f"        server {HOST}:{port} max_fails=2 fail_timeout=5s;" for port in node_ports
    )
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
# Written by `hybridrelay dev cluster`.
daemon off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log stderr warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
{temp}

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream hybridrelay {{
        least_conn;
{servers}
    }}

    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $connection_upgrade;
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_read_timeout 3600s;
    proxy_send_timeout 3600s;
    proxy_connect_timeout 5s;
    client_max_body_size 0;
    proxy_next_upstream error timeout http_502 http_503;

    server {{
        listen {HOST}:{listen_port};
        location / {{
            proxy_pass http://hybridrelay;
        }}
    }}
}}
"""


def agent_config(*, relays: Sequence[str], hc: str, target: str) -> str:
    """A listener agent with one control channel on every node (``relays[i % n]``)."""
    return f"""\
# Written by `hybridrelay dev cluster`: hybridrelay listen --config THIS_FILE
# (the key comes from $HYBRIDRELAY_KEY). Control channel i goes to relays[i % {len(relays)}].
relays = [{", ".join(_toml_str(url) for url in relays)}]
agent_id = "devcluster-agent"

[[mappings]]
hc = {_toml_str(hc)}
target = {_toml_str(target)}
key_name = "{RULE}"
key_env = "HYBRIDRELAY_KEY"
connections = {len(relays)}
"""


# ---------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterOptions:
    nodes: int = 3
    base_port: int | None = None
    redis_url: str | None = None
    nginx: bool = True
    prefix: str = "dev"
    hc: str = "demo"
    key: str = ""
    drain_timeout: float = 5.0
    log_level: str = "info"
    log_format: str = "kv"

    def port(self, role: str, index: int = 0) -> int | None:
        """With ``--base-port P``: the LB on P, node i on P+i, Redis on P+N+1."""
        if self.base_port is None:
            return None
        if role == "lb":
            return self.base_port
        if role == "node":
            return self.base_port + index
        return self.base_port + self.nodes + 1


def add_dev_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``dev cluster`` to ``sub`` (the root argparse subparsers action)."""
    dev: argparse.ArgumentParser = sub.add_parser("dev", help="development tools")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    cluster = dev_sub.add_parser(
        "cluster",
        help="Redis + N relay nodes (+ nginx) on loopback, until Ctrl-C",
        description="A private Redis, N relay nodes with [cluster] and nginx in front of them,"
        " all on loopback, until Ctrl-C (development only: prints the SAS key).",
    )
    cluster.add_argument("--nodes", type=int, default=3, help="relay nodes (default 3)")
    cluster.add_argument(
        "--base-port",
        type=int,
        metavar="P",
        help="fixed ports: load balancer P, node i P+i, private Redis P+N+1 (default: free ports)",
    )
    cluster.add_argument(
        "--redis-url", metavar="URL", help="use this Redis instead of starting a private one"
    )
    cluster.add_argument("--no-nginx", action="store_true", help="no load balancer")
    cluster.add_argument(
        "--prefix", default="dev", help="[cluster] prefix, the key namespace in Redis"
    )
    cluster.add_argument("--hc", default="demo", help="hybrid connection the examples use")
    cluster.add_argument(
        "--drain-timeout",
        type=duration_arg(allow_zero=True),
        default=5.0,
        metavar="DURATION",
        help="[relay] drain_timeout of the nodes (default 5s)",
    )
    return cluster


def _options(args: argparse.Namespace, env: Mapping[str, str]) -> ClusterOptions:
    where = "<command line>"
    if not 1 <= args.nodes <= 32:
        raise ConfigError(where, "--nodes", "must be between 1 and 32")
    if args.base_port is not None and not 1024 <= args.base_port <= 65535 - args.nodes - 1:
        raise ConfigError(where, "--base-port", f"must be between 1024 and {65534 - args.nodes}")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,40}", args.prefix):
        raise ConfigError(where, "--prefix", "1-40 letters, digits, '.', '_' or '-'")
    if not 0 <= args.drain_timeout <= 3600:
        raise ConfigError(where, "--drain-timeout", "must be between 0 and 3600 seconds")
    return ClusterOptions(
        nodes=args.nodes,
        base_port=args.base_port,
        redis_url=args.redis_url,
        nginx=not args.no_nginx,
        prefix=args.prefix,
        hc=args.hc,
        # Like the development default: HYBRIDRELAY_DEV_KEY keeps the key across runs.
        key=env.get("HYBRIDRELAY_DEV_KEY") or secrets.token_urlsafe(32),
        drain_timeout=args.drain_timeout,
        log_level=args.log_level or "info",
        log_format=args.log_format,
    )


# ---------------------------------------------------------------------------- the cluster


@dataclass(frozen=True, slots=True)
class _Node:
    node_id: str
    url: str
    port: int
    child: ChildProcess


def _child_env() -> dict[str, str]:
    # The developer's HYBRIDRELAY_* settings (a port, a Redis URL) would override every
    # node's config; the nodes get exactly what their file says.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDRELAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _start_node(
    options: ClusterOptions,
    index: int,
    workdir: Path,
    redis_url: str,
    started: list[ChildProcess],
    stop: asyncio.Event,
) -> _Node:
    node_id = f"node-{index}"
    directory = workdir / node_id
    directory.mkdir()
    config_path = directory / "relay.toml"
    fixed = options.port("node", index)
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = fixed if fixed is not None else free_port()
        text = node_config(
            port=port,
            data_dir=directory / "data",
            redis_url=redis_url,
            prefix=options.prefix,
            node_id=node_id,
            key=options.key,
            hc=options.hc,
            drain_timeout=options.drain_timeout,
        )
        config_path.write_text(text, "utf-8")
        # fmt: off
        argv = [
            sys.executable, "-m", "hybridrelay",
            "--log-level", options.log_level, "--log-format", options.log_format,
            "relay", "serve", "--config", str(config_path),
        ]
        # fmt: on
        child = ChildProcess(
            node_id,
            argv,
            env=_child_env(),
            echo=True,
            own_group=True,
            stop_grace=options.drain_timeout + _STOP_GRACE_S,
        )
        started.append(child)
        await child.start()

        async def ready(child: ChildProcess = child, port: int = port) -> bool:
            return (
                child.search(_RELAY_READY) is not None
                and await http_status(HOST, port, "/readyz") == 200
            )

        try:
            await _poll(ready, what="/readyz 200", child=child, within=_NODE_START_S, stop=stop)
        except UnavailableError:
            await child.stop()
            if fixed is not None or attempt == _START_ATTEMPTS or not _port_taken(child):
                raise
            continue
        return _Node(node_id, f"ws://{HOST}:{port}", port, child)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def _start_nginx(
    executable: str,
    options: ClusterOptions,
    workdir: Path,
    node_ports: Sequence[int],
    started: list[ChildProcess],
    stop: asyncio.Event,
) -> tuple[ChildProcess, int]:
    directory = workdir / "nginx"
    directory.mkdir()
    fixed = options.port("lb")
    # nginx opens its compiled-in error log (/var/log/nginx, root's) before reading the
    # config: only an alert, but a confusing one; -e (nginx >= 1.19.5) redirects it.
    early_log = ["-e", "stderr"] if await _nginx_version(executable) >= (1, 19, 5) else []
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = fixed if fixed is not None else free_port()
        conf = directory / "nginx.conf"
        conf.write_text(
            nginx_config(workdir=directory, listen_port=port, node_ports=node_ports), "utf-8"
        )
        argv = [executable, *early_log, "-p", f"{directory}/", "-c", str(conf)]
        child = ChildProcess("nginx", argv, cwd=directory, echo=True, own_group=True)
        started.append(child)
        await child.start()
        try:
            await _poll(
                functools.partial(_answers_200, port),
                what="/healthz 200 through nginx",
                child=child,
                within=_SERVICE_START_S,
                stop=stop,
            )
        except UnavailableError:
            await child.stop()
            if fixed is not None or attempt == _START_ATTEMPTS or not _port_taken(child):
                raise
            continue
        return child, port
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def _nginx_version(executable: str) -> tuple[int, ...]:
    """``nginx -v``'s version, (0,) if it cannot be read."""
    proc = await asyncio.create_subprocess_exec(
        executable,
        "-v",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(_SERVICE_START_S):
            output, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return (0,)
    match = re.search(rb"nginx/(\d+)\.(\d+)\.(\d+)", output)
    return tuple(int(part) for part in match.groups()) if match else (0,)


async def _answers_200(port: int) -> bool:
    return await http_status(HOST, port, "/healthz") == 200


async def _stop_all(started: Sequence[ChildProcess]) -> None:
    """nginx first (no new traffic), then the nodes together (they drain), then Redis."""
    tiers = (
        [c for c in started if c.name == "nginx"],
        [c for c in started if c.name.startswith("node-")],
        [c for c in started if c.name == "redis"],
    )
    for tier in tiers:
        await asyncio.gather(*(child.stop() for child in tier))


def _banner(
    options: ClusterOptions,
    *,
    workdir: Path,
    redis_url: str,
    redis: ChildProcess | None,
    nodes: Sequence[_Node],
    lb: tuple[ChildProcess, int] | None,
    nginx_note: str | None,
) -> None:
    entry = f"ws://{HOST}:{lb[1]}" if lb is not None else nodes[0].url
    first, last = nodes[0], nodes[-1]
    agent_path = workdir / "agent.toml"
    _out("hybridrelay dev cluster (development only: the key below is printed on purpose)")
    where = f"pid {redis.pid}" if redis is not None and redis.pid else "external"
    _out(f"  {'redis':<14} {redis_url:<28} {where}, prefix {options.prefix!r}")
    for node in nodes:
        _out(f"  {node.node_id:<14} {node.url:<28} pid {node.child.pid}, node_id {node.node_id}")
    if lb is not None:
        _out(f"  {'load balancer':<14} {entry:<28} pid {lb[0].pid}, nginx")
    elif nginx_note:
        _out(f"  {'load balancer':<14} none ({nginx_note})")
    for node in nodes:
        found = node.child.search(_RELAY_READY)
        if found is not None and found.group(2):
            _out(f"  {'dashboard':<14} {found.group(2):<28} {node.node_id} (log in: rule below)")
    _out(f"  {'rule':<14} {RULE}  key {options.key}")
    _out(f"  {'files':<14} {workdir} (removed on exit)")
    key_args = f"--key-name {RULE} --key-env HYBRIDRELAY_KEY"
    _out()
    _out("Try it from another shell:")
    _out(f"  export HYBRIDRELAY_KEY='{options.key}'")
    _out("  python3 -m http.server 8000 --bind 127.0.0.1 &   # the on-prem service behind it")
    _out(f"  # a listener agent with a control channel on every node ({agent_path.name}):")
    _out(f"  hybridrelay listen --config {agent_path}")
    _out("  # a sender through the load balancer (lands on any node), then use it:")
    _out(f"  hybridrelay forward --relay {entry} --hc {options.hc} {key_args} --local {HOST}:18000")
    _out(f"  curl http://{HOST}:18000/")
    if len(nodes) > 1:
        _out(f"  # cross-node: the listener on {first.node_id} only, the sender on {last.node_id}:")
        _out(
            f"  hybridrelay listen --relay {first.url} --hc {options.hc} {key_args}"
            " --target tcp://127.0.0.1:8000"
        )
        _out(
            f"  hybridrelay forward --relay {last.url} --hc {options.hc} {key_args}"
            f" --local {HOST}:18001"
        )
    _out(f"  # drain one node (its listeners move to the others): kill -TERM {last.child.pid}")
    _out(f"  curl http://{HOST}:{first.port}/readyz")
    _out()
    _out(f"{READY_LINE} {len(nodes)} nodes behind {entry} (Ctrl-C stops everything)")


async def _serve(options: ClusterOptions, stop: asyncio.Event) -> None:
    nginx = shutil.which("nginx") if options.nginx else None
    nginx_note = None
    if options.nginx and nginx is None:
        nginx_note = "nginx is not installed; connect to the nodes directly"
        _err(f"note: {nginx_note}")
    started: list[ChildProcess] = []
    with tempfile.TemporaryDirectory(prefix="hybridrelay-cluster-") as tmp:
        workdir = Path(tmp)
        try:
            redis: ChildProcess | None = None
            redis_url = options.redis_url
            if redis_url is None:
                (workdir / "redis").mkdir()
                redis, redis_url = await start_redis(
                    workdir / "redis", port=options.port("redis"), stop=stop, started=started
                )
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(_start_node(options, i, workdir, redis_url, started, stop))
                    for i in range(1, options.nodes + 1)
                ]
            nodes = [task.result() for task in tasks]
            lb = None
            if nginx is not None:
                lb = await _start_nginx(
                    nginx, options, workdir, [n.port for n in nodes], started, stop
                )
            (workdir / "agent.toml").write_text(
                agent_config(
                    relays=[n.url for n in nodes], hc=options.hc, target="tcp://127.0.0.1:8000"
                ),
                "utf-8",
            )
            _banner(
                options,
                workdir=workdir,
                redis_url=redis_url,
                redis=redis,
                nodes=nodes,
                lb=lb,
                nginx_note=nginx_note,
            )
            await stop.wait()
            _out("stopping: nginx, then the nodes (draining), then Redis")
        except* _StopRequestedError:
            _out("stopped while starting")
        finally:
            await _stop_all(started)
    _out("cluster stopped")


async def run_cluster(args: argparse.Namespace, stop: asyncio.Event) -> None:
    """Run the cluster of ``dev cluster ARGS`` until ``stop`` is set; exit 1 if it cannot start."""
    failures: list[BaseException] = []
    try:
        options = _options(args, os.environ)
        await _serve(options, stop)
    except* UnavailableError as group:
        failures = _leaves(group)
    if failures:
        for exc in failures:
            _err(f"hybridrelay dev cluster: {exc}")
        # argparse's way out as well: exit 1 without a traceback, everything already stopped.
        raise SystemExit(1)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
