"""Bulk TCP through hybridrelay's forwarder and agent vs through websocket-tunnel, in one run.

    python -m bench.peer                  # 3 rounds of 1 GiB per path, 64 KiB writes
    python -m bench.peer --quick          # 1 round of 32 MiB per path
    python -m bench.peer --out result.json

Issue 7, item 3. The same TCP client and the same TCP sink (both in the bench process)
on every path; only what is between them differs:

* ``tcp``: client -> sink directly (reference only: what loopback TCP does here);
* ``hybridrelay``: client -> ``hybridrelay forward`` (local port) -> relay ->
  ``hybridrelay listen`` agent -> sink; three child processes, as deployed;
* ``websocket-tunnel``: client -> ``wtunnel client`` (local listener) -> ``wtunnel
  server`` -> sink; two child processes (websocket-tunnel from PyPI, the ``bench`` extra).
* ``ssh``: client -> ``ssh -N -L`` (local listener) -> a private ``sshd`` -> sink: OpenSSH
  port forwarding (:mod:`bench.ssh`), the second peer. Without sshd/ssh installed that
  path is left out and ``ssh_skipped`` says why.

Each run opens a fresh TCP connection; the sink writes one byte when it is reached, so
connection setup through the tunnel is not timed. The client then writes an 8-byte length
and that many bytes in 64 KiB writes; the sink counts them and answers 9 bytes; time =
first write to the answer. Paths alternate each round after one unrecorded warm-up per
path; ``ratios`` has the per-round ratios (median, min, max). Without websocket-tunnel
installed the run prints ``{"skipped": "..."}`` and exits 0. Every child is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.nginx import free_port
from bench.proc import LineChild
from bench.ssh import SshTunnel, find_openssh, openssh_version
from bench.stats import paired, spread
from bench.throughput import (
    HC,
    MB,
    RULE,
    BenchError,
    RelayProcess,
    machine_info,
    run_main,
    write_config,
)

READY: Final = b"R"
DONE: Final = b"D"
KEY_ENV: Final = "HYBRIDRELAY_BENCH_KEY"
PATHS: Final = ("tcp", "hybridrelay", "websocket-tunnel", "ssh")
PEER_PACKAGE: Final = "websocket-tunnel"
PEER_MODULE: Final = "websocket_tunnel"

# ---------------------------------------------------------------------------- the pair


class _SinkProtocol(asyncio.Protocol):
    """Says READY, reads an 8-byte length, counts that many bytes, answers DONE + count."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self.transport: asyncio.Transport | None = None
        self.header = b""
        self.expected: int | None = None
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # a stream transport
        assert self.transport is not None
        self.transport.write(READY)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.expected is None:
            self.header += data
            if len(self.header) < 8:
                return
            self.expected = int.from_bytes(self.header[:8], "big")
            data, self.header = self.header[8:], b""
            if self.expected == 0 and not data:
                self.transport.write(DONE + (0).to_bytes(8, "big"))
                return
        self.count += len(data)
        if self.count > self.expected:
            self.errors.append(f"sink: {self.count} bytes, more than the {self.expected} announced")
            self.transport.close()
        elif self.count == self.expected and data:
            self.transport.write(DONE + self.count.to_bytes(8, "big"))


@dataclass
class TcpSink:
    errors: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _SinkProtocol(self.errors), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()


async def drive_tcp(port: int, payload: bytes, count: int) -> float:
    """Connect, wait for the sink's READY, send ``count`` payloads; seconds to DONE."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            first = await reader.readexactly(1)
        except asyncio.IncompleteReadError as exc:
            raise BenchError("the path closed the connection before the sink was reached") from exc
        if first != READY:
            raise BenchError(f"expected the sink's READY byte, got {first!r}")
        total = count * len(payload)
        start = time.perf_counter()
        writer.write(total.to_bytes(8, "big"))
        for _ in range(count):
            writer.write(payload)
            await writer.drain()
        try:
            reply = await reader.readexactly(9)
        except asyncio.IncompleteReadError as exc:
            raise BenchError(f"the path closed the connection after {exc.partial!r}") from exc
        elapsed = time.perf_counter() - start
        if reply != DONE + total.to_bytes(8, "big"):
            raise BenchError(f"sink answered {reply!r}, expected DONE + {total}")
        return elapsed
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# ---------------------------------------------------------------------------- the tunnels


def _env(key: str) -> dict[str, str]:
    # Inherited HYBRIDRELAY_* variables could change the children's behaviour; drop them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDRELAY_")}
    return env | {"PYTHONUNBUFFERED": "1", "HYBRIDRELAY_LOG_LEVEL": "warning", KEY_ENV: key}


@dataclass
class HybridRelayTunnel:
    """relay + ``hybridrelay listen --config`` (agent) + ``hybridrelay forward`` children."""

    directory: Path
    sink_port: int
    key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    relay: RelayProcess | None = None
    agent: LineChild | None = None
    forwarder: LineChild | None = None
    port: int = 0

    async def start(self) -> int:
        self.relay = RelayProcess(write_config(self.directory, self.key))
        relay_url = await self.relay.start()
        agent_config = self.directory / "agent.toml"
        agent_config.write_text(
            f"""\
relay = {json.dumps(relay_url)}
agent_id = "bench"

[[mappings]]
hc = "{HC}"
target = "tcp://127.0.0.1:{self.sink_port}"
key_name = "{RULE}"
key_env = "{KEY_ENV}"
""",
            "utf-8",
        )
        hybridrelay = [sys.executable, "-m", "hybridrelay"]
        self.agent = LineChild(
            "hybridrelay listen",
            [*hybridrelay, "listen", "--config", str(agent_config)],
            _env(self.key),
        )
        match = await self.agent.start(r"agent ready: (\d+) mappings \((\d+) online")
        if match.group(2) != "1":
            raise BenchError(f"agent mapping not online:\n{self.agent.log_tail()}")
        self.forwarder = LineChild(
            "hybridrelay forward",
            [
                *hybridrelay,
                "forward",
                "--relay",
                relay_url,
                "--hc",
                HC,
                "--key-name",
                RULE,
                "--key-env",
                KEY_ENV,
                "--local",
                "127.0.0.1:0",
            ],
            _env(self.key),
        )
        match = await self.forwarder.start(r"forwarding 127\.0\.0\.1:(\d+) -> ")
        self.port = int(match.group(1))
        return self.port

    def processes(self) -> dict[str, int | None]:
        return {
            "forward": self.forwarder.pid if self.forwarder else None,
            "relay": self.relay.pid if self.relay else None,
            "listen": self.agent.pid if self.agent else None,
        }

    def failure_detail(self) -> str:
        parts = [
            f"{child.name} output:\n{child.log_tail(10)}"
            for child in (self.forwarder, self.agent)
            if child is not None
        ]
        if self.relay is not None:
            parts.append(f"relay output:\n{self.relay.log_tail(10)}")
        return "\n".join(parts)

    async def stop(self) -> None:
        for child in (self.forwarder, self.agent):
            if child is not None:
                await child.stop()
        if self.relay is not None:
            await self.relay.stop()


@dataclass
class WebsocketTunnel:
    """``wtunnel server`` + ``wtunnel client`` with one proxy: client-side listen -> sink."""

    directory: Path
    sink_port: int
    server: LineChild | None = None
    client: LineChild | None = None
    port: int = 0

    async def start(self, attempts: int = 3) -> int:
        token = secrets.token_urlsafe(16)
        launcher = [sys.executable, "-c", "import sys; from websocket_tunnel.cli import main; "
                    "sys.exit(main(sys.argv[1:]))"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDRELAY_")}
        env["PYTHONUNBUFFERED"] = "1"
        last = ""
        for _ in range(attempts):  # wtunnel cannot bind port 0: retry a port lost to a race
            server_port, self.port = free_port(), free_port()
            server_toml = self.directory / "wtunnel-server.toml"
            server_toml.write_text(
                f'listen = "127.0.0.1:{server_port}"\ntoken = "{token}"\n', "utf-8"
            )
            client_toml = self.directory / "wtunnel-client.toml"
            client_toml.write_text(
                f"""\
server = "127.0.0.1:{server_port}"
token = "{token}"

[[proxies]]
name = "bench"
listen = "127.0.0.1:{self.port}"
listen_side = "local"
backend = "127.0.0.1:{self.sink_port}"
backend_side = "peer"
""",
                "utf-8",
            )
            try:
                self.server = LineChild(
                    "wtunnel server", [*launcher, "server", "-c", str(server_toml)], env
                )
                await self.server.start(r"wtunnel \S+ listening on")
                self.client = LineChild(
                    "wtunnel client", [*launcher, "client", "-c", str(client_toml)], env
                )
                await self.client.start(r"session ready with 1 proxy")
                return self.port
            except RuntimeError as exc:
                last = str(exc)
                await self.stop()
                if "in use" not in last:
                    break
        raise BenchError(f"websocket-tunnel did not start: {last}")

    def processes(self) -> dict[str, int | None]:
        return {
            "wtunnel_client": self.client.pid if self.client else None,
            "wtunnel_server": self.server.pid if self.server else None,
        }

    def failure_detail(self) -> str:
        return "\n".join(
            f"{c.name} output:\n{c.log_tail(10)}" for c in (self.client, self.server) if c
        )

    async def stop(self) -> None:
        for child in (self.client, self.server):
            if child is not None:
                await child.stop()


# ---------------------------------------------------------------------------- measuring


def _cpu_of(pids: dict[str, int | None]) -> dict[str, float | None]:
    from bench.proc import proc_cpu_seconds

    return {name: proc_cpu_seconds(pid) for name, pid in pids.items()}


@dataclass
class PathRuns:
    name: str
    mb_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    cpu_s: dict[str, list[float]] = field(default_factory=dict)
    bench_cpu_s: list[float] = field(default_factory=list)

    def cpu(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "wall_s": [round(v, 3) for v in self.wall_s],
            "bench_process_cpu_s": [round(v, 3) for v in self.bench_cpu_s],
        }
        if self.cpu_s:
            out["tunnel_processes_cpu_s"] = {
                k: [round(v, 3) for v in vs] for k, vs in self.cpu_s.items()
            }
            totals = [sum(vs) for vs in zip(*self.cpu_s.values(), strict=True)]
            out["tunnel_cpu_s_per_gb"] = spread(
                [t / (m * w) * 1000 for t, m, w in zip(totals, self.mb_s, self.wall_s, strict=True)]
            )
        return out


async def measure(
    port: int,
    payload: bytes,
    count: int,
    pids: dict[str, int | None],
    *,
    limit_s: float,
    runs: PathRuns | None,
) -> None:
    async with asyncio.timeout(limit_s):
        cpu0, bench0 = _cpu_of(pids), time.process_time()
        elapsed = await drive_tcp(port, payload, count)
        cpu1, bench1 = _cpu_of(pids), time.process_time()
    if runs is not None:
        runs.mb_s.append(count * len(payload) / elapsed / MB)
        runs.wall_s.append(elapsed)
        runs.bench_cpu_s.append(bench1 - bench0)
        for name in pids:
            before, after = cpu0[name], cpu1[name]
            if before is not None and after is not None:
                runs.cpu_s.setdefault(name, []).append(after - before)


NOTES = (
    "One TCP connection per run, one direction: 8-byte length, then that many bytes in "
    "64 KiB writes (asyncio StreamWriter, drain after each), the sink (asyncio.Protocol) "
    "counts and answers 9 bytes; time = first write to the answer; the tunnel's connection "
    "setup is not timed (the client waits for the sink's READY byte first). MB = 10^6 "
    "bytes. Client and sink share one event loop in the bench process on every path. "
    "hybridrelay = forward + relay + listen agent (3 processes, uvloop, as the CLI runs "
    "them; the forwarder sends what each TCP read returns as one binary WebSocket message). "
    "websocket-tunnel = its client + server (2 processes, run through its CLI's main(), i.e. "
    "asyncio.run on the default loop; 32 KiB data frames multiplexed on one WebSocket). "
    "ssh = client -> ssh -N -L -> a private sshd on 127.0.0.1 -> sink (OpenSSH, one SSH "
    "connection, the cipher both ends choose by default: ssh_cipher; CPU over ssh, the sshd "
    "listener and the connection's sshd processes). "
    "tcp = client -> sink directly, for reference. Paths alternate each round after one "
    "unrecorded warm-up per path; ratios.*.per_round = the paths' ratio within each round. "
    "tunnel_cpu_s_per_gb = CPU seconds of all the tunnel's processes per 10^9 bytes "
    "(/proc, 10 ms tick)."
)


async def run(args: argparse.Namespace, uvloop_on: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "peer", "paths": args.paths}
    if "websocket-tunnel" in args.paths and importlib.util.find_spec(PEER_MODULE) is None:
        return result | {
            "skipped": f"{PEER_PACKAGE} is not installed (pip install -e '.[bench]' installs it)"
        }
    openssh: tuple[str, str] | None = None
    if "ssh" in args.paths:
        found = find_openssh()
        if isinstance(found, str):
            args.paths = [p for p in args.paths if p != "ssh"]
            result["paths"] = args.paths
            result["ssh_skipped"] = found
        else:
            openssh = found
    count = int(args.size_mib * 1024 * 1024) // (64 * 1024)
    if count <= 0:
        raise BenchError("--size-mib must be at least 0.0625 (one 64 KiB write)")
    payload = os.urandom(64 * 1024)
    warmup_count = min(count, int(args.warmup_mib * 1024 * 1024) // len(payload))
    machine = machine_info(uvloop_on)
    runs = {name: PathRuns(name) for name in args.paths}
    sink = TcpSink()

    with tempfile.TemporaryDirectory(prefix="hybridrelay-bench-peer-") as tmp:
        ours: HybridRelayTunnel | None = None
        theirs: WebsocketTunnel | None = None
        ssh: SshTunnel | None = None
        step = "start"
        try:
            sink_port = await sink.start()
            ports: dict[str, int] = {"tcp": sink_port}
            pids: dict[str, dict[str, int | None]] = {"tcp": {}}
            if "hybridrelay" in args.paths:
                step = "start hybridrelay"
                ours = HybridRelayTunnel(Path(tmp), sink_port)
                ports["hybridrelay"] = await ours.start()
                pids["hybridrelay"] = ours.processes()
            if "websocket-tunnel" in args.paths:
                step = "start websocket-tunnel"
                theirs = WebsocketTunnel(Path(tmp), sink_port)
                ports["websocket-tunnel"] = await theirs.start()
                pids["websocket-tunnel"] = theirs.processes()
                result["websocket_tunnel_version"] = importlib.metadata.version(PEER_PACKAGE)
            if openssh is not None:
                step = "start ssh -L"
                ssh = SshTunnel(Path(tmp), sink_port, *openssh)
                try:
                    ports["ssh"] = await ssh.start()
                except RuntimeError as exc:
                    raise BenchError(str(exc)) from exc
                pids["ssh"] = ssh.processes()
                result["ssh_version"] = openssh_version(openssh[1])
                result["ssh_cipher"] = ssh.cipher
            if warmup_count:
                for name in args.paths:
                    step = f"warm-up {name}"
                    await measure(
                        ports[name], payload, warmup_count, pids[name],
                        limit_s=args.timeout, runs=None,
                    )  # fmt: skip
            if ssh is not None:
                # sshd forks the connection's processes around the login: now they exist.
                pids["ssh"] = ssh.processes()
            for rnd in range(args.rounds):
                for name in args.paths:
                    step = f"round {rnd + 1} {name}"
                    await measure(
                        ports[name], payload, count, pids[name],
                        limit_s=args.timeout, runs=runs[name],
                    )  # fmt: skip
                    print(f"{step}: {runs[name].mb_s[-1]:.1f} MB/s", file=sys.stderr, flush=True)
            result["pids"] = pids
        except Exception as exc:
            detail = f"{step} failed: {str(exc) or repr(exc)}"
            if sink.errors:
                detail += "\nsink: " + "; ".join(sink.errors[:5])
            for tunnel in (ours, theirs, ssh):
                if tunnel is not None:
                    detail += "\n" + tunnel.failure_detail()
            raise BenchError(detail) from exc
        finally:
            for tunnel in (ours, theirs, ssh):
                if tunnel is not None:
                    await tunnel.stop()
            await sink.stop()

    ratios: dict[str, Any] = {}
    for a, b in (("hybridrelay", "websocket-tunnel"), ("hybridrelay", "ssh"),
                 ("hybridrelay", "tcp"), ("websocket-tunnel", "tcp"), ("ssh", "tcp")):  # fmt: skip
        if a in runs and b in runs:
            sa, sb = runs[a].mb_s, runs[b].mb_s
            ratios[f"{a}/{b}"] = {
                "of_medians": round(statistics.median(sa) / statistics.median(sb), 3),
                "per_round": spread(paired(sa, sb), 3),
            }
    return result | {
        "write_size": len(payload),
        "bytes_per_run": count * len(payload),
        "warmup_bytes": warmup_count * len(payload),
        "rounds": args.rounds,
        "mb_s": {name: spread(r.mb_s) for name, r in runs.items()},
        "ratios": ratios,
        "cpu": {name: r.cpu() for name, r in runs.items()},
        "machine": machine,
        "notes": NOTES,
    }


def _paths(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names or len(set(names)) != len(names) or any(p not in PATHS for p in names):
        raise argparse.ArgumentTypeError(f"give distinct paths from {', '.join(PATHS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round of 32 MiB per path")
    p.add_argument(
        "--paths",
        type=_paths,
        default=list(PATHS),
        help=f"comma-separated, measured in this order each round (default {','.join(PATHS)})",
    )
    p.add_argument("--rounds", type=int, help="rounds of all paths (default 3, --quick 1)")
    p.add_argument("--size-mib", type=float, help="bytes per run in MiB (default 1024, --quick 32)")
    p.add_argument(
        "--warmup-mib", type=float, help="unrecorded warm-up per path (default 32, --quick 4)"
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds allowed per run (default 300)"
    )
    p.add_argument(
        "--no-uvloop", action="store_true", help="use the default asyncio loop in the bench process"
    )
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.size_mib is None:
        args.size_mib = 32.0 if args.quick else 1024.0
    if args.warmup_mib is None:
        args.warmup_mib = 4.0 if args.quick else 32.0
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main("peer", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
