"""run(config, stop): serve until ``stop`` is set, then drain with a deadline.

The bound port is reported through ``on_ready`` (port 0 works, which tests use),
and the public URL handed to listeners is completed from it when the config
does not set one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web

from hybridrelay.logs import RELAY
from hybridrelay.relay.app import create_app
from hybridrelay.relay.config import RelayConfig, complete
from hybridrelay.relay.hc_endpoints import shutdown_connections
from hybridrelay.relay.state import STATE
from hybridrelay.relay.store.sqlite import SqliteStore

__all__ = ["run", "tls_context"]

log = logging.getLogger(RELAY)

_FINAL_CLOSE_S = 1.0


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def run(
    config: RelayConfig,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[RelayConfig], None] | None = None,
    on_app: Callable[[web.Application], None] | None = None,
) -> None:
    """Serve the relay until ``stop`` is set.

    Args:
        config: validated relay config.
        stop: set it to drain and stop.
        on_ready: called with the completed config (real port, public URL) once serving.
        on_app: called with the aiohttp application before it starts (tests inspect state).
    """
    s = config.relay
    # The embedded default store: one SQLite file under data_dir (config entities imported).
    app = create_app(config, store=await SqliteStore.open(config))
    if on_app is not None:
        on_app(app)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=s.drain_timeout
    )
    await runner.setup()
    ssl_ctx = tls_context(s.tls_cert, s.tls_key) if s.tls_cert and s.tls_key else None
    site = web.TCPSite(
        runner, s.host, s.port, ssl_context=ssl_ctx, backlog=1024, reuse_address=True
    )
    await site.start()
    try:
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else s.port
        state = app[STATE]
        state.config = complete(replace(config), port)
        log.info(
            "relay_started",
            extra={"host": s.host, "port": port, "public_url": state.config.relay.public_url},
        )
        if on_ready is not None:
            on_ready(state.config)
        await stop.wait()
        log.info("relay_draining", extra={"deadline_s": s.drain_timeout})
        # Refuse new work, send listeners elsewhere, let open streams finish in time.
        state.draining = True
        await shutdown_connections(state, 1001, "relay shutting down", include_streams=False)
        try:
            async with asyncio.timeout(s.drain_timeout):
                await asyncio.gather(*(asyncio.shield(sp.done) for sp in list(state.splices)))
        except TimeoutError:
            log.warning("drain_deadline_passed", extra={"open": len(state.splices)})
        # Past the deadline peers get one second to answer our close, then are cut,
        # so a SIGTERM'd relay is gone within drain_timeout + ~1 s.
        await shutdown_connections(state, 1001, "relay shutting down", close_timeout=_FINAL_CLOSE_S)
        if state.splices:
            try:
                async with asyncio.timeout(_FINAL_CLOSE_S + 0.5):
                    await asyncio.gather(*(asyncio.shield(sp.done) for sp in list(state.splices)))
            except TimeoutError:
                log.warning("streams_cut", extra={"open": len(state.splices)})
    finally:
        await runner.cleanup()
        log.info("relay_stopped")
