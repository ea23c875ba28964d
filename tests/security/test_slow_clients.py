"""Slow clients and floods from anonymous sources (issue 11, memory and resource exhaustion).

Slowloris heads, stalled and slow bodies, vanishing senders, and one source or one
hybrid connection asking for more than its share: every one gets a clear status
(408, 429 or 503 with Retry-After), is counted in /metrics, costs no error line, and
legitimate traffic keeps flowing. Attackers use raw sockets; the slow ones come from
127.0.0.2 (``local_addr``) so that per-source caps can be told apart from the
legitimate clients on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from hybridrelay.errors import ConnectionClosedError
from tests.conftest import ProcessFactory
from tests.harness.http_peers import HttpListener
from tests.harness.metrics import limit_refusals
from tests.harness.peers import RawListener, connect_url, send, token_for
from tests.harness.raw_http import (
    RawResponse,
    connect_raw,
    read_response,
    relay_address,
    upgrade_request,
)
from tests.harness.relay import RelayProcess
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles
from tests.security.conftest import assert_quiet

ATTACKER = "127.0.0.2"

# Two hybrid connections anyone may send HTTP requests to (no sender token needed).
OPEN_HCS = """
[[hybrid_connections]]
name = "open-a"
requires_client_authorization = false

[[hybrid_connections]]
name = "open-b"
requires_client_authorization = false
"""

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _need_descriptors(count: int) -> None:
    """Raise this process's soft limit on open files so ``count`` sockets fit (or skip)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= count:
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        pytest.skip(f"needs {count} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


@contextlib.asynccontextmanager
async def _answering(listener: HttpListener, body: bytes = b"ok") -> AsyncIterator[None]:
    """Answer every request ``listener`` receives with 200 and ``body``."""

    async def answer() -> None:
        while True:
            request = await listener.requests.get()
            await listener.respond(request.id, 200, body=body)

    task = asyncio.create_task(answer())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})


async def _close_all(streams: list[Stream]) -> None:
    for _, writer in streams:
        writer.close()
    for _, writer in streams:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _first_answers(streams: list[Stream], count: int) -> list[RawResponse]:
    """The first ``count`` responses among ``streams``; asserts the others are still waiting."""
    tasks = [asyncio.create_task(read_response(reader)) for reader, _ in streams]
    try:
        done: set[asyncio.Task[RawResponse]] = set()
        while len(done) < count:
            finished, _ = await asyncio.wait(
                [t for t in tasks if t not in done], return_when=asyncio.FIRST_COMPLETED
            )
            done |= finished
        assert len(done) == count, "more answers than expected"
        return [t.result() for t in tasks if t in done]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


async def _legit_http(session: aiohttp.ClientSession, relay: RelayProcess, hc: str) -> bool:
    async with session.post(f"{relay.http_url}/{hc}/item", data=b"hello") as resp:
        return resp.status == 200 and await resp.read() == b"ok"


async def _legit_connect(relay: RelayProcess) -> bool:
    ws = await send(relay.url, "echo")
    try:
        await ws.send(b"ping")
        return await ws.recv() == b"ping"
    finally:
        with contextlib.suppress(ConnectionClosedError):
            await ws.close()


# -- slow heads --------------------------------------------------------------------------------


async def test_slow_heads_are_answered_408_and_idle_keepalive_is_closed(
    relay_process_factory: ProcessFactory,
) -> None:
    """100 slowloris heads and a silent socket get 408 and close; idle keep-alive is closed."""
    relay = await relay_process_factory(relay_extra="handshake_timeout = 1\nkeepalive_timeout = 1")

    async def slow_head(data: bytes) -> tuple[int, bytes]:
        reader, writer = await connect_raw(relay.url)
        try:
            writer.write(data)
            response = await read_response(reader)
            return response.status, await reader.read()  # b"": the relay closed
        finally:
            writer.close()

    partial = b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: "  # never ends
    async with asyncio.timeout(seconds(20)):
        results = await asyncio.gather(*(slow_head(partial) for _ in range(100)), slow_head(b""))
        assert results == [(408, b"")] * 101

        # A served keep-alive connection that then says nothing is closed without a word.
        reader, writer = await connect_raw(relay.url)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
            assert (await read_response(reader)).status == 200
            assert await reader.read() == b""
        finally:
            writer.close()
    assert await limit_refusals(relay.url, "handshake_timeout") == 101
    await relay.stop()
    assert_quiet(relay)


async def test_a_stalled_tls_handshake_is_closed(
    relay_process_factory: ProcessFactory, tls_files: TlsFiles
) -> None:
    """A TCP connection to a TLS relay never sends its ClientHello: closed at handshake_timeout."""
    relay = await relay_process_factory(relay_extra="handshake_timeout = 1", tls=tls_files)
    reader, writer = await connect_raw(relay.url)
    try:
        async with asyncio.timeout(seconds(10)):
            assert await reader.read() == b""
    finally:
        writer.close()
    await relay.stop()
    assert_quiet(relay)


# -- stalled bodies --------------------------------------------------------------------------


async def test_stalled_bodies_are_answered_408_and_closed(
    relay_process_factory: ProcessFactory,
) -> None:
    """300 HTTP-mode POSTs send a head with Content-Length 65536 and no body: 408 each, closed."""
    relay = await relay_process_factory(
        relay_extra="body_idle_timeout = 1\nhandshake_timeout = 5", extra=OPEN_HCS
    )
    listener = await HttpListener(relay.url, "open-a").start()
    head = b"POST /open-a/upload HTTP/1.1\r\nHost: relay\r\nContent-Length: 65536\r\n\r\n"

    async def stall() -> tuple[int, bytes]:
        reader, writer = await connect_raw(relay.url)
        try:
            writer.write(head)
            response = await read_response(reader)
            return response.status, await reader.read()  # b"": the relay closed
        finally:
            writer.close()

    try:
        async with asyncio.timeout(seconds(30)):
            results = await asyncio.gather(*(stall() for _ in range(300)))
        assert results == [(408, b"")] * 300
        assert listener.requests.empty()  # none of them cost a listener anything
        assert await limit_refusals(relay.url, "body_idle_timeout") == 300
    finally:
        await listener.stop()
    await relay.stop()
    assert_quiet(relay)


async def test_a_sender_vanishing_mid_body_is_one_info_line(
    relay_process_factory: ProcessFactory,
) -> None:
    """50 senders send half a body and disconnect: one client_gone info line each, no traceback."""
    relay = await relay_process_factory(extra=OPEN_HCS)
    listener = await HttpListener(relay.url, "open-a").start()
    head = b"POST /open-a/upload HTTP/1.1\r\nHost: relay\r\nContent-Length: 1000\r\n\r\n"
    try:
        streams = [await connect_raw(relay.url) for _ in range(50)]
        for _, writer in streams:
            writer.write(head + b"x" * 10)
        await asyncio.gather(*(writer.drain() for _, writer in streams))
        await _close_all(streams)
        async with asyncio.timeout(seconds(10)):
            # Polling the relay's log in a bounded loop (the lines come from its stdout).
            while sum("event=client_gone" in line for line in relay.log_lines) < 50:
                await asyncio.sleep(0.05)
    finally:
        await listener.stop()
    await relay.stop()
    assert_quiet(relay)


async def test_a_sender_that_stops_reading_its_response_is_cut(
    relay_process_factory: ProcessFactory,
) -> None:
    """A sender never reads a 16 MiB response: cut at body_idle_timeout, its pending slot freed."""
    relay = await relay_process_factory(
        relay_extra="body_idle_timeout = 1\nmax_pending_per_hc = 1", extra=OPEN_HCS
    )
    listener = await HttpListener(relay.url, "open-a").start()
    host, port = relay_address(relay.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up at once
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    _, writer = await asyncio.open_connection(sock=sock)
    upload: asyncio.Task[None] | None = None
    try:
        writer.write(b"GET /open-a/big HTTP/1.1\r\nHost: relay\r\n\r\n")  # never reads
        async with asyncio.timeout(seconds(30)):
            request = await listener.next_request()
            ws = await listener.dial(request)
            upload = asyncio.create_task(
                listener.respond(request.id, 200, body=b"x" * (16 << 20), ws=ws)
            )
            # The entity's one pending slot is the reader's until the relay cuts it.
            async with _answering(listener), aiohttp.ClientSession() as session:
                while True:  # bounded by the timeout above
                    async with session.get(f"{relay.http_url}/open-a/small") as resp:
                        if resp.status == 200:
                            break
                        assert resp.status == 503
                    await asyncio.sleep(0.1)
        assert await limit_refusals(relay.url, "body_idle_timeout") == 1
    finally:
        if upload is not None:
            upload.cancel()
            await asyncio.wait({upload})
        writer.close()
        await listener.stop()
    await relay.stop()
    assert_quiet(relay)


# -- 1,000 slow clients -------------------------------------------------------------------------


async def test_a_thousand_slow_clients_do_not_starve_legitimate_traffic(
    relay_process_factory: ProcessFactory,
) -> None:
    """1,000 slowloris heads and slow bodies hold sockets: connects and HTTP requests succeed."""
    _need_descriptors(4096)
    # The slow bodies outnumber the whole rendezvous table: they must not take its slots.
    relay = await relay_process_factory(
        relay_extra=(
            "handshake_timeout = 120\nbody_idle_timeout = 120\nmax_pending_rendezvous = 100"
        ),
        extra=OPEN_HCS,
    )
    echo = await RawListener(relay.url, "echo").start()
    listener = await HttpListener(relay.url, "open-a").start()
    slow: list[Stream] = []
    gate = asyncio.Semaphore(100)

    async def slow_client(data: bytes) -> None:
        async with gate:
            stream = await connect_raw(relay.url, source=ATTACKER)
            slow.append(stream)
            stream[1].write(data)
            await stream[1].drain()

    slowloris = b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: "  # the head never ends
    slow_body = (
        b"POST /open-a/x HTTP/1.1\r\nHost: relay\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
    )
    try:
        async with asyncio.timeout(seconds(60)):
            await asyncio.gather(
                *(slow_client(slowloris) for _ in range(500)),
                *(slow_client(slow_body) for _ in range(500)),
            )
            async with _answering(listener), aiohttp.ClientSession() as session:
                http_ok = [await _legit_http(session, relay, "open-a") for _ in range(20)]
            connect_ok = [await _legit_connect(relay) for _ in range(20)]
        assert http_ok.count(True) == 20
        assert connect_ok.count(True) == 20
        # The slow clients were still there the whole time: held, not refused or closed.
        assert len(slow) == 1000
        assert not any(reader.at_eof() for reader, _ in slow)
    finally:
        await _close_all(slow)
        await listener.stop()
        await echo.stop()


# -- per-source caps ---------------------------------------------------------------------------


async def test_connections_per_source_are_capped_with_429(
    relay_process_factory: ProcessFactory,
) -> None:
    """A source holds 20 idle connections and opens a 21st: 429, Retry-After; others unaffected."""
    relay = await relay_process_factory(
        relay_extra=(
            'per_ip_limits_exempt = ["127.0.0.1/32"]\n'
            "max_connections_per_ip = 20\nhandshake_timeout = 120"
        )
    )
    held: list[Stream] = []
    try:
        for _ in range(20):
            stream = await connect_raw(relay.url, source=ATTACKER)
            stream[1].write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n")  # and never the end
            held.append(stream)
        reader, writer = await connect_raw(relay.url, source=ATTACKER)
        try:
            async with asyncio.timeout(seconds(10)):
                refused = await read_response(reader)
                assert await reader.read() == b""  # and closed
        finally:
            writer.close()
        assert refused.status == 429
        assert int(refused.header("Retry-After") or "0") >= 1
        assert await limit_refusals(relay.url, "max_connections_per_ip") >= 1

        # Another source is not affected...
        async with (
            aiohttp.ClientSession() as session,
            session.get(relay.http_url + "/healthz") as resp,
        ):
            assert resp.status == 200
        # ...and the attacker's share comes back as its connections end.
        await _close_all(held[:1])
        async with asyncio.timeout(seconds(10)):
            while True:  # the relay sees the close asynchronously: poll, bounded
                reader, writer = await connect_raw(relay.url, source=ATTACKER)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
                response = await read_response(reader)
                writer.close()
                if response.status == 200:
                    break
                assert response.status == 429
                await asyncio.sleep(0.05)
    finally:
        await _close_all(held)
    await relay.stop()
    assert_quiet(relay)


async def test_new_connections_and_requests_per_source_are_rate_limited_with_429(
    relay_process_factory: ProcessFactory,
) -> None:
    """A source opens connections and sends keep-alive requests past its burst: 429, Retry-After."""
    relay = await relay_process_factory(
        relay_extra=(
            'per_ip_limits_exempt = ["127.0.0.1/32"]\n'
            "handshake_rate_per_ip = 0.1\nhandshake_burst_per_ip = 5"
        )
    )
    request = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n"

    # New connections: one token each, refused before any byte is read once the burst is spent.
    statuses: list[int] = []
    retry_after = None
    async with asyncio.timeout(seconds(20)):
        for _ in range(20):  # bounded: the burst is 5
            reader, writer = await connect_raw(relay.url, source=ATTACKER)
            writer.write(request)
            response = await read_response(reader)
            writer.close()
            statuses.append(response.status)
            if response.status == 429:
                retry_after = response.header("Retry-After")
                break
    assert statuses[:5] == [200] * 5
    assert statuses[-1] == 429
    assert retry_after is not None
    assert int(retry_after) >= 1

    # Further requests on one keep-alive connection pay too (another source: a full bucket).
    reader, writer = await connect_raw(relay.url, source="127.0.0.3")
    statuses = []
    try:
        async with asyncio.timeout(seconds(20)):
            for _ in range(20):
                writer.write(request)
                response = await read_response(reader)
                statuses.append(response.status)
                if response.status == 429:
                    retry_after = response.header("Retry-After")
                    break
    finally:
        writer.close()
    assert statuses[:5] == [200] * 5
    assert statuses[-1] == 429
    assert retry_after is not None
    assert int(retry_after) >= 1
    assert await limit_refusals(relay.url, "handshake_rate_per_ip") == 2
    await relay.stop()
    assert_quiet(relay)


# -- a per-hybrid-connection share of pending work ---------------------------------------------


async def test_a_flooded_hybrid_connection_does_not_deny_another_http(
    relay_process_factory: ProcessFactory,
) -> None:
    """10 requests to an entity whose listener never answers: 5 pend, 5 get 503; another works."""
    relay = await relay_process_factory(
        relay_extra="max_pending_rendezvous = 10\nmax_pending_per_hc = 5", extra=OPEN_HCS
    )
    silent = await HttpListener(relay.url, "open-a").start()
    answering = await HttpListener(relay.url, "open-b").start()
    flood: list[Stream] = []
    try:
        for _ in range(10):
            stream = await connect_raw(relay.url)
            stream[1].write(b"GET /open-a/x HTTP/1.1\r\nHost: relay\r\n\r\n")
            flood.append(stream)
        async with asyncio.timeout(seconds(20)):
            delivered = [await silent.next_request() for _ in range(5)]
            refused = await _first_answers(flood, 5)
        assert len(delivered) == 5
        assert [r.status for r in refused] == [503] * 5
        assert all(r.header("Retry-After") == "1" for r in refused)
        assert await limit_refusals(relay.url, "max_pending_per_hc") == 5
        async with _answering(answering), aiohttp.ClientSession() as session:
            assert await _legit_http(session, relay, "open-b")
    finally:
        await _close_all(flood)
        await silent.stop()
        await answering.stop()


async def test_a_full_rendezvous_table_is_503_with_retry_after(
    relay_process_factory: ProcessFactory,
) -> None:
    """4 requests wait where the whole table holds 3: the 4th gets 503, Retry-After, a count."""
    relay = await relay_process_factory(relay_extra="max_pending_rendezvous = 3", extra=OPEN_HCS)
    silent = await HttpListener(relay.url, "open-a").start()
    flood: list[Stream] = []
    try:
        for _ in range(4):
            stream = await connect_raw(relay.url)
            stream[1].write(b"GET /open-a/x HTTP/1.1\r\nHost: relay\r\n\r\n")
            flood.append(stream)
        async with asyncio.timeout(seconds(20)):
            refused = await _first_answers(flood, 1)
        assert [(r.status, r.header("Retry-After")) for r in refused] == [(503, "1")]
        assert await limit_refusals(relay.url, "max_pending_rendezvous") == 1
    finally:
        await _close_all(flood)
        await silent.stop()


async def test_a_flooded_hybrid_connection_does_not_deny_another_connect(
    relay_process_factory: ProcessFactory,
) -> None:
    """10 senders wait on an entity whose listener never dials: 5 pend, 5 get 503; another works."""
    relay = await relay_process_factory(
        relay_extra="max_pending_rendezvous = 10\nmax_pending_per_hc = 5"
    )
    silent = await RawListener(relay.url, "hc-ws", behaviour=None).start()
    echo = await RawListener(relay.url, "echo").start()
    url = connect_url(relay.url, "hc-ws")
    auth = {"ServiceBusAuthorization": token_for(url)}
    upgrade = upgrade_request("/$hc/hc-ws?sb-hc-action=connect", "relay", auth)
    flood: list[Stream] = []
    try:
        for _ in range(10):
            stream = await connect_raw(relay.url)
            stream[1].write(upgrade)
            flood.append(stream)
        async with asyncio.timeout(seconds(20)):
            accepts = [await silent.accepts.get() for _ in range(5)]
            refused = await _first_answers(flood, 5)
        assert len(accepts) == 5
        assert [r.status for r in refused] == [503] * 5
        assert all(r.header("Retry-After") == "1" for r in refused)
        assert await limit_refusals(relay.url, "max_pending_per_hc") == 5
        assert await _legit_connect(relay)
    finally:
        await _close_all(flood)
        await silent.stop()
        await echo.stop()
