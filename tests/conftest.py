"""Factory fixtures that close what they started, in reverse order (pytest-aiohttp style)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import pytest

from hybridrelay.protocol.sas import audience_for, create_sas_token
from tests.harness.redis import redis_url as start_redis
from tests.harness.relay import (
    ROOT_KEY,
    InProcessRelay,
    RelayProcess,
    load,
    write_config,
)
from tests.harness.tls import TlsFiles, make_tls_files

ROOT = "RootManageSharedAccessKey"


def make_token(uri: str, key_name: str = ROOT, key: str = ROOT_KEY, *, ttl: int = 3600) -> str:
    return create_sas_token(audience_for(uri), key_name, key, int(time.time()) + ttl)


RelayFactory = Callable[..., Awaitable[InProcessRelay]]
ProcessFactory = Callable[..., Awaitable[RelayProcess]]


@pytest.fixture
async def relay_factory(tmp_path: Path) -> AsyncIterator[RelayFactory]:
    started: list[InProcessRelay] = []

    async def start(
        *,
        ping_interval: float = 30.0,
        extra: str = "",
        relay_extra: str = "",
        tls: TlsFiles | None = None,
        port: int = 0,
        replace: Mapping[str, str] | None = None,
    ) -> InProcessRelay:
        directory = tmp_path / f"relay{len(started)}"
        directory.mkdir()
        path = write_config(
            directory,
            ping_interval=ping_interval,
            extra=extra,
            relay_extra=relay_extra,
            tls=(tls.cert, tls.key) if tls else None,
            port=port,
            replace=replace,
        )
        relay = InProcessRelay(load(path))
        started.append(relay)
        return await relay.start()

    yield start
    for relay in reversed(started):
        await relay.stop()


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> InProcessRelay:
    return await relay_factory()


@pytest.fixture
async def relay_process_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ProcessFactory]:
    started: list[RelayProcess] = []

    async def start(
        *,
        ping_interval: float = 30.0,
        extra: str = "",
        relay_extra: str = "",
        tls: TlsFiles | None = None,
        port: int = 0,
    ) -> RelayProcess:
        directory = tmp_path / f"relayproc{len(started)}"
        directory.mkdir()
        path = write_config(
            directory,
            ping_interval=ping_interval,
            extra=extra,
            relay_extra=relay_extra,
            tls=(tls.cert, tls.key) if tls else None,
            port=port,
        )
        proc = RelayProcess(path)
        started.append(proc)
        return await proc.start(ssl_ca=tls.ca_cert if tls else None)

    yield start
    for proc in reversed(started):
        await proc.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for proc in started:
            print(f"--- relay log ({proc.url}) ---\n{proc.log()}")  # noqa: T201 - shown on failure


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL, else a throwaway redis-server for the whole session (never the machine's)."""
    with start_redis() as url:
        yield url


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    directory = tmp_path / "tls"
    directory.mkdir()
    return make_tls_files(directory)


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[str, int]]:
    """A TCP echo service (the on-prem target) that half-closes after echoing EOF."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield "127.0.0.1", server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
