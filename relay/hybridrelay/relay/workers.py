"""``relay serve --workers N``: N relay processes on one port, kept running by a supervisor.

A relay node is one event loop on one core. To use every core of a machine the supervisor
starts N ``relay serve`` children (workers) that each bind the public port with
SO_REUSEPORT, so the kernel spreads new connections over them, and share their state
through the configured ``[cluster]`` Redis exactly as separate nodes do: each worker is a
cluster node with its own node id. A listener dials a rendezvous on the node that holds
the sender, which the public port cannot promise (the kernel picks a worker per
connection), so each worker also serves on a port of its own (``worker_port + index``, or a
free one) and hands that out as its rendezvous address (serve.py, ``worker_url``).

The supervisor forwards SIGHUP (TLS reload), turns SIGTERM/SIGINT into a drain of every
worker, restarts a worker that dies with a backoff, and prints the relay's one ready line
once every worker is serving. A worker that fails before all are ready fails the start: the
others are stopped and its exit code is the supervisor's (a config error exits 2 once, not
in a restart loop). A worker whose supervisor dies sees its stdin close and drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from hybridrelay.backoff import Backoff
from hybridrelay.errors import ConfigError
from hybridrelay.logs import RELAY
from hybridrelay.relay.config import RelayConfig

__all__ = [
    "WORKER_ENV",
    "check_workers",
    "reserve_port",
    "supervise",
    "watch_supervisor",
    "worker_ready_line",
]

log = logging.getLogger(RELAY)

WORKER_ENV: Final = "HYBRIDRELAY_WORKER_INDEX"  # set by the supervisor for its children
_READY_PREFIX: Final = "hybridrelay-worker-ready "
_STOP_GRACE_S: Final = 5.0  # past drain_timeout (+1 s of final closes) before SIGKILL
_LINE_LIMIT: Final = 1 << 16


def check_workers(config: RelayConfig, source: str) -> None:
    """Refuse a worker count the configuration cannot serve (ConfigError: exit 2)."""
    s = config.relay
    if s.workers <= 1:
        return
    if config.cluster is None:
        raise ConfigError(
            source,
            "relay.workers",
            f"{s.workers} workers need [cluster] redis_url: workers share their state"
            " through Redis (or run one worker)",
        )
    if s.public_url and not s.worker_port:
        raise ConfigError(
            source,
            "relay.worker_port",
            "set with workers > 1 and public_url: listeners dial each worker's own port"
            " (worker_port + index) at public_url's host, so it must be a known range",
        )
    if s.worker_port and s.worker_port + s.workers - 1 > 65535:
        raise ConfigError(source, "relay.worker_port", "worker_port + workers - 1 exceeds 65535")
    if s.metrics_listen is not None and s.metrics_listen[1] + s.workers - 1 > 65535:
        raise ConfigError(
            source, "relay.metrics_listen", "its port + workers - 1 exceeds 65535 (one per worker)"
        )
    dashboard = s.dashboard_listen
    if isinstance(dashboard, tuple) and dashboard[1] and dashboard[1] + s.workers - 1 > 65535:
        raise ConfigError(
            source,
            "relay.dashboard_listen",
            "its port + workers - 1 exceeds 65535 (one per worker)",
        )


def worker_ready_line(index: int, node_id: str, rendezvous_url: str, ready_line: str) -> str:
    """What a worker prints on stdout once serving; its supervisor reads it."""
    doc = {"index": index, "node_id": node_id, "rendezvous_url": rendezvous_url}
    return _READY_PREFIX + json.dumps({**doc, "ready_line": ready_line})


def reserve_port(host: str, port: int) -> tuple[int, list[socket.socket]]:
    """Bind (never listen on) ``host:port`` with SO_REUSEPORT; returns the port and sockets.

    With port 0 the workers must agree on one port; and while the supervisor holds these
    sockets nobody outside this user can take the port between a worker's death and its
    restart. A bound socket that does not listen receives no connections.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    held: list[socket.socket] = []
    try:
        for family, kind, proto, _name, given in infos:
            sock = socket.socket(family, kind, proto)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
            address = given
            if port == 0 and len(held) > 1:  # every address on the port the first one got
                address = (given[0], held[0].getsockname()[1], *given[2:])
            sock.bind(address)
        bound = int(held[0].getsockname()[1]) if held else port
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return bound, held


def watch_supervisor(stop: asyncio.Event) -> None:
    """In a worker: drain when the supervisor is gone (our stdin, its pipe, closes)."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            stop.set()

    with contextlib.suppress(OSError, NotImplementedError, ValueError):
        loop.add_reader(0, readable)


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    node_id: str = ""
    rendezvous_url: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=10.0, stable_after=30))


@dataclass(eq=False)
class _Supervisor:
    count: int
    child_args: Sequence[str]
    drain_timeout: float
    print_line: Callable[[str], None]  # to the relay's stdout
    workers: list[_Worker] = field(default_factory=list)
    stopping: bool = False
    announced: bool = False
    failed: int | None = None  # a worker's exit code when the start failed
    final_codes: dict[int, int] = field(default_factory=dict)  # exit codes after the stop

    async def _spawn(self, worker: _Worker) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env[WORKER_ENV] = str(worker.index)
        worker.ready.clear()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hybridrelay",
            *self.child_args,
            stdin=asyncio.subprocess.PIPE,  # closes when we die: the worker drains
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=_LINE_LIMIT,
        )
        worker.process = process
        log.info("relay_worker_started", extra={"worker": worker.index, "pid": process.pid})
        return process

    async def _read(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        if process.stdout is None:  # pragma: no cover - spawned with stdout=PIPE
            return
        with contextlib.suppress(ValueError, ConnectionError):  # an over-long line
            while line := await process.stdout.readline():
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if not text.startswith(_READY_PREFIX):
                    self.print_line(text)  # a worker's stdout is the relay's
                    continue
                doc = json.loads(text[len(_READY_PREFIX) :])
                worker.node_id = str(doc["node_id"])
                worker.rendezvous_url = str(doc["rendezvous_url"])
                worker.backoff.succeeded(asyncio.get_running_loop().time())
                log.info(
                    "relay_worker_ready",
                    extra={
                        "worker": worker.index,
                        "pid": process.pid,
                        "node_id": worker.node_id,
                        "rendezvous_url": worker.rendezvous_url,
                    },
                )
                worker.ready.set()
                if not self.announced and all(w.ready.is_set() for w in self.workers):
                    self.announced = True
                    self.print_line(str(doc["ready_line"]))

    async def _keep(self, worker: _Worker, stop: asyncio.Event) -> None:
        """Run ``worker`` until ``stop``; restart it with a backoff when it dies."""
        loop = asyncio.get_running_loop()
        while not self._stopped():
            try:
                process = await self._spawn(worker)
            except OSError as exc:  # out of processes or descriptors: as if it died at once
                log.warning(
                    "relay_worker_spawn_failed", extra={"worker": worker.index, "error": str(exc)}
                )
                code = 1
            else:
                if self._stopped():  # the stop came while it started: it missed the SIGTERM
                    process.terminate()
                reader = asyncio.create_task(self._read(worker, process))
                code = await process.wait()
                await asyncio.wait({reader}, timeout=1.0)
                reader.cancel()
                await asyncio.wait({reader})
            if self._stopped():
                self.final_codes[worker.index] = code
                return
            if not self.announced:
                log.error("relay_worker_failed", extra={"worker": worker.index, "code": code})
                self.failed = code if code > 0 else 1
                stop.set()
                return
            worker.backoff.failed(loop.time())
            delay = worker.backoff.next_delay()
            log.warning(
                "relay_worker_exited",
                extra={"worker": worker.index, "code": code, "restart_in_s": round(delay, 2)},
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()

    def _stopped(self) -> bool:
        return self.stopping  # a method: the flag changes across awaits

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    async def run(self, stop: asyncio.Event) -> int:
        self.workers = [_Worker(i) for i in range(self.count)]
        keepers = [asyncio.create_task(self._keep(w, stop)) for w in self.workers]
        try:
            await stop.wait()
        finally:
            self.stopping = True
            log.info("relay_workers_stopping", extra={"workers": self.count})
            self._signal_all(signal.SIGTERM)
            # Each keeper returns once its worker has drained and exited (or, waiting out a
            # restart backoff, at once); a worker that outlives its drain deadline is killed.
            _done, late = await asyncio.wait(
                keepers, timeout=self.drain_timeout + 1.0 + _STOP_GRACE_S
            )
            if late:
                log.warning("relay_workers_killed", extra={"workers": len(late)})
                self._signal_all(signal.SIGKILL)
                await asyncio.wait(late)
        if self.failed is not None:
            return self.failed
        return 0 if all(code == 0 for code in self.final_codes.values()) else 1


async def supervise(
    config: RelayConfig,
    stop: asyncio.Event,
    *,
    child_args: Sequence[str],
    print_line: Callable[[str], None],
) -> int:
    """Run ``config.relay.workers`` workers until ``stop``; returns the exit code.

    ``child_args`` are the ``hybridrelay`` arguments of one worker (``relay serve`` with the
    reserved port); SIGHUP is forwarded to every worker.
    """
    supervisor = _Supervisor(
        count=config.relay.workers,
        child_args=child_args,
        drain_timeout=config.relay.drain_timeout,
        print_line=print_line,
    )
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, supervisor._signal_all, signal.SIGHUP)
    return await supervisor.run(stop)
