"""The dashboard in a real browser (issue 14): headless Chromium from Debian, driven by
Playwright's async API, against an in-process relay on a real port with real listeners
and senders.

Nothing downloads a browser: Chromium is /usr/bin/chromium (``apt-get install chromium``;
scripts/test installs it when it runs as root). Without it these tests fail, never skip.
One browser serves the module; each test gets a fresh relay and browser context. Each
page's screenshot is written to test-artifacts/dashboard-*.png, or to the directory
HYBRIDRELAY_SCREENSHOTS names (docs/img for the README); what changes from run to run,
addresses, ages and keys, is masked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, FilePayload, Page, async_playwright, expect
from tests.harness.device_certs import device_sas_token
from tests.harness.listeners import running_listener
from tests.harness.peers import RawListener, send
from tests.harness.relay import ROOT_KEY, InProcessRelay, load, write_config
from tests.harness.timing import seconds
from yarl import URL

from hybridrelay.errors import ConnectionClosedError
from hybridrelay.listener import HttpRequest, HttpResponse, Listener
from hybridrelay.listener.http_target import HttpTarget
from hybridrelay.protocol.sas import SasTokenProvider, create_sas_token
from hybridrelay.relay.store.models import Authentication, Device, Grants, SymmetricKey

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM: Final = Path(os.environ.get("HYBRIDRELAY_CHROMIUM", "/usr/bin/chromium"))
# Test artifacts by default (git-ignored), so a test run leaves the tree clean; refresh the
# README's pictures with HYBRIDRELAY_SCREENSHOTS=docs/img ./scripts/test tests/browser.
SCREENSHOTS: Final = Path(
    os.environ.get("HYBRIDRELAY_SCREENSHOTS", Path(__file__).parents[2] / "test-artifacts")
)
VIEWPORT: Final = {"width": 1100, "height": 680}
PHONE: Final = {"width": 390, "height": 780}
DEVICE_KEY: Final = base64.b64encode(b"dashboard-device-key-0123456789a").decode()
DEVICE_KEY2: Final = base64.b64encode(b"dashboard-device-key-2-123456789").decode()

expect.set_options(timeout=seconds(10) * 1000)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install chromium; "
            "scripts/test does so when run as root). Browser tests never skip."
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def relay(tmp_path: Path) -> AsyncIterator[InProcessRelay]:
    started = await InProcessRelay(load(write_config(tmp_path))).start()
    yield started
    await started.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=VIEWPORT, device_scale_factor=1)  # type: ignore[arg-type]
    opened = await context.new_page()
    yield opened
    await context.close()


async def log_in(page: Page, relay: InProcessRelay, key: str = ROOT_KEY) -> None:
    await page.goto(relay.dashboard_url)
    await page.fill("#key", key)
    await page.click("#login-button")


async def show(page: Page, hash_: str) -> None:
    """Open a page of the dashboard and wait until it has drawn."""
    await page.evaluate("hash => { location.hash = hash; }", hash_)
    name = hash_.split("/")[1]
    await expect(page.locator("#main")).to_have_attribute("data-ready", name)


async def screenshot(page: Page, name: str) -> None:
    await page.evaluate("window.scrollTo(0, 0)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(
        path=SCREENSHOTS / f"dashboard-{name}.png",
        mask=[page.locator(".volatile")],
        mask_color="#e3e7ec",
        animations="disabled",
        caret="hide",
    )


async def closed_code(sender: object) -> tuple[int, str]:
    with pytest.raises(ConnectionClosedError) as closed:
        async with asyncio.timeout(seconds(5)):
            await sender.recv()  # type: ignore[attr-defined]
    return closed.value.code, closed.value.reason


async def test_login_refuses_a_wrong_key_then_logs_in_and_out(
    page: Page, relay: InProcessRelay
) -> None:
    await log_in(page, relay, key="not-the-key")
    await expect(page.locator("#login-error")).to_contain_text("Login refused")
    await expect(page.locator("#nav")).to_be_hidden()
    await page.fill("#key", "")
    await screenshot(page, "login")

    await page.fill("#key", ROOT_KEY)
    await page.click("#login-button")
    await expect(page.locator("#who")).to_have_text("sas:RootManageSharedAccessKey (operator)")
    await expect(page.locator("#main")).to_have_attribute("data-ready", "overview")
    cookies = await page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [
        ("hybridrelay_session", True, "Strict", "/$dashboard")
    ]
    # The page cannot read its own session cookie (HttpOnly).
    assert await page.evaluate("document.cookie") == ""

    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    status = await page.evaluate("fetch('api/stats').then(r => r.status)")
    assert status == 401


async def test_overview_counts_a_listener_that_comes_and_goes(
    page: Page, relay: InProcessRelay
) -> None:
    await log_in(page, relay)
    listeners = page.locator("[data-stat=listeners] .n")
    await expect(listeners).to_have_text("0")
    listener = await RawListener(relay.url, "hc-ws", listener_id="overview-listener").start()
    try:
        await expect(listeners).to_have_text("1")
        await expect(page.locator("[data-stat=hybridconnections] .n")).to_have_text("8")
        await expect(page.locator("[data-stat=nodes] .n")).to_have_text("1")
        await expect(page.locator("[data-stat=nodes]")).to_contain_text("none draining")
        # A call without a token is refused: its source shows up on the overview.
        async with (
            aiohttp.ClientSession() as http,
            http.get(relay.http_url + "/$mgmt/v1/stats") as refused,
        ):
            assert refused.status == 401
        await expect(page.locator('tr[data-source="127.0.0.1"]')).to_be_visible()
        for chart in ("#chart-bytes", "#chart-connects"):
            await expect(page.locator(f"{chart} svg polyline").first).to_be_attached()
        await screenshot(page, "overview")
        # Readable on a phone: the same page at a phone's width, nothing cut off.
        await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
        await expect(listeners).to_have_text("1")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
        await screenshot(page, "phone")
        await page.set_viewport_size(VIEWPORT)  # type: ignore[arg-type]
    finally:
        await listener.stop()
    await expect(listeners).to_have_text("0")


async def test_a_live_stream_moves_bytes_and_closes_from_its_button(
    page: Page, relay: InProcessRelay
) -> None:
    listener = await RawListener(relay.url, "echo", listener_id="echo-listener").start()
    try:
        sender = await send(relay.url, "echo")
        await sender.send("x" * 5000)
        assert await sender.recv() == "x" * 5000
        await log_in(page, relay)
        await show(page, "#/streams")
        row = page.locator("tr[data-stream]")
        await expect(row).to_have_count(1)
        await expect(row.locator(".up")).not_to_have_text("0 B")
        await expect(row.locator(".down")).not_to_have_text("0 B")
        await screenshot(page, "streams")

        await row.get_by_role("button", name="Close").click()
        assert await closed_code(sender) == (1008, "closed from the dashboard")
        await expect(row).to_have_count(0)
    finally:
        await listener.stop()


async def test_disabling_a_device_cuts_its_live_stream(page: Page, relay: InProcessRelay) -> None:
    await relay.state.store.create_device(
        Device(
            device_id="car-7",
            authentication=Authentication(
                type="sas",
                symmetric_key=SymmetricKey(primary_key=DEVICE_KEY, secondary_key=DEVICE_KEY2),
            ),
            grants=Grants(send=("echo",)),
        )
    )
    listener = await RawListener(relay.url, "echo", listener_id="echo-listener").start()
    try:
        token = device_sas_token(urlsplit(relay.url).netloc, "car-7", DEVICE_KEY)
        sender = await send(relay.url, "echo", token=token)
        await sender.send("hello")
        assert await sender.recv() == "hello"
        await log_in(page, relay)
        await show(page, "#/devices")
        row = page.locator('tr[data-device="car-7"]')
        await expect(row.locator(".status-connected")).to_have_text("Connected")
        await screenshot(page, "devices")

        await row.get_by_role("button", name="Disable").click()
        code, _ = await closed_code(sender)
        assert code == 1008
        await expect(row.locator(".status-disabled")).to_contain_text("disabled")
        await expect(row.get_by_role("button", name="Enable")).to_be_visible()

        # A device created on the page sends with the key the page shows.
        await page.fill("#device-id", "made-in-browser")
        await page.fill("#device-send", "echo, sensors/*")
        await page.get_by_role("button", name="Create device").click()
        key = await page.locator("#device-created .primary-key").text_content()
        assert key
        created = page.locator('tr[data-device="made-in-browser"]')
        await expect(created).to_contain_text("enabled")
        await created.get_by_role("button", name="Show keys").click()
        await expect(created.locator(".primary-key")).to_have_text(key)
        token = device_sas_token(urlsplit(relay.url).netloc, "made-in-browser", key)
        sender = await send(relay.url, "echo", token=token)
        await sender.send("from a new device")
        assert await sender.recv() == "from a new device"
        await expect(created.locator(".status-connected")).to_have_text("Connected")
        await sender.close()
    finally:
        await listener.stop()


async def test_a_rule_created_in_the_dashboard_works_at_once(
    page: Page, relay: InProcessRelay
) -> None:
    await log_in(page, relay)
    await show(page, "#/hc/hc-ws")
    await page.fill("#rule-name", "made-in-browser")
    await page.get_by_role("button", name="Create rule").click()
    key = await page.locator("#rule-created .primary-key").text_content()
    assert key
    await expect(page.locator('tr[data-rule="made-in-browser"]')).to_contain_text("Listen, Send")

    listener = await RawListener(
        relay.url, "hc-ws", key_name="made-in-browser", key=key, listener_id="new-key-listener"
    ).start()
    try:
        listed = page.locator('tr[data-listener="new-key-listener"]')
        await expect(listed).to_be_visible()
        # Not the agent's id form: no agent; this node; no pong before the first ping.
        await expect(listed.locator(".agent")).to_have_text("")
        await expect(listed.locator(".node")).not_to_be_empty()
        await expect(listed.locator(".rtt")).to_have_text(re.compile(r"^(no pong yet|\d+\.\d ms)$"))
        sender = await send(relay.url, "hc-ws", key_name="made-in-browser", key=key)
        await sender.send("with the new key")
        assert await sender.recv() == "with the new key"
        await expect(listed.locator(".streams")).to_have_text("1")
        await expect(page.locator("[data-stat=ActiveConnections] .n")).to_have_text("1")
        await expect(page.locator('[data-stat="SenderConnections-Success"] .n')).to_have_text("1")
        await (
            page.locator('tr[data-rule="made-in-browser"]')
            .get_by_role("button", name="Show keys")
            .click()
        )
        await expect(page.locator('tr[data-rule="made-in-browser"] .primary-key')).to_have_text(key)
        await screenshot(page, "hybrid-connection")

        await show(page, "#/hcs")
        hc_row = page.locator('tr[data-hc="hc-ws"]')
        await expect(hc_row.locator(".listeners")).to_have_text("1 / 25")
        await expect(hc_row.locator(".streams")).to_have_text("1")
        await expect(hc_row.locator(".status-healthy")).to_have_text("healthy")
        # A hybrid connection whose listeners are at its cap is degraded: the next is refused.
        root = "RootManageSharedAccessKey"
        token = create_sas_token(relay.http_url + "/", root, ROOT_KEY, int(time.time()) + 600)
        async with (
            aiohttp.ClientSession(headers={"Authorization": token}) as http,
            http.put(
                relay.http_url + "/$mgmt/v1/hybridconnections/at-cap", json={"maxListeners": 1}
            ) as created,
        ):
            assert created.status == 201
        capped = await RawListener(relay.url, "at-cap", listener_id="capped").start()
        try:
            capped_row = page.locator('tr[data-hc="at-cap"]')
            await expect(capped_row.locator(".status-degraded")).to_have_text("degraded")
            await expect(capped_row.locator(".listeners")).to_have_text("1 / 1")
            await screenshot(page, "hybrid-connections")
        finally:
            await capped.stop()
        await expect(capped_row.locator(".status-down")).to_have_text("down")
        await sender.close()
    finally:
        await listener.stop()


PROXY_PREFIX: Final = "/ops/relay"
_HOP_HEADERS: Final = frozenset({"host", "connection", "transfer-encoding", "content-length"})


@pytest_asyncio.fixture(loop_scope="module")
async def prefix_proxy(relay: InProcessRelay) -> AsyncIterator[str]:
    """A reverse proxy that serves the dashboard under /ops/relay/ (as nginx's location would)."""
    upstream = aiohttp.ClientSession(auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        tail = request.rel_url.raw_path_qs[len(PROXY_PREFIX) :]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with upstream.request(
            request.method,
            URL(relay.dashboard_url.removesuffix("/$dashboard/") + tail, encoded=True),
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            kept = [(k, v) for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS]
            response = web.Response(status=answer.status, body=body)
            for name, value in kept:
                response.headers.add(name, value)
            return response

    app = web.Application()
    app.router.add_route("*", PROXY_PREFIX + "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}{PROXY_PREFIX}"
    await runner.cleanup()
    await upstream.close()


async def test_the_dashboard_works_under_a_proxy_prefix(page: Page, prefix_proxy: str) -> None:
    # The bare prefix redirects relatively, keeping the proxy's part of the path.
    await page.goto(prefix_proxy + "/$dashboard")
    assert page.url == prefix_proxy + "/$dashboard/"
    await page.fill("#key", ROOT_KEY)
    await page.click("#login-button")
    await expect(page.locator("#main")).to_have_attribute("data-ready", "overview")
    await expect(page.locator("[data-stat=hybridconnections] .n")).to_have_text("8")
    await show(page, "#/devices")
    # The cookie is scoped to the dashboard under the prefix: relayed paths never get it.
    cookies = await page.context.cookies()
    assert [c["path"] for c in cookies] == [PROXY_PREFIX + "/$dashboard"]
    assert await page.context.cookies([prefix_proxy + "/$hc/echo"]) == []


async def test_the_event_tail_shows_listeners_and_changes_live(
    page: Page, relay: InProcessRelay
) -> None:
    await log_in(page, relay)
    await show(page, "#/events")
    await expect(page.locator("#event-status")).to_have_text("live")
    listener = await RawListener(relay.url, "hc-ws", listener_id="tail-listener").start()
    try:
        online = page.locator('tr[data-event="listenerOnline"]')
        await expect(online).to_contain_text("hc-ws")
        await expect(online).to_contain_text("listener tail-listener")
    finally:
        await listener.stop()
    await expect(page.locator('tr[data-event="listenerOffline"]')).to_contain_text("hc-ws")
    # A change made elsewhere (here: straight in the store) arrives too.
    await relay.state.store.create_device(
        Device(
            device_id="tail-device",
            authentication=Authentication(
                type="sas",
                symmetric_key=SymmetricKey(primary_key=DEVICE_KEY, secondary_key=DEVICE_KEY2),
            ),
        )
    )
    await expect(page.locator('tr[data-event="createDeviceIdentity"]')).to_contain_text(
        "tail-device"
    )
    await page.fill("#event-filter", "listeneroffline")
    await expect(page.locator("tr[data-event]")).to_have_count(1)
    await page.fill("#event-filter", "")
    # By kind: devices only, then listeners only (online and offline).
    await page.select_option("#event-kind", "DeviceIdentity")
    await expect(page.locator("tr[data-event]")).to_have_count(1)
    await expect(page.locator('tr[data-event="createDeviceIdentity"]')).to_have_count(1)
    await page.select_option("#event-kind", "Listener")
    await expect(page.locator("tr[data-event]")).to_have_count(2)
    await page.select_option("#event-kind", "")
    await page.locator("#event-filter").blur()
    await screenshot(page, "events")


async def test_a_viewer_sees_the_pages_without_write_buttons_or_keys(
    page: Page, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, relay_extra='dashboard_viewers = ["sas:RootManageSharedAccessKey"]'
    )
    viewer_relay = await InProcessRelay(load(config)).start()
    try:
        await log_in(page, viewer_relay)
        await expect(page.locator("#who")).to_have_text("sas:RootManageSharedAccessKey (viewer)")
        await show(page, "#/hc/hc-ws")
        rule = page.locator('tr[data-rule="listen-only"]')
        await expect(rule).to_contain_text("Listen")
        await expect(page.locator("#main button")).to_have_count(0)
        await expect(page.locator("#rule-name")).to_have_count(0)
        await show(page, "#/hcs")
        await expect(page.locator('tr[data-hc="hc-ws"]')).to_be_visible()
        await expect(page.locator("#hc-name")).to_have_count(0)
    finally:
        await viewer_relay.stop()


# A page a listener serves through HTTP mode (hybrid connection "anon": no sender token):
# its script tries what any script on the relay's public origin could try with an
# operator's dashboard session in the same browser.
ATTACK_PAGE: Final = """<!doctype html><title>listener page</title><pre id="out"></pre>
<script>
(async () => {
  const tries = {};
  async function attempt(name, url, init) {
    try {
      const answer = await fetch(url, init);
      tries[name] = answer.status + " " + (await answer.text()).slice(0, 300);
    } catch (error) {
      tries[name] = "blocked: " + error.name;
    }
  }
  await attempt("session", "/$dashboard/session", {});
  await attempt("api", "/$dashboard/api/hybridconnections", {});
  const dashboard = new URLSearchParams(location.search).get("dashboard");
  await attempt("cross", dashboard + "session", {credentials: "include"});
  await attempt("crossApi", dashboard + "api/hybridconnections", {credentials: "include"});
  document.getElementById("out").textContent = JSON.stringify(tries);
})();
</script>"""


@contextlib.asynccontextmanager
async def listener_page(relay: InProcessRelay) -> AsyncIterator[list[dict[str, str]]]:
    """The attack page behind a real listener agent on "anon"; yields the requests it got."""
    seen: list[dict[str, str]] = []

    async def serve(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text=ATTACK_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    listener = Listener(
        relay.url,
        "anon",
        token_provider=SasTokenProvider("RootManageSharedAccessKey", ROOT_KEY),
        http_handler=HttpTarget(f"http://127.0.0.1:{port}/"),
    )
    try:
        async with running_listener(listener):
            yield seen
    finally:
        await runner.cleanup()


async def attack(page: Page, relay: InProcessRelay) -> dict[str, str]:
    """Log in as the operator, then open the listener's page in the same browser."""
    await log_in(page, relay)
    await expect(page.locator("#main")).to_have_attribute("data-ready", "overview")
    victim = await page.context.new_page()
    await victim.goto(f"{relay.http_url}/anon/?dashboard={relay.dashboard_url}")
    out = victim.locator("#out")
    await expect(out).not_to_be_empty()
    tries: dict[str, str] = json.loads(await out.text_content() or "{}")
    await victim.close()
    return tries


async def test_a_listeners_page_cannot_use_an_operators_session(
    page: Page, relay: InProcessRelay
) -> None:
    async with listener_page(relay) as seen:
        tries = await attack(page, relay)
    # Same origin as the page: the public port answers nothing of the dashboard's.
    for name in ("session", "api"):
        assert tries[name].startswith("404 "), tries
        assert "DashboardElsewhere" in tries[name], tries
    # The dashboard's own origin: the browser sends the cookie (cookies ignore ports)
    # but lets the page read no answer (no CORS), so the CSRF token stays unknown.
    assert tries["cross"] == "blocked: TypeError"
    assert tries["crossApi"] == "blocked: TypeError"
    assert not any("csrfToken" in what or '"value"' in what for what in tries.values())
    # The listener never saw the session cookie either.
    assert seen
    assert not any("hybridrelay_session" in h.get("Cookie", "") for h in seen)


async def test_sharing_the_public_origin_lets_a_listeners_page_act_as_the_operator(
    page: Page, tmp_path: Path
) -> None:
    """Why the dashboard has an origin of its own: the opt-in ``"public"`` is that gap."""
    config = write_config(tmp_path, relay_extra='dashboard_listen = "public"')
    shared = await InProcessRelay(load(config)).start()
    try:
        assert shared.dashboard_url == shared.http_url + "/$dashboard/"
        async with listener_page(shared):
            tries = await attack(page, shared)
    finally:
        await shared.stop()
    # The page read the CSRF token and listed the hybrid connections as the operator.
    assert tries["session"].startswith("200 ")
    assert "csrfToken" in tries["session"]
    assert tries["api"].startswith('200 {"value": [{"name": ')


async def test_the_cluster_page_shows_the_node_its_listeners_drains_and_undrains_it(
    page: Page, relay: InProcessRelay
) -> None:
    listener = await RawListener(relay.url, "hc-ws", listener_id="cluster-listener").start()
    try:
        await log_in(page, relay)
        await show(page, "#/cluster")
        node = page.locator('tr[data-node="local"]')
        await expect(node).to_contain_text("(this node)")
        await expect(node.locator(".listeners")).to_have_text("1")
        await expect(node.locator(".status")).to_have_text("serving")
        await expect(page.locator('tr[data-holder="local/hc-ws"] .listeners')).to_have_text("1")
        await screenshot(page, "cluster")

        drain = node.get_by_role("button", name="Drain")
        await drain.click()  # asks first
        await node.get_by_role("button", name="Confirm drain").click()
        code, _ = await listener.wait_control_closed(seconds(10))
        assert code == 1001  # sent to another node
        await expect(node.locator(".status")).to_have_text("draining")
        await expect(node.locator(".listeners")).to_have_text("0")
        await expect(node.get_by_role("button")).to_have_count(1)  # Undrain, only
        await expect(page.locator("tr[data-holder]")).to_have_count(0)
        async with aiohttp.ClientSession() as http, http.get(relay.http_url + "/readyz") as ready:
            assert ready.status == 503

        await node.get_by_role("button", name="Undrain").click()
        await expect(node.locator(".status")).to_have_text("serving")
        await expect(node.get_by_role("button", name="Drain")).to_be_visible()
        async with aiohttp.ClientSession() as http, http.get(relay.http_url + "/readyz") as ready:
            assert ready.status == 200
        again = await RawListener(relay.url, "hc-ws", listener_id="back").start()
        await expect(page.locator('tr[data-holder="local/hc-ws"] .listeners')).to_have_text("1")
        await again.stop()
    finally:
        await listener.stop()


async def test_the_jobs_page_exports_and_imports_devices_with_progress(
    page: Page, relay: InProcessRelay
) -> None:
    for i in range(12):
        await relay.state.store.create_device(
            Device(
                device_id=f"fleet-{i:02}",
                authentication=Authentication(
                    type="sas",
                    symmetric_key=SymmetricKey(primary_key=DEVICE_KEY, secondary_key=DEVICE_KEY2),
                ),
            )
        )
    await log_in(page, relay)
    await show(page, "#/jobs")
    await page.get_by_role("button", name="Start export").click()
    export = page.locator('tr[data-type="export"]')
    await expect(export).to_have_attribute("data-status", "completed")
    await expect(export.locator(".outcome")).to_have_text("12 devices written")
    await expect(export.locator("progress")).to_have_attribute("value", "100")
    output = await export.get_by_role("link", name="Output").get_attribute("href")
    assert output
    lines = await page.evaluate("url => fetch(url).then(r => r.text())", output)
    assert sorted(json.loads(line)["deviceId"] for line in lines.splitlines()) == [
        f"fleet-{i:02}" for i in range(12)
    ]

    # An import from a file: two new devices and one line the relay refuses.
    new = [{"deviceId": f"imported-{i}", "importMode": "create"} for i in range(2)]
    body = "\n".join([*map(json.dumps, new), '{"deviceId": "fleet-00", "importMode": "create"}'])
    upload: FilePayload = {
        "name": "devices.jsonl",
        "mimeType": "application/x-ndjson",
        "buffer": body.encode(),
    }
    await page.set_input_files("#import-file", files=upload)
    await page.get_by_role("button", name="Start import").click()
    imported = page.locator('tr[data-type="import"]')
    await expect(imported).to_have_attribute("data-status", "completed")
    await expect(imported.locator(".outcome")).to_have_text("2 applied, 1 refused")
    await expect(imported.get_by_role("link", name="Errors")).to_be_visible()
    assert await relay.state.store.get_device("imported-1") is not None
    await screenshot(page, "jobs")


async def test_the_http_inspector_records_a_request_and_replays_it(
    page: Page, relay: InProcessRelay
) -> None:
    seen: list[tuple[str, bytes]] = []

    async def app(request: HttpRequest) -> HttpResponse:
        seen.append((request.target, await request.read()))
        return HttpResponse(200, [("Content-Type", "text/plain")], f"answer #{len(seen)}".encode())

    root = "RootManageSharedAccessKey"
    listener = Listener(
        relay.url, "echo", token_provider=SasTokenProvider(root, ROOT_KEY), http_handler=app
    )
    token = create_sas_token(relay.http_url + "/", root, ROOT_KEY, int(time.time()) + 600)
    async with running_listener(listener), aiohttp.ClientSession() as sender:
        await log_in(page, relay)
        # The hybrid connection's page links to its inspector.
        await show(page, "#/hc/echo")
        await page.get_by_role("link", name="Inspect its HTTP requests").click()
        await expect(page.locator("#main")).to_have_attribute("data-ready", "inspector")
        assert page.url.endswith("#/inspector/echo")
        await expect(page.locator("#inspector-state")).to_have_text("off")
        await page.click("#inspector-toggle")
        await expect(page.locator("#inspector-state")).to_have_text("on")

        async with sender.post(
            relay.http_url + "/echo/orders?id=7",
            data=b'{"item": "widget"}',
            headers={"ServiceBusAuthorization": token, "Content-Type": "application/json"},
        ) as resp:
            assert (resp.status, await resp.text()) == (200, "answer #1")
        rows = page.locator("#inspector-list tr[data-record]")
        await expect(rows).to_have_count(1)
        await expect(rows.first.locator(".status")).to_have_text("200")
        await rows.first.locator("a").click()
        await expect(page.locator("#request-headers")).to_contain_text("[redacted]")
        await expect(page.locator("#request-body")).to_contain_text('{"item": "widget"}')
        await expect(page.locator("#response-body")).to_contain_text("answer #1")
        assert token.split("sig=")[1].split("&")[0] not in await page.content()

        await page.click("#copy-curl")
        curl = page.locator("#curl")
        await expect(curl).to_contain_text(f"curl -X POST '{relay.http_url}/echo/orders?id=7'")
        await expect(curl).to_contain_text("""--data-raw '{"item": "widget"}'""")
        await expect(curl).not_to_contain_text("[redacted]")

        await page.click("#replay")
        await expect(page.locator("#replay-result")).to_have_text("Replayed: 200")
        await expect(rows).to_have_count(2)
        await expect(page.locator("#record-summary")).to_contain_text("replay of")
        await expect(page.locator("#response-body")).to_contain_text("answer #2")
        assert seen == [("/echo/orders?id=7", b'{"item": "widget"}')] * 2
        await expect(page.locator("#inspector-kept")).to_have_text("2 / 50")
        await screenshot(page, "inspector")

        # Edit and replay: another body and target, same hybrid connection.
        await page.click("#edit-replay")
        await page.fill("#edit-target", "/echo/orders?id=8")
        await page.fill("#edit-body", '{"item": "gadget"}')
        await page.click("#send-edited")
        await expect(page.locator("#replay-result")).to_have_text("Replayed: 200")
        await expect(rows).to_have_count(3)
        await expect(page.locator("#response-body")).to_contain_text("answer #3")
        assert seen[-1] == ("/echo/orders?id=8", b'{"item": "gadget"}')
