"""Relay memory per idle relayed connection, with N relayed connections open at once.

    python -m bench.memory                   # 10,000 connections (capped by the fd limit)
    python -m bench.memory --quick           # 1,000 connections
    python -m bench.memory --connections 5000 --out result.json

Issue 7, item 7, against one relay subprocess (same setup as ``bench.throughput``):

1. raise RLIMIT_NOFILE of the bench process to 2N + margin: the hard limit too when
   allowed (root with CAP_SYS_RESOURCE), else the soft limit up to the hard one; the
   relay subprocess inherits both. Each relayed connection costs the bench process two
   sockets (sender + the listener's rendezvous leg) and the relay two (plus the listener's
   control channel), so N is capped at (soft limit - margin) / 2 and the JSON says so
   (``fd_limits.hard_raise_error`` says why the hard limit could not be raised);
2. start the relay and a ``Listener`` with an echo handler; read the relay's VmRSS
   (/proc/PID/status): ``rss_before_kib``;
3. open N relayed connections with ``hybridrelay.client.connect``, 200 at a time, and
   leave them idle; ``rss_open_kib``; ``kib_per_connection`` = (open - before) / N;
4. send 16 bytes on every connection and read them back (200 at a time):
   ``echo_failures``;
5. close them all; ``rss_after_close_kib``.

Exactly one JSON object goes to stdout; progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.latency import RelayEcho, close_quietly
from bench.proc import rss_kib as proc_rss_kib
from bench.throughput import (
    HC,
    RULE,
    BenchError,
    RelayProcess,
    machine_info,
    run_main,
    write_config,
)
from hybridrelay.listener import Listener
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection

CONCURRENCY = 200
FD_MARGIN = 96  # fds kept free: listening socket, epoll, pipes, control channel, ...
ECHO = bytes(range(16))
TARGET_KIB = 32.0


def rss_kib(pid: int | None) -> int:
    """VmRSS of a process in KiB (Linux /proc); BenchError when it can't be read."""
    if pid is None:
        raise BenchError("no relay process")
    kib = proc_rss_kib(pid)
    if kib is None:
        raise BenchError(f"no VmRSS in /proc/{pid}/status")
    return kib


def fd_count(pid: int | None) -> int | None:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None


def nofile_limit_of(pid: int | None) -> str | None:
    """The 'Max open files' line of /proc/PID/limits (soft, hard), to show the relay's."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                parts = line.split()
                return f"{parts[3]} soft, {parts[4]} hard"
    return None


CAP_SYS_RESOURCE = 24  # linux/capability.h


def has_cap_sys_resource() -> bool | None:
    """Whether this process may raise hard rlimits (Linux /proc), None when unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return None


def raise_fd_limit(wanted: int) -> dict[str, Any]:
    """Raise RLIMIT_NOFILE to ``wanted``: the hard limit too when allowed (root with
    CAP_SYS_RESOURCE), else the soft limit up to the hard one. Children inherit both."""
    soft0, hard0 = resource.getrlimit(resource.RLIMIT_NOFILE)
    out: dict[str, Any] = {"soft_before": soft0, "hard_before": hard0, "wanted": wanted}
    hard = hard0
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            hard = wanted
        except (ValueError, OSError) as exc:
            cap = has_cap_sys_resource()
            why = (
                " (this process lacks CAP_SYS_RESOURCE, e.g. a container that drops it)"
                if cap is False
                else ""
            )
            out["hard_raise_error"] = f"{exc}{why}"
    soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    soft = max(soft, soft0)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return out | {"soft": soft, "hard": hard}


async def bounded(
    count: int, limit_s: float, job: Callable[[int], Awaitable[None]], errors: list[str]
) -> int:
    """Run job(0..count-1), CONCURRENCY at a time, each under limit_s; return failures."""
    sem = asyncio.Semaphore(CONCURRENCY)
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            try:
                async with asyncio.timeout(limit_s):
                    await job(i)
            except Exception as exc:  # noqa: BLE001 - counted and sampled in the JSON
                failures += 1
                if len(errors) < 10:
                    errors.append(f"#{i}: {exc!r}")

    await asyncio.gather(*(one(i) for i in range(count)))
    return failures


@dataclass
class ManyEcho(RelayEcho):
    """``RelayEcho`` whose Listener accepts ``max_streams`` concurrent streams.

    ``Listener`` rejects streams beyond ``max_streams`` (default 1024) with 503
    "listener at capacity", so the bench sets it above N.
    """

    max_streams: int = 1024

    async def start(self, wait_s: float = 20.0) -> None:
        listener = Listener(
            self.relay_url,
            HC,
            token_provider=self.tokens,
            handler=self._handle,
            max_streams=self.max_streams,
        )
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


def require(condition: bool, message: str) -> None:
    if not condition:
        raise BenchError(message)


async def settle(seconds: float) -> None:
    await asyncio.sleep(seconds)  # let the relay finish pending work before reading RSS


NOTES = (
    "One relay subprocess (python -m hybridrelay relay serve, log level warning, uvloop when "
    "installed); one Listener with an echo handler and all senders in the bench process. "
    "RSS = VmRSS from /proc/PID/status of the relay, read after a short settle; "
    "kib_per_connection = (rss_open - rss_before) / connections opened, so it includes "
    "per-connection Python objects, socket buffers charged to the process and any heap "
    f"growth. Connections are opened, echoed and closed {CONCURRENCY} at a time; 'idle' = "
    "open, handshake done, no data. The echo check sends 16 bytes on each and expects "
    "them back. rss_after_close shows how much the allocator returns (Python rarely "
    "returns freed arenas in full). N is capped so 2N + margin fits the hard fd limit."
)


async def run(args: argparse.Namespace, uvloop_on: bool) -> dict[str, Any]:
    requested = args.connections
    limits = raise_fd_limit(2 * requested + FD_MARGIN)
    cap = (limits["soft"] - FD_MARGIN) // 2
    n = min(requested, cap)
    if n < 1:
        raise BenchError(f"fd limit {limits['soft']} leaves no room for connections")
    if n < requested:
        print(
            f"memory: fd limit {limits['soft']} (hard {limits['hard']}) allows {n} "
            f"connections, not {requested}: {limits.get('hard_raise_error', '')}",
            file=sys.stderr,
        )
    key = secrets.token_urlsafe(32)
    listener_errors: list[str] = []
    result: dict[str, Any] = {"benchmark": "memory", "connections_requested": requested}
    machine = machine_info(uvloop_on)
    timing: dict[str, float] = {}
    open_errors: list[str] = []
    echo_errors: list[str] = []
    conns: list[WsConnection | None] = [None] * n

    async def open_one(i: int) -> None:
        assert echo is not None
        conns[i] = await echo.open()

    async def echo_one(i: int) -> None:
        conn = conns[i]
        if conn is None:
            raise BenchError("not open")
        await conn.send(ECHO)
        reply = await conn.recv()
        if reply != ECHO:
            raise BenchError(f"echo returned {reply!r}")

    async def close_one(i: int) -> None:
        conn = conns[i]
        if conn is not None:
            await close_quietly(conn)
            conns[i] = None

    with tempfile.TemporaryDirectory(prefix="hybridrelay-bench-") as tmp:
        relay = RelayProcess(write_config(Path(tmp), key))
        echo: ManyEcho | None = None
        step = "setup"
        try:
            relay_url = await relay.start()
            result["relay_fd_limit"] = nofile_limit_of(relay.pid)
            echo = ManyEcho(
                relay_url, SasTokenProvider(RULE, key), listener_errors, max_streams=n + 100
            )
            await echo.start()
            try:
                step = "warm-up"
                await bounded(20, args.timeout, open_one, open_errors)
                await bounded(20, args.timeout, echo_one, echo_errors)
                await bounded(20, args.timeout, close_one, open_errors)
                require(
                    not (open_errors or echo_errors),
                    f"warm-up failed: {(open_errors + echo_errors)[:3]}",
                )
                await settle(args.settle)
                rss_before = rss_kib(relay.pid)
                fds_before = fd_count(relay.pid)

                step = "open"
                print(f"memory: opening {n} relayed connections", file=sys.stderr, flush=True)
                start = time.perf_counter()
                open_failures = await bounded(n, args.timeout, open_one, open_errors)
                timing["open_s"] = round(time.perf_counter() - start, 3)
                opened = n - open_failures
                require(opened > 0, f"no connection opened, e.g. {open_errors[:3]}")
                await settle(args.settle)
                rss_open = rss_kib(relay.pid)
                fds_open = fd_count(relay.pid)
                bench_rss_open = rss_kib(os.getpid())
                handlers_open = echo.handled

                step = "echo"
                print(f"memory: echo on {opened} connections", file=sys.stderr, flush=True)
                start = time.perf_counter()
                echo_failures = await bounded(n, args.timeout, echo_one, echo_errors)
                timing["echo_s"] = round(time.perf_counter() - start, 3)
                rss_after_echo = rss_kib(relay.pid)

                step = "close"
                start = time.perf_counter()
                await bounded(n, args.timeout, close_one, [])
                timing["close_s"] = round(time.perf_counter() - start, 3)
                await settle(max(args.settle, 2.0))
                rss_after_close = rss_kib(relay.pid)
                fds_after_close = fd_count(relay.pid)
            except Exception as exc:
                detail = f"{step} failed: {exc!r}"
                if listener_errors:
                    detail += "\nlistener side: " + "; ".join(listener_errors)
                if relay.exited():
                    code = relay.process.returncode if relay.process else "?"
                    detail += f"\nrelay exited with {code}:\n" + relay.log_tail()
                raise BenchError(detail) from exc
            finally:
                for i in range(n):
                    if conns[i] is not None:
                        await close_one(i)
            relay_pid = relay.pid
        finally:
            if echo is not None:
                await echo.stop()
            await relay.stop()

    per_conn = (rss_open - rss_before) / opened
    return result | {
        "connections": opened,
        "connections_attempted": n,
        "connections_echoed": n - echo_failures,
        "connections_capped_by_fd_limit": n < requested,
        "open_failures": open_failures,
        "open_errors_sample": open_errors,
        "rss_before_kib": rss_before,
        "rss_open_kib": rss_open,
        "rss_after_echo_kib": rss_after_echo,
        "rss_after_close_kib": rss_after_close,
        "kib_per_connection": {
            "value": round(per_conn, 2),
            "target": f"<= {TARGET_KIB:g} KiB per idle relayed connection",
            "met": per_conn <= TARGET_KIB,
        },
        "echo_failures": echo_failures,
        "echo_errors_sample": echo_errors,
        "all_echo": {
            "target": "10,000 concurrent relayed connections with no error",
            "met": opened == requested >= 10_000 and open_failures == 0 and echo_failures == 0,
        },
        "relay_fds": {"before": fds_before, "open": fds_open, "after_close": fds_after_close},
        "listener_handlers_started": handlers_open,
        "bench_process_rss_open_kib": bench_rss_open,
        "timing": timing | {"settle_s": args.settle},
        "fd_limits": limits | {"margin": FD_MARGIN, "max_connections": cap},
        "relay_pid": relay_pid,
        "listener_errors": listener_errors,
        "machine": machine,
        "notes": NOTES,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1,000 connections (unless overridden)")
    p.add_argument(
        "--connections", type=int, help="idle relayed connections (default 10000, --quick 1000)"
    )
    p.add_argument(
        "--settle", type=float, default=1.0, help="seconds to wait before reading RSS (default 1)"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds allowed per connect/echo (default 60)"
    )
    p.add_argument(
        "--no-uvloop", action="store_true", help="use the default asyncio loop in the bench process"
    )
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.connections is None:
        args.connections = 1000 if args.quick else 10_000
    if args.connections < 1:
        p.error("--connections must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main("memory", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
