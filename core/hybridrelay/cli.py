"""``hybridrelay``: relay serve | listen | forward | token | demo | admin | dev cluster | check.

parse arguments -> load config -> lazy-import the component -> run it under
one event loop (uvloop when installed) with SIGINT/SIGTERM wired to ``stop``.
Config errors print one line naming the file, key and reason, and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from hybridrelay.credentials import (
    DEVICE_FLAGS,
    add_device_options,
    device_token_args,
    token_provider,
)
from hybridrelay.durations import DURATION_HELP, duration_arg
from hybridrelay.errors import (
    ConfigError,
    EntityNotFoundError,
    InvalidAddressError,
    MultiConfigError,
    UnavailableError,
)
from hybridrelay.logs import CLIENT, LISTENER, configure_logging

__all__ = ["main"]

EXIT_CONFIG = 2


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


# The cyclic collector's first threshold. Python's 700 allocations ran a collection every
# few HTTP-mode requests under load, each walking every in-flight request's objects again
# (and promoting them, to be walked again): 10-15% of the relay's CPU in bench.http. At
# 10,000 collections are ~30 times rarer and most of what they would have walked is gone.
GC_YOUNG_THRESHOLD: Final = 10_000


def _tune_gc() -> None:
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _run(make: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        # Once the component has started (its first wait): what exists then (modules,
        # config, the app) lives as long as the process, so full collections skip it.
        loop.call_soon(gc.freeze)
        await make(stop)

    _tune_gc()

    with _runner() as runner:
        runner.run(body())


def _read_key(args: argparse.Namespace) -> str:
    if getattr(args, "key", None):
        return str(args.key)
    if getattr(args, "key_env", None):
        value = os.environ.get(args.key_env)
        if not value:
            raise ConfigError("<environment>", args.key_env, "is not set")
        return value
    if getattr(args, "key_file", None):
        try:
            return Path(args.key_file).read_text("utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                "<command line>", "--key-file", f"cannot read {args.key_file}: {exc.strerror}"
            ) from exc
    raise ConfigError("<command line>", "--key", "give --key, --key-env or --key-file")


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if getattr(args, "ca_file", None):
        try:
            return ssl.create_default_context(cafile=args.ca_file)
        except OSError as exc:  # ssl.SSLError too: not a PEM bundle
            reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
            raise ConfigError(
                "<command line>", "--ca-file", f"cannot read {args.ca_file}: {reason}"
            ) from exc
    return None


def _check_relay_url(url: str, source: str = "<command line>", key: str = "--relay") -> None:
    from hybridrelay.probe import relay_url_problem

    if (problem := relay_url_problem(url)) is not None:
        raise ConfigError(source, key, problem)


async def _probe_at_start(
    probe: Callable[[], Coroutine[Any, Any, Any]],
    *,
    hc: str,
    action: Literal["connect", "listen"],
    source: str,
    keys: dict[str, str],
) -> bool:
    """Probe the relay before serving: a configuration mistake raises ConfigError (exit 2,
    one line); an unreachable relay is logged and the caller serves and retries anyway.

    Returns:
        Whether the relay answered (False: unreachable, serve anyway).
    """
    from hybridrelay.probe import ProbeOutcome, ProbeResult, advice

    result: ProbeResult = await probe()
    line = advice(result, hc, action)
    if result.fatal:
        setting = result.setting or "relay"
        raise ConfigError(source, keys.get(setting, keys["relay"]), line)
    log = logging.getLogger(LISTENER if action == "listen" else CLIENT)
    if result.outcome in (ProbeOutcome.UNREACHABLE, ProbeOutcome.UNAVAILABLE):
        log.warning("relay_not_reachable_at_start", extra={"hc": hc, "error": result.detail})
        return False
    if result.outcome is ProbeOutcome.OK:
        log.info("relay_checked", extra={"hc": hc, "listeners": result.listeners})
    else:
        log.info("relay_not_checked", extra={"hc": hc, "reason": result.detail})
    return True


_FLAG_KEYS: Final = {"relay": "--relay", "key": "--key-name", "hc": "--hc", "ca_file": "--ca-file"}


def _flag_keys(args: argparse.Namespace) -> dict[str, str]:
    """The flag each probe verdict points at (a device's key rather than a rule's)."""
    from hybridrelay.credentials import uses_device

    return {**_FLAG_KEYS, "key": "--device-key"} if uses_device(args) else dict(_FLAG_KEYS)


def _add_key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-name", help="SAS rule name (or --device-id)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--key", help="SAS key (visible in the process list; prefer --key-env)")
    g.add_argument(
        "--key-env", metavar="VAR", help="read the SAS key from this environment variable"
    )
    g.add_argument("--key-file", metavar="FILE", help="read the SAS key from this file")
    p.add_argument("--ca-file", help="trust this CA bundle for wss:// relays")


_DESCRIPTION = """\
A self-hosted reverse relay speaking the Azure Relay Hybrid Connections protocol:
the relay server, the listener agent next to a private service, the local port
forwarder, and tools. Logs go to stderr; 'relay serve' also prints one line on
stdout once it is serving."""

# Every environment variable the CLI honours, one line each (tests/unit/test_cli_help.py
# finds the names in the source and fails on one missing here).
ENVIRONMENT: Final[tuple[tuple[str, str], ...]] = (
    ("HYBRIDRELAY_LOG_LEVEL", "default of --log-level"),
    ("HYBRIDRELAY_LOG_FORMAT", "default of --log-format"),
    ("HYBRIDRELAY_<KEY>", "relay serve: [relay] KEY (HYBRIDRELAY_PORT=9000)"),
    ("HYBRIDRELAY_REDIS_URL", "relay serve: [cluster] redis_url"),
    ("HYBRIDRELAY_NODE_ID", "relay serve: [cluster] node_id"),
    ("HYBRIDRELAY_WORKER_INDEX", "set by relay serve --workers for its worker processes"),
    (
        "HYBRIDRELAY_DEV_KEY",
        "the development key (relay serve without --config: else kept in DATA_DIR/dev-key;"
        " dev cluster)",
    ),
    ("HYBRIDRELAY_AGENT_ID", "listen --config: agent_id"),
    ("HYBRIDRELAY_AGENT_STATUS", "listen --config: status"),
    ("HYBRIDRELAY_AGENT_PING_INTERVAL", "listen --config: ping_interval"),
    ("HYBRIDRELAY_AGENT_DRAIN_TIMEOUT", "listen --config: drain_timeout"),
    ("HYBRIDRELAY_RELAY", "forward --config: relay"),
    ("HYBRIDRELAY_DEVICE_KEY", "listen/forward/token --device-id: the device key, by default"),
    ("HYBRIDRELAY_ADMIN_RELAY", "admin: --relay"),
    ("HYBRIDRELAY_ADMIN_KEY_NAME", "admin: --key-name"),
    ("HYBRIDRELAY_ADMIN_KEY", "admin: the key, unless --key-env or --key-file"),
    ("HYBRIDRELAY_ADMIN_CA_FILE", "admin: --ca-file"),
    ("HYBRIDRELAY_NO_BROWSER", "demo: never open a browser (as --no-browser; CI=1 does too)"),
    ("any name", '--key-env VAR, key_env = "VAR": a SAS key (e.g. HYBRIDRELAY_KEY)'),
    ("any name", '--device-key-env VAR, device_key_env = "VAR": a device key'),
)


def _epilog() -> str:
    width = max(len(name) for name, _ in ENVIRONMENT)
    lines = [f"  {name:<{width}}  {what}" for name, what in ENVIRONMENT]
    return "\n".join(
        [
            "environment variables (a flag given wins; a config file's key loses to them):",
            *lines,
            "",
            "'hybridrelay COMMAND --help' describes a command's options.",
        ]
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hybridrelay")
    except PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridrelay",
        description=_DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hybridrelay {_version()}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("HYBRIDRELAY_LOG_LEVEL"),
        metavar="LEVEL",
        help="debug, info, warning or error: the least severe log line written to stderr"
        " (default info; demo: warning)",
    )
    parser.add_argument(
        "--log-format",
        choices=("kv", "json"),
        default=os.environ.get("HYBRIDRELAY_LOG_FORMAT", "kv"),
        help="key=value lines (default) or one JSON object per line",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    relay = sub.add_parser("relay", help="run the relay server")
    relay_sub = relay.add_subparsers(dest="relay_command", required=True)
    serve = relay_sub.add_parser(
        "serve",
        help="serve hybrid connections",
        description="Serve hybrid connections until SIGTERM or Ctrl-C (open streams get"
        " drain_timeout). SIGHUP reloads tls_cert, tls_key and client_ca_file (so does a"
        " change of those files, see tls_reload_interval). Logs go to stderr; once serving,"
        " one line goes to stdout:"
        " 'hybridrelay relay ready at URL (dashboard: URL)', the dashboard's own address"
        " ([relay] dashboard_listen: loopback and a free port by default).",
    )
    serve.add_argument("--config", help="TOML config; without it, the embedded development default")
    serve.add_argument("--port", type=int, help="override [relay] port")
    serve.add_argument("--host", help="override [relay] host")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="override [relay] workers: N relay processes share the port (SO_REUSEPORT) and"
        " the [cluster] Redis, one per core (default 1; N > 1 needs [cluster]; docs/scaling.md)",
    )
    backup = relay_sub.add_parser(
        "backup",
        help="copy the SQLite store to a file while the relay runs (online backup API)",
        description="Copy the relay's SQLite store ({data_dir}/hybridrelay.sqlite3) to OUTPUT"
        " as one consistent, self-contained database, while the relay keeps serving. The copy"
        " holds every key: it is written 0600. Restore: docs/operations.md.",
    )
    backup.add_argument(
        "--config", help="the relay's TOML config (finds data_dir); without it, the default"
    )
    backup.add_argument("output", metavar="OUTPUT", help="the backup file to write (replaced)")

    listen = sub.add_parser(
        "listen",
        help="run a listener agent: one mapping from flags, or many from --config FILE",
    )
    listen.add_argument(
        "--config",
        metavar="FILE",
        help="agent TOML config with any number of [[mappings]] (SIGHUP reloads it);"
        " excludes the single-mapping flags below",
    )
    listen.add_argument(
        "--status",
        metavar="HOST:PORT",
        help="with --config: serve /status, /metrics and /healthz here (overrides status =)",
    )
    listen.add_argument("--relay", help="relay URL, ws://host:port or wss://host")
    listen.add_argument("--hc", help="hybrid connection name")
    listen.add_argument(
        "--target",
        action="append",
        help="tcp://host:port, unix:///path or udp://host:port (WebSocket senders) or"
        " http://host:port[/base] (HTTP requests); give it twice, a stream target and an"
        " http:// one, to serve both on one hybrid connection",
    )
    listen.add_argument("--key-name", help="SAS rule name")
    listen_key = listen.add_mutually_exclusive_group()
    listen_key.add_argument("--key", help="SAS key (visible in the process list; prefer --key-env)")
    listen_key.add_argument(
        "--key-env", metavar="VAR", help="read the SAS key from this environment variable"
    )
    listen_key.add_argument("--key-file", metavar="FILE", help="read the SAS key from this file")
    listen.add_argument("--ca-file", help="trust this CA bundle for wss:// relays")
    add_device_options(listen)

    forward = sub.add_parser(
        "forward",
        help="forward local TCP/UDP ports through the relay: one binding from flags,"
        " or many from --config FILE",
    )
    forward.add_argument(
        "--config",
        metavar="FILE",
        help="forwarder TOML config with any number of [[bindings]];"
        " excludes the single-binding flags below",
    )
    forward.add_argument("--relay", help="relay URL, ws://host:port or wss://host")
    forward.add_argument("--hc", help="hybrid connection name")
    forward.add_argument(
        "--local",
        help="HOST:PORT (TCP, default 127.0.0.1:0) or udp://HOST:PORT to listen on",
    )
    forward.add_argument(
        "--allow-public-bind", action="store_true", help="allow a non-loopback --local"
    )
    forward.add_argument(
        "--ping-interval",
        type=duration_arg(allow_zero=True),
        default=10.0,
        metavar="DURATION",
        help="keepalive on each relayed stream; a dead relay resets the local client"
        " (default 10s, 0: off)",
    )
    forward.add_argument("--key-name", help="SAS rule name")
    forward_key = forward.add_mutually_exclusive_group()
    forward_key.add_argument(
        "--key", help="SAS key (visible in the process list; prefer --key-env)"
    )
    forward_key.add_argument(
        "--key-env", metavar="VAR", help="read the SAS key from this environment variable"
    )
    forward_key.add_argument("--key-file", metavar="FILE", help="read the SAS key from this file")
    forward.add_argument("--ca-file", help="trust this CA bundle for wss:// relays")
    add_device_options(forward)

    token = sub.add_parser("token", help="print a SAS token (a rule's, or a device's)")
    token.add_argument(
        "--uri", required=True, help="resource URI (relay URL + /$hc/NAME, or http://host/NAME)"
    )
    token.add_argument(
        "--ttl",
        type=duration_arg(),
        default=3600.0,
        metavar="DURATION",
        help=f"how long the token is valid: {DURATION_HELP} (default 1h)",
    )
    _add_key_options(token)
    add_device_options(token)

    demo = sub.add_parser("demo", help="relay + listener + client in one process, showing traffic")
    demo.add_argument(
        "--messages", type=int, default=5, metavar="N", help="messages to send (default 5)"
    )
    demo.add_argument(
        "--stay",
        action="store_true",
        help="keep the relay and listener serving after the demo (for the dashboard), until Ctrl-C",
    )
    demo.add_argument(
        "--no-browser",
        action="store_true",
        help="never open the dashboard in a browser (not opened anyway in CI, without a"
        " terminal or without a display)",
    )

    from hybridrelay.check import add_check_parser
    from hybridrelay.client.admin_cli import add_admin_parser
    from hybridrelay.dev.cluster import add_dev_parser

    add_admin_parser(sub)
    add_dev_parser(sub)
    add_check_parser(sub)
    return parser


def _relay(args: argparse.Namespace) -> None:
    if args.relay_command == "backup":
        _backup(args)
    else:
        _serve(args)


def _serve(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from hybridrelay.relay import run
    from hybridrelay.relay.config import (
        DEV_RULE_NAME,
        development_config,
        load_relay_config,
    )
    from hybridrelay.relay.dashboard import dashboard_url
    from hybridrelay.relay.workers import WORKER_ENV, watch_supervisor, worker_ready_line

    env = dict(os.environ)
    if args.port is not None:
        env["HYBRIDRELAY_PORT"] = str(args.port)
    if args.host is not None:
        env["HYBRIDRELAY_HOST"] = args.host
    if args.workers is not None:
        env["HYBRIDRELAY_WORKERS"] = str(args.workers)
    config = load_relay_config(args.config, env) if args.config else development_config(env)
    worker = env.get(WORKER_ENV)
    if worker is None and config.relay.workers > 1:
        _supervise(args, config)
        return
    if not args.config:
        from hybridrelay.relay.dev_key import development_key

        # Kept in data_dir (or taken from HYBRIDRELAY_DEV_KEY): a restart keeps its agents.
        dev = development_key(Path(config.relay.data_dir), env)
        config = development_config(env, key=dev.value)
        where = f" (kept in {dev.path})" if dev.path else " (from HYBRIDRELAY_DEV_KEY)"
        # Printed on purpose: the development default has no other way to hand out its key.
        print(
            f"development mode: rule {DEV_RULE_NAME} key {dev.value}{where}",
            file=sys.stderr,
            flush=True,
        )

    def ready(completed: Any) -> None:
        # The one line on stdout (logs are on stderr): a script or a person reads it there.
        line = ready_line(completed.relay.public_url, dashboard_url(completed))
        if worker is not None:  # for the supervisor, which prints the line once all serve
            node = completed.cluster.node_id if completed.cluster else ""
            line = worker_ready_line(int(worker), node, completed.relay.rendezvous_url, line)
        print(line, flush=True)

    async def serve(stop: asyncio.Event) -> None:
        reload = asyncio.Event()  # SIGHUP: reload the TLS certificate, key and client CAs
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload.set)
        if worker is not None:
            watch_supervisor(stop)
        await run(
            config,
            stop,
            on_ready=ready,
            reload=reload,
            worker_index=None if worker is None else int(worker),
        )

    if worker is not None and config.cluster is not None and config.cluster.node_id:
        # Each worker is a cluster node of its own: a configured node id gets its index.
        node_id = f"{config.cluster.node_id}-{worker}"
        config = replace(config, cluster=replace(config.cluster, node_id=node_id))
    _run(serve)


def _supervise(args: argparse.Namespace, config: Any) -> None:
    """``--workers N``: N ``relay serve`` children on one port (relay/workers.py)."""
    from hybridrelay.relay.workers import check_workers, reserve_port, supervise

    check_workers(config, args.config or "<development default>")
    s = config.relay
    port, held = reserve_port(s.host, s.port)
    child = ["--log-format", args.log_format]
    if args.log_level:
        child += ["--log-level", args.log_level]
    child += ["relay", "serve", "--port", str(port)]
    if args.config:
        child += ["--config", args.config]
    if args.host is not None:
        child += ["--host", args.host]
    code = 0

    async def body(stop: asyncio.Event) -> None:
        nonlocal code
        code = await supervise(
            config, stop, child_args=child, print_line=lambda line: print(line, flush=True)
        )

    try:
        _run(body)
    finally:
        for sock in held:
            sock.close()
    if code:
        raise SystemExit(code)


def ready_line(public_url: str, dashboard: str | None) -> str:
    """``hybridrelay relay ready at URL``, with the dashboard's address when there is one."""
    line = f"hybridrelay relay ready at {public_url}"
    return f"{line} (dashboard: {dashboard})" if dashboard else line


def _backup(args: argparse.Namespace) -> None:
    from hybridrelay.relay.config import data_dir, development_config, load_relay_config
    from hybridrelay.relay.store.backup import backup_store
    from hybridrelay.relay.store.sqlite import DEFAULT_FILE

    env = dict(os.environ)
    config = load_relay_config(args.config, env) if args.config else development_config(env)
    if config.cluster is not None:
        raise ConfigError(
            args.config or "<command line>",
            "cluster",
            "this relay's store is Redis: back it up with Redis (BGSAVE), see docs/operations.md",
        )
    source = data_dir(config) / DEFAULT_FILE
    print(backup_store(source, Path(args.output)).describe())


_LISTEN_MAPPING_FLAGS = (
    "relay",
    "hc",
    "target",
    "key_name",
    "key",
    "key_env",
    "key_file",
    "ca_file",
    *DEVICE_FLAGS,
)


def _listen(args: argparse.Namespace) -> None:
    if args.config:
        given = [name for name in _LISTEN_MAPPING_FLAGS if getattr(args, name)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ConfigError(
                "<command line>",
                flag,
                "cannot be combined with --config (the file holds the mappings)",
            )
        _listen_agent(args)
        return
    if args.status:
        raise ConfigError("<command line>", "--status", "needs --config")
    for name in ("relay", "hc", "target"):
        if not getattr(args, name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError("<command line>", flag, "is required (or give --config FILE)")

    _check_relay_url(args.relay)
    from hybridrelay.listener import HttpTarget, Listener, StreamTarget, parse_target
    from hybridrelay.probe import probe_relay

    stream: StreamTarget | None = None
    http: HttpTarget | None = None
    for text in args.target:
        try:
            target = parse_target(text)
        except ValueError as exc:
            raise ConfigError("<command line>", "--target", str(exc)) from exc
        if not isinstance(target, HttpTarget):
            if stream is not None:
                raise ConfigError(
                    "<command line>",
                    "--target",
                    "give at most one tcp://, unix:// or udp:// target",
                )
            stream = target
        else:
            if http is not None:
                raise ConfigError("<command line>", "--target", "give at most one http:// target")
            http = target
    tokens = token_provider(args, _read_key)
    tls = _client_tls(args)
    listener = Listener(
        args.relay,
        args.hc,
        token_provider=tokens,
        target=stream,
        http_handler=http,
        ssl_context=tls,
    )

    async def body(stop: asyncio.Event) -> None:
        await _probe_at_start(
            lambda: probe_relay(
                args.relay, args.hc, token_provider=tokens, action="listen", ssl_context=tls
            ),
            hc=args.hc,
            action="listen",
            source="<command line>",
            keys=_flag_keys(args),
        )
        await listener.run(stop)

    _run(body)


def _listen_agent(args: argparse.Namespace) -> None:
    """``listen --config``: every mapping of the file; SIGHUP reloads, SIGTERM drains."""
    from hybridrelay.listener.config import load_agent_config, parse_status_address
    from hybridrelay.listener.status import serve_status
    from hybridrelay.listener.supervisor import Agent

    path = args.config
    config = load_agent_config(path, os.environ)
    status = config.status
    if args.status:
        try:
            status = parse_status_address(args.status, allow_public=config.allow_public_status)
        except ValueError as exc:
            raise ConfigError("<command line>", "--status", str(exc)) from exc
    if config.log_level and not args.log_level:
        configure_logging(config.log_level, args.log_format)
    agent = Agent(config, loader=lambda: load_agent_config(path, os.environ))

    async def announce() -> None:
        await agent.ready.wait()
        mappings = agent.status().mappings
        online = sum(1 for m in mappings if m.state == "online")
        failed = sum(1 for m in mappings if m.state == "failed")
        print(
            f"agent ready: {len(mappings)} mappings ({online} online, {failed} failed)",
            file=sys.stderr,
            flush=True,
        )

    async def body(stop: asyncio.Event) -> None:
        reload = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload.set)
        async with contextlib.AsyncExitStack() as stack:
            if status is not None:
                host, port = status
                try:
                    bound = await stack.enter_async_context(serve_status(agent.status, host, port))
                except OSError as exc:
                    raise ConfigError(
                        config.source, "status", f"cannot listen on {host}:{port}: {exc.strerror}"
                    ) from exc
                shown = f"[{host}]" if ":" in host else host
                print(f"agent status at http://{shown}:{bound}", file=sys.stderr, flush=True)
            announcer = asyncio.create_task(announce())
            try:
                await agent.run(stop, reload)
            finally:
                announcer.cancel()
                await asyncio.wait({announcer})

    _run(body)


def _forward(args: argparse.Namespace) -> None:
    from hybridrelay.client import ForwardService, load_forward_config
    from hybridrelay.client.config import is_loopback, parse_local
    from hybridrelay.client.forward import Forwarder, UdpForwarder

    flags = {
        "--relay": args.relay,
        "--hc": args.hc,
        "--local": args.local,
        "--key-name": args.key_name,
        "--key": args.key,
        "--key-env": args.key_env,
        "--key-file": args.key_file,
        "--ca-file": args.ca_file,
        **{"--" + name.replace("_", "-"): getattr(args, name) for name in DEVICE_FLAGS},
    }
    if args.config:
        given = [flag for flag, value in flags.items() if value]
        if given:
            raise ConfigError(
                "<command line>", given[0], "give --config or binding flags, not both"
            )
        config = load_forward_config(args.config)
        service = ForwardService.from_config(config)
        source = config.source
        keys = [
            {
                "relay": "relay",
                "ca_file": "ca_file",
                "hc": f"bindings[{i}].hc",
                "key": f"bindings[{i}].{'device_id' if b.device_id else 'key_name'}",
            }
            for i, b in enumerate(config.bindings)
        ]
    else:
        for flag in ("--relay", "--hc"):
            if not flags[flag]:
                raise ConfigError("<command line>", flag, "is required (or give --config)")
        _check_relay_url(args.relay)
        try:
            transport, host, port = parse_local(args.local or "127.0.0.1:0")
        except ValueError as exc:
            raise ConfigError("<command line>", "--local", str(exc)) from exc
        if not is_loopback(host) and not args.allow_public_bind:
            raise ConfigError(
                "<command line>", "--local", "binds beyond loopback need --allow-public-bind"
            )
        tokens = token_provider(args, _read_key)
        ping = args.ping_interval if args.ping_interval > 0 else None
        forwarder: Forwarder | UdpForwarder
        if transport == "udp":
            forwarder = UdpForwarder(
                args.relay,
                args.hc,
                token_provider=tokens,
                host=host,
                port=port,
                ssl_context=_client_tls(args),
                ping_interval=ping,
            )
        else:
            forwarder = Forwarder(
                args.relay,
                args.hc,
                token_provider=tokens,
                host=host,
                port=port,
                ssl_context=_client_tls(args),
                ping_interval=ping,
            )
        service = ForwardService([forwarder])
        source = "<command line>"
        keys = [_flag_keys(args)]

    async def body(stop: asyncio.Event) -> None:
        # Before "forwarding": a wrong key, name, URL or CA fails now, not at the first
        # client. An unreachable relay is not a mistake: serve, and the clients retry.
        for f, setting_keys in zip(service.forwarders, keys, strict=True):
            answered = await _probe_at_start(
                f.probe,
                hc=f.hc,
                action="connect",
                source=source,
                keys=setting_keys,
            )
            if not answered:
                break  # the same relay for every binding: do not wait for it again

        async def announce() -> None:
            await service.ready.wait()
            for f in service.forwarders:
                local = f"{f.host}:{f.port}" if f.transport == "tcp" else f"udp://{f.host}:{f.port}"
                print(f"forwarding {local} -> {f.hc}", file=sys.stderr, flush=True)

        announcer = asyncio.create_task(announce())
        try:
            await service.run(stop)
        finally:
            announcer.cancel()

    _run(body)


def _token(args: argparse.Namespace) -> None:
    from hybridrelay.protocol.device_sas import create_device_token
    from hybridrelay.protocol.sas import audience_for, create_sas_token

    expiry = int(time.time()) + math.ceil(args.ttl)
    device = device_token_args(args)
    if device is None and not args.key_name:
        raise ConfigError("<command line>", "--key-name", "is required (or --device-id)")
    try:
        if device is not None:  # only the URI's host counts: a device token names no entity
            token = create_device_token(args.uri, *device, expiry)
        else:
            token = create_sas_token(audience_for(args.uri), args.key_name, _read_key(args), expiry)
    except InvalidAddressError as exc:
        raise ConfigError("<command line>", "--uri", str(exc)) from exc
    print(token)


def _demo(args: argparse.Namespace) -> None:
    from hybridrelay.demo import run_demo

    browser = False if args.no_browser else None
    _run(lambda stop: run_demo(stop, messages=args.messages, stay=args.stay, browser=browser))


def _dev(args: argparse.Namespace) -> None:
    from hybridrelay.dev.cluster import run_cluster

    _run(lambda stop: run_cluster(args, stop))


def _admin(args: argparse.Namespace) -> None:
    from hybridrelay.client.admin_cli import run_admin

    run_admin(args)


def _check(args: argparse.Namespace) -> None:
    from hybridrelay.check import run_check

    run_check(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hybridrelay`` console script."""
    args = _parser().parse_args(argv)
    # The demo narrates on stdout; its logs would only drown that out.
    level = args.log_level or ("warning" if args.command == "demo" else "info")
    configure_logging(level, args.log_format)
    commands: dict[str, Callable[[argparse.Namespace], None]] = {
        "relay": _relay,
        "listen": _listen,
        "forward": _forward,
        "token": _token,
        "demo": _demo,
        "admin": _admin,
        "dev": _dev,
        "check": _check,
    }
    try:
        commands[args.command](args)
    except ConfigError as exc:
        for error in exc.errors if isinstance(exc, MultiConfigError) else (exc,):
            print(f"hybridrelay: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except EntityNotFoundError as exc:
        print(f"hybridrelay: {exc}", file=sys.stderr)
        return 1
    except UnavailableError as exc:  # e.g. the cluster's Redis is unreachable at start
        print(f"hybridrelay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the port is taken
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"hybridrelay: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
