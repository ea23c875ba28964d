"""HTTP-mode requests per second, directly and through the relay, in one run.

    python -m bench.http                  # 3 rounds of 5 s per path, concurrency 50
    python -m bench.http --quick          # 1 round of 2 s per path
    python -m bench.http --requests 20000 --out result.json

A small GET (``/hello``, 13-byte body) over keep-alive connections, from one aiohttp
``ClientSession`` (``TCPConnector(limit=concurrency)``) with ``concurrency`` workers:

* direct: client -> aiohttp app (the "on-premises" service)
* relay:  client -> relay subprocess (HTTP mode) -> listener -> aiohttp app

The listener is the listener agent in its own process (``--listener agent``, the
default: ``python -m hybridrelay listen --target http://...``), the same agent code in
the bench process (``inproc``) or a minimal stand-in that answers every request itself
without calling the app (``fake``). Paths alternate (direct, relay, direct, relay, ...)
after one warm-up per path; each path reports the median requests/s with min and max,
and latency percentiles; ``ratio_median`` is relay median / direct median. Exactly one
JSON object goes to stdout; progress and errors go to stderr, and the exit status is
non-zero on failure. Every subprocess is always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final, Protocol

import aiohttp
from aiohttp import web

from bench.proc import proc_cpu_seconds
from bench.stats import paired, spread
from bench.throughput import (
    HC,
    RULE,
    BenchError,
    RelayProcess,
    machine_info,
    run_main,
    write_config,
)
from hybridrelay.dev.children import ChildProcess as DevChildProcess
from hybridrelay.errors import ConnectionClosedError
from hybridrelay.protocol.sas import SasTokenProvider, audience_for, create_sas_token
from hybridrelay.wsclient import WsConnection, ws_connect

BODY: Final = b"Hello, world!"  # 13 bytes
APP_PATH: Final = "/hello"
KEY_ENV: Final = "HYBRIDRELAY_BENCH_KEY"  # how the agent subprocess gets the SAS key
REPO_ROOT: Final = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- the service


@dataclass
class App:
    """The on-premises service: ``GET /hello`` answers 13 bytes of text/plain."""

    base_url: str = ""
    _runner: web.AppRunner | None = None

    @staticmethod
    async def _hello(_request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="text/plain")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get(APP_PATH, self._hello)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# ---------------------------------------------------------------------------- listeners


class RelayListener(Protocol):
    """What the bench needs from each kind of listener."""

    errors: list[str]

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def pid(self) -> int | None: ...  # a separate process to measure, or None
    def describe(self) -> dict[str, Any]: ...
    def failure_detail(self) -> str: ...


class ChildProcess(DevChildProcess):
    """A subprocess whose output is kept (last 200 lines) and which is always stopped."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        super().__init__(argv[0], argv, env=env, cwd=cwd, keep_lines=200, stop_grace=15.0)

    @property
    def log_lines(self) -> list[str]:
        return self.lines

    async def stop(self, grace: float | None = None) -> int | None:
        return await super().stop(grace)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines[-lines:]) or "(it printed nothing)"


def _child_env(key: str) -> dict[str, str]:
    # Inherited HYBRIDRELAY_* variables could change the agent's behaviour; drop them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDRELAY_")}
    env |= {"PYTHONUNBUFFERED": "1", "HYBRIDRELAY_LOG_LEVEL": "warning", KEY_ENV: key}
    # The shim imports bench.http; the CLI does not need it, but it does no harm.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class AgentListener:
    """The listener agent as its own process, forwarding to the app (``--target http://``).

    ``python -m hybridrelay listen ... --target http://127.0.0.1:PORT`` when the CLI serves
    HTTP targets; while it does not (it answers 501), the same agent code --
    ``Listener(http_handler=HttpTarget(...))`` on uvloop -- started through
    :func:`agent_shim` instead, and the JSON says so.
    """

    relay_url: str
    target_url: str
    key: str
    errors: list[str] = field(default_factory=list)
    launcher: str = "cli"
    fallback_reason: str | None = None
    child: ChildProcess | None = None

    def cli_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "hybridrelay",
            "listen",
            "--relay",
            self.relay_url,
            "--hc",
            HC,
            "--key-name",
            RULE,
            "--key-env",
            KEY_ENV,
            "--target",
            self.target_url,
        ]

    def shim_argv(self) -> list[str]:
        code = "import sys; from bench.http import agent_shim; sys.exit(agent_shim(sys.argv[1:]))"
        return [sys.executable, "-c", code, self.relay_url, HC, RULE, self.target_url]

    async def start(self) -> None:
        self.child = ChildProcess(self.cli_argv(), _child_env(self.key), REPO_ROOT)
        await self.child.start()

    async def use_shim(self, reason: str) -> None:
        """Replace the CLI agent by the shim (same Listener + HttpTarget code)."""
        if self.child is not None:
            await self.child.stop()
        self.launcher, self.fallback_reason = "shim", reason
        self.child = ChildProcess(self.shim_argv(), _child_env(self.key), REPO_ROOT)
        await self.child.start()

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop()

    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def exited(self) -> bool:
        return self.child is not None and self.child.exited()

    def describe(self) -> dict[str, Any]:
        argv = self.child.argv if self.child is not None else self.cli_argv()
        out: dict[str, Any] = {
            "kind": "agent",
            "process": "separate (subprocess, uvloop when installed)",
            "launcher": self.launcher,
            "command": [Path(argv[0]).name, *argv[1:]],
            "handler": "Listener(http_handler=HttpTarget(app))",
        }
        if self.fallback_reason:
            out["launcher_fallback_reason"] = self.fallback_reason
        return out

    def failure_detail(self) -> str:
        if self.child is None:
            return ""
        state = (
            f"exited with {self.child.process.returncode}"
            if self.child.exited() and self.child.process
            else "running"
        )
        return f"agent ({self.launcher}) {state}; its output:\n{self.child.log_tail()}"


@dataclass
class InprocListener:
    """``Listener(http_handler=HttpTarget(app))`` on the bench process's own event loop."""

    relay_url: str
    target_url: str
    key: str
    errors: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from hybridrelay.listener import Listener
        from hybridrelay.listener.http_target import HttpTarget

        listener = Listener(
            self.relay_url,
            HC,
            token_provider=SasTokenProvider(RULE, self.key),
            http_handler=HttpTarget(self.target_url),
        )
        self._task = asyncio.create_task(listener.run(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(15):
                    await self._task

    def pid(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "inproc",
            "process": "the bench process (shares its event loop with client and app)",
            "handler": "Listener(http_handler=HttpTarget(app))",
        }

    def failure_detail(self) -> str:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            return f"in-process listener stopped: {self._task.exception()!r}"
        return ""


@dataclass
class FakeListener:
    """A minimal listener: answers every inline ``request`` itself, never calling the app.

    One control channel (``hybridrelay.wsclient.ws_connect``); each request gets
    ``{"response": {..., "statusCode": 200, "body": true}}`` plus the 13-byte body as the
    next binary message, both sent under one lock so they are adjacent (HC §4). It
    validates the relay's HTTP path and gives the relay's own ceiling (no agent, no app).
    """

    relay_url: str
    key: str
    errors: list[str] = field(default_factory=list)
    answered: int = 0
    _ws: WsConnection | None = None
    _task: asyncio.Task[None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> None:
        url = f"{self.relay_url}/$hc/{HC}?sb-hc-action=listen&sb-hc-id={uuid.uuid4()}"
        token = create_sas_token(audience_for(url), RULE, self.key, int(time.time()) + 86400)
        self._ws = await ws_connect(url, headers={"ServiceBusAuthorization": token})
        self._task = asyncio.create_task(self._serve(self._ws))

    async def _serve(self, ws: WsConnection) -> None:
        while True:
            try:
                message = await ws.recv()
            except ConnectionClosedError:
                return
            if isinstance(message, bytes):
                self.errors.append(f"fake listener: unexpected binary message ({len(message)} B)")
                continue
            request = json.loads(message).get("request")
            if not isinstance(request, dict):
                self.errors.append(f"fake listener: unexpected message {message[:80]!r}")
                continue
            if "method" not in request:
                # Rendezvous-only form: never sent for a small GET.
                self.errors.append("fake listener: rendezvous-only request (not supported)")
                continue
            if request.get("body"):
                await ws.recv()  # the request body message; a GET has none
            header = json.dumps(
                {
                    "response": {
                        "requestId": request["id"],
                        "statusCode": 200,
                        "responseHeaders": {"content-type": "text/plain"},
                        "body": True,
                    }
                },
                separators=(",", ":"),
            )
            async with self._lock:  # header and body adjacent on the control channel
                await ws.send(header)
                await ws.send(BODY)
            self.answered += 1

    async def stop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosedError, OSError):
                async with asyncio.timeout(5):
                    await self._ws.close()
            self._ws.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def pid(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "fake",
            "process": "the bench process (shares its event loop with the client)",
            "handler": "answers inline on the control channel; the app is not called",
        }

    def failure_detail(self) -> str:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            exc = self._task.exception()
            return f"fake listener stopped: {exc!r}" if exc else "fake listener stopped"
        return ""


def agent_shim(argv: list[str]) -> int:
    """Run ``Listener(http_handler=HttpTarget(target))`` until SIGTERM/SIGINT.

    For the ``agent`` listener while ``hybridrelay listen`` does not yet serve HTTP
    targets. argv: relay URL, hybrid connection, rule name, target URL; the key comes
    from the environment variable ``HYBRIDRELAY_BENCH_KEY``.
    """
    from hybridrelay.listener import Listener
    from hybridrelay.listener.http_target import HttpTarget
    from hybridrelay.logs import configure_logging

    relay, hc, rule, target = argv
    configure_logging("warning")

    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        listener = Listener(
            relay,
            hc,
            token_provider=SasTokenProvider(rule, os.environ[KEY_ENV]),
            http_handler=HttpTarget(target),
        )
        await listener.run(stop)

    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(body())
    return 0


# ---------------------------------------------------------------------------- load


@dataclass
class Run:
    """One timed load run on one path."""

    ok: int
    wall_s: float
    latencies_s: list[float]
    bench_cpu_s: float
    relay_cpu_s: float | None
    agent_cpu_s: float | None

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s


class RequestFailedError(BenchError):
    pass


async def load(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    concurrency: int,
    *,
    duration_s: float | None,
    requests: int | None,
) -> tuple[int, float, list[float]]:
    """``concurrency`` workers send GETs back to back; returns (ok, wall seconds, latencies).

    Stops at the first failed request (exception, non-200 or wrong body).
    """
    latencies: list[float] = []
    remaining = requests if requests is not None else -1
    clock = time.perf_counter
    start = clock()
    deadline = start + duration_s if duration_s is not None else float("inf")

    async def worker() -> None:
        nonlocal remaining
        while True:
            if requests is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            elif clock() >= deadline:
                return
            t0 = clock()
            try:
                async with session.get(url, headers=headers) as resp:
                    body = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise RequestFailedError(f"GET {url}: {exc!r}") from exc
            latencies.append(clock() - t0)
            if resp.status != 200 or body != BODY:
                raise RequestFailedError(f"GET {url}: {resp.status} {body[:200]!r}")

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    except* RequestFailedError as eg:
        raise eg.exceptions[0] from None
    return len(latencies), clock() - start, latencies


def counting_trace(counter: dict[str, int]) -> aiohttp.TraceConfig:
    """Counts the TCP connections a session opens (keep-alive check)."""

    async def on_create(
        _session: aiohttp.ClientSession, _ctx: SimpleNamespace, _params: object
    ) -> None:
        counter["opened"] += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    return trace


@dataclass
class BenchPath:
    """One path: its URL, its session and what was measured on it."""

    name: str
    url: str
    session: aiohttp.ClientSession
    connections: dict[str, int]
    runs: list[Run] = field(default_factory=list)
    warmup_requests: int = 0

    def rps_summary(self) -> dict[str, Any]:
        values = [r.rps for r in self.runs]
        return {
            "median": round(statistics.median(values), 1),
            "min": round(min(values), 1),
            "max": round(max(values), 1),
            "runs": [round(v, 1) for v in values],
        }

    def latency_summary(self) -> dict[str, Any]:
        pooled = sorted(v for r in self.runs for v in r.latencies_s)
        out = percentiles(pooled)
        out["per_run"] = [
            {k: v for k, v in percentiles(sorted(r.latencies_s)).items() if k in ("p50", "p99")}
            for r in self.runs
        ]
        return out

    def cpu_summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": [r.ok for r in self.runs],
            "wall_s": [round(r.wall_s, 3) for r in self.runs],
            "bench_process_cpu_s": [round(r.bench_cpu_s, 3) for r in self.runs],
            "us_per_request": {
                "bench_process": [round(r.bench_cpu_s / r.ok * 1e6, 1) for r in self.runs]
            },
        }
        per_req = out["us_per_request"]
        for label, values in (
            ("relay_process", [r.relay_cpu_s for r in self.runs]),
            ("agent_process", [r.agent_cpu_s for r in self.runs]),
        ):
            if all(v is not None for v in values):
                out[f"{label}_cpu_s"] = [round(v or 0.0, 3) for v in values]
                per_req[label] = [
                    round((v or 0.0) / r.ok * 1e6, 1)
                    for v, r in zip(values, self.runs, strict=True)
                ]
        totals = [
            r.bench_cpu_s + (r.relay_cpu_s or 0.0) + (r.agent_cpu_s or 0.0) for r in self.runs
        ]
        per_req["all_processes"] = [
            round(t / r.ok * 1e6, 1) for t, r in zip(totals, self.runs, strict=True)
        ]
        # CPUs kept busy on average: 1.0 = one CPU's worth; the machine has os.cpu_count().
        out["cpus_busy"] = [round(t / r.wall_s, 2) for t, r in zip(totals, self.runs, strict=True)]
        out["us_per_request_median"] = {
            label: round(statistics.median(values), 1) for label, values in per_req.items()
        }
        return out


def percentiles(sorted_s: list[float]) -> dict[str, Any]:
    """p50/p90/p99/max in milliseconds (nearest rank) of sorted latencies in seconds."""
    if not sorted_s:
        return {}
    n = len(sorted_s)

    def rank(p: float) -> float:
        return sorted_s[min(n - 1, max(0, int(p / 100 * n + 0.999999) - 1))] * 1000

    return {
        "p50": round(rank(50), 3),
        "p90": round(rank(90), 3),
        "p99": round(rank(99), 3),
        "max": round(sorted_s[-1] * 1000, 3),
        "samples": n,
    }


async def wait_relayed_ready(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    *,
    alive: Callable[[], bool],
    wait_s: float = 20.0,
) -> tuple[int, str]:
    """Poll the relayed URL until the listener answers (anything but 502); (status, body)."""
    last = "no answer"
    try:
        async with asyncio.timeout(wait_s):
            while True:
                if not alive():
                    raise BenchError(f"listener process exited before it was ready ({last})")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url, headers=headers) as resp:
                        text = (await resp.read()).decode("utf-8", "replace")
                        if resp.status != 502:
                            return resp.status, text
                        last = f"502 {text[:200]}"
                await asyncio.sleep(0.05)  # polling: the listener connects on its own time
    except TimeoutError as exc:
        raise BenchError(f"listener not answering after {wait_s:.0f} s (last: {last})") from exc


# ---------------------------------------------------------------------------- the run

NOTES = (
    "Requests/s of a small GET (/hello, 13-byte text/plain body) over HTTP/1.1 keep-alive, "
    "'concurrency' workers sharing one aiohttp ClientSession with "
    "TCPConnector(limit=concurrency); each worker sends its next request as soon as the "
    "previous one is read. rps = successful requests / wall time of the run (first send to "
    "last response, workers stop sending at the deadline or request count). Any failed "
    "request (error, non-200, wrong body) aborts the bench. Both paths send the same headers "
    "(including the ServiceBusAuthorization SAS token, one token for the whole run). "
    "direct = client -> aiohttp app; relay = client -> relay subprocess (HTTP mode, inline "
    "request/response on the control channel) -> listener -> app. Client and app share the "
    "bench process's event loop on both paths; the relay path adds the relay process and "
    "(listener=agent) the agent process, which compete with the bench process for CPUs. "
    "Paths alternate direct/relay each round after one unrecorded warm-up per path; the "
    "connection pools stay open across rounds. ratio_median = relay median / direct median. "
    "Latency = one request's time from send to body read, pooled over the recorded runs, "
    "nearest-rank percentiles, ms. cpu.*.us_per_request = CPU microseconds per request per "
    "process (/proc, 10 ms resolution)."
)


async def run(args: argparse.Namespace, uvloop_on: bool) -> dict[str, Any]:
    import secrets
    import tempfile

    key = secrets.token_urlsafe(32)
    machine = machine_info(uvloop_on)
    limit_s = args.timeout

    with tempfile.TemporaryDirectory(prefix="hybridrelay-bench-http-") as tmp:
        relay = RelayProcess(write_config(Path(tmp), key))
        app = App()
        listener: RelayListener | None = None
        sessions: list[aiohttp.ClientSession] = []
        step = "start"
        try:
            app_url = await app.start()
            step = "relay start"
            relay_ws = await relay.start()
            relay_http = relay_ws.replace("ws://", "http://", 1)
            relayed_url = f"{relay_http}/{HC}{APP_PATH}"
            token = create_sas_token(audience_for(relayed_url), RULE, key, int(time.time()) + 86400)
            headers = {"ServiceBusAuthorization": token}
            print(f"http: relay pid {relay.pid} at {relay_http}", file=sys.stderr, flush=True)

            step = "listener start"
            if args.listener == "agent":
                listener = AgentListener(relay_ws, app_url, key)
            elif args.listener == "inproc":
                listener = InprocListener(relay_ws, app_url, key)
            else:
                listener = FakeListener(relay_ws, key)
            await listener.start()
            agent = listener if isinstance(listener, AgentListener) else None
            alive: Callable[[], bool] = (lambda: not agent.exited()) if agent else (lambda: True)
            async with aiohttp.ClientSession() as probe:
                status, text = await wait_relayed_ready(probe, relayed_url, headers, alive=alive)
                if agent is not None and status == 501:
                    reason = f"hybridrelay listen answered 501 for an http:// target: {text[:160]}"
                    print(f"http: {reason}; using the agent shim", file=sys.stderr, flush=True)
                    await agent.use_shim(reason)
                    status, text = await wait_relayed_ready(
                        probe, relayed_url, headers, alive=alive
                    )
                _check_probe(status, text)
            if listener.pid() is not None:
                print(f"http: agent pid {listener.pid()}", file=sys.stderr, flush=True)

            def make_path(name: str, url: str) -> BenchPath:
                counter = {"opened": 0}
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=args.concurrency, keepalive_timeout=3600),
                    trace_configs=[counting_trace(counter)],
                )
                sessions.append(session)
                return BenchPath(name, url, session, counter)

            paths = [make_path("direct", app_url + APP_PATH), make_path("relay", relayed_url)]

            async def measure(
                path: BenchPath, duration_s: float | None, requests: int | None
            ) -> Run:
                relay_cpu0, agent_cpu0 = relay.cpu_seconds(), proc_cpu_seconds(listener.pid())
                cpu0 = time.process_time()
                async with asyncio.timeout(limit_s):
                    ok, wall, lat = await load(
                        path.session,
                        path.url,
                        headers,
                        args.concurrency,
                        duration_s=duration_s,
                        requests=requests,
                    )
                cpu1 = time.process_time()
                relay_cpu1, agent_cpu1 = relay.cpu_seconds(), proc_cpu_seconds(listener.pid())
                return Run(
                    ok=ok,
                    wall_s=wall,
                    latencies_s=lat,
                    bench_cpu_s=cpu1 - cpu0,
                    relay_cpu_s=_delta(relay_cpu0, relay_cpu1),
                    agent_cpu_s=_delta(agent_cpu0, agent_cpu1),
                )

            if args.warmup_s > 0:
                for path in paths:
                    step = f"warm-up {path.name}"
                    path.warmup_requests = (await measure(path, args.warmup_s, None)).ok
            for rnd in range(args.rounds):
                for path in paths:
                    step = f"round {rnd + 1} {path.name}"
                    print(f"{step}: running", file=sys.stderr, flush=True)
                    result = await measure(path, args.duration_s, args.requests)
                    path.runs.append(result)
                    lat = percentiles(sorted(result.latencies_s))
                    print(
                        f"{step}: {result.rps:.0f} req/s "
                        f"(p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms)",
                        file=sys.stderr,
                        flush=True,
                    )
            listener_info = listener.describe()
            if isinstance(listener, FakeListener):
                listener_info["answered"] = listener.answered
            pids = {"bench": os.getpid(), "relay": relay.pid, "agent": listener.pid()}
        except Exception as exc:
            detail = f"{step} failed: {str(exc) or repr(exc)}"
            if listener is not None:
                if listener.errors:
                    detail += "\nlistener: " + "; ".join(listener.errors[:5])
                if extra := listener.failure_detail():
                    detail += "\n" + extra
            if relay.exited():
                code = relay.process.returncode if relay.process else "?"
                detail += f"\nrelay exited with {code}:\n{relay.log_tail()}"
            raise BenchError(detail) from exc
        finally:
            for session in sessions:
                await session.close()
            if listener is not None:
                await listener.stop()
            await relay.stop()
            await app.stop()

    direct, relayed = paths
    d, r = direct.rps_summary(), relayed.rps_summary()
    return {
        "benchmark": "http",
        "request": {
            "method": "GET",
            "path": APP_PATH,
            "response_body_bytes": len(BODY),
            "keep_alive": True,
        },
        "concurrency": args.concurrency,
        "per_run": {"duration_s": args.duration_s}
        if args.requests is None
        else {"requests": args.requests},
        "warmup_s": args.warmup_s,
        "rounds": args.rounds,
        "listener": listener_info,
        "direct_rps": d,
        "relay_rps": r,
        "ratio_median": round(r["median"] / d["median"], 3),
        # relay / direct within each round (the two ran back to back)
        "ratio_per_round": spread(
            paired([x.rps for x in relayed.runs], [x.rps for x in direct.runs]), 3
        ),
        "latency_ms": {"direct": direct.latency_summary(), "relay": relayed.latency_summary()},
        "connections_opened": {p.name: p.connections["opened"] for p in paths},
        "warmup_requests": {p.name: p.warmup_requests for p in paths},
        "cpu": {p.name: p.cpu_summary() for p in paths},
        "pids": pids,
        "machine": machine,
        "notes": NOTES,
    }


def _check_probe(status: int, text: str) -> None:
    if status != 200 or text.encode() != BODY:
        raise BenchError(f"relayed probe got {status} {text[:200]!r}")


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round of 2 s per path, 0.5 s warm-up")
    p.add_argument("--concurrency", type=int, default=50, help="workers/connections (default 50)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration-s", type=float, help="seconds per run (default 5, --quick 2)")
    g.add_argument("--requests", type=int, help="requests per run instead of a duration")
    p.add_argument("--rounds", type=int, help="rounds of direct+relay (default 3, --quick 1)")
    p.add_argument(
        "--warmup-s",
        type=float,
        help="unrecorded warm-up per path (default 1, --quick 0.5; 0: none)",
    )
    p.add_argument(
        "--listener",
        choices=("agent", "inproc", "fake"),
        default="agent",
        help="agent: listener agent subprocess (default); inproc: the agent's Listener in the "
        "bench process; fake: minimal in-bench listener that answers without the app",
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
    if args.requests is None and args.duration_s is None:
        args.duration_s = 2.0 if args.quick else 5.0
    if args.warmup_s is None:
        args.warmup_s = 0.5 if args.quick else 1.0
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if args.requests is not None and args.requests < 1:
        p.error("--requests must be at least 1")
    if args.duration_s is not None and args.duration_s <= 0:
        p.error("--duration-s must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main("http", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
