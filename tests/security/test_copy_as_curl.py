"""The inspector's "Copy as curl" must not turn a recorded request into an attack on the
operator who runs the copied command (issue 14).

Whoever can send to an inspected hybrid connection chooses the recorded target, headers
and body. The copied command is pasted into a shell: nothing recorded may make that
shell or curl do anything but send the recorded request once. A body that starts with
``@`` made ``--data-binary`` upload a file of the operator's machine to the listener
(the sender's side of the exchange), and ``[1-3]`` in the target made curl's URL
globbing send it three times. Driven in headless Chromium against a real relay; the
copied command then runs in ``sh`` with the real curl, against the same relay.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect
from yarl import URL

from hybridrelay.listener import HttpRequest, HttpResponse, Listener
from hybridrelay.protocol.sas import SasTokenProvider, create_sas_token
from tests.harness.listeners import running_listener
from tests.harness.relay import ROOT_KEY, InProcessRelay, load, write_config
from tests.harness.timing import seconds

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM: Final = Path(os.environ.get("HYBRIDRELAY_CHROMIUM", "/usr/bin/chromium"))
ROOT: Final = "RootManageSharedAccessKey"

expect.set_options(timeout=seconds(10) * 1000)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install chromium)")
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
    context = await browser.new_context()
    opened = await context.new_page()
    yield opened
    await context.close()


async def test_a_copied_curl_command_sends_the_recorded_request_and_nothing_else(
    page: Page, relay: InProcessRelay, tmp_path: Path
) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed to run the copied command"
    secret_file = tmp_path / "operator-secret.txt"
    secret_file.write_text("the operator's private key")
    marker = tmp_path / "pwned"
    seen: list[tuple[str, str, bytes]] = []

    async def app(request: HttpRequest) -> HttpResponse:
        seen.append((request.method, request.target, await request.read()))
        return HttpResponse(200, [("Content-Type", "text/plain")], b"ok")

    token = create_sas_token(relay.http_url + "/", ROOT, ROOT_KEY, int(time.time()) + 600)
    listener = Listener(
        relay.url, "echo", token_provider=SasTokenProvider(ROOT, ROOT_KEY), http_handler=app
    )
    hostile_body = f"@{secret_file}".encode()
    hostile_header = f"it's $(touch {marker}) `touch {marker}`"
    async with running_listener(listener), aiohttp.ClientSession() as sender:
        async with sender.put(
            relay.http_url + "/$mgmt/v1/hybridconnections/echo/inspector",
            json={"enabled": True},
            headers={"Authorization": token},
        ) as resp:
            assert resp.status == 200
        # As a hostile sender sends it: a curl URL glob in the target, shell syntax in a
        # header, and a body that is curl's "read this file" syntax.
        async with sender.post(
            URL(relay.http_url + "/echo/x[1-3]", encoded=True),
            data=hostile_body,
            headers={
                "ServiceBusAuthorization": token,
                "Content-Type": "text/plain",
                "X-Note": hostile_header,
            },
        ) as resp:
            assert resp.status == 200
        assert seen == [("POST", "/echo/x[1-3]", hostile_body)]

        await page.goto(relay.dashboard_url)
        await page.fill("#key", ROOT_KEY)
        await page.click("#login-button")
        await expect(page.locator("#main")).to_have_attribute("data-ready", "overview")
        await page.evaluate("() => { location.hash = '#/inspector/echo'; }")
        rows = page.locator("#inspector-list tr[data-record]")
        await expect(rows).to_have_count(1)
        await rows.first.locator("a").click()
        await page.click("#copy-curl")
        await expect(page.locator("#curl")).to_contain_text("curl")
        command = await page.locator("#curl").text_content()
        assert command is not None

        process = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command,
            env={"PATH": os.environ["PATH"], "SAS_TOKEN": token},
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(seconds(20)):
                out, err = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, (command, out, err)
    assert not marker.exists(), command  # the shell ran nothing of the sender's
    # Exactly the recorded request once more: the same target (no glob), the literal body
    # (no file of the operator's), the header as it was.
    assert seen[1:] == [("POST", "/echo/x[1-3]", hostile_body)], command
