"""run(config, stop): serve until ``stop`` is set, then drain with a deadline.

The bound port is reported through ``on_ready`` (port 0 works, which tests use),
and the public URL handed to listeners is completed from it when the config
does not set one.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from hybridrelay.errors import ConfigError
from hybridrelay.logs import RELAY
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.relay.admission import FrontDoor, FrontDoorProtocol, FrontDoorSite
from hybridrelay.relay.app import create_app
from hybridrelay.relay.ca_trust import CA_TRUST, attach
from hybridrelay.relay.cluster.base import ClusterState
from hybridrelay.relay.cluster.redis import RedisClusterState
from hybridrelay.relay.config import (
    ClientCertMode,
    RelayConfig,
    RelaySettings,
    complete,
    refuse_placeholder_keys,
)
from hybridrelay.relay.dashboard import dashboard_app, dashboard_url
from hybridrelay.relay.hc_endpoints import accept_upgrade, shutdown_connections
from hybridrelay.relay.health import metrics_app
from hybridrelay.relay.lifecycle import LIFECYCLE
from hybridrelay.relay.metrics import RelayMetrics
from hybridrelay.relay.splices import SPLICES
from hybridrelay.relay.state import STATE, RelayState
from hybridrelay.relay.store.base import Store
from hybridrelay.relay.store.redis import RedisStore
from hybridrelay.relay.store.sqlite import SqliteStore
from hybridrelay.relay.tls_expiry import observe_certificates
from hybridrelay.relay.tls_reload import CertificateReloader

__all__ = ["run", "tls_context", "worker_url"]

log = logging.getLogger(RELAY)

_FINAL_CLOSE_S = 1.0
_OPEN_FILES_UNLIMITED = 1 << 20  # the soft limit asked for when the hard one is unlimited


def tls_context(
    cert: str,
    key: str,
    *,
    client_cert: ClientCertMode = "none",
    client_ca_file: str | None = None,
) -> ssl.SSLContext:
    """The server's TLS context; with ``client_cert`` it asks devices for certificates.

    ``"optional"`` verifies a certificate when the client sends one, ``"required"``
    refuses clients without one; either way only ``client_ca_file`` is trusted (never
    the system CAs), and every certificate in it is a trust anchor, so a thumbprint
    device's self-signed certificate listed there passes the handshake (Python's ssl
    has no verify callback to accept unknown self-signed certificates). Expired and
    untrusted certificates fail the handshake; ``device_auth`` maps the verified
    certificate to a device, and accepts a chain for a CA device only when its anchor
    is a CA meant as one (``CaTrust.anchored``): a thumbprint device's certificate,
    an anchor here, never vouches for anyone but itself.

    Raises:
        ConfigError: the certificate or key cannot be loaded, or ``client_ca_file``
            cannot be read or holds no certificate.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:  # a bad PEM, a key that is not the certificate's
        reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(
            "", "relay.tls_cert", f"cannot load {cert} with the key {key}: {reason}"
        ) from exc
    if client_cert != "none":
        if not client_ca_file:
            raise ConfigError("", "relay.client_ca_file", "required with client_cert")
        try:
            ctx.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
            raise ConfigError(
                "", "relay.client_ca_file", f"cannot load {client_ca_file}: {reason}"
            ) from exc
        ctx.verify_mode = ssl.CERT_REQUIRED if client_cert == "required" else ssl.CERT_OPTIONAL
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def _tls_context_of(s: RelaySettings) -> ssl.SSLContext:
    if not (s.tls_cert and s.tls_key):
        raise ConfigError("", "relay.tls_cert", "TLS is not configured")
    return tls_context(
        s.tls_cert, s.tls_key, client_cert=s.client_cert, client_ca_file=s.client_ca_file
    )


async def _watch_tls(
    reloader: CertificateReloader | None, interval: float, reload: asyncio.Event | None
) -> None:
    """Reload the TLS files on ``reload`` and when they change; without TLS, say so."""
    signalled = reload or asyncio.Event()
    if reloader is not None:
        await reloader.run(interval, signalled)
        return
    while True:
        await signalled.wait()
        signalled.clear()
        log.info("reload_nothing_to_reload", extra={"why": "no tls_cert configured"})


def _raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one: every connection is a descriptor.

    The usual soft limit (1024) is what a few hundred slow clients exhaust; the hard
    limit is what the operator allows. Without a ``resource`` module (Windows) or
    permission, the limit stays as it is.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, _OPEN_FILES_UNLIMITED)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("open_file_limit_unchanged", extra={"soft": soft, "error": str(exc)})
    else:
        log.info("open_file_limit_raised", extra={"from": soft, "to": target})


def _bound_port(site: web.TCPSite, configured: int) -> int:
    sockets = getattr(site._server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else configured


def worker_url(public_url: str, port: int) -> str:
    """``public_url`` with ``port``: a worker's own address, at the relay's public host.

    Listeners accept rendezvous addresses on their relay's host at any port (and a wss://
    relay's only as wss://), so the public host must forward ``worker_port + i`` to this
    machine the way it forwards the public port (docs/scaling.md).
    """
    parts = urlsplit(public_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path, "", ""))


async def open_store(config: RelayConfig) -> Store:
    """The store ``config`` asks for: Redis with ``[cluster]``, else one SQLite file."""
    cluster = config.cluster
    if cluster is not None:
        return await RedisStore.open(
            cluster.redis_url, config, prefix=cluster.prefix, node_id=cluster.node_id
        )
    return await SqliteStore.open(config)


async def open_cluster(config: RelayConfig) -> ClusterState | None:
    """The Redis cluster state with ``[cluster]``; None for the single-node default."""
    cluster = config.cluster
    if cluster is None:
        return None
    return await RedisClusterState.open(
        cluster.redis_url,
        prefix=cluster.prefix,
        node_id=cluster.node_id or secrets.token_hex(8),
        ttl=cluster.presence_ttl,
        rendezvous_ttl=config.relay.rendezvous_timeout,
        max_pending=config.relay.max_pending_rendezvous,
    )


def _loaded(
    metrics: RelayMetrics,
    settings: RelaySettings,
    follow: Callable[[ssl.SSLContext], None] | None,
    context: ssl.SSLContext,
) -> None:
    """A reloaded TLS context is about to serve: trust follows it, the expiry gauge too."""
    if follow is not None:
        follow(context)
    observe_certificates(metrics, settings)


async def _watch_cas(app: web.Application) -> AsyncIterator[None]:
    # After _lifecycle (create_app): stops watching before the store closes.
    async with app[CA_TRUST].watch(app[STATE].store):
        yield


async def _serve_side(
    state: RelayState,
    app: web.Application,
    address: tuple[str, int],
    front_door: FrontDoor,
    key: str,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``address`` of its own, plain HTTP; answer the runner and port.

    Its connections pass the same front door as the public port's (head deadline, per-IP
    caps), so an address reachable by others is no easier to exhaust.
    """
    s = state.config.relay
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=_FINAL_CLOSE_S,
        keepalive_timeout=s.keepalive_timeout,
        max_line_size=s.max_head_line_size,
        max_field_size=s.max_head_line_size,
        max_headers=s.max_headers,
    )
    await runner.setup()
    try:
        site = FrontDoorSite(runner, address[0], address[1], front_door=front_door)
        await site.start()
    except BaseException as exc:
        await runner.cleanup()
        if isinstance(exc, OSError):  # in use, not an address of this host: name the key
            raise ConfigError(
                state.config.source,
                key,
                f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}",
            ) from exc
        raise
    return runner, _bound_port(site, address[1])


async def _serve_metrics(
    relay_app: web.Application, address: tuple[str, int], front_door: FrontDoor
) -> tuple[web.AppRunner, int]:
    """Serve :func:`metrics_app` on ``address`` (``[relay] metrics_listen``), plain HTTP."""
    state = relay_app[STATE]
    side = metrics_app(state, relay_app[LIFECYCLE])
    runner, port = await _serve_side(state, side, address, front_door, "relay.metrics_listen")
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    log.info("metrics_listening", extra={"url": f"http://{host}:{port}/metrics"})
    return runner, port


async def _serve_dashboard(
    relay_app: web.Application, address: tuple[str, int], front_door: FrontDoor
) -> tuple[web.AppRunner, int]:
    """Serve the dashboard on ``address`` (``[relay] dashboard_listen``), its own origin."""
    state = relay_app[STATE]
    runner, port = await _serve_side(
        state, dashboard_app(relay_app), address, front_door, "relay.dashboard_listen"
    )
    if not _is_loopback(address[0]):
        # Plain HTTP: the login's key crosses that network in the clear.
        log.warning(
            "dashboard_not_on_loopback",
            extra={"address": address[0], "why": "plain HTTP: put TLS in front of it"},
        )
    return runner, port


def _is_loopback(host: str) -> bool:
    """A loopback address or ``localhost`` (any other name may resolve elsewhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run(
    config: RelayConfig,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[RelayConfig], None] | None = None,
    on_app: Callable[[web.Application], None] | None = None,
    reload: asyncio.Event | None = None,
    worker_index: int | None = None,
) -> None:
    """Serve the relay until ``stop`` is set.

    Args:
        config: validated relay config.
        stop: set it to drain and stop.
        on_ready: called with the completed config (real port, public URL) once serving.
        on_app: called with the aiohttp application before it starts (tests inspect state).
        reload: set it (the CLI does on SIGHUP) to reload the TLS files; cleared here.
        worker_index: this process is worker ``worker_index`` of ``workers`` (workers.py):
            it shares the public port with the others (SO_REUSEPORT) and serves on its own
            port too, the rendezvous address it hands listeners.
    """
    s = config.relay
    # A key copied from an example config is public: refuse to serve with it.
    allowed = refuse_placeholder_keys(config)
    if allowed:
        log.warning("placeholder_keys_allowed", extra={"keys": ",".join(allowed)})
    # Before anything is opened: a bad certificate or CA file fails the start cleanly.
    try:
        ssl_ctx = (
            tls_context(
                s.tls_cert, s.tls_key, client_cert=s.client_cert, client_ca_file=s.client_ca_file
            )
            if s.tls_cert and s.tls_key
            else None
        )
    except ConfigError as exc:
        raise ConfigError(config.source, exc.key, exc.reason) from exc
    if config.cluster is not None and config.cluster.node_id is None:
        # One name for this node in the store's change events and in listener presence.
        config = replace(config, cluster=replace(config.cluster, node_id=secrets.token_hex(8)))
    # The embedded default store: one SQLite file under data_dir (config entities imported).
    store = await open_store(config)
    try:
        cluster = await open_cluster(config)
    except BaseException:
        await store.close()
        raise
    app = create_app(config, store=store, cluster=cluster)
    observe_certificates(app[STATE].metrics, s)
    reloader: CertificateReloader | None = None
    if ssl_ctx is not None:
        follow: Callable[[ssl.SSLContext], None] | None = None
        if s.client_cert != "none":
            # Verified CA certificates of the store join the live context (ca_trust.py).
            trust = app[CA_TRUST] = attach(ssl_ctx, s.client_ca_file)
            app.cleanup_ctx.append(_watch_cas)
            follow = functools.partial(trust.rebind, client_ca_file=s.client_ca_file)
        # New handshakes get renewed TLS files (SIGHUP or a change on disk; tls_reload.py).
        reloader = CertificateReloader(
            s,
            ssl_ctx,
            build=_tls_context_of,
            on_context=functools.partial(_loaded, app[STATE].metrics, s, follow),
            counter=app[STATE].metrics.tls_reloads,
        )
    if on_app is not None:
        on_app(app)
    _raise_open_file_limit()
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=s.drain_timeout,
        keepalive_timeout=s.keepalive_timeout,
        # aiohttp's request-head parser limits (400 beyond; FrontDoorProtocol counts them).
        max_line_size=s.max_head_line_size,
        max_field_size=s.max_head_line_size,
        max_headers=s.max_headers,
    )
    await runner.setup()
    front_door = FrontDoor(s, app[STATE].metrics, now=asyncio.get_running_loop().time)
    upgrade = accept_upgrade(app)  # rendezvous dials, on the relay's own sites only
    site = FrontDoorSite(
        runner,
        s.host,
        s.port,
        front_door=front_door,
        upgrade=upgrade,
        ssl_context=ssl_ctx,
        backlog=1024,
        reuse_address=True,
        reuse_port=worker_index is not None,
    )
    await site.start()
    metrics_runner: web.AppRunner | None = None
    dashboard_runner: web.AppRunner | None = None
    try:
        metrics_bound: tuple[str, int] | None = None
        if s.metrics_listen is not None:
            metrics_at = s.metrics_listen
            if worker_index is not None and metrics_at[1]:
                # Each worker its own metrics: worker i on metrics_listen's port + i.
                metrics_at = (metrics_at[0], metrics_at[1] + worker_index)
            metrics_runner, metrics_port = await _serve_metrics(app, metrics_at, front_door)
            metrics_bound = (metrics_at[0], metrics_port)
        port = _bound_port(site, s.port)
        state = app[STATE]
        state.config = complete(replace(config), port)
        if metrics_bound is not None:
            # The completed config names the bound port, as for the dashboard below.
            state.config = replace(
                state.config, relay=replace(state.config.relay, metrics_listen=metrics_bound)
            )
        if isinstance(s.dashboard_listen, tuple):
            dashboard_at = s.dashboard_listen
            if worker_index is not None and dashboard_at[1]:
                # Each worker its own dashboard (sessions are per process): port + i.
                dashboard_at = (dashboard_at[0], dashboard_at[1] + worker_index)
            dashboard_runner, dashboard_port = await _serve_dashboard(app, dashboard_at, front_door)
            # The completed config names the bound port: the ready line links it.
            state.config = replace(
                state.config,
                relay=replace(
                    state.config.relay, dashboard_listen=(dashboard_at[0], dashboard_port)
                ),
            )
        elif s.dashboard_listen == "public":
            log.warning(
                "dashboard_shares_public_origin",
                extra={
                    "why": "pages listeners serve through HTTP mode share its origin and "
                    "could act with an operator's session (docs/security.md)"
                },
            )
        if (url := dashboard_url(state.config)) is not None:
            log.info("dashboard_listening", extra={"url": url})
        if worker_index is not None:
            own = FrontDoorSite(
                runner,
                s.host,
                s.worker_port + worker_index if s.worker_port else 0,
                front_door=front_door,
                upgrade=upgrade,
                ssl_context=ssl_ctx,
                backlog=1024,
                reuse_address=True,
            )
            await own.start()
            url = worker_url(state.config.relay.public_url, _bound_port(own, 0))
            state.config = replace(
                state.config, relay=replace(state.config.relay, rendezvous_url=url)
            )
        log.info(
            "relay_started",
            extra={
                "host": s.host,
                "port": port,
                "public_url": state.config.relay.public_url,
                "rendezvous_url": state.rendezvous_url,
                "node_id": config.cluster.node_id if config.cluster else None,
            },
        )
        if on_ready is not None:
            on_ready(state.config)
        watcher = asyncio.create_task(
            _watch_tls(reloader, s.tls_reload_interval, reload), name="tls reload"
        )
        try:
            await stop.wait()
        finally:
            watcher.cancel()
            await asyncio.wait({watcher})
        log.info("relay_draining", extra={"deadline_s": s.drain_timeout})
        # Refuse new work, send listeners elsewhere, let open streams finish in time.
        app[LIFECYCLE].stop()
        splices = app[SPLICES]
        await shutdown_connections(
            app, CloseCode.GOING_AWAY, "relay shutting down", include_streams=False
        )
        try:
            async with asyncio.timeout(s.drain_timeout):
                await asyncio.gather(*(asyncio.shield(sp.done) for sp in splices))
        except TimeoutError:
            log.warning("drain_deadline_passed", extra={"open": len(splices)})
            for _ in splices:  # each is closed now, and cut a second later
                state.metrics.limit_hit("drain_timeout")
        # Past the deadline peers get one second to answer our close, then are cut,
        # so a SIGTERM'd relay is gone within drain_timeout + ~1 s.
        await shutdown_connections(
            app, CloseCode.GOING_AWAY, "relay shutting down", close_timeout=_FINAL_CLOSE_S
        )
        if splices:
            try:
                async with asyncio.timeout(_FINAL_CLOSE_S + 0.5):
                    await asyncio.gather(*(asyncio.shield(sp.done) for sp in splices))
            except TimeoutError:
                log.warning("streams_cut", extra={"open": len(splices)})
    finally:
        if dashboard_runner is not None:  # first: its calls run on the relay's application
            await dashboard_runner.cleanup()
        web_server = runner.server
        connections = list(web_server.connections) if web_server is not None else []
        await runner.cleanup()
        # aiohttp cancels the handler tasks it gave up waiting for (a refused request's
        # lingering read of an unread body, say) without awaiting them: let them end
        # before run() returns, so nothing of the relay outlives it.
        handlers = [
            task
            for protocol in connections
            if isinstance(protocol, FrontDoorProtocol)
            and (task := protocol.handler_task) is not None
            and not task.done()
        ]
        if handlers:
            await asyncio.wait(handlers, timeout=_FINAL_CLOSE_S)
        if metrics_runner is not None:  # last: scrapes see the drain through
            await metrics_runner.cleanup()
        log.info("relay_stopped")
