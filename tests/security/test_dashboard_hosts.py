"""DNS rebinding against the dashboard's port: only its own names are answered.

A page on ``rebind.example`` re-points its name at 127.0.0.1 and calls its "own" origin,
now the dashboard's port: the browser sends ``Host: rebind.example:<port>``. Over a raw
socket the test sends exactly that request (the page, the login) and must get a one-line
421, counted as ``limit="dashboard_hosts"``; the dashboard's own names still work.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import pytest

from tests.conftest import RelayFactory
from tests.harness.metrics import limit_refusals
from tests.harness.raw_http import RawResponse, connect_raw, read_response
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

ROOT = "RootManageSharedAccessKey"


async def _ask(relay: InProcessRelay, host: str | None, *, login: bool = False) -> RawResponse:
    path = urlsplit(relay.dashboard_url).path
    reader, writer = await connect_raw(relay.dashboard_url)
    try:
        head = f"Host: {host}\r\n" if host is not None else ""
        if login:
            body = json.dumps({"keyName": ROOT, "key": ROOT_KEY}).encode()
            writer.write(
                (
                    f"POST {path}login HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                + body
            )
        else:
            writer.write(f"GET {path} HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
        async with asyncio.timeout(seconds(5)):
            return await read_response(reader)
    finally:
        writer.close()


def _port(relay: InProcessRelay) -> int:
    port = urlsplit(relay.dashboard_url).port
    assert port is not None
    return port


@pytest.mark.parametrize("login", [False, True], ids=["page", "login"])
async def test_a_rebound_name_gets_a_421_and_is_counted(relay: InProcessRelay, login: bool) -> None:
    before = await limit_refusals(relay.url, "dashboard_hosts")
    answer = await _ask(relay, f"rebind.example:{_port(relay)}", login=login)
    assert answer.status == 421
    assert answer.body.count(b"\n") == 1
    assert len(answer.body) < 100
    assert not any(name.lower() == "set-cookie" for name, _ in answer.headers)
    assert await limit_refusals(relay.url, "dashboard_hosts") == before + 1


@pytest.mark.parametrize(
    "host",
    [
        "rebind.example",
        "127.0.0.1.rebind.example",
        "localhost.rebind.example",
        "10.0.0.1",  # an IP literal, but not the dashboard's address
        "[::2]:80",
        "127.0.0.1:x",
        "",
        None,  # no Host at all (aiohttp's parser refuses an HTTP/1.1 request without one)
    ],
)
async def test_other_hosts_are_refused(relay: InProcessRelay, host: str | None) -> None:
    assert (await _ask(relay, host)).status == (421 if host is not None else 400)


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "localhost.", "[::1]:9190"]
)
async def test_the_dashboards_own_names_are_answered(relay: InProcessRelay, host: str) -> None:
    assert (await _ask(relay, host.format(port=_port(relay)))).status == 200
    login = await _ask(relay, host.format(port=_port(relay)), login=True)
    assert login.status == 200


async def test_dashboard_hosts_adds_a_tunnels_name(relay_factory: RelayFactory) -> None:
    relay = await relay_factory(relay_extra='dashboard_hosts = ["ops.example.net:8443"]')
    assert (await _ask(relay, "ops.example.net")).status == 200
    assert (await _ask(relay, "ops.example.net:9999")).status == 200
    assert (await _ask(relay, "other.example.net")).status == 421
