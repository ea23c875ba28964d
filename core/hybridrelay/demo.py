"""README command 1: relay, listener agent and client in one process, showing bytes flow.

A TCP echo service plays the on-premises target. The listener agent dials out
to the relay and bridges to it; the client connects through the relay and
prints each round trip. Everything binds loopback ports chosen by the OS.

It opens with the dashboard: its address and the demo's key come first, and where a
person sits at a desktop (a terminal, a display, no CI) a browser opens it; then the
demo keeps serving until Ctrl-C so there is something to look at (``--stay`` does
that without a browser, ``--no-browser`` never opens one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
import webbrowser
from collections.abc import Mapping
from typing import Final

from hybridrelay.listener import Listener, TcpTarget
from hybridrelay.protocol.sas import SasTokenProvider

__all__ = ["browser_wanted", "run_demo"]

# Set by CI services (GitHub Actions, GitLab, Azure Pipelines, Jenkins, Buildkite, ...) and
# by pytest for the test being run: no browser pops up there.
_NO_BROWSER_ENV: Final = (
    "CI",
    "CONTINUOUS_INTEGRATION",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "TF_BUILD",
    "JENKINS_URL",
    "BUILDKITE",
    "PYTEST_CURRENT_TEST",
    "HYBRIDRELAY_NO_BROWSER",
)
_BROWSER_OPEN_TIMEOUT_S: Final = 5.0


def browser_wanted(env: Mapping[str, str], *, interactive: bool, platform: str) -> bool:
    """Whether the demo should open a browser: a person at a desktop, not CI or a test.

    ``interactive``: stdout is a terminal (piped output means a script is reading).
    On Linux and the BSDs a desktop has a display (X11 or Wayland); without one Python's
    ``webbrowser`` would pick a text browser that takes over the terminal.
    """
    if not interactive or any(env.get(name) for name in _NO_BROWSER_ENV):
        return False
    if platform in ("darwin", "win32"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def _open_browser(url: str) -> bool:
    """Open ``url`` in a graphical browser; False when there is none (never a text one)."""
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    graphical = isinstance(browser, webbrowser.BackgroundBrowser) or (
        not isinstance(browser, webbrowser.GenericBrowser) and getattr(browser, "background", True)
    )
    return graphical and browser.open(url, new=2)


async def _offer_dashboard(url: str | None, key: str, *, browser: bool) -> bool:
    """Print where the dashboard is and how to log in; open it when ``browser``."""
    from hybridrelay.relay.config import DEV_RULE_NAME

    if url is None:
        return False
    print(f"[dashboard] {url}")
    print(f"[dashboard] log in with rule {DEV_RULE_NAME}, key {key}")
    if not browser:
        return False
    try:
        async with asyncio.timeout(_BROWSER_OPEN_TIMEOUT_S):
            opened = await asyncio.to_thread(_open_browser, url)
    except TimeoutError:  # the thread finishes on its own; the demo goes on
        opened = False
    print("[dashboard] opened in your browser" if opened else "[dashboard] open it in a browser")
    return opened


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def run_demo(
    stop: asyncio.Event, *, messages: int = 5, stay: bool = False, browser: bool | None = None
) -> None:
    """Run the demo; ``stay``: keep serving until ``stop``; ``browser``: None decides itself."""
    from hybridrelay.client import connect
    from hybridrelay.relay import run as run_relay
    from hybridrelay.relay.config import DEV_RULE_NAME, RelayConfig, development_config
    from hybridrelay.relay.dashboard import dashboard_url

    if browser is None:
        browser = browser_wanted(os.environ, interactive=sys.stdout.isatty(), platform=sys.platform)

    with tempfile.TemporaryDirectory(prefix="hybridrelay-demo-") as data_dir:
        key = secrets.token_urlsafe(32)
        config = development_config(
            {"HYBRIDRELAY_PORT": "0", "HYBRIDRELAY_DATA_DIR": data_dir, "HYBRIDRELAY_DEV_KEY": key}
        )
        relay_ready: asyncio.Future[RelayConfig] = asyncio.get_running_loop().create_future()
        relay_stop = asyncio.Event()
        relay_task = asyncio.create_task(
            run_relay(config, relay_stop, on_ready=relay_ready.set_result)
        )
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        echo_port = echo.sockets[0].getsockname()[1]
        listener_stop = asyncio.Event()
        listener_task: asyncio.Task[None] | None = None
        try:
            completed = await asyncio.wait_for(asyncio.shield(relay_ready), 10)
            url = completed.relay.public_url
            # First, so a person can open it and watch what follows.
            opened = await _offer_dashboard(dashboard_url(completed), key, browser=browser)
            print(f"[relay]    listening at {url} (embedded default, rule {DEV_RULE_NAME})")
            print(f"[service]  TCP echo service on 127.0.0.1:{echo_port} (the on-prem target)")
            tokens = SasTokenProvider(DEV_RULE_NAME, key)
            listener = Listener(
                url, "demo", token_provider=tokens, target=TcpTarget("127.0.0.1", echo_port)
            )
            listener_task = asyncio.create_task(listener.run(listener_stop))
            await asyncio.wait_for(listener.connected.wait(), 10)
            print("[listener] control channel open: hybrid connection 'demo' -> tcp echo service")
            async with connect(url, "demo", token_provider=tokens, stream_mode=True) as stream:
                print("[client]   connected through the relay")
                for i in range(messages):
                    if stop.is_set():
                        break
                    payload = f"hello #{i} via the relay".encode()
                    started = time.perf_counter()
                    await stream.write(payload)
                    echoed = b""
                    while len(echoed) < len(payload):
                        chunk = await stream.read()
                        if not chunk:
                            break
                        echoed += chunk
                    ms = (time.perf_counter() - started) * 1000
                    text = echoed.decode()
                    print(f"[client]   sent {len(payload)} B, got back {text!r} in {ms:.2f} ms")
                blob = secrets.token_bytes(1 << 20)
                started = time.perf_counter()
                await stream.write(blob)
                got = 0
                while got < len(blob):
                    chunk = await stream.read()
                    if not chunk:
                        break
                    got += len(chunk)
                secs = time.perf_counter() - started
                rate = 2 * got / secs / 1e6
                print(f"[client]   1 MiB round trip in {secs * 1000:.1f} ms ({rate:.0f} MB/s)")
            # The listener finishes its side of the stream just after the client's close.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await listener.idle.wait()
            st = listener.stats
            print(
                f"[listener] {st.accepted} connection(s) bridged, "
                f"{st.bytes_up} B from the service, {st.bytes_down} B to it"
            )
            print("demo finished: relay, listener and client all on the embedded default")
            if (stay or opened) and not stop.is_set():
                print("[dashboard] relay and listener keep serving for the dashboard: Ctrl-C stops")
                await stop.wait()
        finally:
            listener_stop.set()
            if listener_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await listener_task
            echo.close()
            await echo.wait_closed()
            relay_stop.set()
            await relay_task
