"""Relays for tests: a real subprocess (e2e) and an in-process one (integration).

Both bind port 0. The subprocess reports its URL in its one stdout line ("hybridrelay
relay ready at ..."; its log is on stderr, read merged with it), readiness is then
confirmed on /readyz, and its log is kept and shown only when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hybridrelay.dev.children import ChildExitedError, ChildProcess
from hybridrelay.relay import run as run_relay
from hybridrelay.relay.config import RelayConfig, load_relay_config
from hybridrelay.relay.dashboard import dashboard_url
from hybridrelay.relay.devices import DEVICES, DeviceRegistry
from hybridrelay.relay.lifecycle import LIFECYCLE, NodeLifecycle
from hybridrelay.relay.listeners import LISTENERS, ListenerRegistry
from hybridrelay.relay.splices import SPLICES, SpliceRegistry
from hybridrelay.relay.state import STATE, RelayState

from .timing import seconds

# Keys used by every test config; tokens are signed with them.
ROOT_KEY = "root-key-0123456789abcdef0123456789"
LISTEN_KEY = "listen-key-0123456789abcdef01234567"
SEND_KEY = "send-key-0123456789abcdef0123456789a"
OTHER_KEY = "other-key-0123456789abcdef012345678"

DEFAULT_CONFIG = f"""
[relay]
host = "127.0.0.1"
port = {{port}}
ping_interval = {{ping_interval}}
close_timeout = 3
data_dir = "{{data_dir}}"

[[rules]]
name = "RootManageSharedAccessKey"
key = "{ROOT_KEY}"
rights = ["Manage", "Listen", "Send"]

[[hybrid_connections]]
name = "hc-ws"
[[hybrid_connections.rules]]
name = "listen-only"
key = "{LISTEN_KEY}"
rights = ["Listen"]
[[hybrid_connections.rules]]
name = "send-only"
key = "{SEND_KEY}"
rights = ["Send"]

[[hybrid_connections]]
name = "other"
[[hybrid_connections.rules]]
name = "other-rule"
key = "{OTHER_KEY}"
rights = ["Listen", "Send"]

[[hybrid_connections]]
name = "anon"
requires_client_authorization = false

[[hybrid_connections]]
name = "nested/path"

[[hybrid_connections]]
name = "nested"

[[hybrid_connections]]
name = "echo"

[[hybrid_connections]]
name = "mqtt"

[[hybrid_connections]]
name = "hyco"
"""


def write_config(
    directory: Path,
    *,
    ping_interval: float = 30.0,
    extra: str = "",
    relay_extra: str = "",
    tls: tuple[Path, Path] | None = None,
    port: int = 0,
    replace: Mapping[str, str] | None = None,
) -> Path:
    """The test config in ``directory``; ``replace`` edits lines it sets (each must be there)."""
    text = DEFAULT_CONFIG.format(
        ping_interval=ping_interval, data_dir=directory / "data", port=port
    )
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    if relay_extra:
        text = text.replace("[relay]\n", f"[relay]\n{relay_extra}\n", 1)
    if tls is not None:
        text = text.replace(
            "[relay]\n", f'[relay]\ntls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n', 1
        )
    path = directory / "relay.toml"
    path.write_text(text + extra, "utf-8")
    return path


def jwt_issuer_config(
    pem: Path, key: rsa.RSAPrivateKey, issuer: str, audience: str = "hybridrelay"
) -> str:
    """A ``[[jwt_issuers]]`` section (for ``extra``) trusting ``key``, whose public half is
    written to ``pem``."""
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem.write_bytes(public)
    return f"""
[[jwt_issuers]]
issuer = "{issuer}"
audience = "{audience}"
public_keys = ['{pem}']
"""


_READY = re.compile(r"relay ready at (\S+)(?: \(dashboard: (\S+)\))?")


class RelayProcess(ChildProcess):
    """``python -m hybridrelay relay serve`` as a child process (every output line kept)."""

    def __init__(self, config_path: Path | None, env: Mapping[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "hybridrelay", "relay", "serve"]
        if config_path is not None:
            argv += ["--config", str(config_path)]
        super().__init__(
            "relay",
            argv,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            keep_lines=None,
        )
        self.config_path = config_path
        self.url = ""
        self.dashboard_url = ""  # the ready line's, on an address of its own

    @property
    def http_url(self) -> str:
        return self.url.replace("wss://", "https://").replace("ws://", "http://")

    @property
    def log_lines(self) -> list[str]:
        return self.lines

    async def start(self, *, ssl_ca: Path | None = None) -> RelayProcess:  # type: ignore[override]
        await super().start()
        try:
            ready = await self.wait_for_line(_READY, seconds(20))
            self.url, self.dashboard_url = ready.group(1), ready.group(2) or ""
        except (TimeoutError, ChildExitedError) as exc:
            await self.stop()
            raise RuntimeError("relay did not start:\n" + self.log()) from exc
        await self._wait_ready(ssl_ca)
        return self

    async def _wait_ready(self, ssl_ca: Path | None) -> None:
        import ssl

        ctx = ssl.create_default_context(cafile=str(ssl_ca)) if ssl_ca else None
        async with aiohttp.ClientSession() as session, asyncio.timeout(seconds(10)):
            while True:
                try:
                    async with session.get(self.http_url + "/readyz", ssl=ctx or True) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)  # polling an endpoint, not synchronisation by delay

    def signal(self, sig: int) -> None:
        self.send_signal(sig)

    async def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM, SIGKILL after 15 s (scaled) unless ``grace`` says otherwise; reap."""
        return await super().stop(seconds(15) if grace is None else grace)

    def log(self) -> str:
        return self.output()


@dataclass
class InProcessRelay:
    """The relay's ``run()`` as a task in the test's event loop."""

    config: RelayConfig
    url: str = ""
    # The dashboard's page (``.../$dashboard/``) at [relay] dashboard_listen's bound port.
    dashboard_url: str = ""
    app: web.Application | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> InProcessRelay:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_ready(completed: RelayConfig) -> None:
            self.dashboard_url = dashboard_url(completed) or ""
            ready.set_result(completed.relay.public_url)

        def on_app(app: web.Application) -> None:
            self.app = app

        self._task = asyncio.create_task(
            run_relay(self.config, self._stop, on_ready=on_ready, on_app=on_app)
        )
        async with asyncio.timeout(seconds(10)):
            waiting: set[asyncio.Future[Any]] = {ready, self._task}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            self._task.result()
        self.url = ready.result()
        return self

    @property
    def http_url(self) -> str:
        return self.url.replace("wss://", "https://").replace("ws://", "http://")

    @property
    def state(self) -> RelayState:
        assert self.app is not None
        return self.app[STATE]

    @property
    def lifecycle(self) -> NodeLifecycle:
        assert self.app is not None
        return self.app[LIFECYCLE]

    @property
    def listeners(self) -> ListenerRegistry:
        assert self.app is not None
        return self.app[LISTENERS]

    @property
    def splices(self) -> SpliceRegistry:
        assert self.app is not None
        return self.app[SPLICES]

    @property
    def devices(self) -> DeviceRegistry:
        assert self.app is not None
        return self.app[DEVICES]

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            async with asyncio.timeout(seconds(20)):
                await self._task
        if self.app is not None:
            # Nothing may outlive the relay: no relayed connection, channel or rendezvous.
            state = self.state
            assert not self.splices, f"{len(self.splices)} splices left open"
            assert not self.listeners, f"{len(self.listeners)} control channels left open"
            assert state.cluster.pending_count() == 0, "pending rendezvous left behind"
            leaked = [t for t in asyncio.all_tasks() if _relay_owned(t) and not t.done()]
            assert not leaked, f"relay tasks outlived the relay: {leaked}"


def _relay_owned(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    filename = code.co_filename if code is not None else ""
    return "/hybridrelay/relay/" in filename or filename.endswith("aiohttp/web_protocol.py")


def load(path: Path, **env: str) -> RelayConfig:
    return load_relay_config(path, env)
