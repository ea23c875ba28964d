"""``relay serve --workers 2`` as a user runs it: one port, two relay processes, one Redis.

The supervisor's stderr names each worker's pid, node id and own (rendezvous) URL; the
tests reach each worker there to read its /metrics, put a listener on one and senders on
the other, kill one, and stop the lot with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from tests.harness.peers import RawListener, send
from tests.harness.processes import CliProcess
from tests.harness.redis import unique_prefix
from tests.harness.relay import write_config

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

_READY = re.compile(r"hybridrelay relay ready at (\S+)")
_WORKER_READY = re.compile(
    r"event=relay_worker_ready worker=(?P<index>\d+) pid=(?P<pid>\d+)"
    r" node_id=(?P<node>\S+) rendezvous_url=(?P<url>\S+)"
)


@dataclass(frozen=True)
class Worker:
    pid: int
    node_id: str
    url: str


async def _worker_ready(relay: CliProcess, timeout: float = 30.0) -> tuple[int, Worker]:
    match = await relay.wait_for_line(_WORKER_READY, timeout=timeout)
    worker = Worker(int(match["pid"]), match["node"], match["url"])
    return int(match["index"]), worker


@contextlib.asynccontextmanager
async def workers_relay(
    tmp_path: Path, redis_url: str, relay_extra: str = ""
) -> AsyncIterator[tuple[CliProcess, str, dict[int, Worker]]]:
    """``relay serve --workers 2`` on a fresh key prefix: the process, its URL, its workers."""
    cluster = f'\n[cluster]\nredis_url = "{redis_url}"\nprefix = "{unique_prefix()}"\n'
    config = write_config(tmp_path, extra=cluster, relay_extra=relay_extra)
    relay = CliProcess(["relay", "serve", "--config", str(config), "--workers", "2"])
    async with relay:
        try:
            workers = dict([await _worker_ready(relay), await _worker_ready(relay)])
            url = (await relay.wait_for_line(_READY, timeout=30))[1]
            yield relay, url, workers
        except BaseException:
            print(relay.output())  # noqa: T201 - shown by pytest on failure
            raise


async def relayed_connections(worker: Worker) -> float:
    """The worker's ``hybridrelay_connections_total``, read from its own port."""
    http = worker.url.replace("ws://", "http://", 1)
    async with aiohttp.ClientSession() as session, session.get(f"{http}/metrics") as resp:
        text = await resp.text()
    match = re.search(r"^hybridrelay_connections_total (\S+)$", text, re.MULTILINE)
    assert match is not None, text
    return float(match[1])


async def echo(relay: str, payload: bytes) -> None:
    ws = await send(relay, "echo")
    try:
        await ws.send(payload)
        assert await ws.recv() == payload
    finally:
        await ws.close()


async def test_two_workers_share_the_port_and_serve_each_others_listeners(
    tmp_path: Path, redis_url: str
) -> None:
    async with workers_relay(tmp_path, redis_url) as (_relay, url, workers):
        first, second = workers[0], workers[1]
        assert first.node_id != second.node_id
        assert first.url != second.url != url
        listener = RawListener(first.url, "echo")  # its control channel is on worker 0
        await listener.start()
        try:
            # A sender on worker 1: the listener dials worker 1's own port, not the shared
            # one, where the kernel might hand its rendezvous to worker 0.
            await echo(second.url, b"from the other worker")
            accept = listener.accepts.get_nowait()
            assert str(accept["address"]).startswith(f"{second.url}/$hc/echo?")
            # Through the shared port every sender is served, whichever worker it lands on.
            before = [await relayed_connections(w) for w in (first, second)]
            await asyncio.gather(*(echo(url, b"%d" % i) for i in range(24)))
            after = [await relayed_connections(w) for w in (first, second)]
        finally:
            await listener.stop()
        landed = [a - b for a, b in zip(after, before, strict=True)]
        assert sum(landed) == 24
        assert all(n > 0 for n in landed), f"the kernel sent every connect to one worker: {landed}"


def _two_free_ports() -> int:
    """A port P with P + 1 free too (a worker's metrics port is metrics_listen's + index)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        with contextlib.suppress(OSError), socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port))
            b.bind(("127.0.0.1", port + 1))
            return port
    raise AssertionError("no two adjacent free ports")


async def metrics_status(port: int) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        return resp.status


async def test_a_killed_worker_is_restarted_sighup_is_forwarded_sigterm_drains_all(
    tmp_path: Path, redis_url: str
) -> None:
    metrics = _two_free_ports()
    extra = f'metrics_listen = "127.0.0.1:{metrics}"'
    async with workers_relay(tmp_path, redis_url, extra) as (relay, url, workers):
        # One metrics address per worker: metrics_listen's port + the worker's index.
        assert [await metrics_status(metrics + i) for i in (0, 1)] == [200, 200]
        os.kill(workers[1].pid, signal.SIGKILL)
        await relay.wait_for_line(r"event=relay_worker_exited worker=1 code=-9", timeout=10)
        index, restarted = await _worker_ready(relay)
        assert index == 1
        assert restarted.pid != workers[1].pid
        listener = RawListener(workers[0].url, "echo")
        await listener.start()
        try:
            await echo(restarted.url, b"after the restart")
            await echo(url, b"through the shared port")
        finally:
            await listener.stop()
        assert await metrics_status(metrics + 1) == 200  # the new worker took the address

        relay.send_signal(signal.SIGHUP)  # forwarded: each worker reloads (here: no TLS)
        for _ in workers:
            await relay.wait_for_line(r"event=reload_nothing_to_reload", timeout=10)

        relay.send_signal(signal.SIGTERM)
        assert await relay.wait(timeout=30) == 0
        assert relay.output().count("event=relay_draining") == 2
        assert relay.output().count("event=relay_stopped") == 2
        for pid in (workers[0].pid, restarted.pid):
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


async def test_workers_without_redis_exit_2_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    relay = CliProcess(["relay", "serve", "--config", str(config), "--workers", "2"])
    async with relay:
        assert await relay.wait(timeout=20) == 2
    assert len(relay.lines) == 1, relay.output()
    assert "relay.workers" in relay.lines[0]
    assert "[cluster] redis_url" in relay.lines[0]
