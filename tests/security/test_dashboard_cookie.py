"""A listener cannot set the dashboard's session cookie through HTTP mode.

Cookies ignore ports: with the relay at ``http://127.0.0.1:P`` and the dashboard at
``http://127.0.0.1:D`` (a development machine, a shared name), a listener's HTTP-mode
answer ``Set-Cookie: hybridrelay_session=...; Path=/$dashboard`` lands in the browser's jar
for the dashboard too and replaces the operator's session (a logout, or a login into the
listener owner's own session). The relay drops such a header (counted as
``limit="dashboard_cookie"``) and passes every other cookie on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from hybridrelay.relay.dashboard.sessions import COOKIE
from tests.harness.http_peers import HttpListener
from tests.harness.metrics import limit_refusals
from tests.harness.peers import token_for
from tests.harness.raw_http import RawResponse, connect_raw, read_response
from tests.harness.relay import ROOT_KEY, InProcessRelay
from tests.harness.timing import seconds

HC = "hyco"

DASHBOARD_COOKIES = {
    "plain": {"Set-Cookie": f"{COOKIE}=listeners-own; Path=/$dashboard; HttpOnly"},
    "lower-case-header": {"set-cookie": f"{COOKIE}=listeners-own; Path=/$dashboard"},
    "set-cookie2": {"Set-Cookie2": f'{COOKIE}="x"; Version="1"; Path="/$dashboard"'},
    "spaced-name": {"Set-Cookie": f" {COOKIE} =x; Path=/$dashboard"},
    "name-in-capitals": {"Set-Cookie": f"{COOKIE.upper()}=x; Path=/$dashboard"},
    "host-prefix": {"Set-Cookie": f"__Host-{COOKIE}=x; Path=/; Secure"},
    "folded-after-another": {"Set-Cookie": f"theme=dark, {COOKIE}=x; Path=/$dashboard"},
    "bare-name": {"Set-Cookie": f"{COOKIE}; Path=/$dashboard"},
}


@pytest.fixture
async def listener(relay: InProcessRelay) -> AsyncIterator[HttpListener]:
    peer = await HttpListener(relay.url, HC).start()
    yield peer
    await peer.stop()


async def _relayed_answer(
    relay: InProcessRelay, listener: HttpListener, headers: dict[str, str]
) -> RawResponse:
    token = token_for(f"{relay.http_url}/{HC}")
    reader, writer = await connect_raw(relay.url)
    try:
        writer.write(
            f"GET /{HC}/page HTTP/1.1\r\nHost: relay\r\nServiceBusAuthorization: {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        request = await listener.next_request()
        await listener.respond(request.id, 200, headers=headers, body=b"<p>hello</p>")
        async with asyncio.timeout(seconds(5)):
            return await read_response(reader)
    finally:
        writer.close()


@pytest.mark.parametrize("case", list(DASHBOARD_COOKIES))
async def test_a_listeners_set_cookie_for_the_dashboard_never_reaches_the_client(
    relay: InProcessRelay, listener: HttpListener, case: str
) -> None:
    before = await limit_refusals(relay.url, "dashboard_cookie")
    headers = {**DASHBOARD_COOKIES[case], "X-Kept": "yes"}
    answer = await _relayed_answer(relay, listener, headers)
    assert answer.status == 200
    assert answer.body == b"<p>hello</p>"
    assert not [v for n, v in answer.headers if n.lower().startswith("set-cookie")]
    assert ("X-Kept", "yes") in answer.headers
    assert await limit_refusals(relay.url, "dashboard_cookie") == before + 1


async def test_a_listeners_other_cookies_pass(
    relay: InProcessRelay, listener: HttpListener
) -> None:
    cookie = "hybridrelay_session_theme=dark; Path=/"  # a longer name is another cookie
    answer = await _relayed_answer(relay, listener, {"Set-Cookie": cookie})
    assert ("Set-Cookie", cookie) in answer.headers


async def test_the_operators_session_survives_a_listeners_cookie(
    relay: InProcessRelay, listener: HttpListener
) -> None:
    """One cookie jar (per host, not port, as browsers keep it) for the relay and dashboard."""
    assert relay.dashboard_url.startswith("http://127.0.0.1:")
    assert relay.http_url.startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as jar:
        login = {"keyName": "RootManageSharedAccessKey", "key": ROOT_KEY}
        async with jar.post(
            relay.dashboard_url + "login",
            data=json.dumps(login),
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 200

        token = token_for(f"{relay.http_url}/{HC}")
        fetching = asyncio.create_task(
            jar.get(f"{relay.http_url}/{HC}/page", headers={"ServiceBusAuthorization": token})
        )
        request = await listener.next_request()
        await listener.respond(request.id, 200, headers=DASHBOARD_COOKIES["plain"], body=b"hi")
        async with await asyncio.wait_for(fetching, seconds(5)) as resp:
            assert resp.status == 200

        async with jar.get(relay.dashboard_url + "session") as resp:
            assert resp.status == 200, "the listener's cookie replaced the operator's session"
            assert (await resp.json())["who"] == "sas:RootManageSharedAccessKey"


async def _login(relay: InProcessRelay) -> str:
    """A new dashboard session's id (the cookie's value), over a raw socket."""
    body = json.dumps({"keyName": "RootManageSharedAccessKey", "key": ROOT_KEY}).encode()
    reader, writer = await connect_raw(relay.dashboard_url)
    try:
        writer.write(
            (
                f"POST /$dashboard/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            + body
        )
        async with asyncio.timeout(seconds(5)):
            answer = await read_response(reader)
    finally:
        writer.close()
    assert answer.status == 200
    [cookie] = [v for n, v in answer.headers if n == "Set-Cookie" and "Path=/;" not in v]
    return cookie.split(";", 1)[0].split("=", 1)[1]


async def _whoami(relay: InProcessRelay, cookie: str) -> RawResponse:
    reader, writer = await connect_raw(relay.dashboard_url)
    try:
        writer.write(
            f"GET /$dashboard/session HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        async with asyncio.timeout(seconds(5)):
            return await read_response(reader)
    finally:
        writer.close()


async def test_a_second_session_cookie_from_a_shorter_path_is_no_session(
    relay: InProcessRelay,
) -> None:
    """A listener's page script sets ``hybridrelay_session=<its own session>; path=/``.

    The browser then sends the operator's (the longer path) first and the tossed one
    last; a server taking the last would serve the operator the other session. Two
    values are no session: 401, which also expires the ``Path=/`` one.
    """
    operators, tossed = await _login(relay), await _login(relay)
    assert (await _whoami(relay, f"{COOKIE}={operators}")).status == 200
    answer = await _whoami(relay, f"{COOKIE}={operators}; {COOKIE}={tossed}")
    assert answer.status == 401
    assert ("Set-Cookie", f"{COOKIE}=; Path=/; Max-Age=0") in answer.headers
    # Once the tossed one is gone, the operator's session works again.
    assert (await _whoami(relay, f"theme=x; {COOKIE}={operators}")).status == 200
