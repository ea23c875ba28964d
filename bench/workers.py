"""Worker scaling: connects/s and bulk MB/s through one relay with 1 vs 2 workers.

    python -m bench.workers               # 3 paired rounds: 3,000 connects, 2 x 256 MiB
    python -m bench.workers --quick       # 2 rounds: 600 connects, 2 x 32 MiB

Issue 16: ``relay serve --workers N`` on one port (SO_REUSEPORT) with a throwaway
``redis-server`` as the shared [cluster] state. Two relays run side by side, one with
``workers = 1`` and one with ``workers = 2`` (each also a cluster on the same Redis, under
its own prefix), and rounds alternate between them (1, 2, 1, 2, ...) after one unrecorded
warm-up each, so the per-round ratio is of two runs made back to back.

The load comes from ``--clients`` child processes (``python -m bench.workers --client``),
so the bench process, which runs the listeners, is not the only thing generating it:

* connects: each client runs ``CONCURRENCY / clients`` loops of (connect, one 64-byte echo,
  close) through the shared port; the figure is all clients' connects over the round's wall
  time, plus relay CPU per connect (the relay's whole process tree, /proc).
* bulk: each client opens one stream and sends its share of the volume in 64 KiB messages
  to a sink; the figure is all bytes over the wall time of the slowest client.

Two listeners (``Listener``, in the bench process) are attached through the shared port, so
with two workers they usually sit on different workers, as agents would. The figures are
what the whole machine does: on a box with as many cores as there are workers, the
bench's own processes compete with the workers for them (``machine.nproc`` and
``loadavg_at_start`` in the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.latency import CONCURRENCY, close_quietly, echo_once
from bench.proc import descendants, proc_cpu_seconds
from bench.stats import paired, spread
from bench.throughput import (
    HC,
    MB,
    RULE,
    BenchError,
    RelayProcess,
    drive,
    machine_info,
    run_main,
    sink,
    write_config,
)
from hybridrelay.client import connect
from hybridrelay.errors import ConnectionClosedError, HybridRelayError
from hybridrelay.listener import AcceptRequest, Listener
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection

KEY_ENV: Final = "BENCH_WORKERS_KEY"  # the clients' SAS key (never on a command line)
BULK: Final = "bulk"  # a stream's first message: sink this stream, do not echo it
BULK_MESSAGE: Final = bytes(64 * 1024)
MODES: Final = (1, 2)


# ---------------------------------------------------------------------------- clients


async def client_connects(
    url: str, tokens: SasTokenProvider, count: int, loops: int
) -> dict[str, Any]:
    remaining = count
    failures = 0
    errors: list[str] = []

    async def loop() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            try:
                async with asyncio.timeout(10):
                    conn = await connect(url, HC, token_provider=tokens)
                    try:
                        await echo_once(conn)
                    finally:
                        await close_quietly(conn)
            except (HybridRelayError, OSError, TimeoutError) as exc:
                failures += 1
                if len(errors) < 5:
                    errors.append(repr(exc))

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(loops)))
    return {
        "completed": count - failures,
        "failed": failures,
        "errors": errors,
        "wall_s": time.perf_counter() - start,
    }


async def client_bulk(url: str, tokens: SasTokenProvider, mib: int) -> dict[str, Any]:
    count = mib * (1 << 20) // len(BULK_MESSAGE)
    async with asyncio.timeout(300):
        conn = await connect(url, HC, token_provider=tokens)
        try:
            await conn.send(BULK)
            elapsed = await drive(conn, BULK_MESSAGE, count)
        finally:
            await close_quietly(conn)
    return {"bytes": count * len(BULK_MESSAGE), "wall_s": elapsed}


async def run_client(args: argparse.Namespace) -> dict[str, Any]:
    tokens = SasTokenProvider(RULE, os.environ[KEY_ENV])
    if args.client_kind == "connects":
        return await client_connects(args.client, tokens, args.connects, args.loops)
    return await client_bulk(args.client, tokens, args.mib)


# ---------------------------------------------------------------------------- the relay side


class WorkersRelay(RelayProcess):
    """A relay child whose CPU time is that of its whole process tree (supervisor + workers)."""

    def cpu_seconds(self) -> float | None:
        pid = self.pid
        if pid is None:
            return None
        total = 0.0
        for each in (pid, *descendants(pid)):
            total += proc_cpu_seconds(each) or 0.0
        return total


@dataclass
class EchoOrSink:
    """Listeners on one relay: echo each stream, or sink it when it starts with ``bulk``."""

    relay_url: str
    tokens: SasTokenProvider
    errors: list[str]
    count: int = 2
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _handle(self, ws: WsConnection, request: AcceptRequest) -> None:
        try:
            first = await ws.recv()
            if first == BULK:
                await sink(ws.recv, ws.send)
                return
            await ws.send(first)
            while True:
                await ws.send(await ws.recv())
        except ConnectionClosedError:
            pass  # the sender closed: the normal end
        except Exception as exc:  # noqa: BLE001 - counted and reported in the JSON
            if len(self.errors) < 20:
                self.errors.append(f"listener: {exc!r}")

    async def start(self, wait_s: float = 30.0) -> None:
        for _ in range(self.count):
            listener = Listener(
                self.relay_url, HC, token_provider=self.tokens, handler=self._handle
            )
            task = asyncio.create_task(listener.run(self._stop))
            self._tasks.append(task)
            async with asyncio.timeout(wait_s):
                await listener.connected.wait()

    async def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(15):
                await asyncio.gather(*self._tasks, return_exceptions=True)


async def clients(
    url: str, key: str, clients_n: int, kind: str, extra: list[str]
) -> list[dict[str, Any]]:
    """Start ``clients_n`` client children at once and collect their JSON results."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDRELAY_")}
    env[KEY_ENV] = key
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.workers",
            "--client",
            url,
            "--client-kind",
            kind,
            *extra,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        for _ in range(clients_n)
    ]
    try:
        outputs = await asyncio.gather(*(p.communicate() for p in procs))
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
    results = []
    for p, (out, _err) in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise BenchError(f"a {kind} client exited {p.returncode}")
        results.append(json.loads(out))
    return results


async def connects_round(
    relay: WorkersRelay, url: str, key: str, n_clients: int, count: int
) -> dict[str, Any]:
    per_client = max(1, count // n_clients)
    loops = max(1, CONCURRENCY // n_clients)
    cpu0 = relay.cpu_seconds()
    start = time.perf_counter()
    done = await clients(
        url,
        key,
        n_clients,
        "connects",
        ["--connects", str(per_client), "--loops", str(loops)],
    )
    wall = time.perf_counter() - start
    cpu1 = relay.cpu_seconds()
    completed = sum(d["completed"] for d in done)
    if completed == 0:
        raise BenchError(f"every connect failed, e.g. {done[0]['errors']}")
    # Client start-up is outside the figure: each client times its own loops.
    busy = max(d["wall_s"] for d in done)
    out: dict[str, Any] = {
        "completed": completed,
        "failed": sum(d["failed"] for d in done),
        "errors_sample": [e for d in done for e in d["errors"]][:5],
        "wall_s": wall,
        "rate": completed / busy,
    }
    if cpu0 is not None and cpu1 is not None:
        out["relay_cpu_us"] = (cpu1 - cpu0) / completed * 1e6
    return out


async def bulk_round(
    relay: WorkersRelay, url: str, key: str, n_clients: int, mib: int
) -> dict[str, Any]:
    cpu0 = relay.cpu_seconds()
    done = await clients(url, key, n_clients, "bulk", ["--mib", str(mib)])
    cpu1 = relay.cpu_seconds()
    total = sum(d["bytes"] for d in done)
    out: dict[str, Any] = {"bytes": total, "mb_s": total / max(d["wall_s"] for d in done) / MB}
    if cpu0 is not None and cpu1 is not None:
        out["relay_cpu_s_per_gb"] = (cpu1 - cpu0) / (total / 1e9)
    return out


def _cluster_config(directory: Path, key: str, redis_url: str, workers: int) -> Path:
    directory.mkdir()
    path = write_config(directory, key, relay_extra=f"workers = {workers}")
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[cluster]\nredis_url = "{redis_url}"\nprefix = "w{workers}"\n')
    return path


async def run(args: argparse.Namespace, uvloop_on: bool) -> dict[str, Any]:
    from hybridrelay.dev.cluster import start_redis

    key = secrets.token_urlsafe(32)
    tokens = SasTokenProvider(RULE, key)
    errors: list[str] = []
    result: dict[str, Any] = {
        "benchmark": "workers",
        "rounds": args.rounds,
        "clients": args.clients,
        "concurrency": CONCURRENCY,
        "connects_per_round": args.connects,
        "bulk_mib_per_client": args.mib,
        "machine": machine_info(uvloop_on),
        "loadavg_at_start": list(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory(prefix="hybridrelay-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "redis").mkdir()
        try:
            redis_child, redis_url = await start_redis(workdir / "redis")
        except HybridRelayError as exc:
            raise BenchError(str(exc)) from exc
        relays = {
            n: WorkersRelay(_cluster_config(workdir / f"w{n}", key, redis_url, n)) for n in MODES
        }
        listeners: dict[int, EchoOrSink] = {}
        try:
            urls = {n: await relays[n].start(wait_s=60) for n in MODES}
            for n in MODES:
                listeners[n] = EchoOrSink(urls[n], tokens, errors)
                await listeners[n].start()
            rates: dict[int, list[float]] = {n: [] for n in MODES}
            cpu: dict[int, list[float]] = {n: [] for n in MODES}
            mb_s: dict[int, list[float]] = {n: [] for n in MODES}
            cpu_gb: dict[int, list[float]] = {n: [] for n in MODES}
            failed = 0
            for rnd in range(args.rounds + 1):  # round 0 warms both up, unrecorded
                for n in MODES:
                    c = await connects_round(relays[n], urls[n], key, args.clients, args.connects)
                    b = await bulk_round(relays[n], urls[n], key, args.clients, args.mib)
                    if rnd == 0:
                        continue
                    failed += c["failed"]
                    rates[n].append(c["rate"])
                    mb_s[n].append(b["mb_s"])
                    if "relay_cpu_us" in c:
                        cpu[n].append(c["relay_cpu_us"])
                    if "relay_cpu_s_per_gb" in b:
                        cpu_gb[n].append(b["relay_cpu_s_per_gb"])
                    print(
                        f"round {rnd} workers={n}: {c['rate']:.0f} connects/s,"
                        f" {b['mb_s']:.0f} MB/s",
                        file=sys.stderr,
                        flush=True,
                    )
            result["connects_per_s"] = {str(n): spread(rates[n], 1) for n in MODES}
            result["relay_cpu_us_per_connect"] = {
                str(n): spread(cpu[n], 1) for n in MODES if cpu[n]
            }
            result["bulk_mb_s"] = {str(n): spread(mb_s[n], 1) for n in MODES}
            result["relay_cpu_s_per_gb"] = {
                str(n): spread(cpu_gb[n], 2) for n in MODES if cpu_gb[n]
            }
            connect_ratio = paired(rates[2], rates[1])
            bulk_ratio = paired(mb_s[2], mb_s[1])
            result["ratios"] = {
                "connects_2_over_1": spread(connect_ratio),
                "bulk_2_over_1": spread(bulk_ratio),
            }
            result["failed_connects"] = failed
            result["listener_errors"] = errors
            result["target"] = "reported only: connects/s and bulk with 2 workers vs 1"
            result["met"] = None
        finally:
            for n in listeners:
                await listeners[n].stop()
            for relay in relays.values():
                await relay.stop()
            await redis_child.stop()
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 rounds, 600 connects, 2 x 32 MiB")
    p.add_argument("--rounds", type=int, help="paired rounds (default 3; quick 2)")
    p.add_argument("--connects", type=int, help="connects per round (default 3000; quick 600)")
    p.add_argument("--mib", type=int, help="bulk MiB per client per round (256; quick 32)")
    p.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--loops", type=int, default=CONCURRENCY, help=argparse.SUPPRESS)
    p.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--client-kind", choices=("connects", "bulk"), help=argparse.SUPPRESS)
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.connects = args.connects or (600 if args.quick else 3000)
    args.mib = args.mib or (32 if args.quick else 256)
    if args.rounds < 1 or args.connects < 1 or args.mib < 1 or args.clients < 1:
        p.error("--rounds, --connects, --mib and --clients must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        with asyncio.Runner() as runner:
            print(json.dumps(runner.run(run_client(args))))
        return 0
    return run_main("workers", args, run)


if __name__ == "__main__":
    sys.exit(main())
