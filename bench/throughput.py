"""Throughput of one WebSocket stream, directly, through the relay and through nginx, in one run.

    python -m bench.throughput            # 3 rounds of 256 MiB per path, 64 KiB messages
    python -m bench.throughput --quick    # 1 round of 32 MiB per path
    python -m bench.throughput --paths direct,nginx,relay --size-mib 1024
    python -m bench.throughput --out result.json

The same client send loop and the same sink run on every path; only the path differs:

* direct: client (``hybridrelay.wsclient.ws_connect``) -> aiohttp WebSocket server
* relay:  client (``hybridrelay.client.connect``) -> relay subprocess -> ``Listener`` handler
* nginx:  client (``ws_connect``) -> nginx (WebSocket reverse proxy, a child process)
  -> the same aiohttp WebSocket server as ``direct`` (issue 7, item 2)

The client sends N binary messages and then the text message ``end``; the sink counts the
bytes of the binary messages and answers ``done <bytes>``. A run's time is from the first
send to the arrival of ``done``. Paths alternate (direct, relay, direct, relay, ...), the
reported figure per path is the median with min and max, ``ratios`` holds every pair's
per-round ratios and ``ratio_median`` is relay median / direct median. Exactly one JSON
object goes to stdout; errors go to stderr and the exit status is non-zero. Without an
nginx binary a run that asks for the nginx path prints ``{"skipped": "..."}`` and exits 0.
Every child process is always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from bench.nginx import NginxError, NginxProxy, find_nginx, nginx_version
from bench.proc import proc_cpu_seconds
from bench.stats import paired, spread
from hybridrelay.client import connect
from hybridrelay.dev.children import ChildExitedError, ChildProcess
from hybridrelay.errors import ConnectionClosedError
from hybridrelay.listener import AcceptRequest, Listener
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection, ws_connect

HC = "bench"
RULE = "RootManageSharedAccessKey"
END = "end"
DONE = "done"
MB = 1_000_000  # MB/s means 10**6 bytes per second

Recv = Callable[[], Awaitable[bytes | str]]
SendText = Callable[[str], Awaitable[None]]


class BenchError(Exception):
    """The benchmark could not run; the message says why."""


# ---------------------------------------------------------------------------- the pair


async def sink(recv: Recv, send_text: SendText) -> int:
    """The server side on both paths: count binary bytes until ``end``, answer ``done N``."""
    total = 0
    while True:
        message = await recv()
        if isinstance(message, str):
            if message == END:
                break
            raise BenchError(f"sink: unexpected text message {message[:40]!r}")
        total += len(message)
    await send_text(f"{DONE} {total}")
    return total


async def drive(conn: WsConnection, payload: bytes, count: int) -> float:
    """The client side on both paths: send ``count`` messages, wait for ``done``; seconds."""
    expected = f"{DONE} {count * len(payload)}"
    start = time.perf_counter()
    for _ in range(count):
        await conn.send(payload)
    await conn.send(END)
    reply = await conn.recv()
    elapsed = time.perf_counter() - start
    if reply != expected:
        raise BenchError(f"sink answered {reply!r}, expected {expected!r}")
    return elapsed


# ---------------------------------------------------------------------------- direct path


@dataclass
class DirectServer:
    """A plain aiohttp WebSocket server running :func:`sink` (no compression, no size cap)."""

    errors: list[str]
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        await ws.prepare(request)

        async def recv() -> bytes | str:
            msg = await ws.receive()
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                data: bytes | str = msg.data
                return data
            raise BenchError(f"direct sink: connection ended ({msg.type.name})")

        try:
            await sink(recv, ws.send_str)
        except Exception as exc:  # noqa: BLE001 - reported to the client and in the error
            self.errors.append(f"direct sink: {exc!r}")
            await ws.close(code=1011, message=str(exc)[:100].encode())
            return ws
        await ws.close()
        return ws

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/sink", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"ws://{host}:{port}/sink"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# ---------------------------------------------------------------------------- relay path

_READY = re.compile(r"relay ready at (\S+)")


def _toml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def write_config(directory: Path, key: str, *, relay_extra: str = "", extra: str = "") -> Path:
    """The development config shape: one namespace rule, one hybrid connection.

    ``relay_extra`` adds lines to ``[relay]``; ``extra`` is appended (more sections).
    """
    relay_lines = f"{relay_extra}\n" if relay_extra else ""
    text = f"""\
[relay]
host = "127.0.0.1"
port = 0
data_dir = {_toml_str(str(directory / "data"))}
{relay_lines}
[[rules]]
name = "{RULE}"
key = "{key}"
rights = ["Manage", "Listen", "Send"]

[[hybrid_connections]]
name = "{HC}"
{extra}"""
    path = directory / "relay.toml"
    path.write_text(text, "utf-8")
    return path


class RelayProcess(ChildProcess):
    """``python -m hybridrelay relay serve --config ...`` as a child process."""

    def __init__(self, config_path: Path) -> None:
        # Inherited HYBRIDRELAY_* variables would override the config; drop them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDRELAY_")}
        env |= {"PYTHONUNBUFFERED": "1", "HYBRIDRELAY_LOG_LEVEL": "warning"}
        argv = [sys.executable, "-m", "hybridrelay", "relay", "serve", "--config", str(config_path)]
        super().__init__("relay", argv, env=env, keep_lines=200, stop_grace=15.0)
        self.config_path = config_path
        self.url = ""

    @property
    def log_lines(self) -> list[str]:
        return self.lines

    async def start(self, wait_s: float = 20.0) -> str:  # type: ignore[override]
        await super().start()
        try:
            self.url = (await self.wait_for_line(_READY, wait_s)).group(1)
            await self._wait_ready()
        except (TimeoutError, ChildExitedError, BenchError, aiohttp.ClientError) as exc:
            raise BenchError(f"relay did not start ({exc!r}):\n{self.log_tail()}") from exc
        return self.url

    async def _wait_ready(self) -> None:
        http_url = self.url.replace("ws://", "http://", 1)
        async with aiohttp.ClientSession() as session, asyncio.timeout(10):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(http_url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)  # polling an endpoint

    def cpu_seconds(self) -> float | None:
        """user+system CPU time of the relay process so far (Linux /proc), else None."""
        return proc_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines[-lines:]) or "(relay printed nothing)"


@dataclass
class RelayPath:
    """A Listener (handler = :func:`sink`) on the relay, and a way to open sender streams."""

    relay_url: str
    tokens: SasTokenProvider
    errors: list[str]
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _listener: Listener | None = None

    async def _handle(self, ws: WsConnection, request: AcceptRequest) -> None:
        try:
            await sink(ws.recv, ws.send)
        except Exception as exc:  # noqa: BLE001 - reported to the client and in the error
            self.errors.append(f"relay sink: {exc!r}")
            with contextlib.suppress(ConnectionClosedError):
                await ws.close(1011, str(exc)[:100])
        # Listener closes the stream (code 1000) when the handler returns.

    async def start(self, wait_s: float = 20.0) -> None:
        self._listener = Listener(
            self.relay_url, HC, token_provider=self.tokens, handler=self._handle
        )
        self._task = asyncio.create_task(self._listener.run(self._stop))
        connected = asyncio.create_task(self._listener.connected.wait())
        done, _ = await asyncio.wait(
            {self._task, connected}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
        )
        if connected not in done:
            connected.cancel()
            if self._task in done:
                self._task.result()  # raises the listener's error
                raise BenchError("listener stopped before its control channel opened")
            raise BenchError(f"listener control channel not open after {wait_s:.0f} s")

    async def open(self) -> WsConnection:
        return await connect(self.relay_url, HC, token_provider=self.tokens)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(15):
                    await self._task


# ---------------------------------------------------------------------------- measuring

PATHS = ("direct", "relay", "nginx")
CpuProbe = Callable[[], float | None]


@dataclass
class Series:
    """The runs of one path; ``middle`` names the process between client and sink, if any."""

    name: str
    middle: str | None = None
    mb_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    bench_cpu_s: list[float] = field(default_factory=list)
    middle_cpu_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return spread(self.mb_s)

    def cpu(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "wall_s": [round(v, 3) for v in self.wall_s],
            "bench_process_cpu_s": [round(v, 3) for v in self.bench_cpu_s],
        }
        if self.middle and self.middle_cpu_s:
            out[f"{self.middle}_process_cpu_s"] = [round(v, 3) for v in self.middle_cpu_s]
            # ~1.0: bench and the middle process took turns on one CPU (serialised);
            # closer to 2.0: they ran in parallel on two CPUs.
            out["cpus_busy"] = [
                round((b + r) / w, 2)
                for b, r, w in zip(self.bench_cpu_s, self.middle_cpu_s, self.wall_s, strict=True)
            ]
        return out


def pin(middle_pids: list[int]) -> dict[str, Any]:
    """Give the bench process one CPU and the relay / nginx processes another."""
    if not hasattr(os, "sched_setaffinity"):
        raise BenchError("--pin needs os.sched_setaffinity (Linux)")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not middle_pids:
        raise BenchError(f"--pin needs two CPUs, this process may use {cpus}")
    os.sched_setaffinity(0, {cpus[0]})
    for pid in middle_pids:
        os.sched_setaffinity(pid, {cpus[1]})
    return {"bench_cpu": cpus[0], "relay_and_proxy_cpu": cpus[1]}


async def measure(
    opener: Callable[[], Awaitable[WsConnection]],
    payload: bytes,
    count: int,
    cpu_probe: CpuProbe,
    *,
    limit_s: float,
    series: Series | None,
) -> None:
    """One transfer on a fresh connection; connect and close are outside the timed window."""
    async with asyncio.timeout(limit_s):
        conn = await opener()
        try:
            middle_cpu0 = cpu_probe()
            cpu0 = time.process_time()
            elapsed = await drive(conn, payload, count)
            cpu1 = time.process_time()
            middle_cpu1 = cpu_probe()
        finally:
            with contextlib.suppress(ConnectionClosedError, OSError):
                await conn.close()
    if series is not None:
        series.mb_s.append(count * len(payload) / elapsed / MB)
        series.wall_s.append(elapsed)
        series.bench_cpu_s.append(cpu1 - cpu0)
        if middle_cpu0 is not None and middle_cpu1 is not None:
            series.middle_cpu_s.append(middle_cpu1 - middle_cpu0)


def ratios(series: dict[str, Series]) -> dict[str, Any]:
    """relay/direct, nginx/direct and relay/nginx: ratio of medians and per-round ratios."""
    out: dict[str, Any] = {}
    for a, b in (("relay", "direct"), ("nginx", "direct"), ("relay", "nginx")):
        if a in series and b in series:
            sa, sb = series[a].mb_s, series[b].mb_s
            out[f"{a}/{b}"] = {
                "of_medians": round(statistics.median(sa) / statistics.median(sb), 3),
                "per_round": spread(paired(sa, sb), 3),
            }
    return out


def machine_info(uvloop_on: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "uvloop": uvloop_on,
        "aiohttp": aiohttp.__version__,
    }
    with contextlib.suppress(AttributeError):
        info["cpus_available"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(mem[1]) / 1024**2, 1)
    try:
        info["uvloop_version"] = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        info["relay_uvloop"] = False
    else:
        info["relay_uvloop"] = True  # the CLI runs the relay on uvloop whenever it is installed
    return info


NOTES = (
    "One WebSocket stream, one direction: the client sends N binary messages then the text "
    "'end'; the sink counts bytes and replies 'done <bytes>'; time = first send to 'done' "
    "(connect and close are not timed). MB = 10^6 bytes. Same client send loop "
    "(hybridrelay WsConnection, masked client frames) and same sink logic on every path. "
    "direct = client -> aiohttp WebSocketResponse server (max_msg_size=0, compress=False); "
    "nginx = client -> nginx (proxy_buffering off, 64k proxy buffers, one worker) -> the same "
    "aiohttp server; relay = client -> relay subprocess -> Listener's rendezvous WebSocket, "
    "where the sink side is itself a WebSocket *client* (hybridrelay WsConnection, unmasked "
    "frames from the relay). nginx copies the upgraded bytes without parsing frames; the "
    "relay parses, unmasks and re-frames every frame. Client and sink share one event loop "
    "in the bench process on every path; nginx and the relay are separate processes, so "
    "those paths use one extra process (and CPU) that the direct path does not. Paths "
    "alternate in the order given each round after one unrecorded warm-up per path. "
    "ratios.*.per_round = the paths' ratio within each round (median [min-max]); "
    "ratio_median = relay median / direct median."
)


async def run(args: argparse.Namespace, uvloop_on: bool) -> dict[str, Any]:
    message_bytes = args.message_bytes or int(args.message_kib * 1024)
    count = int(args.size_mib * 1024 * 1024) // message_bytes
    if message_bytes <= 0 or count <= 0:
        raise BenchError(
            "--message-kib / --message-bytes must be > 0 and --size-mib at least one message"
        )
    nginx_binary = find_nginx() if "nginx" in args.paths else None
    if "nginx" in args.paths and nginx_binary is None:
        return {
            "benchmark": "throughput",
            "paths": args.paths,
            "skipped": "nginx not found (not on PATH, not in /usr/sbin or /usr/local); "
            "install it from the OS packages (apt-get install nginx) to run this",
        }
    payload = os.urandom(message_bytes)
    warmup_count = min(count, int(args.warmup_mib * 1024 * 1024) // message_bytes)
    errors: list[str] = []
    key = secrets.token_urlsafe(32)
    series = {
        name: Series(name, {"relay": "relay", "nginx": "nginx"}.get(name)) for name in args.paths
    }
    machine = machine_info(uvloop_on)
    result: dict[str, Any] = {"benchmark": "throughput", "paths": args.paths}
    pinned: dict[str, Any] | None = None

    with tempfile.TemporaryDirectory(prefix="hybridrelay-bench-") as tmp:
        relay = RelayProcess(write_config(Path(tmp), key))
        direct = DirectServer(errors)
        relay_path: RelayPath | None = None
        nginx: NginxProxy | None = None
        try:
            direct_url = await direct.start()
            openers: dict[str, Callable[[], Awaitable[WsConnection]]] = {}
            probes: dict[str, CpuProbe] = {"direct": lambda: None}

            async def open_direct() -> WsConnection:
                return await ws_connect(direct_url)

            openers["direct"] = open_direct
            if "relay" in args.paths:
                relay_url = await relay.start()
                relay_path = RelayPath(relay_url, SasTokenProvider(RULE, key), errors)
                await relay_path.start()
                openers["relay"] = relay_path.open
                probes["relay"] = relay.cpu_seconds
                result["relay_pid"] = relay.pid
            if nginx_binary is not None:
                upstream = direct_url.removeprefix("ws://").split("/", 1)[0]
                nginx = NginxProxy(nginx_binary, Path(tmp) / "nginx", upstream)
                try:
                    nginx_url = await nginx.start()
                except NginxError as exc:
                    raise BenchError(str(exc)) from exc
                result["nginx"] = {
                    "binary": nginx_binary,
                    "version": nginx_version(nginx_binary),
                    "pids": nginx.pids,
                    "config": (nginx.directory / "nginx.conf").read_text("utf-8"),
                }

                async def open_nginx() -> WsConnection:
                    return await ws_connect(nginx_url + "/sink")

                openers["nginx"] = open_nginx
                probes["nginx"] = nginx.cpu_seconds
            if args.pin:
                middle = [p for p in [relay.pid] if p is not None and "relay" in args.paths]
                pinned = pin(middle + (nginx.pids if nginx is not None else []))
            step = "warm-up"
            try:
                if warmup_count:
                    for name in args.paths:
                        step = f"warm-up {name}"
                        await measure(
                            openers[name],
                            payload,
                            warmup_count,
                            probes[name],
                            limit_s=args.timeout,
                            series=None,
                        )
                for rnd in range(args.rounds):
                    for name in args.paths:
                        step = f"round {rnd + 1} {name}"
                        await measure(
                            openers[name],
                            payload,
                            count,
                            probes[name],
                            limit_s=args.timeout,
                            series=series[name],
                        )
                        print(
                            f"{step}: {series[name].mb_s[-1]:.1f} MB/s",
                            file=sys.stderr,
                            flush=True,
                        )
            except Exception as exc:
                detail = f"{step} failed: {exc!r}"
                if errors:
                    detail += "\nserver side: " + "; ".join(errors)
                if relay.exited():
                    detail += (
                        f"\nrelay exited with {relay.process.returncode if relay.process else '?'}"
                    )
                    detail += ":\n" + relay.log_tail()
                if nginx is not None:
                    detail += "\nnginx error log:\n" + nginx.log_tail()
                raise BenchError(detail) from exc
        finally:
            if relay_path is not None:
                await relay_path.stop()
            if nginx is not None:
                await nginx.stop()
            await relay.stop()
            await direct.stop()

    summaries = {name: s.summary() for name, s in series.items()}
    result |= {
        "message_size": message_bytes,
        "bytes_per_run": count * message_bytes,
        "messages_per_run": count,
        "warmup_bytes": warmup_count * message_bytes,
        "rounds": args.rounds,
        "mb_s": summaries,
        **{f"{name}_mb_s": summary for name, summary in summaries.items()},
        "ratios": ratios(series),
        "cpu": {name: s.cpu() for name, s in series.items()},
        "machine": machine | {"pinned": pinned},
        "notes": NOTES,
    }
    if "relay" in summaries and "direct" in summaries:
        result["ratio_median"] = round(
            summaries["relay"]["median"] / summaries["direct"]["median"], 3
        )
    return result


def _paths(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PATHS]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"give distinct paths from {', '.join(PATHS)} (got {text!r})"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.throughput", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="1 round, 32 MiB per run (unless overridden)"
    )
    p.add_argument(
        "--paths",
        type=_paths,
        default=["direct", "relay"],
        help="comma-separated paths measured in this order each round: direct, relay, nginx "
        "(default direct,relay)",
    )
    p.add_argument("--rounds", type=int, help="rounds of all paths (default 3, --quick 1)")
    p.add_argument("--size-mib", type=float, help="bytes per run in MiB (default 256, --quick 32)")
    p.add_argument(
        "--message-kib", type=float, default=64.0, help="message size in KiB (default 64)"
    )
    p.add_argument(
        "--message-bytes",
        type=int,
        help="message size in bytes, for sizes under 1 KiB (overrides --message-kib)",
    )
    p.add_argument(
        "--warmup-mib",
        type=float,
        help="unrecorded warm-up per path (default 16, --quick 4; 0: none)",
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds allowed per run (default 300)"
    )
    p.add_argument(
        "--no-uvloop", action="store_true", help="use the default asyncio loop in the bench process"
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="Linux: pin the bench process to one CPU and the relay / nginx to another",
    )
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.size_mib is None:
        args.size_mib = 32.0 if args.quick else 256.0
    if args.warmup_mib is None:
        args.warmup_mib = 4.0 if args.quick else 16.0
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


async def _probe() -> None:
    """One tiny exchange over the direct path: does WsConnection work on this loop?"""
    loop = asyncio.get_running_loop()
    callback_errors: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: callback_errors.append(str(ctx.get("exception"))))
    server = DirectServer([])
    await server.start()
    try:
        async with asyncio.timeout(5):
            conn = await ws_connect(server.url)
            try:
                await drive(conn, b"x" * 16, 2)
            finally:
                await conn.close()
    except Exception as exc:
        detail = "; ".join(callback_errors) or repr(exc)
        raise BenchError(detail) from exc
    finally:
        await server.stop()


def uvloop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str | None]:
    """uvloop's loop factory if it is installed and hybridrelay's WsConnection runs on it.

    Returns (factory or None, why uvloop is not used or None).
    """
    try:
        import uvloop
    except ImportError:
        return None, "uvloop not installed"
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_probe())
    except BenchError as exc:
        return None, f"hybridrelay.wsclient fails on uvloop: {exc}"
    return uvloop.new_event_loop, None


class TerminatedError(Exception):
    """SIGTERM arrived; the bench was cancelled and has cleaned up."""


async def _terminable(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run ``coro``; SIGTERM cancels it, so every ``finally`` (child processes!) still runs."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await coro
    except asyncio.CancelledError:
        if terminated:
            raise TerminatedError from None
        raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


def run_main(
    name: str,
    args: argparse.Namespace,
    body: Callable[[argparse.Namespace, bool], Coroutine[Any, Any, dict[str, Any]]],
) -> int:
    """Run a bench's ``body`` under uvloop when possible; print and save its JSON.

    Exit status: 0 (also for a result that says ``skipped``), 1 on failure, 130 on
    Ctrl-C, 143 on SIGTERM; child processes are stopped in every case.
    """
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    fallback: str | None = "disabled by --no-uvloop"
    if not args.no_uvloop:
        loop_factory, fallback = uvloop_factory()
        if fallback is not None:
            print(f"{name}: not using uvloop in the bench process: {fallback}", file=sys.stderr)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            result = runner.run(_terminable(body(args, loop_factory is not None)))
        if fallback is not None and "machine" in result:
            result["machine"]["uvloop_not_used_because"] = fallback
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except TerminatedError:
        print(f"{name}: terminated", file=sys.stderr)
        return 143
    except Exception as exc:  # noqa: BLE001 - the one place that turns failures into an exit status
        print(f"{name}: error: {str(exc) or repr(exc)}", file=sys.stderr)
        return 1
    if "skipped" in result:
        print(f"{name}: skipped: {result['skipped']}", file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", "utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("throughput", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
