"""DNS rebinding against the dashboard, in Chromium.

Chromium is told that ``rebind.test`` resolves to 127.0.0.1 (``--host-resolver-rules``):
exactly where a rebinding attack ends, a page of the attacker's name whose name now
points at the dashboard's loopback port. The page and its login call must both be
refused (421); the dashboard's own names (127.0.0.1, localhost) still load it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright, expect
from tests.browser.test_dashboard import CHROMIUM
from tests.harness.relay import InProcessRelay, load, write_config

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rebinding_browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: browser tests never skip")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--host-resolver-rules=MAP rebind.test 127.0.0.1"],
        )
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def relay(tmp_path: Path) -> AsyncIterator[InProcessRelay]:
    started = await InProcessRelay(load(write_config(tmp_path))).start()
    yield started
    await started.stop()


async def test_a_rebound_name_cannot_load_the_dashboard_or_log_in(
    rebinding_browser: Browser, relay: InProcessRelay
) -> None:
    port = urlsplit(relay.dashboard_url).port
    context = await rebinding_browser.new_context()
    try:
        page = await context.new_page()
        answer = await page.goto(f"http://rebind.test:{port}/$dashboard/")
        assert answer is not None
        assert answer.status == 421
        # The attacker's script, same-origin with the rebound name, tries the login.
        status = await page.evaluate(
            """async () => (await fetch("/$dashboard/login", {method: "POST",
                 headers: {"Content-Type": "application/json"},
                 body: JSON.stringify({keyName: "RootManageSharedAccessKey", key: "x"})})).status"""
        )
        assert status == 421

        for own in (f"http://localhost:{port}/$dashboard/", relay.dashboard_url):
            answer = await page.goto(own)
            assert answer is not None
            assert answer.status == 200
            await expect(page.locator("#key")).to_be_visible()
    finally:
        await context.close()
