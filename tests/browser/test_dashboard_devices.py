"""The dashboard's device pages and hybrid connection counters in Chromium (issue 14).

Search and paging over the registry done by the relay (a page of 50 of 130 devices, a
search by substring, prefix and status), a device's page regenerating a key and copying
a connection string the device client accepts, its timeline showing a refused login, a
connect and a disconnect with the reason, and the Azure-named counters of a hybrid
connection. Same browser, relay and screenshot conventions as test_dashboard.py.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Locator, Page, expect
from tests.browser.test_dashboard import (
    VIEWPORT,
    browser,
    log_in,
    relay,
    screenshot,
    show,
)
from tests.harness.device_certs import device_sas_token
from tests.harness.peers import RawListener, listen_url, send
from tests.harness.relay import InProcessRelay, load, write_config
from tests.harness.timing import seconds
from tests.integration.test_device_auth import TokenListener

from hybridrelay.errors import HandshakeError
from hybridrelay.protocol.device_sas import parse_device_connection_string
from hybridrelay.relay.store.models import Authentication, Device, Grants, SymmetricKey
from hybridrelay.wsclient import ws_connect

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "relay"]  # fixtures shared with test_dashboard.py

KEY: Final = base64.b64encode(b"device-page-primary-key-01234567").decode()
KEY2: Final = base64.b64encode(b"device-page-secondary-key-0123456").decode()
WRONG: Final = base64.b64encode(b"not-this-device's-key-0123456789").decode()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(
        viewport=VIEWPORT,  # type: ignore[arg-type]
        device_scale_factor=1,
        permissions=["clipboard-read", "clipboard-write"],
    )
    opened = await context.new_page()
    yield opened
    await context.close()


def sas_device(
    device_id: str, *, send_to: tuple[str, ...] = (), listen: tuple[str, ...] = (), **fields: object
) -> Device:
    return Device(
        device_id=device_id,
        authentication=Authentication(
            type="sas", symmetric_key=SymmetricKey(primary_key=KEY, secondary_key=KEY2)
        ),
        grants=Grants(send=send_to, listen=listen),
        **fields,  # type: ignore[arg-type]
    )


async def test_device_search_and_paging_are_done_by_the_relay(
    page: Page, relay: InProcessRelay
) -> None:
    store = relay.state.store
    for n in range(120):
        await store.create_device(Device(device_id=f"meter-{n:03d}"))
    for name in ("pump-1", "pump-2", "Pumpkin-patch", "valve-1"):
        await store.create_device(sas_device(name))
    current = await store.get_device("pump-2")
    assert current is not None
    await store.replace_device(
        Device(device_id="pump-2", status="disabled", authentication=current.authentication),
        if_match="*",
    )
    await log_in(page, relay)
    await show(page, "#/devices")
    rows = page.locator("#device-list tbody tr")
    await expect(rows).to_have_count(50)
    # Byte order of the id, as the store lists it: "P" sorts before "m".
    await expect(rows.first).to_have_attribute("data-device", "Pumpkin-patch")
    await expect(rows.last).to_have_attribute("data-device", "meter-048")
    await page.get_by_role("button", name="Next page").click()
    await expect(rows.first).to_have_attribute("data-device", "meter-049")
    await page.get_by_role("button", name="Previous page").click()
    await expect(rows.first).to_have_attribute("data-device", "Pumpkin-patch")

    # Substring (any case), then prefix, then status: answered by the relay, not the page.
    await page.fill("#device-search", "PUMP")
    await expect(rows).to_have_count(3)
    await expect(page.locator('tr[data-device="Pumpkin-patch"]')).to_be_visible()
    await page.select_option("#device-search-mode", "prefix")
    await page.fill("#device-search", "pump")
    await expect(rows).to_have_count(2)
    await page.select_option("#device-status", "disabled")
    await expect(rows).to_have_count(1)
    await expect(page.locator('tr[data-device="pump-2"] .status-disabled')).to_contain_text(
        "disabled"
    )
    await page.select_option("#device-status", "")
    await page.fill("#device-search", "nothing-like-this")
    await expect(page.locator("#device-list td.empty")).to_have_text("No device matches")
    await page.fill("#device-search", "pump")
    await expect(rows).to_have_count(2)
    await screenshot(page, "devices-search")


async def test_a_device_page_regenerates_a_key_and_copies_a_working_connection_string(
    page: Page, relay: InProcessRelay
) -> None:
    await relay.state.store.create_device(sas_device("car-9", send_to=("echo",)))
    listener = await RawListener(relay.url, "echo").start()
    try:
        await log_in(page, relay)
        await show(page, "#/device/car-9")
        await page.get_by_role("button", name="Show keys").click()
        await expect(page.locator("#device-keys .primary-key")).to_have_text(KEY)
        await page.get_by_role("button", name="Regenerate primary").click()
        primary = page.locator("#device-keys .primary-key")
        await expect(primary).not_to_have_text(KEY)
        await expect(page.locator("#device-keys .secondary-key")).to_have_text(KEY2)
        new_key = await primary.text_content()
        assert new_key

        shown = page.locator("#connection-string")
        await expect(shown).to_contain_text(f"SharedAccessKey={new_key}")
        await page.get_by_role("button", name="Copy").click()
        await expect(page.get_by_role("button", name="Copied")).to_be_visible()
        copied = await page.evaluate("navigator.clipboard.readText()")
        assert copied == await shown.text_content()
        # The device client reads it, and the relay accepts what it signs; the old key not.
        parsed = parse_device_connection_string(copied)
        assert (parsed.host, parsed.device_id) == (urlsplit(relay.url).netloc, "car-9")
        token = parsed.token_provider().token_for(relay.url + "/$hc/echo", relay.state.now())
        sender = await send(relay.url, "echo", token=token)
        await sender.send("signed from the connection string")
        assert await sender.recv() == "signed from the connection string"
        await sender.close()
        with pytest.raises(HandshakeError) as refused:
            await send(
                relay.url,
                "echo",
                token=device_sas_token(urlsplit(relay.url).netloc, "car-9", KEY),
            )
        assert refused.value.status == 401
        await screenshot(page, "device")
    finally:
        await listener.stop()


async def test_the_timeline_shows_a_refused_login_a_connect_and_a_cut(
    page: Page, relay: InProcessRelay
) -> None:
    await relay.state.store.create_device(
        sas_device("gateway-3", listen=("echo",), check_in_interval=3600)
    )
    host = urlsplit(relay.url).netloc
    with pytest.raises(HandshakeError) as refused:
        await ws_connect(
            listen_url(relay.url, "echo"),
            headers={"ServiceBusAuthorization": device_sas_token(host, "gateway-3", WRONG)},
        )
    assert refused.value.status == 401
    await log_in(page, relay)
    await show(page, "#/device/gateway-3")
    timeline = page.locator("#timeline tbody tr")
    await expect(timeline).to_have_count(1)
    await expect(timeline.first).to_have_attribute("data-kind", "authFailed")
    await expect(timeline.first).to_contain_text("signature")
    await expect(page.locator("[data-stat=check-in] .n")).to_have_text("never seen")

    listener = await TokenListener(
        relay.url, "echo", listener_id="gw3", token=device_sas_token(host, "gateway-3", KEY)
    ).start()
    try:
        await expect(timeline.first).to_have_attribute("data-kind", "connected")
        await expect(timeline.first).to_contain_text("listener")
        await expect(page.locator("[data-stat=check-in] .n")).to_have_text("on schedule")
        await expect(page.locator("[data-stat=connection] .n")).to_have_text("Connected")
        await screenshot(page, "device-timeline")

        # Disabled from its page: the channel is cut, the timeline says why.
        await page.click("#device-toggle")
        code, _ = await listener.wait_control_closed(seconds(5))
        assert code == 1008
        await expect(timeline.first).to_have_attribute("data-kind", "disconnected")
        await expect(timeline.first.locator(".reason")).to_have_text(
            "the device is disabled (1008)"
        )
        await expect(page.locator("#device-toggle")).to_have_text("Enable")
    finally:
        await listener.stop()


async def test_hybrid_connection_page_shows_the_azure_counters(
    page: Page, relay: InProcessRelay
) -> None:
    listener = await RawListener(relay.url, "hc-ws", listener_id="counted").start()
    try:
        with pytest.raises(HandshakeError):
            await ws_connect(
                listen_url(relay.url, "hc-ws"),
                headers={"ServiceBusAuthorization": "SharedAccessSignature sr=x&sig=y&se=1&skn=z"},
            )
        sender = await send(relay.url, "hc-ws")
        await sender.send("counted")
        assert await sender.recv() == "counted"
        await log_in(page, relay)
        await show(page, "#/hc/hc-ws")

        def stat(name: str) -> Locator:
            return page.locator(f'[data-stat="{name}"] .n')

        await expect(stat("ListenerConnections-Success")).to_have_text("1")
        await expect(stat("ListenerConnections-ClientError")).to_have_text("1")
        await expect(stat("ListenerConnections-ServerError")).to_have_text("0")
        await expect(stat("SenderConnections-Success")).to_have_text("1")
        await expect(stat("ActiveConnections")).to_have_text("1")
        await expect(stat("ActiveListeners")).to_have_text("1 / 25")
        await sender.close()
        await expect(stat("ActiveConnections")).to_have_text("0")
        await expect(stat("BytesTransferred")).to_have_text("14 B")
        await screenshot(page, "hybrid-connection-counters")
    finally:
        await listener.stop()


async def test_a_viewer_sees_a_devices_timeline_but_no_key_or_write_button(
    page: Page, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, relay_extra='dashboard_viewers = ["sas:RootManageSharedAccessKey"]'
    )
    viewer_relay = await InProcessRelay(load(config)).start()
    try:
        await viewer_relay.state.store.create_device(sas_device("watched", send_to=("echo",)))
        await log_in(page, viewer_relay)
        await show(page, "#/device/watched")
        await expect(page.locator("[data-stat=status] .n")).to_have_text("enabled")
        await expect(page.locator("#timeline td.empty")).to_be_visible()
        await expect(page.locator("#main button")).to_have_count(0)
        await expect(page.locator("#connection-string")).to_have_count(0)
        await show(page, "#/devices")
        await expect(page.locator('tr[data-device="watched"]')).to_be_visible()
        await expect(page.locator("#main button")).to_have_count(0)
        await expect(page.locator("#device-id")).to_have_count(0)
    finally:
        await viewer_relay.stop()
