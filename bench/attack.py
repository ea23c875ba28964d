"""Legitimate relayed connects while the relay is under attack (issue 11), in one run.

    python -m bench.attack                 # 1,000 slow sockets, 4 ping floods, 32 junk dialers
    python -m bench.attack --quick         # 200 slow sockets, 2 floods, 8 junk dialers
    python -m bench --only attack          # the same through the suite

One relay process (config below, written out in full in the JSON), two listener agents
(``python -m hybridrelay listen``, each bridging to a TCP echo server in this process)
and legitimate senders in this process, from 127.0.0.1: each connect is timed from the
start of ``hybridrelay.client.connect`` to its 101, then does one 64-byte echo and
closes. The same number of connects is measured twice in the same run, first with no
attack (baseline), then while attackers run in their own processes, every attacker
socket bound to 127.0.0.2 so that per-source-address limits apply to them and not to
the legitimate senders:

* ``slow``: half the sockets send a request head one header line at a time and never
  finish it (slowloris); the other half send an HTTP-mode POST head with
  ``Content-Length: 65536`` to an anonymous hybrid connection and then one body byte
  at a time (slow bodies);
* ``flood``: relayed streams whose sender sends ping frames as fast as it can and
  never reads (the relay's pongs pile up);
* ``junk``: new connections, each sending a malformed upgrade request, as fast as the
  relay answers them.

The JSON has both phases (attempted, succeeded, success rate, connect p50/p99/max,
relay CPU seconds and RSS start/peak/end, relay error-level log lines), their ratios,
what each attacker managed (sockets held, refusals, handshakes/s, bytes sent) and the
relay's ``hybridrelay_limit_refusals`` counts. A relay whose RSS passes ``--rss-cap-mib``
ends the attack phase early (``rss_cap_hit``), so a flood cannot take the machine down.
Exactly one JSON object goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.proc import LineChild, proc_cpu_seconds, rss_kib
from bench.stats import percentile
from bench.throughput import (
    HC,
    RULE,
    BenchError,
    machine_info,
    run_main,
    uvloop_factory,
    write_config as write_throughput_config,
)

PUBLIC_HC: Final = "public"  # anonymous senders allowed: the slow-body attackers' target
KEY_ENV: Final = "HYBRIDRELAY_BENCH_KEY"
ATTACKER_ADDRESS: Final = "127.0.0.2"
PAYLOAD: Final = bytes(range(64))
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
_READY: Final = re.compile(r"relay ready at (\S+)")
_ERROR_LINE: Final = re.compile(r"level=(error|critical)|Traceback")

# The limits of issue 11 at their defaults, spelled out so that this run's relay config
# is explicit (the JSON repeats it) and a rerun after the fixes measures the same thing.
LIMITS: Final = {
    "handshake_timeout": 10.0,
    "body_idle_timeout": 30.0,
    "max_connections_per_ip": 2000,
    "handshake_rate_per_ip": 200.0,
    "handshake_burst_per_ip": 1000,
    "max_pending_per_hc": 1000,
    "max_queued_control_frames": 64,
    # Loopback is exempt from the per-source caps by default (a proxy sits there in every
    # deployment); here only the legitimate clients' and agents' 127.0.0.1 is, so the
    # attackers on 127.0.0.2 meet the caps a public address would.
    "per_ip_limits_exempt": ["127.0.0.1/32"],
}


def write_config(directory: Path, key: str) -> tuple[Path, str]:
    """The throughput bench's config with the limits above and an anonymous hybrid
    connection; its path, and its text with the key left out."""
    limits = "\n".join(f"{name} = {json.dumps(value)}" for name, value in LIMITS.items())
    public = (
        f'\n[[hybrid_connections]]\nname = "{PUBLIC_HC}"\nrequires_client_authorization = false\n'
    )
    path = write_throughput_config(directory, key, relay_extra=limits, extra=public)
    return path, path.read_text("utf-8").replace(key, "<random key>")


# ---------------------------------------------------------------------------- children


class CountingChild(LineChild):
    """A :class:`LineChild` that also counts error-level and traceback lines."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        super().__init__(name, argv, env, cwd)
        self.error_lines = 0
        self.error_sample: list[str] = []

    def on_line(self, text: str) -> None:
        if _ERROR_LINE.search(text):
            self.error_lines += 1
            if len(self.error_sample) < 3:
                self.error_sample.append(text[:400])


def _env(key: str, level: str = "warning") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDRELAY_")}
    return env | {"PYTHONUNBUFFERED": "1", "HYBRIDRELAY_LOG_LEVEL": level, KEY_ENV: key}


async def _http_get(port: int, path: str) -> tuple[int, bytes]:
    async with asyncio.timeout(5.0):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
            )
            data = await reader.read(-1)
        finally:
            writer.close()
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(match.group(1)) if match else 0), data.partition(b"\r\n\r\n")[2]


async def _wait_listeners(port: int, count: int, wait_s: float = 20.0) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, TimeoutError):
            status, body = await _http_get(port, "/metrics")
            match = re.search(rb"^hybridrelay_listeners (\S+)", body, re.M)
            if status == 200 and match and float(match.group(1)) >= count:
                return
        await asyncio.sleep(0.1)  # polling an endpoint
    raise BenchError(f"{count} listeners not connected after {wait_s:.0f} s")


async def limit_refusals(port: int) -> dict[str, float] | None:
    """``hybridrelay_limit_refusals`` by limit, from /metrics (None when unreachable)."""
    try:
        status, body = await _http_get(port, "/metrics")
    except (OSError, TimeoutError):
        return None
    if status != 200:
        return None
    found = re.findall(
        rb'^hybridrelay_limit_refusals(?:_total)?\{limit="([^"]+)"\} (\S+)', body, re.M
    )
    return {name.decode(): float(value) for name, value in found}


async def echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


# ---------------------------------------------------------------------------- legit senders


async def legit_phase(
    relay_url: str,
    key: str,
    *,
    count: int,
    concurrency: int,
    deadline_s: float,
    relay_pid: int | None,
    rss_cap_kib: int | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """``count`` relayed connects (connect, one echo, close) by ``concurrency`` workers."""
    from hybridrelay.client import connect
    from hybridrelay.protocol.sas import SasTokenProvider

    tokens = SasTokenProvider(RULE, key)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    remaining = count
    attempted = 0
    started = time.monotonic()
    stop_at = started + deadline_s
    rss = Sampler(relay_pid, rss_cap_kib)
    cpu0 = proc_cpu_seconds(relay_pid)

    async def one() -> None:
        conn_started = time.perf_counter()
        async with asyncio.timeout(timeout_s):
            conn = await connect(relay_url, HC, token_provider=tokens, open_timeout=timeout_s)
            latency = time.perf_counter() - conn_started
            try:
                await conn.send(PAYLOAD)
                if await conn.recv() != PAYLOAD:
                    raise BenchError("echo returned something else")
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
        latencies.append(latency)  # only connects that also echoed count as succeeded

    async def worker() -> None:
        nonlocal remaining, attempted
        while remaining > 0 and time.monotonic() < stop_at and not rss.cap_hit:
            remaining -= 1
            attempted += 1
            try:
                await one()
            except Exception as exc:  # noqa: BLE001 - counted: the figure says how many failed
                name = type(exc).__name__
                status = getattr(exc, "status", None)
                label = f"{name} {status}" if status else name
                errors[label] = errors.get(label, 0) + 1

    sampler = asyncio.create_task(rss.run())
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        sampler.cancel()
        await asyncio.wait({sampler})
    wall = time.monotonic() - started
    cpu1 = proc_cpu_seconds(relay_pid)
    ok = len(latencies)
    values = sorted(latencies)
    out: dict[str, Any] = {
        "attempted": attempted,
        "succeeded": ok,
        "failed": attempted - ok,
        "success_rate": round(ok / attempted, 4) if attempted else None,
        "errors": errors,
        "wall_s": round(wall, 2),
        "connects_per_s": round(ok / wall, 1) if wall > 0 else None,
        "relay_cpu_s": round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None,
        "relay_rss_kib": rss.summary(),
    }
    if values:
        out |= {
            "connect_p50_ms": round(percentile(values, 50) * 1e3, 3),
            "connect_p99_ms": round(percentile(values, 99) * 1e3, 3),
            "connect_max_ms": round(values[-1] * 1e3, 3),
        }
    return out


@dataclass
class Sampler:
    """Relay RSS every 0.2 s while a phase runs: start, peak, end; flags a passed cap."""

    pid: int | None
    cap_kib: int | None
    start: int | None = None
    peak: int = 0
    end: int | None = None
    cap_hit: bool = False

    async def run(self) -> None:
        self.start = rss_kib(self.pid)
        try:
            while True:
                self._sample()
                await asyncio.sleep(0.2)
        finally:
            self._sample()
            self.end = rss_kib(self.pid)

    def _sample(self) -> None:
        value = rss_kib(self.pid)
        if value is not None:
            self.peak = max(self.peak, value)
            if self.cap_kib is not None and value > self.cap_kib:
                self.cap_hit = True

    def summary(self) -> dict[str, Any]:
        return {"start": self.start, "peak": self.peak or None, "end": self.end}


# ---------------------------------------------------------------------------- attackers


@dataclass
class AttackStats:
    opened: int = 0
    refused: int = 0  # connection refused, reset or answered before we were done
    held: int = 0  # sockets open right now
    requests: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    held_at_stop: int | None = None  # sockets still open when the bench stopped us
    started: float = field(default_factory=time.monotonic)

    def answered(self, data: bytes) -> None:
        match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        label = match.group(1).decode() if match else ("closed" if not data else "other")
        self.answers[label] = self.answers.get(label, 0) + 1

    def to_json(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        return {
            "opened": self.opened,
            "refused_or_cut": self.refused,
            "held": self.held if self.held_at_stop is None else self.held_at_stop,
            "requests": self.requests,
            "requests_per_s": round(self.requests / wall, 1) if wall > 0 else None,
            "answers": self.answers,
            "bytes_sent": self.bytes_sent,
            "wall_s": round(wall, 1),
        }


async def _dial(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER_ADDRESS, 0))


async def attack_slow(port: int, sockets: int, interval: float, stats: AttackStats) -> None:
    """Half slowloris heads, half slow HTTP-mode bodies; each socket trickles forever."""
    ready = asyncio.Event()
    opened = 0
    gate = asyncio.Semaphore(64)  # dial at most this many at once

    async def hold(index: int) -> None:
        nonlocal opened
        body = index % 2 == 1
        head = (
            f"POST /{PUBLIC_HC}/upload HTTP/1.1\r\nHost: relay\r\nContent-Length: 65536\r\n\r\n"
            if body
            else f"GET /{HC}/slow HTTP/1.1\r\nHost: relay\r\n"
        ).encode()
        try:
            async with gate:
                reader, writer = await _dial(port)
                writer.write(head)
                await writer.drain()
            stats.opened += 1
            stats.held += 1
        except OSError:
            stats.refused += 1
            return
        finally:
            opened += 1
            if opened == sockets:
                ready.set()
        try:
            while True:
                await asyncio.sleep(interval)
                chunk = b"x" if body else f"X-Slow-{index}: 1\r\n".encode()
                writer.write(chunk)
                await writer.drain()
                stats.bytes_sent += len(chunk)
                if reader.at_eof():
                    raise ConnectionResetError
        except OSError:
            stats.refused += 1
        finally:
            stats.held -= 1
            writer.close()

    tasks = [asyncio.create_task(hold(i)) for i in range(sockets)]
    await ready.wait()
    _announce_ready(stats)
    await asyncio.gather(*tasks)


def _upgrade(target: str, headers: str = "") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
    ).encode()


async def attack_flood(port: int, key: str, streams: int, stats: AttackStats) -> None:
    """Relayed streams whose sender sends pings as fast as it can and never reads."""
    from hybridrelay.protocol.sas import audience_for, create_sas_token

    target = f"/$hc/{HC}?sb-hc-action=connect"
    # One write: many 125-byte masked pings (RFC 6455 §5.5.2), the most pongs per byte.
    ping = bytes([0x89, 0x80 | 125]) + b"\x01\x02\x03\x04" + bytes(125)
    burst = ping * 512
    writers: list[asyncio.StreamWriter] = []
    for _ in range(streams):
        token = create_sas_token(
            audience_for(f"http://127.0.0.1:{port}/{HC}"), RULE, key, int(time.time()) + 3600
        )
        reader, writer = await _dial(port)
        writer.write(_upgrade(target, f"ServiceBusAuthorization: {token}\r\n"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        stats.requests += 1
        stats.answered(head)
        if not head.startswith(b"HTTP/1.1 101"):
            stats.refused += 1
            writer.close()
            continue
        stats.opened += 1
        stats.held += 1
        writers.append(writer)
    _announce_ready(stats)

    async def flood(writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(burst)
                stats.bytes_sent += len(burst)
                await writer.drain()  # our own socket's backpressure, never the relay's pongs
        except OSError:
            stats.refused += 1
        finally:
            stats.held -= 1

    await asyncio.gather(*(flood(w) for w in writers))


JUNK_HANDSHAKES: Final = (
    _upgrade(f"/$hc/{HC}?sb-hc-action=connect").replace(b"13\r\n", b"\xff13\r\n"),
    _upgrade(f"/$hc/{HC}?sb-hc-action=listen").replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"\xe9\xe9"),
    _upgrade(f"/$hc/{HC}?sb-hc-action=connect&sb-hc-token=%zz"),
    b"GET /$hc/" + b"a" * 9000 + b"?sb-hc-action=connect HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
    b"GET /$hc/bench?sb-hc-action=connect HTTP/1.1\r\nUpgrade: websocket\r\nBad Header\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS ClientHello, on plain
)


async def attack_junk(port: int, concurrency: int, stats: AttackStats) -> None:
    """Malformed upgrade requests on new connections, as fast as they are answered."""
    _announce_ready(stats)

    async def dialer(offset: int) -> None:
        index = offset
        while True:
            data = JUNK_HANDSHAKES[index % len(JUNK_HANDSHAKES)]
            index += 1
            try:
                reader, writer = await _dial(port)
            except OSError:
                stats.refused += 1
                await asyncio.sleep(0.01)
                continue
            stats.opened += 1
            try:
                writer.write(data)
                await writer.drain()
                async with asyncio.timeout(10):
                    answer = await reader.read(65536)
                stats.requests += 1
                stats.bytes_sent += len(data)
                stats.answered(answer)
            except (OSError, TimeoutError):
                stats.refused += 1
            finally:
                writer.transport.abort()

    await asyncio.gather(*(dialer(i) for i in range(concurrency)))


def _announce_ready(stats: AttackStats) -> None:
    print(f"attacker ready {json.dumps(stats.to_json())}", file=sys.stderr, flush=True)


def attacker_main(args: argparse.Namespace) -> int:
    """One attacker process: runs until SIGTERM, then prints its stats as a JSON line."""
    _raise_fd_limit()
    stats = AttackStats()

    async def body() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if args.attacker == "slow":
            work: Awaitable[None] = attack_slow(args.port, args.sockets, args.interval, stats)
        elif args.attacker == "flood":
            work = attack_flood(args.port, os.environ[KEY_ENV], args.streams, stats)
        else:
            work = attack_junk(args.port, args.dialers, stats)
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stats.held_at_stop = stats.held
        for pending in (task, stopper):
            pending.cancel()
        await asyncio.wait({task, stopper})
        if not task.cancelled() and task.exception() is not None:
            print(f"attacker failed: {task.exception()!r}", file=sys.stderr, flush=True)

    factory, _ = uvloop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(body())
    print(f"attacker stats {json.dumps(stats.to_json())}", file=sys.stderr, flush=True)
    return 0


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------- the run


async def run(args: argparse.Namespace, uvloop_on: bool) -> dict[str, Any]:
    _raise_fd_limit()  # children inherit it: the relay must hold the attackers' sockets
    phases: list[tuple[str, list[str]]] = [("baseline", [])]
    if not args.quick:
        phases += [(attack, [attack]) for attack in args.attacks]
    if args.quick or len(args.attacks) > 1:
        phases.append(("combined", list(args.attacks)))
    result: dict[str, Any] = {"benchmark": "attack", "machine": machine_info(uvloop_on)}
    result["phases"] = {}
    for name, attacks in phases:
        print(f"== phase {name}: attacks {attacks or 'none'}", file=sys.stderr, flush=True)
        phase = await run_phase(args, attacks)
        result["phases"][name] = phase
        _progress(name, phase)
    baseline = result["phases"]["baseline"]
    worst = result["phases"][phases[-1][0]]
    result["baseline"] = baseline
    result["under_attack"] = worst  # every attack at once (or the one selected)
    result["ratios"] = {
        name: ratios(baseline, phase)
        for name, phase in result["phases"].items()
        if name != "baseline"
    }
    result["relay_config"] = baseline.pop("relay_config")
    for phase in result["phases"].values():
        phase.pop("relay_config", None)
    result["params"] = {
        "connects_per_phase": args.connects,
        "concurrency": args.concurrency,
        "slow_sockets": args.slow_sockets,
        "slow_interval_s": args.slow_interval,
        "flood_streams": args.flood_streams,
        "junk_concurrency": args.junk_concurrency,
        "settle_s": args.settle_s,
        "phase_deadline_s": args.phase_s,
        "connect_timeout_s": args.connect_timeout,
        "rss_cap_mib": args.rss_cap_mib,
        "attacker_source_address": ATTACKER_ADDRESS,
        "legit_source_address": "127.0.0.1",
    }
    result["notes"] = NOTES
    return result


async def run_phase(args: argparse.Namespace, attacks: list[str]) -> dict[str, Any]:
    """A fresh relay and agents, a warm-up, then the legitimate connects while ``attacks`` run."""
    key = secrets.token_urlsafe(32)
    echo = await echo_server()
    echo_port = echo.sockets[0].getsockname()[1]
    children: list[CountingChild] = []
    attackers: dict[str, CountingChild] = {}
    cap_kib = args.rss_cap_mib * 1024
    with tempfile.TemporaryDirectory(prefix="hybridrelay-bench-attack-") as tmp:
        config, config_text = write_config(Path(tmp), key)
        relay = CountingChild(
            "relay",
            [sys.executable, "-m", "hybridrelay", "relay", "serve", "--config", str(config)],
            env=_env(key),
            cwd=REPO_ROOT,
        )
        children.append(relay)
        try:
            url = (await relay.start(_READY.pattern)).group(1)
            port = int(url.rsplit(":", 1)[1])
            for hc in (HC, PUBLIC_HC):
                agent = CountingChild(
                    f"agent {hc}",
                    [sys.executable, "-m", "hybridrelay", "listen", "--relay", url, "--hc", hc,
                     "--target", f"tcp://127.0.0.1:{echo_port}", "--key-name", RULE,
                     "--key-env", KEY_ENV],
                    env=_env(key, "info"),  # info: its control_channel_open line says ready
                    cwd=REPO_ROOT,
                )  # fmt: skip
                children.append(agent)
                await agent.start("control_channel_open")
            await _wait_listeners(port, 2)
            await legit_phase(url, key, count=args.warmup, concurrency=args.concurrency,
                              deadline_s=60, relay_pid=relay.pid)  # fmt: skip
            attackers = _attackers(args, attacks, port, key)
            for attacker in attackers.values():
                await attacker.start(r"attacker ready", wait_s=120)
            await _settle(args.settle_s if attackers else 0.0, relay.pid, cap_kib)
            errors0 = relay.error_lines
            phase = await legit_phase(
                url, key, count=args.connects, concurrency=args.concurrency,
                deadline_s=args.phase_s, relay_pid=relay.pid, rss_cap_kib=cap_kib,
                timeout_s=args.connect_timeout,
            )  # fmt: skip
            phase["relay_error_lines"] = relay.error_lines - errors0
            phase["relay_error_sample"] = relay.error_sample
            phase["limit_refusals"] = await limit_refusals(port)
            peak = phase["relay_rss_kib"]["peak"]
            phase["rss_cap_hit"] = peak is not None and peak > cap_kib
        except Exception as exc:
            tails = "\n".join(f"--- {c.name}:\n{c.log_tail(15)}" for c in children if c.process)
            raise BenchError(f"{exc!r}\n{tails}") from exc
        finally:
            phase_attackers = await _stop_attackers(attackers)
            for child in reversed(children):
                await child.stop()
            echo.close()
            await echo.wait_closed()
    phase["attacks"] = attacks
    phase["attackers"] = phase_attackers
    phase["relay_died"] = relay.process is not None and relay.process.returncode not in (
        0,
        -signal.SIGTERM,
    )
    phase["relay_config"] = config_text
    return phase


async def _settle(seconds_: float, pid: int | None, cap_kib: int) -> None:
    """Let the attack build up before measuring; stop early if the relay passes the cap."""
    deadline = time.monotonic() + seconds_
    while time.monotonic() < deadline:
        value = rss_kib(pid)
        if value is not None and value > cap_kib:
            return
        await asyncio.sleep(0.2)


def _attackers(
    args: argparse.Namespace, attacks: list[str], port: int, key: str
) -> dict[str, CountingChild]:
    base = [sys.executable, "-m", "bench.attack", "--port", str(port), "--attacker"]
    argv = {
        "slow": [*base, "slow", "--sockets", str(args.slow_sockets),
                 "--interval", str(args.slow_interval)],
        "flood": [*base, "flood", "--streams", str(args.flood_streams)],
        "junk": [*base, "junk", "--dialers", str(args.junk_concurrency)],
    }  # fmt: skip
    return {
        name: CountingChild(f"attacker {name}", command, env=_env(key), cwd=REPO_ROOT)
        for name, command in argv.items()
        if name in attacks
    }


async def _stop_attackers(attackers: dict[str, CountingChild]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, child in attackers.items():
        if child.process is None:
            continue
        await child.stop()
        stats = [line for line in child.log_lines if line.startswith("attacker stats ")]
        failed = [line for line in child.log_lines if line.startswith("attacker failed")]
        out[name] = json.loads(stats[-1].removeprefix("attacker stats ")) if stats else {}
        if failed:
            out[name]["failed"] = failed[-1]
    return out


def ratios(baseline: dict[str, Any], under: dict[str, Any]) -> dict[str, Any]:
    def ratio(key: str) -> float | None:
        a, b = under.get(key), baseline.get(key)
        return (
            round(a / b, 3)
            if isinstance(a, int | float) and isinstance(b, int | float) and b
            else None
        )

    return {
        "success_rate": ratio("success_rate"),
        "connect_p50": ratio("connect_p50_ms"),
        "connect_p99": ratio("connect_p99_ms"),
        "connects_per_s": ratio("connects_per_s"),
        "relay_cpu_s": ratio("relay_cpu_s"),
    }


def _progress(name: str, phase: dict[str, Any]) -> None:
    print(
        f"{name}: {phase['succeeded']}/{phase['attempted']} ok, "
        f"p50 {phase.get('connect_p50_ms')} ms, p99 {phase.get('connect_p99_ms')} ms, "
        f"relay RSS peak {phase['relay_rss_kib']['peak']} KiB, errors {phase['errors']}",
        file=sys.stderr,
        flush=True,
    )


NOTES = (
    "Relay, two listener agents (python -m hybridrelay listen, tcp echo targets in the bench "
    "process) and each attacker kind are separate processes; legitimate senders run in the "
    "bench process from 127.0.0.1, attackers bind 127.0.0.2. A legitimate connect = "
    "hybridrelay.client.connect to the relay's 101 (timed), one 64-byte echo, close; a failure "
    "is any error or connect_timeout_s passing. Every phase runs on a fresh relay and agents "
    "(an attack's leftovers, e.g. RSS, do not carry over) and makes the same number of connects "
    "with the same concurrency after a warm-up; it ends early at its deadline or when the "
    "relay's RSS passes the cap. An attack phase measures once every attacker reports ready, "
    "plus settle_s. Full mode: baseline, each attack alone, all combined; --quick: baseline and "
    "combined. Relay CPU from /proc/PID/stat (10 ms tick), RSS sampled every 0.2 s. "
    "relay_error_lines counts error-level or traceback lines in the relay's log (level "
    "warning) during the measured connects."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.attack", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller attack and fewer connects")
    p.add_argument("--connects", type=int, help="legitimate connects per phase (500; quick 60)")
    p.add_argument("--concurrency", type=int, default=8, help="legitimate workers (8)")
    p.add_argument("--warmup", type=int, default=20, help="unrecorded connects first (20)")
    p.add_argument("--slow-sockets", type=int, help="slow attacker sockets (1000; quick 200)")
    p.add_argument("--slow-interval", type=float, default=5.0, help="seconds between trickles")
    p.add_argument("--flood-streams", type=int, help="ping-flood streams (4; quick 1)")
    p.add_argument("--junk-concurrency", type=int, help="junk dialers (32; quick 8)")
    p.add_argument(
        "--attacks", default="slow,flood,junk", help="comma-separated subset of slow,flood,junk"
    )
    p.add_argument("--settle-s", type=float, help="seconds of attack before measuring (5; quick 1)")
    p.add_argument("--phase-s", type=float, help="deadline of one phase's connects (60; quick 15)")
    p.add_argument(
        "--connect-timeout", type=float, help="a legitimate connect fails after (10 s; quick 5)"
    )
    p.add_argument(
        "--rss-cap-mib", type=int, help="relay RSS that ends the attack (2048; quick 512)"
    )
    p.add_argument("--no-uvloop", action="store_true", help="default asyncio loop in this process")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    # Attacker children (started by the bench itself):
    p.add_argument("--attacker", choices=("slow", "flood", "junk"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sockets", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--interval", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--streams", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--dialers", type=int, default=32, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (
        ("connects", 500, 60),
        ("slow_sockets", 1000, 200),
        ("flood_streams", 4, 1),
        ("junk_concurrency", 32, 8),
        ("settle_s", 5.0, 1.0),
        ("phase_s", 60.0, 15.0),
        ("connect_timeout", 10.0, 5.0),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not set(args.attacks) <= {"slow", "flood", "junk"}:
        p.error("--attacks takes slow, flood and junk")
    if args.rss_cap_mib is None:
        args.rss_cap_mib = 512 if quick else 2048
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.attacker is not None:
        return attacker_main(args)
    return run_main("attack", args, run)


if __name__ == "__main__":
    sys.exit(main())
