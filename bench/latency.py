"""Connection latency, connect rate and ping-pong round trip through the relay, in one run.

    python -m bench.latency               # 2,000 sequential connects, 5,000 at concurrency 50
    python -m bench.latency --quick       # 200 sequential, 500 concurrent, shorter ping-pong
    python -m bench.latency --parts connect,rate --out result.json

Issue 7, items 4-6, against one relay subprocess (same setup as ``bench.throughput``):

* ``connect_latency`` (4): N sequential relayed connects with ``hybridrelay.client.connect``;
  each is timed from the start of the sender's connect to connect() returning (the relay
  has sent 101, i.e. accept -> rendezvous -> 101 happened). Each stream then does one
  64-byte echo and is closed (not timed).
* ``connect_rate`` (5): rounds of M relayed connects (connect, one echo, close) by 50
  concurrent workers; connects per second over each round's wall time (median of the
  rounds), and the relay process's CPU time (/proc/PID/stat utime+stime) per connect.
* ``ping_pong`` (6): one open stream per path, 64-byte binary message out and back,
  direct (``ws_connect`` to an aiohttp echo server) vs relayed, alternating rounds;
  ``relay_overhead_us`` = relayed p50 - direct p50.

The listener is a ``hybridrelay.listener.Listener`` with an echo handler in the bench
process. Each figure carries the issue's target and ``met``. Exactly one JSON object goes
to stdout; progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from bench.stats import paired, percentile, spread
from bench.throughput import (
    HC,
    RULE,
    BenchError,
    RelayProcess,
    machine_info,
    run_main,
    write_config,
)
from hybridrelay.client import connect
from hybridrelay.errors import ConnectionClosedError
from hybridrelay.listener import AcceptRequest, Listener
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection, ws_connect

PAYLOAD = bytes(range(64))  # 64 bytes
CONCURRENCY = 50

Opener = Callable[[], Awaitable[WsConnection]]


# ---------------------------------------------------------------------------- statistics


def summarize_ms(seconds: list[float]) -> dict[str, Any]:
    values = sorted(seconds)
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 50) * 1e3, 3),
        "p99_ms": round(percentile(values, 99) * 1e3, 3),
        "max_ms": round(values[-1] * 1e3, 3),
        "min_ms": round(values[0] * 1e3, 3),
        "over_1s": sum(1 for v in values if v > 1.0),
    }


def summarize_us(seconds: list[float]) -> dict[str, Any]:
    values = sorted(seconds)
    return {
        "count": len(values),
        "p50_us": round(percentile(values, 50) * 1e6, 1),
        "p99_us": round(percentile(values, 99) * 1e6, 1),
        "max_us": round(values[-1] * 1e6, 1),
        "min_us": round(values[0] * 1e6, 1),
    }


# ---------------------------------------------------------------------------- echo servers


async def echo_once(conn: WsConnection) -> None:
    await conn.send(PAYLOAD)
    reply = await conn.recv()
    if reply != PAYLOAD:
        raise BenchError(f"echo returned {reply[:16]!r}..., expected the 64-byte payload")


async def close_quietly(conn: WsConnection) -> None:
    with contextlib.suppress(ConnectionClosedError, OSError):
        await conn.close()


@dataclass
class DirectEcho:
    """A plain aiohttp WebSocket echo server (no compression, no size cap)."""

    url: str = ""
    _runner: web.AppRunner | None = None

    @staticmethod
    async def _handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/echo", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"ws://{host}:{port}/echo"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class RelayEcho:
    """A Listener on the relay whose handler echoes every message until the sender closes."""

    relay_url: str
    tokens: SasTokenProvider
    errors: list[str]
    handled: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def _handle(self, ws: WsConnection, request: AcceptRequest) -> None:
        self.handled += 1
        try:
            while True:
                await ws.send(await ws.recv())
        except ConnectionClosedError:
            pass  # the sender closed: the normal end
        except Exception as exc:  # noqa: BLE001 - counted and reported in the JSON
            if len(self.errors) < 20:
                self.errors.append(f"listener echo: {exc!r}")

    async def start(self, wait_s: float = 20.0) -> None:
        listener = Listener(self.relay_url, HC, token_provider=self.tokens, handler=self._handle)
        self._task = asyncio.create_task(listener.run(self._stop))
        connected = asyncio.create_task(listener.connected.wait())
        done, _ = await asyncio.wait(
            {self._task, connected}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
        )
        if connected not in done:
            connected.cancel()
            if self._task in done:
                self._task.result()
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


# ---------------------------------------------------------------------------- measurements


async def connect_latency(open_relay: Opener, count: int, limit_s: float) -> dict[str, Any]:
    """(4) sequential connects; time = start of connect() to its return (101 received)."""
    samples: list[float] = []
    for _ in range(count):
        async with asyncio.timeout(limit_s):
            start = time.perf_counter()
            conn = await open_relay()
            samples.append(time.perf_counter() - start)
            try:
                await echo_once(conn)
            finally:
                await close_quietly(conn)
    stats = summarize_ms(samples)
    met = {
        "p50": stats["p50_ms"] <= 1.0,
        "p99": stats["p99_ms"] <= 5.0,
        "none_over_1s": stats["over_1s"] == 0,
    }
    return stats | {
        "target": "p50 <= 1 ms, p99 <= 5 ms, none over 1 s in 2,000",
        "met_detail": met,
        "met": all(met.values()) and count >= 2000,
    }


async def connect_rate_round(
    open_relay: Opener, count: int, relay: RelayProcess, limit_s: float
) -> dict[str, Any]:
    """``count`` connects (connect, one echo, close) by CONCURRENCY workers."""
    remaining = count
    latencies: list[float] = []
    errors: list[str] = []
    failures = 0

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            try:
                async with asyncio.timeout(limit_s):
                    start = time.perf_counter()
                    conn = await open_relay()
                    latencies.append(time.perf_counter() - start)
                    try:
                        await echo_once(conn)
                    finally:
                        await close_quietly(conn)
            except Exception as exc:  # noqa: BLE001 - counted; the figure says how many failed
                failures += 1
                if len(errors) < 10:
                    errors.append(repr(exc))

    relay_cpu0 = relay.cpu_seconds()
    bench_cpu0 = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    wall = time.perf_counter() - start
    bench_cpu = time.process_time() - bench_cpu0
    relay_cpu1 = relay.cpu_seconds()
    completed = count - failures
    if completed == 0:
        raise BenchError(f"connect rate: every connect failed, e.g. {errors[:3]}")
    out: dict[str, Any] = {
        "completed": completed,
        "failed": failures,
        "errors_sample": errors,
        "wall_s": wall,
        "rate": completed / wall,
        "latencies": latencies,
        "bench_cpu_us": bench_cpu / completed * 1e6,
    }
    if relay_cpu0 is not None and relay_cpu1 is not None:
        out["relay_cpu_s"] = relay_cpu1 - relay_cpu0
        out["relay_cpu_us"] = (relay_cpu1 - relay_cpu0) / completed * 1e6
    return out


async def connect_rate(
    open_relay: Opener, count: int, relay: RelayProcess, limit_s: float, rounds: int = 1
) -> dict[str, Any]:
    """(5) ``rounds`` rounds of ``count`` connects at concurrency CONCURRENCY."""
    done = []
    for rnd in range(rounds):
        done.append(await connect_rate_round(open_relay, count, relay, limit_s))
        print(
            f"connect rate round {rnd + 1}: {done[-1]['rate']:.0f}/s",
            file=sys.stderr,
            flush=True,
        )
    rates = [r["rate"] for r in done]
    failures = sum(r["failed"] for r in done)
    rate = statistics.median(rates)
    out: dict[str, Any] = {
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "attempted": count * rounds,
        "completed": sum(r["completed"] for r in done),
        "failed": failures,
        "errors_sample": [e for r in done for e in r["errors_sample"]][:10],
        "wall_s": [round(r["wall_s"], 3) for r in done],
        "connects_per_s": round(rate, 1),
        "connects_per_s_rounds": spread(rates, 1),
        "target": ">= 1,000 relayed connects/s on one node, no errors",
        "met": rate >= 1000 and failures == 0,
        "connect_latency_under_load": summarize_ms([v for r in done for v in r["latencies"]]),
        "bench_process_cpu_us_per_connect": round(
            statistics.median(r["bench_cpu_us"] for r in done), 1
        ),
    }
    if all("relay_cpu_us" in r for r in done):
        per_connect = [r["relay_cpu_us"] for r in done]
        out["relay_cpu_s"] = [round(r["relay_cpu_s"], 3) for r in done]
        out["relay_cpu_us_per_connect"] = {
            "value": round(statistics.median(per_connect), 1),
            "rounds": spread(per_connect, 1),
            "target": "none set by the issue (reported only)",
            "met": None,
        }
    return out


async def ping_pong_round(conn: WsConnection, count: int, samples: list[float] | None) -> None:
    for _ in range(count):
        start = time.perf_counter()
        await conn.send(PAYLOAD)
        reply = await conn.recv()
        elapsed = time.perf_counter() - start
        if reply != PAYLOAD:
            raise BenchError("ping-pong: echo returned something else")
        if samples is not None:
            samples.append(elapsed)


async def ping_pong(
    open_direct: Opener,
    open_relay: Opener,
    rounds: int,
    per_round: int,
    warmup: int,
    limit_s: float,
) -> dict[str, Any]:
    """(6) 64-byte round trips on one open stream per path, rounds alternate direct/relay."""
    samples: dict[str, list[float]] = {"direct": [], "relay": []}
    round_p50_us: dict[str, list[float]] = {"direct": [], "relay": []}
    async with asyncio.timeout(limit_s):
        conns = {"direct": await open_direct(), "relay": await open_relay()}
    try:
        for conn in conns.values():
            async with asyncio.timeout(limit_s):
                await ping_pong_round(conn, warmup, None)
        for rnd in range(rounds):
            for name, conn in conns.items():
                this_round: list[float] = []
                async with asyncio.timeout(limit_s):
                    await ping_pong_round(conn, per_round, this_round)
                samples[name] += this_round
                p50 = percentile(sorted(this_round), 50) * 1e6
                round_p50_us[name].append(round(p50, 1))
                print(
                    f"ping-pong round {rnd + 1} {name}: p50 {p50:.1f} us",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for conn in conns.values():
            await close_quietly(conn)
    direct, relay = summarize_us(samples["direct"]), summarize_us(samples["relay"])
    overhead = round(relay["p50_us"] - direct["p50_us"], 1)
    overhead_rounds = paired(round_p50_us["relay"], round_p50_us["direct"], op="diff")
    return {
        "message_bytes": len(PAYLOAD),
        "rounds": rounds,
        "round_trips_per_round": per_round,
        "warmup_round_trips": warmup,
        "direct": direct | {"round_p50_us": round_p50_us["direct"]},
        "relay": relay | {"round_p50_us": round_p50_us["relay"]},
        "relay_overhead_us": {
            "p50": overhead,
            "p50_per_round": spread(overhead_rounds, 1),
            "p99": round(relay["p99_us"] - direct["p99_us"], 1),
            "target": "p50 <= 150 us",
            "met": overhead <= 150,
        },
    }


NOTES = (
    "One relay subprocess (python -m hybridrelay relay serve, log level warning); the "
    "Listener (echo handler) and all senders run on one event loop in the bench process, "
    "so a relayed connect also pays the listener's accept and rendezvous work in this "
    "process. connect_latency: sequential; time = start of hybridrelay.client.connect to "
    "its return (101), including SAS token creation; each stream then does one 64-byte "
    "echo and is closed (untimed). connect_rate: connect + one echo + close per connect, "
    f"{CONCURRENCY} workers; relay CPU from /proc/PID/stat (10 ms tick). ping_pong: one "
    "open stream per path; direct = hybridrelay.wsclient.ws_connect to an aiohttp echo "
    "server in this process; relay = client -> relay -> Listener echo; rounds alternate "
    "direct/relay after an unrecorded warm-up; percentiles are nearest-rank over all "
    "recorded round trips. 'met' for connect_latency also requires at least 2,000 connects."
)


async def run(args: argparse.Namespace, uvloop_on: bool) -> dict[str, Any]:
    key = secrets.token_urlsafe(32)
    listener_errors: list[str] = []
    machine = machine_info(uvloop_on)
    result: dict[str, Any] = {"benchmark": "latency"}

    with tempfile.TemporaryDirectory(prefix="hybridrelay-bench-") as tmp:
        relay = RelayProcess(write_config(Path(tmp), key))
        direct = DirectEcho()
        echo: RelayEcho | None = None
        step = "setup"
        try:
            direct_url = await direct.start()
            relay_url = await relay.start()
            echo = RelayEcho(relay_url, SasTokenProvider(RULE, key), listener_errors)
            await echo.start()

            async def open_direct() -> WsConnection:
                return await ws_connect(direct_url)

            try:
                step = "warm-up"
                await connect_latency(echo.open, args.warmup_connects, args.timeout)
                if "connect" in args.parts:
                    step = "connect latency"
                    print(f"{step}: {args.connects} sequential connects", file=sys.stderr)
                    result["connect_latency"] = await connect_latency(
                        echo.open, args.connects, args.timeout
                    )
                if "rate" in args.parts:
                    step = "connect rate"
                    print(
                        f"{step}: {args.rate_rounds} x {args.rate_connects} connects",
                        file=sys.stderr,
                    )
                    result["connect_rate"] = await connect_rate(
                        echo.open, args.rate_connects, relay, args.timeout, args.rate_rounds
                    )
                if "pingpong" in args.parts:
                    step = "ping-pong"
                    result["ping_pong"] = await ping_pong(
                        open_direct,
                        echo.open,
                        args.rounds,
                        args.round_trips,
                        args.warmup_round_trips,
                        args.timeout,
                    )
            except Exception as exc:
                detail = f"{step} failed: {exc!r}"
                if listener_errors:
                    detail += "\nlistener side: " + "; ".join(listener_errors)
                if relay.exited():
                    code = relay.process.returncode if relay.process else "?"
                    detail += f"\nrelay exited with {code}:\n" + relay.log_tail()
                raise BenchError(detail) from exc
            result["listener_streams_handled"] = echo.handled
        finally:
            if echo is not None:
                await echo.stop()
            await relay.stop()
            await direct.stop()

    result["listener_errors"] = listener_errors
    result["machine"] = machine
    result["notes"] = NOTES
    return result


PARTS = ("connect", "rate", "pingpong")


def _parts(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names or any(p not in PARTS for p in names):
        raise argparse.ArgumentTypeError(f"give parts from {', '.join(PARTS)} (got {text!r})")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller counts (see each option)")
    p.add_argument(
        "--parts",
        type=_parts,
        default=list(PARTS),
        help="comma-separated subset of connect (item 4), rate (5), pingpong (6); default all",
    )
    p.add_argument("--connects", type=int, help="sequential connects (default 2000, --quick 200)")
    p.add_argument(
        "--rate-connects",
        type=int,
        help=f"connects at concurrency {CONCURRENCY} (default 5000, --quick 500)",
    )
    p.add_argument(
        "--rate-rounds", type=int, help="rounds of --rate-connects (default 3, --quick 1)"
    )
    p.add_argument(
        "--warmup-connects", type=int, help="unrecorded connects first (default 100, --quick 20)"
    )
    p.add_argument("--rounds", type=int, help="ping-pong rounds per path (default 10, --quick 4)")
    p.add_argument(
        "--round-trips",
        type=int,
        help="ping-pong round trips per round (default 2000, --quick 500)",
    )
    p.add_argument(
        "--warmup-round-trips",
        type=int,
        help="unrecorded round trips per path (default 500, --quick 100)",
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds allowed per step (default 60)"
    )
    p.add_argument(
        "--no-uvloop", action="store_true", help="use the default asyncio loop in the bench process"
    )
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    defaults = {
        "connects": (2000, 200),
        "rate_connects": (5000, 500),
        "rate_rounds": (3, 1),
        "warmup_connects": (100, 20),
        "rounds": (10, 4),
        "round_trips": (2000, 500),
        "warmup_round_trips": (500, 100),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("connects", "rate_connects", "rate_rounds", "rounds", "round_trips"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup_connects", "warmup_round_trips"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main("latency", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
