"""The ``hybridrelay`` command line, end to end: relay, listener agent and forwarder as child
processes, real sockets on loopback, ports chosen by the OS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from tests.harness.processes import (
    CliProcess,
    ProcessGroup,
    forward_args,
    forwarded_port,
    listen_args,
)
from tests.harness.relay import ROOT_KEY, RelayProcess
from tests.harness.timing import seconds

from hybridrelay.client import RelayStream, connect
from hybridrelay.errors import ConnectionClosedError, HandshakeError
from hybridrelay.listener import AcceptRequest, Listener, TcpTarget
from hybridrelay.protocol.sas import SasTokenProvider

pytestmark = pytest.mark.e2e

ROOT = "RootManageSharedAccessKey"
ProcessFactory = Callable[..., Awaitable[RelayProcess]]
INVALID_CONFIGS = Path(__file__).parents[1] / "unit" / "config" / "invalid"


async def _start_listen(procs: ProcessGroup, relay_url: str, target: tuple[str, int]) -> CliProcess:
    host, port = target
    listener = await procs.start(
        *listen_args(relay_url, "echo", f"tcp://{host}:{port}", key_name=ROOT),
        key=ROOT_KEY,
        name="listen",
    )
    await listener.wait_for_line(r"event=control_channel_open")
    return listener


async def _start_forward(procs: ProcessGroup, relay_url: str) -> tuple[CliProcess, int]:
    forwarder = await procs.start(
        *forward_args(relay_url, "echo", key_name=ROOT), key=ROOT_KEY, name="forward"
    )
    return forwarder, await forwarded_port(forwarder)


async def _read_until_closed(stream: RelayStream) -> int:
    """Drain a stream-mode connection; return the close code it ended with."""
    while True:
        try:
            chunk = await stream.read()
        except ConnectionClosedError as exc:
            return exc.code
        if not chunk:
            assert stream.close_code is not None
            return stream.close_code


@contextlib.asynccontextmanager
async def _running(listener: Listener) -> AsyncIterator[Listener]:
    """An in-process listener, connected, stopped and awaited on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        async with asyncio.timeout(seconds(10)):
            waiter = asyncio.create_task(listener.connected.wait())
            try:
                done, _ = await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if task in done:
                task.result()  # raises why the listener ended
                raise AssertionError("listener stopped before connecting")
        yield listener
    finally:
        stop.set()
        async with asyncio.timeout(seconds(15)):
            await asyncio.wait({task})
    task.result()


# -- a. 5 MiB through forward -> relay -> listen -> echo, with half-close ------------------


async def test_forward_listen_round_trip_5mib_with_half_close(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
) -> None:
    relay = await relay_process_factory()
    listener = await _start_listen(procs, relay.url, echo_server)
    forwarder, port = await _start_forward(procs, relay.url)
    for proc in (listener, forwarder):
        assert ROOT_KEY not in " ".join(proc.args)  # the key travels in the environment only

    payload = secrets.token_bytes(5 * 1024 * 1024)
    received = hashlib.sha256()
    count = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        view = memoryview(payload)
        for offset in range(0, len(payload), 256 * 1024):
            writer.write(view[offset : offset + 256 * 1024])
            await writer.drain()
        writer.write_eof()  # half-close: we are done sending, the echo must still come back

    async def receive() -> None:
        nonlocal count
        while chunk := await reader.read(1 << 16):
            received.update(chunk)
            count += len(chunk)

    try:
        async with asyncio.timeout(seconds(30)), asyncio.TaskGroup() as tg:
            tg.create_task(send())
            tg.create_task(receive())
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    assert count == len(payload)
    assert received.hexdigest() == hashlib.sha256(payload).hexdigest()
    assert reader.at_eof()
    # Both agents survive the connection's end.
    assert listener.returncode is None
    assert forwarder.returncode is None


# -- b. a listener killed with SIGKILL mid-stream ----------------------------------------


async def test_listener_sigkill_closes_sender_stream_with_1011(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
) -> None:
    relay = await relay_process_factory()
    listener = await _start_listen(procs, relay.url, echo_server)
    async with asyncio.timeout(seconds(10)):
        stream = await connect(relay.url, "echo", key_name=ROOT, key=ROOT_KEY, stream_mode=True)
    try:
        async with asyncio.timeout(seconds(10)):
            await stream.write(b"before the crash")
            echoed = b""
            while len(echoed) < len(b"before the crash"):
                echoed += await stream.read()
        assert echoed == b"before the crash"

        await listener.kill9()
        async with asyncio.timeout(seconds(5)):
            code = await _read_until_closed(stream)
        assert code == 1011
    finally:
        stream.abort()
        await stream.wait_closed()


async def test_listener_sigkill_ends_forwarded_tcp_connection(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
) -> None:
    relay = await relay_process_factory()
    listener = await _start_listen(procs, relay.url, echo_server)
    _, port = await _start_forward(procs, relay.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(seconds(10)):
            writer.write(b"ping")
            await writer.drain()
            assert await reader.readexactly(4) == b"ping"

        await listener.kill9()
        # Never a hang; and a reset, not an EOF, so a cut-off stream cannot look complete
        # (the forwarder hears 1011 from the relay and drops the TCP connection).
        async with asyncio.timeout(seconds(5)):
            with pytest.raises(ConnectionResetError):
                await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    # The forwarder keeps serving: with no listener the relay refuses (404), and the new
    # connection is closed at once instead of hanging.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(seconds(10)):
            assert await reader.read() == b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# -- c. config errors: exit code 2 and one line naming file, key and reason ---------------


async def test_relay_serve_bad_config_exits_2_with_one_line(procs: ProcessGroup) -> None:
    path = INVALID_CONFIGS / "port_not_integer.toml"
    relay = await procs.start("relay", "serve", "--config", str(path), name="relay(bad config)")
    assert await relay.wait(timeout=20) == 2
    assert relay.lines == [
        f"hybridrelay: config error: {path}: relay.port: must be an integer, not str"
    ]


async def test_relay_serve_unreachable_redis_or_taken_port_exits_1_with_one_line(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        nobody = free.getsockname()[1]
        free.close()  # nothing listens here: connecting is refused at once
        config = tmp_path / "relay.toml"
        config.write_text(
            f'[relay]\nport = 0\ndata_dir = "{tmp_path}"\n'
            '[[rules]]\nname = "root"\nkey = "0123456789abcdef"\nrights = ["Listen"]\n'
            f'[cluster]\nredis_url = "redis://127.0.0.1:{nobody}/0"\n',
            "utf-8",
        )
        relay = await procs.start("relay", "serve", "--config", str(config), name="no redis")
        assert await relay.wait(timeout=20) == 1
        assert len(relay.lines) == 1, relay.lines
        assert relay.lines[0].startswith("hybridrelay: redis: "), relay.lines

        port = holder.getsockname()[1]
        relay = await procs.start(
            "relay", "serve", "--port", str(port), "--host", "127.0.0.1",
            env={"HYBRIDRELAY_DATA_DIR": str(tmp_path / "data")}, name="taken port",
        )  # fmt: skip
        assert await relay.wait(timeout=20) == 1
        assert relay.lines[-1].startswith("hybridrelay: "), relay.lines
        assert "in use" in relay.lines[-1].lower(), relay.lines


# -- d. no config: the development default --------------------------------------------------


async def test_relay_serve_without_config_prints_dev_key_and_auto_creates(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    relay = await procs.start(
        "relay",
        "serve",
        "--port",
        "0",
        env={"HYBRIDRELAY_DATA_DIR": str(tmp_path / "data")},
        cwd=tmp_path,
        name="relay(dev)",
    )
    dev = await relay.wait_for_line(r"development mode: rule (?P<rule>\S+) key (?P<key>\S+)", 20)
    url = (await relay.wait_for_line(r"relay ready at (?P<url>ws://\S+)")).group("url")
    assert dev.group("rule") == ROOT
    tokens = SasTokenProvider(dev.group("rule"), dev.group("key"))
    hc = f"dev-auto-{secrets.token_hex(4)}"

    async def echo(ws: RelayStream, request: AcceptRequest) -> None:
        with contextlib.suppress(ConnectionClosedError):
            while True:
                await ws.send(await ws.recv())

    async with _running(Listener(url, hc, token_provider=tokens, handler=echo, drain_timeout=1)):
        await relay.wait_for_line(rf"event=hybrid_connection_created hc={re.escape(hc)}")
        async with asyncio.timeout(seconds(10)):
            async with connect(url, hc, token_provider=tokens) as sender:
                await sender.send(b"hello dev relay")
                assert await sender.recv() == b"hello dev relay"
                await sender.send("text too")
                assert await sender.recv() == "text too"

        # A wrong key is refused: the printed key is the one that matters.
        wrong = SasTokenProvider(ROOT, secrets.token_urlsafe(32))
        with pytest.raises(HandshakeError) as info:
            async with asyncio.timeout(seconds(10)):
                await connect(url, hc, token_provider=wrong)
        assert info.value.status == 401


# -- e. the demo ----------------------------------------------------------------------------


async def test_demo_runs_to_completion(procs: ProcessGroup, tmp_path: Path) -> None:
    demo = await procs.start("demo", cwd=tmp_path, name="demo")
    assert await demo.wait(timeout=30) == 0
    # It opens with the dashboard: where it is and how to log in, before anything else.
    assert re.fullmatch(r"\[dashboard\] http://127\.0\.0\.1:\d+/\$dashboard/", demo.lines[0])
    assert demo.lines[1].startswith("[dashboard] log in with rule ")
    assert not any("opened in your browser" in line for line in demo.lines)  # not in tests
    round_trips = [line for line in demo.lines if "got back" in line]
    assert len(round_trips) == 5
    for i, line in enumerate(round_trips):
        assert f"'hello #{i} via the relay'" in line
    assert any("1 MiB round trip" in line for line in demo.lines)
    assert any(line.startswith("demo finished") for line in demo.lines)


async def test_demo_stays_with_a_dashboard_its_key_logs_in_to(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    demo = await procs.start("demo", "--stay", "--messages", "1", cwd=tmp_path, name="demo")
    url = (await demo.wait_for_line(r"^\[dashboard\] (http://\S+)$")).group(1)
    rule, key = (await demo.wait_for_line(r"log in with rule (\S+), key (\S+)$")).groups()
    await demo.wait_for_line(r"keep serving for the dashboard", timeout=30)
    # unsafe: keep cookies of an IP host, as a browser does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(url + "login", json={"keyName": rule, "key": key}) as resp:
            assert resp.status == 200
        async with session.get(url + "api/listeners") as resp:
            assert resp.status == 200
            assert [item["hybridConnection"] for item in (await resp.json())["value"]] == ["demo"]
    demo.send_signal(signal.SIGINT)
    assert await demo.wait(timeout=20) == 0


# -- f. SIGTERM drains ----------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["closes", "stalled"])
async def test_relay_sigterm_with_open_stream_exits_0_within_drain_timeout(
    relay_process_factory: ProcessFactory, echo_server: tuple[str, int], sender: str
) -> None:
    drain_timeout = 2.0
    relay = await relay_process_factory(relay_extra=f"drain_timeout = {drain_timeout}")
    assert relay.process is not None
    tokens = SasTokenProvider(ROOT, ROOT_KEY)
    listener = Listener(
        relay.url, "echo", token_provider=tokens, target=TcpTarget(*echo_server), drain_timeout=1
    )
    async with _running(listener):
        async with asyncio.timeout(seconds(10)):
            stream = await connect(relay.url, "echo", token_provider=tokens, stream_mode=True)
        try:
            async with asyncio.timeout(seconds(10)):
                await stream.write(b"open stream")
                echoed = b""
                while len(echoed) < len(b"open stream"):
                    echoed += await stream.read()

            relay.signal(signal.SIGTERM)
            # The outer bound only turns a hang into a failure; that the drain deadline (not the
            # sender) ended the drain is read from the relay's own log below, not from a clock.
            async with asyncio.timeout(seconds(drain_timeout + 8)):
                if sender == "closes":
                    # A sender that answers the relay's close (1001, at the deadline) at once.
                    assert await _read_until_closed(stream) == 1001
                    await stream.close()
                # "stalled": holds the stream open and never reads.
                code = await relay.process.wait()
        finally:
            stream.abort()
            await stream.wait_closed()
    assert code == 0, relay.log()
    assert any("event=relay_draining" in line for line in relay.log_lines)
    # The stream was still open at the deadline, so the relay closed it then and exited.
    assert any("event=drain_deadline_passed" in line for line in relay.log_lines), relay.log()
