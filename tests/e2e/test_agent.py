"""The listener agent as a product, end to end: ``hybridrelay listen --config agent.toml`` as a
child process against relay child processes, with the failures users hit in production.

(a) relay killed and restarted on the same port: serving again within 2 s, no storm;
(b) relay SIGSTOPped (half-open): detected within the ping window, recovers on SIGCONT;
(c) two agents on one hybrid connection: stopping one fails no new connection;
(d) takeover: an agent killed with SIGKILL behind a black hole and restarted serves at once;
(e) hot reload adds a mapping without touching an open stream (and a bad file changes nothing);
(f) a mapping whose hybrid connection does not exist fails alone; (g) /metrics per mapping.

Waits poll /status or await output lines, always bounded; the measured times are printed
(``-s``) as ``MEASURED name=value`` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from tests.harness.processes import KEY_ENV, CliProcess, ProcessGroup
from tests.harness.proxies import HalfOpenProxy
from tests.harness.relay import LISTEN_KEY, ROOT_KEY, RelayProcess
from tests.harness.timing import seconds

from hybridrelay.client import connect, request
from hybridrelay.errors import ConnectionClosedError, HandshakeError
from hybridrelay.wsclient import WsConnection

pytestmark = pytest.mark.e2e

ROOT = "RootManageSharedAccessKey"
ProcessFactory = Callable[..., Awaitable[RelayProcess]]
INVALID_AGENT_CONFIGS = Path(__file__).parents[1] / "unit" / "config" / "agent_invalid"


def _measured(name: str, value: float) -> None:
    print(f"MEASURED {name}={value:.3f}")  # noqa: T201 - the numbers the issue asks for


# -- the agent's config file and process -------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    hc: str
    target: str
    connections: int = 1
    key_name: str = ROOT
    key_env: str = KEY_ENV


def agent_toml(
    relays: Sequence[str],
    mappings: Sequence[Mapping],
    *,
    agent_id: str,
    ping_interval: float = 30.0,
    extra: str = "",
) -> str:
    listed = ", ".join(f'"{r}"' for r in relays)
    text = (
        f"relays = [{listed}]\n"
        f'agent_id = "{agent_id}"\n'
        f"ping_interval = {ping_interval}\n"
        "drain_timeout = 3\n"
        'status = "127.0.0.1:0"\n'
        f"{extra}"
    )
    for m in mappings:
        text += (
            "[[mappings]]\n"
            f'hc = "{m.hc}"\n'
            f'target = "{m.target}"\n'
            f'key_name = "{m.key_name}"\n'
            f'key_env = "{m.key_env}"\n'
            f"connections = {m.connections}\n"
        )
    return text


@dataclass
class Agent:
    proc: CliProcess
    path: Path
    status_url: str

    async def status(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            asyncio.timeout(seconds(5)),
            session.get(f"{self.status_url}/status") as resp,
        ):
            assert resp.status == 200
            data: dict[str, Any] = await resp.json()
            return data

    async def mapping(self, hc: str) -> dict[str, Any]:
        for m in (await self.status())["mappings"]:
            if m["hc"] == hc:
                return dict(m)
        raise AssertionError(f"no mapping {hc!r} in /status")

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            asyncio.timeout(seconds(5)),
            session.get(f"{self.status_url}{path}") as resp,
        ):
            return resp.status, await resp.text()

    async def wait_state(self, hc: str, predicate: Callable[[str], bool], bound: float) -> float:
        """Poll /status until the mapping's state satisfies ``predicate``; return the time."""
        start = time.monotonic()
        async with asyncio.timeout(seconds(bound)):
            while not predicate((await self.mapping(hc))["state"]):
                await asyncio.sleep(0.02)  # polling an endpoint, not synchronisation by delay
        return time.monotonic() - start


async def start_agent(
    procs: ProcessGroup,
    path: Path,
    *,
    mappings: int,
    name: str = "agent",
    env: dict[str, str] | None = None,
) -> Agent:
    proc = await procs.start("listen", "--config", str(path), key=ROOT_KEY, env=env, name=name)
    status = await proc.wait_for_line(r"agent status at (?P<url>http://\S+)")
    await proc.wait_for_line(rf"agent ready: {mappings} mappings")
    return Agent(proc, path, status.group("url"))


def _target(echo: tuple[str, int]) -> str:
    return f"tcp://{echo[0]}:{echo[1]}"


# -- senders ---------------------------------------------------------------------------------


async def _recv_exactly(stream: WsConnection, size: int) -> bytes:
    received = b""
    while len(received) < size:
        message = await stream.recv()
        assert isinstance(message, bytes)
        received += message
    return received


async def echo(relay_url: str, hc: str, payload: bytes = b"ping", bound: float = 5.0) -> None:
    """One relayed connection through the agent to the echo target and back."""
    async with (
        asyncio.timeout(seconds(bound)),
        connect(relay_url, hc, key_name=ROOT, key=ROOT_KEY, open_timeout=seconds(bound)) as s,
    ):
        await s.send(payload)
        assert await _recv_exactly(s, len(payload)) == payload


async def echo_until_served(relay_url: str, hc: str, bound: float) -> float:
    """Retry an echo until one succeeds; return how long that took."""
    start = time.monotonic()
    async with asyncio.timeout(seconds(bound)):
        while True:
            try:
                await echo(relay_url, hc, bound=bound)
                return time.monotonic() - start
            except (HandshakeError, ConnectionClosedError, OSError):
                await asyncio.sleep(0.02)  # the next try; the relay said "no listener yet"


# -- (a) relay killed and restarted on the same port ------------------------------------


async def test_relay_restart_agent_serves_within_2s_without_a_storm(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    relay = await relay_process_factory()
    port = urlsplit(relay.url).port
    path = tmp_path / "agent.toml"
    path.write_text(
        agent_toml([relay.url], [Mapping("echo", _target(echo_server), 2)], agent_id="a"),
        "utf-8",
    )
    agent = await start_agent(procs, path, mappings=1)
    await agent.wait_state("echo", lambda s: s == "online", 5)
    await echo(relay.url, "echo")
    before = await agent.mapping("echo")

    relay.signal(signal.SIGKILL)
    assert relay.process is not None
    await relay.process.wait()
    killed = time.monotonic()
    await agent.wait_state("echo", lambda s: s != "online", 5)
    # The outage itself (a relay that stays away), not a wait for something to happen.
    await asyncio.sleep(3.0)
    relay = await relay_process_factory(port=port)
    back = time.monotonic()
    recovery = await echo_until_served(relay.url, "echo", 10)
    after = await agent.mapping("echo")

    attempts = after["attempts"] - before["attempts"]
    _measured("relay_outage_s", back - killed)
    _measured("relay_return_to_serving_s", recovery)
    _measured("attempts_during_outage_2_channels", attempts)
    # How soon it serves is measured above, not asserted: under CI load a clock assert fails for
    # reasons that are not the agent's. The promise (a retry at most ReconnectBackoff's floor
    # after a short outage) is pinned without a clock in
    # tests/unit/test_backoff.py::test_reconnect_policy_waits_at_most_the_floor_in_a_short_outage.
    # Two control channels; without backoff a retry loop makes hundreds of attempts. The
    # policy retries about every floor/2 s (0.75 s), so a 3 s outage plus a restart that is
    # slow under load stays well under 25 per channel; a storm does not.
    assert attempts <= 2 * 25
    async with asyncio.timeout(seconds(5)):  # and both channels are back soon after
        while (await agent.mapping("echo"))["connections_online"] < 2:
            await asyncio.sleep(0.02)  # polling /status


# -- (b) half-open: the relay process stops answering ----------------------------------


async def test_sigstopped_relay_is_detected_within_the_ping_window(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    relay = await relay_process_factory()
    path = tmp_path / "agent.toml"
    path.write_text(
        agent_toml(
            [relay.url], [Mapping("echo", _target(echo_server))], agent_id="b", ping_interval=1
        ),
        "utf-8",
    )
    agent = await start_agent(procs, path, mappings=1)
    await agent.wait_state("echo", lambda s: s == "online", 5)
    await echo(relay.url, "echo")

    relay.signal(signal.SIGSTOP)
    try:
        detected = await agent.wait_state("echo", lambda s: s != "online", 3)
    finally:
        relay.signal(signal.SIGCONT)
    _measured("half_open_detection_s", detected)
    # A ping every second; a dead channel is one whose pong is a second late: 2 s at
    # most, plus the time to poll /status.
    assert detected <= seconds(3.0)
    recovered = await echo_until_served(relay.url, "echo", 10)
    _measured("sigcont_to_serving_s", recovered)


# -- (c) two agents for one hybrid connection -----------------------------------------


async def test_stopping_one_of_two_agents_fails_no_new_connection(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    relay = await relay_process_factory()
    agents = []
    for name in ("ha-1", "ha-2"):
        path = tmp_path / f"{name}.toml"
        path.write_text(
            agent_toml([relay.url], [Mapping("echo", _target(echo_server))], agent_id=name),
            "utf-8",
        )
        agents.append(await start_agent(procs, path, mappings=1, name=name))
    for agent in agents:
        await agent.wait_state("echo", lambda s: s == "online", 5)

    results: list[bool] = []
    errors: list[str] = []
    stopping = asyncio.Event()
    done = asyncio.Event()

    async def sender() -> None:
        while not done.is_set():
            try:
                await echo(relay.url, "echo", bound=10)
                results.append(True)
            except (HandshakeError, ConnectionClosedError, OSError, TimeoutError) as exc:
                results.append(False)
                errors.append(f"{type(exc).__name__}: {exc} (during stop: {stopping.is_set()})")

    workers = [asyncio.create_task(sender()) for _ in range(4)]
    try:
        async with asyncio.timeout(seconds(30)):
            while len(results) < 20:
                await asyncio.sleep(0.02)  # polling the senders' progress
            stopping.set()
            agents[0].proc.send_signal(signal.SIGTERM)
            assert await agents[0].proc.wait(timeout=15) == 0
            served_before = len(results)
            while len(results) < served_before + 40:
                await asyncio.sleep(0.02)
    finally:
        done.set()
        await asyncio.wait(workers)
    _measured("connections_during_agent_stop", len(results))
    _measured("failed_connections_during_agent_stop", results.count(False))
    assert errors == []
    assert (await agents[1].mapping("echo"))["state"] == "online"


# -- (d) takeover of a stale control channel ------------------------------------------


async def test_killed_agent_restarted_with_same_id_serves_at_once(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    # The relay pings every 30 s: without takeover its stale channel would live ~60 s.
    relay = await relay_process_factory(ping_interval=30)
    relay_port = urlsplit(relay.url).port
    assert relay_port is not None
    proxy = await HalfOpenProxy("127.0.0.1", relay_port).start()
    try:
        first = tmp_path / "first.toml"
        first.write_text(
            agent_toml(
                [f"ws://127.0.0.1:{proxy.port}"],
                [Mapping("echo", _target(echo_server))],
                agent_id="gw",
            ),
            "utf-8",
        )
        agent = await start_agent(procs, first, mappings=1, name="agent(first)")
        await agent.wait_state("echo", lambda s: s == "online", 5)
        await echo(relay.url, "echo")

        # The gateway vanishes: nothing reaches the relay, not even a FIN.
        proxy.blackhole()
        await agent.proc.kill9()
        killed = time.monotonic()

        second = tmp_path / "second.toml"
        second.write_text(
            agent_toml([relay.url], [Mapping("echo", _target(echo_server))], agent_id="gw"),
            "utf-8",
        )
        await start_agent(procs, second, mappings=1, name="agent(restarted)")
        serving = await echo_until_served(relay.url, "echo", 10)
        takeover = time.monotonic() - killed
        # Every new connection goes to the live channel: none to the stale one.
        for _ in range(10):
            await echo(relay.url, "echo", bound=3)
    finally:
        await proxy.stop()
    _measured("takeover_kill_to_serving_s", takeover)
    _measured("takeover_restart_ready_to_serving_s", serving)
    assert takeover < seconds(5)


# -- (e) hot reload --------------------------------------------------------------------


async def test_reload_adds_a_mapping_without_breaking_an_open_stream(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    relay = await relay_process_factory()
    a = Mapping("echo", _target(echo_server))
    b = Mapping("mqtt", _target(echo_server))
    path = tmp_path / "agent.toml"
    path.write_text(agent_toml([relay.url], [a], agent_id="r"), "utf-8")
    agent = await start_agent(procs, path, mappings=1)
    await agent.wait_state("echo", lambda s: s == "online", 5)
    connects = (await agent.mapping("echo"))["connects"]

    async with (
        asyncio.timeout(seconds(30)),
        connect(relay.url, "echo", key_name=ROOT, key=ROOT_KEY) as stream,
    ):
        await stream.send(b"before")
        assert await _recv_exactly(stream, 6) == b"before"

        # A broken file is refused and changes nothing.
        path.write_text(agent_toml([relay.url], [a], agent_id="r") + "bogus = 1\n", "utf-8")
        agent.proc.send_signal(signal.SIGHUP)
        await agent.proc.wait_for_line(r"event=config_reload_failed .*bogus: unknown key")
        assert (await agent.status())["reload_failures"] == 1

        path.write_text(agent_toml([relay.url], [a, b], agent_id="r"), "utf-8")
        agent.proc.send_signal(signal.SIGHUP)
        await agent.proc.wait_for_line(r"event=config_reloaded .*added=1 restarted=0 removed=0")
        await agent.wait_state("mqtt", lambda s: s == "online", 5)
        await echo(relay.url, "mqtt")

        await stream.send(b"after")
        assert await _recv_exactly(stream, 5) == b"after"
    mapping = await agent.mapping("echo")
    assert mapping["connects"] == connects  # mapping A was never reconnected
    assert mapping["state"] == "online"

    # Removing B drains it and leaves A alone.
    path.write_text(agent_toml([relay.url], [a], agent_id="r"), "utf-8")
    agent.proc.send_signal(signal.SIGHUP)
    await agent.proc.wait_for_line(r"event=config_reloaded .*removed=1")
    async with asyncio.timeout(seconds(10)):
        while any(m["hc"] == "mqtt" for m in (await agent.status())["mappings"]):
            await asyncio.sleep(0.02)  # polling /status
    await echo(relay.url, "echo")


async def test_reload_restarts_only_the_changed_mapping(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    relay = await relay_process_factory()
    a = Mapping("echo", _target(echo_server))
    b = Mapping("mqtt", _target(echo_server))
    path = tmp_path / "agent.toml"
    path.write_text(agent_toml([relay.url], [a, b], agent_id="c"), "utf-8")
    agent = await start_agent(procs, path, mappings=2)
    for hc in ("echo", "mqtt"):
        await agent.wait_state(hc, lambda s: s == "online", 5)
    untouched = await agent.mapping("mqtt")

    path.write_text(
        agent_toml([relay.url], [Mapping("echo", a.target, 2), b], agent_id="c"), "utf-8"
    )
    agent.proc.send_signal(signal.SIGHUP)
    await agent.proc.wait_for_line(r"event=config_reloaded .*added=0 restarted=1 removed=0")
    async with asyncio.timeout(seconds(10)):
        while (await agent.mapping("echo"))["connections_online"] < 2:
            await asyncio.sleep(0.02)  # polling /status
    await echo(relay.url, "echo")
    await echo(relay.url, "mqtt")
    assert (await agent.mapping("mqtt"))["connects"] == untouched["connects"]


async def test_reload_with_a_new_key_keeps_the_control_channel(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    relay = await relay_process_factory()
    path = tmp_path / "agent.toml"
    old = Mapping("hc-ws", _target(echo_server))
    new = Mapping("hc-ws", _target(echo_server), key_name="listen-only", key_env="LISTEN_KEY")
    path.write_text(agent_toml([relay.url], [old], agent_id="k"), "utf-8")
    agent = await start_agent(procs, path, mappings=1, env={"LISTEN_KEY": LISTEN_KEY})
    await agent.wait_state("hc-ws", lambda s: s == "online", 5)
    connects = (await agent.mapping("hc-ws"))["connects"]
    async with (
        asyncio.timeout(seconds(30)),
        connect(relay.url, "hc-ws", key_name=ROOT, key=ROOT_KEY) as stream,
    ):
        path.write_text(agent_toml([relay.url], [new], agent_id="k"), "utf-8")
        agent.proc.send_signal(signal.SIGHUP)
        await agent.proc.wait_for_line(r"event=config_reloaded .*restarted=0 removed=0 rekeyed=1")
        # The new key is proven at once: a renewToken signed with it, accepted by the relay.
        await agent.proc.wait_for_line(r"event=token_renewed")
        await stream.send(b"still here")
        assert await _recv_exactly(stream, 10) == b"still here"
    await echo(relay.url, "hc-ws")
    assert (await agent.mapping("hc-ws"))["connects"] == connects


# -- (f) a missing hybrid connection, (g) /metrics --------------------------------------


async def test_missing_hybrid_connection_fails_alone_and_metrics_show_both(
    relay_process_factory: ProcessFactory,
    echo_server: tuple[str, int],
    procs: ProcessGroup,
    tmp_path: Path,
) -> None:
    relay = await relay_process_factory()
    target = _target(echo_server)
    path = tmp_path / "agent.toml"
    path.write_text(
        agent_toml(
            [relay.url], [Mapping("no-such-hc", target), Mapping("echo", target)], agent_id="f"
        ),
        "utf-8",
    )
    agent = await start_agent(procs, path, mappings=2)
    await agent.wait_state("echo", lambda s: s == "online", 5)
    missing = await agent.mapping("no-such-hc")
    assert missing["state"] == "failed"
    assert "does not exist" in missing["error"]
    await echo(relay.url, "echo")

    status, text = await agent.get("/metrics")
    assert status == 200
    assert f'hybridrelay_agent_mapping_up{{hc="echo",target="{target}"}} 1.0' in text
    assert f'hybridrelay_agent_mapping_up{{hc="no-such-hc",target="{target}"}} 0.0' in text
    assert f'hybridrelay_agent_streams_accepted_total{{hc="echo",target="{target}"}} 1.0' in text
    assert (
        f'hybridrelay_agent_mapping_state{{hc="no-such-hc",state="failed",target="{target}"}} 1.0'
        in text
    )
    assert (await agent.get("/healthz"))[0] == 200
    # The agent runs on; SIGTERM drains and exits 0.
    agent.proc.send_signal(signal.SIGTERM)
    assert await agent.proc.wait() == 0


# -- target kinds through the agent -----------------------------------------------------


async def test_http_and_unix_targets_through_the_agent(
    relay_process_factory: ProcessFactory, procs: ProcessGroup, tmp_path: Path
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello from {request.path}")

    app = web.Application()
    app.router.add_get("/base/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()

    async def unix_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    socket_path = tmp_path / "echo.sock"
    unix_server = await asyncio.start_unix_server(unix_echo, path=str(socket_path))
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        http_port = runner.addresses[0][1]
        relay = await relay_process_factory()
        path = tmp_path / "agent.toml"
        mappings = [
            Mapping("other", f"http://127.0.0.1:{http_port}/base"),
            Mapping("echo", f"unix://{socket_path}"),
        ]
        path.write_text(agent_toml([relay.url], mappings, agent_id="t"), "utf-8")
        agent = await start_agent(procs, path, mappings=2)
        for hc in ("other", "echo"):
            await agent.wait_state(hc, lambda s: s == "online", 5)
        async with (
            asyncio.timeout(seconds(10)),
            request("GET", relay.url, "other", "/x/y", key_name=ROOT, key=ROOT_KEY) as resp,
        ):
            assert resp.status == 200
            assert await resp.text() == "hello from /base/x/y"
        await echo(relay.url, "echo", b"over a unix socket")
        assert (await agent.mapping("other"))["requests"] == 1
    finally:
        unix_server.close()
        await unix_server.wait_closed()
        await runner.cleanup()


# -- the command line ------------------------------------------------------------------


async def test_config_and_mapping_flags_exclude_each_other(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    proc = await procs.start(
        "listen", "--config", str(tmp_path / "agent.toml"), "--relay", "ws://x:1", name="listen"
    )
    assert await proc.wait(timeout=20) == 2
    assert proc.lines == [
        "hybridrelay: config error: <command line>: --relay: cannot be combined with --config"
        " (the file holds the mappings)"
    ]


async def test_invalid_agent_config_exits_2_with_one_line(procs: ProcessGroup) -> None:
    path = INVALID_AGENT_CONFIGS / "target_bad_scheme.toml"
    proc = await procs.start("listen", "--config", str(path), name="listen(bad config)")
    assert await proc.wait(timeout=20) == 2
    assert proc.lines == [
        f"hybridrelay: config error: {path}: mappings[0].target: unsupported scheme 'ftp';"
        " use one of tcp://, http://, https://, unix://, udp://"
    ]


async def test_flags_without_config_still_need_the_mapping(procs: ProcessGroup) -> None:
    proc = await procs.start("listen", "--relay", "ws://127.0.0.1:1", name="listen")
    assert await proc.wait(timeout=20) == 2
    assert proc.lines == [
        "hybridrelay: config error: <command line>: --hc: is required (or give --config FILE)"
    ]
