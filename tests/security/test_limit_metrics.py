"""Every limit's refusal is counted: ``hybridrelay_limit_refusals_total{limit="<key>"}``.

One test per limit the relay did not count before (issue 11: "every limit is
configurable, documented in one table, and counted by a metric"; the table is
docs/security.md's). Each hits its limit over real sockets, as a hostile peer
would, checks what the peer sees, and reads the count from ``/metrics``. Limits
are set low through their ``[relay]`` keys so each test takes a second at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from hybridrelay.errors import ConnectionClosedError, HandshakeError
from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.relay.mgmt.events import EventHub
from hybridrelay.wsclient import WsConnection, ws_connect
from tests.conftest import ROOT, RelayFactory, make_token
from tests.harness.metrics import limit_refusals
from tests.harness.peers import RawListener, connect_url, listen_url, send, token_for
from tests.harness.raw_http import (
    RawResponse,
    exchange,
    http_request,
    open_raw,
    read_response,
    upgrade_request,
)
from tests.harness.raw_ws import RawWs, masked_frame
from tests.harness.relay import ROOT_KEY, InProcessRelay, jwt_issuer_config
from tests.harness.timing import seconds

MGMT = "/$mgmt/v1"


def _host(relay: InProcessRelay) -> str:
    return urlsplit(relay.url).netloc


def _manage_token() -> str:
    return create_sas_token("http://127.0.0.1/", ROOT, ROOT_KEY, int(time.time()) + 600)


async def _counted(relay: InProcessRelay, limit: str) -> float:
    return await limit_refusals(relay.url, limit)


async def _raw(relay: InProcessRelay, request: bytes) -> RawResponse:
    return await exchange(relay.url, request)


def _listen_headers(relay: InProcessRelay, hc: str, *, ttl: int = 3600) -> dict[str, str]:
    return {"ServiceBusAuthorization": token_for(listen_url(relay.url, hc), ttl=ttl)}


# -- the front door: aiohttp's request-head parser and keep-alive -----------------------


async def test_a_header_line_over_max_head_line_size_is_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """An attacker sends a 9 KB header line: 400 from the parser, counted as max_head_line_size."""
    relay = await relay_factory()
    answer = await _raw(relay, http_request("GET", "/healthz", _host(relay), {"X-Big": "a" * 9000}))
    assert answer.status == 400
    assert await _counted(relay, "max_head_line_size") == 1


async def test_max_head_line_size_is_configurable(relay_factory: RelayFactory) -> None:
    """The same 9 KB header line passes a relay configured for 16 KB lines."""
    relay = await relay_factory(relay_extra="max_head_line_size = 16384")
    answer = await _raw(relay, http_request("GET", "/healthz", _host(relay), {"X-Big": "a" * 9000}))
    assert answer.status == 200
    assert await _counted(relay, "max_head_line_size") == 0


async def test_too_many_header_lines_are_refused_and_counted(relay_factory: RelayFactory) -> None:
    """An attacker sends 40 header lines to a relay allowing 32: 400, counted as max_headers."""
    relay = await relay_factory(relay_extra="max_headers = 32")
    headers = {f"X-H{i}": "v" for i in range(40)}
    answer = await _raw(relay, http_request("GET", "/healthz", _host(relay), headers))
    assert answer.status == 400
    assert await _counted(relay, "max_headers") == 1


async def test_an_idle_keep_alive_connection_is_closed_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """A client keeps its connection open after a response: closed at keepalive_timeout, counted."""
    relay = await relay_factory(relay_extra="keepalive_timeout = 0.2")
    async with open_raw(relay.url) as (reader, writer):
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {_host(relay)}\r\n\r\n".encode())
        assert (await read_response(reader)).status == 200
        async with asyncio.timeout(seconds(5)):
            assert await reader.read() == b""  # the relay closed it
    assert await _counted(relay, "keepalive_timeout") >= 1


async def test_an_address_part_over_8_kib_is_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """A 9 KB entity path (the line limit raised): 400 by the address parser, address_part_size."""
    relay = await relay_factory(relay_extra="max_head_line_size = 32768")
    target = "/$hc/" + "a" * 9000 + "?sb-hc-action=connect"
    answer = await _raw(relay, upgrade_request(target, _host(relay)))
    assert answer.status == 400
    assert await _counted(relay, "address_part_size") == 1


# -- tokens -------------------------------------------------------------------------------


async def test_a_sas_token_over_4_kib_is_refused_and_counted(relay_factory: RelayFactory) -> None:
    """A sender sends a 5 KB SAS token: 401, counted as sas_token_size."""
    relay = await relay_factory()
    token = make_token(connect_url(relay.url, "hc-ws")) + "&x=" + "a" * 5000
    target = "/$hc/hc-ws?sb-hc-action=connect"
    answer = await _raw(
        relay, upgrade_request(target, _host(relay), {"ServiceBusAuthorization": token})
    )
    assert answer.status == 401
    assert await _counted(relay, "sas_token_size") == 1


async def test_a_jwt_over_16_kib_is_refused_and_counted(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """A sender sends a 17 KB bearer token to a relay that takes JWTs: 401, counted as jwt_size."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer = jwt_issuer_config(tmp_path / "idp.pem", key, "https://idp.example")
    relay = await relay_factory(relay_extra="max_head_line_size = 65536", extra=issuer)
    claims = {
        "iss": "https://idp.example",
        "aud": "hybridrelay",
        "exp": int(time.time()) + 600,
        "padding": "p" * 17_000,
    }
    bearer = "Bearer " + jwt.encode(claims, key, algorithm="RS256")
    target = "/$hc/hc-ws?sb-hc-action=connect"
    answer = await _raw(
        relay, upgrade_request(target, _host(relay), {"ServiceBusAuthorization": bearer})
    )
    assert answer.status == 401
    assert await _counted(relay, "jwt_size") == 1


# -- senders waiting for a listener --------------------------------------------------------


async def test_a_listener_over_max_listeners_is_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """A second listener on an entity allowing one: 403, counted as max_listeners_per_hc."""
    relay = await relay_factory(
        extra='\n[[hybrid_connections]]\nname = "solo"\nmax_listeners = 1\n'
    )
    first = await RawListener(relay.url, "solo", listener_id="one").start()
    try:
        with pytest.raises(HandshakeError) as refused:
            await RawListener(relay.url, "solo", listener_id="two").start()
        assert refused.value.status == 403
        assert await _counted(relay, "max_listeners_per_hc") == 1
    finally:
        await first.stop()


async def test_a_sender_whose_listener_never_dials_gets_504_and_is_counted(
    relay_factory: RelayFactory,
) -> None:
    """A listener takes the accept and never dials: the sender's 504, rendezvous_timeout."""
    relay = await relay_factory(relay_extra="rendezvous_timeout = 0.3")
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        with pytest.raises(HandshakeError) as refused:
            await send(relay.url, "echo")
        assert refused.value.status == 504
        assert await _counted(relay, "rendezvous_timeout") == 1
    finally:
        await listener.stop()


async def test_an_accept_over_64_kib_is_refused_and_counted(relay_factory: RelayFactory) -> None:
    """A sender's headers would make its accept message over 64 KiB: 413, control_message_limit."""
    relay = await relay_factory()
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        url = connect_url(relay.url, "echo")
        headers = {"ServiceBusAuthorization": token_for(url)}
        headers |= {f"X-Pad-{i}": "p" * 7000 for i in range(10)}
        answer = await _raw(
            relay, upgrade_request("/$hc/echo?sb-hc-action=connect", _host(relay), headers)
        )
        assert answer.status == 413
        assert await _counted(relay, "control_message_limit") == 1
        assert listener.accepts.empty()
    finally:
        await listener.stop()


# -- HTTP mode -----------------------------------------------------------------------------


async def test_a_listener_that_never_answers_a_request_gives_504_and_is_counted(
    relay_factory: RelayFactory,
) -> None:
    """A listener never answers an HTTP request: the sender's 504 counts as request_timeout."""
    extra = (
        '\n[[hybrid_connections]]\nname = "slow"\nhttp = true\nrequest_timeout = 0.3\n'
        "requires_client_authorization = false\n"
    )
    relay = await relay_factory(extra=extra)
    url = listen_url(relay.url, "slow")
    control = await ws_connect(url, headers={"ServiceBusAuthorization": token_for(url)})
    try:
        answer = await _raw(relay, http_request("GET", "/slow/item", _host(relay)))
        assert answer.status == 504
        assert await _counted(relay, "request_timeout") == 1
    finally:
        control.abort()


async def test_a_header_block_over_32_kib_is_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """An HTTP-mode sender sends 35 KB of headers: 431, counted as inline_headers_limit."""
    relay = await relay_factory()
    headers = {f"X-Pad-{i}": "p" * 7000 for i in range(5)}
    answer = await _raw(relay, http_request("GET", "/echo/item", _host(relay), headers))
    assert answer.status == 431
    assert await _counted(relay, "inline_headers_limit") == 1


# -- listeners' control channels -------------------------------------------------------------


async def test_a_silent_control_channel_is_cut_and_counted(relay_factory: RelayFactory) -> None:
    """A listener that never answers pings is cut after two intervals, counted as ping_interval."""
    relay = await relay_factory(ping_interval=0.2)
    url = listen_url(relay.url, "echo")
    peer = await RawWs.open(url, headers=_listen_headers(relay, "echo"))
    try:
        assert peer.status == 101
        async with asyncio.timeout(seconds(5)):
            await peer.recv_eof_or_reset()
        assert await _counted(relay, "ping_interval") == 1
    finally:
        peer.close()


async def test_an_expired_control_channel_is_closed_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """A listener lets its token expire without renewing: 1008, counted as token_grace."""
    relay = await relay_factory(ping_interval=0.4, relay_extra="token_grace = 0")
    url = listen_url(relay.url, "echo")
    control = await ws_connect(url, headers=_listen_headers(relay, "echo", ttl=1))
    try:
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(seconds(5)):
                await control.recv()
        assert closed.value.code == 1008
        assert await _counted(relay, "token_grace") == 1
    finally:
        control.abort()


async def test_a_listener_that_does_not_take_its_pongs_is_cut_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """A listener pings without ever reading: cut at control_send_timeout, counted."""
    relay = await relay_factory(relay_extra="control_send_timeout = 0.3")
    url = listen_url(relay.url, "echo")
    peer = await RawWs.open(url, headers=_listen_headers(relay, "echo"), rcvbuf=4096)
    try:
        ping = masked_frame(0x9, b"p" * 125)
        with contextlib.suppress(OSError):
            await peer.send_until_stalled(ping * 64, volume=256 << 20, stall=seconds(3))
        async with asyncio.timeout(seconds(5)):
            await peer.recv_eof_or_reset()
        assert await _counted(relay, "control_send_timeout") == 1
    finally:
        peer.close()


async def test_a_control_frame_over_125_bytes_is_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """A listener sends a 126-byte ping: 1002 (RFC 6455 §5.5), counted as max_control_payload."""
    relay = await relay_factory()
    url = listen_url(relay.url, "echo")
    peer = await RawWs.open(url, headers=_listen_headers(relay, "echo"))
    try:
        await peer.send(masked_frame(0x9, b"p" * 126))
        async with asyncio.timeout(seconds(5)):
            assert await peer.recv_close() == 1002
        assert await _counted(relay, "max_control_payload") == 1
    finally:
        peer.close()


async def test_a_listener_message_over_the_size_is_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """A listener sends a 70 KB binary message: 1009, counted as max_control_message_size."""
    relay = await relay_factory(relay_extra="max_control_message_size = 65536")
    url = listen_url(relay.url, "echo")
    control = await ws_connect(url, headers=_listen_headers(relay, "echo"))
    try:
        await control.send(b"b" * 70_000)
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(seconds(5)):
                await control.recv()
        assert closed.value.code == 1009
        assert await _counted(relay, "max_control_message_size") == 1
    finally:
        control.abort()


async def test_a_listener_json_message_over_64_kib_is_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """A listener sends a 70 KB renewToken: 1009 (HC §3), counted as control_message_limit."""
    relay = await relay_factory()
    url = listen_url(relay.url, "echo")
    control = await ws_connect(url, headers=_listen_headers(relay, "echo"))
    try:
        await control.send(json.dumps({"renewToken": {"token": "t" * 70_000}}))
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(seconds(5)):
                await control.recv()
        assert closed.value.code == 1009
        assert await _counted(relay, "control_message_limit") == 1
    finally:
        control.abort()


# -- relayed streams -------------------------------------------------------------------------


async def test_a_peer_that_never_answers_a_close_is_cut_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """The listener vanishes; the sender never answers the relay's 1011: cut, close_timeout."""
    relay = await relay_factory(replace={"close_timeout = 3": "close_timeout = 0.2"})
    listener = await RawListener(relay.url, "echo", behaviour=None).start()
    url = connect_url(relay.url, "echo")
    opening = asyncio.create_task(
        RawWs.open(url, headers={"ServiceBusAuthorization": token_for(url)})
    )
    try:
        async with asyncio.timeout(seconds(10)):
            leg = await listener.dial(await listener.accepts.get())
            sender = await opening
        try:
            assert sender.status == 101
            leg.abort()  # the listener vanishes: the relay closes the sender with 1011
            async with asyncio.timeout(seconds(5)):
                assert await sender.recv_close() == 1011
                await sender.recv_eof_or_reset()  # never answered: cut
            assert await _counted(relay, "close_timeout") == 1
        finally:
            sender.close()
    finally:
        opening.cancel()
        await asyncio.wait({opening})
        await listener.stop()


async def test_streams_open_past_the_drain_deadline_are_counted(
    relay_factory: RelayFactory,
) -> None:
    """A stream still open when the relay stops is cut at drain_timeout and counted.

    The relay's /metrics is gone once it has stopped: the count is read in-process.
    """
    relay = await relay_factory(relay_extra="drain_timeout = 0.2")
    listener = await RawListener(relay.url, "echo").start()
    sender = await send(relay.url, "echo")
    try:
        await sender.send(b"hello")
        assert await sender.recv() == b"hello"
        metrics = relay.state.metrics
        await relay.stop()
        assert metrics.limit_refusals.labels("drain_timeout").value == 1
    finally:
        sender.abort()
        await listener.stop()


# -- management ------------------------------------------------------------------------------


def _mgmt_request(
    relay: InProcessRelay, method: str, path: str, body: bytes, *, length: int | None = None
) -> bytes:
    head = (
        f"{method} {MGMT}{path} HTTP/1.1\r\nHost: {_host(relay)}\r\n"
        f"Authorization: {_manage_token()}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    return head.encode() + body


async def test_a_management_body_over_the_size_is_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """A Manage caller PUTs a 70 KB body: 413, counted as max_management_body_size."""
    relay = await relay_factory(relay_extra="max_management_body_size = 65536")
    body = json.dumps({"userMetadata": "m" * 70_000}).encode()
    answer = await _raw(relay, _mgmt_request(relay, "PUT", "/hybridconnections/big", body))
    assert answer.status == 413
    assert await _counted(relay, "max_management_body_size") == 1


async def test_a_stalled_management_body_gets_408_and_is_counted(
    relay_factory: RelayFactory,
) -> None:
    """A Manage caller announces 100 bytes and sends 10: 408 at body_idle_timeout, counted."""
    relay = await relay_factory(relay_extra="body_idle_timeout = 0.3")
    async with open_raw(relay.url) as (reader, writer):
        writer.write(
            _mgmt_request(relay, "PUT", "/hybridconnections/slow", b'{"userMe', length=100)
        )
        answer = await read_response(reader)
    assert answer.status == 408
    assert await _counted(relay, "body_idle_timeout") == 1


async def test_an_import_over_the_size_is_refused_and_counted(relay_factory: RelayFactory) -> None:
    """A Manage caller announces a 2 MiB import to a relay taking 1 MiB: 413, max_import_size.

    The caller then goes away without sending it: the relay's read-out of the body ends too.
    """
    relay = await relay_factory(relay_extra="max_import_size = 1048576")
    async with open_raw(relay.url) as (reader, writer):
        writer.write(_mgmt_request(relay, "POST", "/jobs/import", b"", length=2 << 20))
        answer = await read_response(reader)
    # The relay reads out an announced body for a while after a refusal (so that its 413 is
    # not lost to a reset); the peer's going away ends that (the harness checks no task of
    # the relay is left when it stops).
    assert answer.status == 413
    assert await _counted(relay, "max_import_size") == 1


async def test_a_job_over_max_running_jobs_is_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """One import is still uploading; an export on a relay running one job: 403, counted."""
    relay = await relay_factory(relay_extra="max_running_jobs = 1")
    async with open_raw(relay.url) as (_reader, writer):
        writer.write(_mgmt_request(relay, "POST", "/jobs/import", b"{", length=1000))
        await writer.drain()
        async with asyncio.timeout(seconds(10)):
            while True:  # until the import's job exists (polling the jobs endpoint)
                listed = await _raw(relay, _mgmt_request(relay, "GET", "/jobs", b""))
                if b'"import"' in listed.body:
                    break
        answer = await _raw(relay, _mgmt_request(relay, "POST", "/jobs/export", b""))
        assert answer.status == 403
    assert await _counted(relay, "max_running_jobs") == 1


async def test_an_import_line_over_64_kib_fails_alone_and_is_counted(
    relay_factory: RelayFactory,
) -> None:
    """An import holds one 70 KB line and one good line: the long one fails, import_line_size."""
    relay = await relay_factory()
    lines = (
        json.dumps({"deviceId": "dev-long", "statusReason": "x" * 70_000}).encode()
        + b"\n"
        + json.dumps({"deviceId": "dev-ok", "importMode": "create"}).encode()
        + b"\n"
    )
    headers = {"Authorization": _manage_token(), "Content-Type": "application/x-ndjson"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(relay.http_url + MGMT + "/jobs/import", data=lines) as resp:
            assert resp.status == 202
            job = await resp.json()
        async with asyncio.timeout(seconds(20)):
            while job["status"] not in ("completed", "failed"):
                async with session.get(relay.http_url + MGMT + f"/jobs/{job['jobId']}") as resp:
                    job = await resp.json()
    assert (job["status"], job["succeeded"], job["failed"]) == ("completed", 1, 1)
    assert await _counted(relay, "import_line_size") == 1


async def test_a_rule_over_12_per_scope_is_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """A Manage caller creates a 13th namespace rule: 403 (HC §8.5), max_rules_per_scope."""
    relay = await relay_factory()
    headers = {"Authorization": _manage_token()}
    async with aiohttp.ClientSession(headers=headers) as session:
        statuses = []
        for i in range(12):  # the config has one namespace rule already
            async with session.put(
                relay.http_url + MGMT + f"/rules/extra-{i}", json={"rights": ["Listen"]}
            ) as resp:
                statuses.append(resp.status)
    assert all(200 <= status < 300 for status in statuses[:11]), statuses
    assert statuses[11] == 403
    assert await _counted(relay, "max_rules_per_scope") == 1


async def test_an_event_subscriber_message_over_4_kib_is_refused_and_counted(
    relay_factory: RelayFactory,
) -> None:
    """An event-stream subscriber sends a 5 KB message: 1009, event_stream_message_size."""
    relay = await relay_factory()
    url = relay.url + MGMT + "/events"
    stream = await ws_connect(url, headers={"Authorization": _manage_token()})
    try:
        await stream.send("x" * 5000)
        async with asyncio.timeout(seconds(5)):
            code = await _close_code(stream)
        assert code == 1009
        assert await _counted(relay, "event_stream_message_size") == 1
    finally:
        stream.abort()


async def _close_code(stream: WsConnection) -> int:
    """Read (and drop) messages until the connection closes; its close code."""
    while True:
        try:
            await stream.recv()
        except ConnectionClosedError as exc:
            return exc.code


# -- the event hub's queues (no socket can fill them quickly enough) --------------------------


async def test_a_subscriber_too_far_behind_is_dropped_and_counted() -> None:
    """A subscriber that takes no event while three are published past a queue of one: dropped."""
    hits: list[str] = []
    hub = EventHub(queue_size=1, limit_hit=hits.append)
    hub.subscribe()
    for i in range(3):
        hub.publish("listenerOnline", {"n": i}, {})
    assert hits == ["event_subscriber_queue"]
