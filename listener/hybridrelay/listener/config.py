"""AgentConfig: the listener agent's TOML file (``hybridrelay listen --config agent.toml``).

Parsed, completed, validated, then frozen (style §3.6). The keys are a contract
that deployment tools and tests rely on::

    relay = "wss://relay.example.com"     # or relays = ["wss://a", "wss://b"]
    agent_id = "gw-17"                    # default: the host name
    ping_interval = 30                    # seconds; a missed pong window is a dead channel
    drain_timeout = 10                    # seconds open streams get on stop / removal
    status = "127.0.0.1:9100"             # optional local /status, /metrics, /healthz
    allow_public_status = false           # needed for a status address beyond loopback
    ca_file = "/etc/hybridrelay/ca.pem"   # optional CA bundle for wss:// relays
    rendezvous_hosts = ["*.relay.example.com"]  # more hosts rendezvous addresses may name
    max_message_size = 1048576            # bytes; larger relay messages close with 1009
    max_bad_control_messages = 16         # in a row from the relay: channel closed 1008
    log_level = "info"                    # unless --log-level / HYBRIDRELAY_LOG_LEVEL says

    [[mappings]]
    hc = "mqtt"
    target = "tcp://127.0.0.1:1883"       # tcp:// http:// https:// unix:// udp://
    key_name = "listen-rule"
    key_file = "/etc/hybridrelay/mqtt.key"  # or key = "..." or key_env = "VAR"
    # or, as a device of the relay's registry (instead of key_name and its key):
    # device_id = "gw-17"
    # device_key_file = "gw-17.key"       # or device_key = "..." or device_key_env = "VAR"
    connections = 2                       # control channels kept open (HA), 1..16
    max_streams = 1024                    # streams + HTTP requests at once; more: 503
    connect_timeout = 10
    # request_timeout = 60                # http(s) targets: longest a response may take
    # max_target_connections = 100        # http(s) targets: connections to it at once
    # udp_idle_timeout = 60               # udp targets: a silent flow is closed
    allow_headers = { "x-device-class" = ["sensor", "gateway"] }
    hooks = ["mypkg.hooks:audit", { path = "mypkg.hooks:limit", args = { per_minute = 60 } }]

Unknown keys are errors. Every error is a :class:`ConfigError` naming the file,
the key (``mappings[1].target``) and the reason; TOML syntax errors carry the
line and column in the reason. Keys are read at load time (``key_file`` relative
to the config file's directory, ``key_env`` from the environment mapping passed
in) and kept as :class:`~hybridrelay.config.Secret`. ``HYBRIDRELAY_AGENT_ID``,
``HYBRIDRELAY_AGENT_STATUS``, ``HYBRIDRELAY_AGENT_PING_INTERVAL`` and
``HYBRIDRELAY_AGENT_DRAIN_TIMEOUT`` override the top-level keys of the same name.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from hybridrelay.config import (
    Field,
    Schema,
    Secret,
    Table,
    load_toml,
    resolve_path,
    unknown_keys_first,
)
from hybridrelay.credentials import device_from_table
from hybridrelay.errors import ConfigError
from hybridrelay.listener.control_protocol import DEFAULT_MAX_BAD_MESSAGES
from hybridrelay.listener.targets import parse_target
from hybridrelay.protocol.codes import CONTROL_MESSAGE_LIMIT
from hybridrelay.protocol.device_sas import DeviceTokenProvider
from hybridrelay.protocol.sas import SasTokenProvider, TokenProvider
from hybridrelay.wsclient import DEFAULT_MAX_SIZE

__all__ = [
    "AGENT_SCHEMA",
    "TARGET_SCHEMES",
    "AgentConfig",
    "HookSpec",
    "MappingConfig",
    "load_agent_config",
    "parse_status_address",
]

TARGET_SCHEMES: Final = ("tcp", "http", "https", "unix", "udp")
MAX_CONNECTIONS: Final = 16

_AGENT_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KEY_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")
_HC_SEGMENT: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOOK_PATH: Final = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_.]*)?$"
)
_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_ENV_OVERRIDES: Final[Mapping[str, type]] = {
    "agent_id": str,
    "status": str,
    "ping_interval": float,
    "drain_timeout": float,
}


@dataclass(frozen=True, slots=True)
class HookSpec:
    """An accept hook named in the config: ``path`` is ``pkg.mod:attr`` (or dotted),
    ``args`` the keyword arguments for the factory (empty: use ``attr`` as given)."""

    path: str
    args: tuple[tuple[str, object], ...] = ()

    @property
    def kwargs(self) -> dict[str, object]:
        return dict(self.args)


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingConfig:
    """One hybrid connection served by the agent, and where its connections go."""

    hc: str
    target: str  # the URL as written; hybridrelay.listener.parse_target accepted it
    key_name: str  # "" for a device
    key: Secret  # the rule's key, or the device's with device_id
    device_id: str | None = None  # sign as this device (device SAS) instead of a rule
    connections: int = 1
    max_streams: int = 1024
    connect_timeout: float = 10.0
    request_timeout: float = 60.0  # http(s) targets: longest a response may take
    # http(s) targets: connections open to the service at once; further requests wait
    # for one (within request_timeout), so senders cannot open a connection each.
    max_target_connections: int = 100
    udp_idle_timeout: float = 60.0  # udp targets: a flow silent both ways this long closes
    allow_headers: tuple[tuple[str, tuple[str, ...]], ...] = ()  # lower-cased names
    hooks: tuple[HookSpec, ...] = ()

    @property
    def ident(self) -> tuple[str, str]:
        """What a reload matches mappings by."""
        return (self.hc, self.target)

    def same_but_key(self, other: MappingConfig) -> bool:
        """True when ``other`` differs from this mapping in its credentials at most."""
        return (
            replace(self, key=other.key, key_name=other.key_name, device_id=other.device_id)
            == other
        )

    def token_provider(self) -> TokenProvider:
        """The provider this mapping's listeners sign with: the device's or the rule's."""
        if self.device_id is not None:
            return DeviceTokenProvider(self.device_id, self.key.value)
        return SasTokenProvider(self.key_name, self.key.value)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    relays: tuple[str, ...]
    mappings: tuple[MappingConfig, ...]
    agent_id: str = ""  # completed from the host name when empty
    ping_interval: float = 30.0
    drain_timeout: float = 10.0
    status: tuple[str, int] | None = None  # host, port (0: any free port)
    allow_public_status: bool = False
    ca_file: str | None = None
    # Hosts besides the relays' own that accept/request addresses may name (exact, or
    # "*.example.com"); the agent refuses to dial any other (issue 11).
    rendezvous_hosts: tuple[str, ...] = ()
    # The largest message reassembled from the relay (control channel, a request on a
    # rendezvous socket); HTTP bodies stream. At least the control-channel limit (64 KiB).
    max_message_size: int = DEFAULT_MAX_SIZE
    # Bad control messages in a row after which the agent closes a channel 1008 and
    # dials anew (listener/control_protocol.py's bad-message policy).
    max_bad_control_messages: int = DEFAULT_MAX_BAD_MESSAGES
    log_level: str | None = None
    source: str = "<defaults>"

    def listener_settings(self) -> tuple[object, ...]:
        """The global values every Listener is built from; a change restarts all mappings."""
        return (
            self.relays,
            self.agent_id,
            self.ping_interval,
            self.drain_timeout,
            self.ca_file,
            self.rendezvous_hosts,
            self.max_message_size,
            self.max_bad_control_messages,
        )


# -- small validators -------------------------------------------------------------------


def parse_status_address(text: str, *, allow_public: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) for the status endpoint; loopback unless allowed.

    Raises:
        ValueError: not HOST:PORT, port out of range, or a non-loopback host without
            ``allow_public``.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9100")
    if not allow_public and not _is_loopback(host):
        raise ValueError("binds beyond loopback need allow_public_status = true")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _relay_url(url: str) -> str | None:
    """Why ``url`` is not a relay base URL, or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "must look like ws://host:port or wss://host (invalid port)"
    if parts.scheme not in {"ws", "wss"} or not parts.hostname:
        return "must look like ws://host:port or wss://host"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


_HOST_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_PATTERN: Final = re.compile(rf"^(?:\*\.)?{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?$")


def _rendezvous_hosts(top: Table) -> tuple[str, ...]:
    hosts: list[str] = []
    for i, text in enumerate(top.str_list("rendezvous_hosts")):
        bare = text.strip("[]")
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            if not _HOST_PATTERN.match(text):
                raise top.error(
                    f"rendezvous_hosts[{i}]",
                    "must be a host name, an IP address or '*.domain' (no scheme or port)",
                ) from None
            hosts.append(text.lower().rstrip("."))
        else:
            hosts.append(bare.lower())
    return tuple(hosts)


def _hc_name(name: str) -> str | None:
    if not name or len(name) > 260:
        return "must be 1 to 260 characters"
    if not all(_HC_SEGMENT.match(segment) for segment in name.split("/")):
        return (
            "segments separated by '/' must start with a letter or digit and contain "
            "only letters, digits, '.', '_' and '-'"
        )
    return None


def _check_target(table: Table, url: str) -> None:
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise table.error("target", f"invalid URL: {exc}") from exc
    if scheme not in TARGET_SCHEMES:
        raise table.error(
            "target",
            f"unsupported scheme {scheme!r}; use one of "
            + ", ".join(f"{s}://" for s in TARGET_SCHEMES),
        )
    # The listener's own parser has the last word (hosts, ports, socket paths).
    try:
        parse_target(url)
    except ValueError as exc:
        raise table.error("target", str(exc)) from exc


# -- readers -----------------------------------------------------------------------------


def _key(table: Table, base: Path, env: Mapping[str, str]) -> Secret:
    given = [k for k in ("key", "key_file", "key_env") if table.has(k)]
    if len(given) != 1:
        where = "key" if not given else given[1]
        reason = (
            "give exactly one of key, key_file and key_env"
            if given
            else "is required (or key_file / key_env)"
        )
        raise table.error(where, reason)
    which = given[0]
    value = table.req_str(which)
    if which == "key":
        return Secret(value)
    if which == "key_env":
        secret = env.get(value, "")
        if not secret:
            raise table.error("key_env", f"environment variable {value} is not set")
        return Secret(secret)
    path = resolve_path(table.source, value)
    try:
        secret = path.read_text("utf-8").strip()
    except OSError as exc:
        raise table.error("key_file", f"cannot read {path}: {exc.strerror}") from exc
    if not secret:
        raise table.error("key_file", f"{path} is empty")
    return Secret(secret)


def _allow_headers(table: Table) -> tuple[tuple[str, tuple[str, ...]], ...]:
    raw = table._get("allow_headers")
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise table.error("allow_headers", "must be a table of header name = [allowed values]")
    headers = table.table("allow_headers")
    result: list[tuple[str, tuple[str, ...]]] = []
    for name in raw:  # every key of this table is a header name
        values = headers.str_list(name)
        if not values:
            raise headers.error(name, "must list at least one allowed value")
        if name.lower() in (seen for seen, _ in result):
            raise headers.error(name, "the header is listed twice (names ignore case)")
        result.append((name.lower(), values))
    return tuple(result)


def _hooks(table: Table, source: str, prefix: str) -> tuple[HookSpec, ...]:
    raw = table._get("hooks")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise table.error("hooks", "must be a list of dotted paths or {path, args} tables")
    specs: list[HookSpec] = []
    for i, item in enumerate(raw):
        key = f"hooks[{i}]"
        args: dict[str, object] = {}
        if isinstance(item, str):
            path = item
        elif isinstance(item, dict):
            spec = Table(item, path=source, prefix=f"{prefix}.{key}")
            path = spec.req_str("path")
            key += ".path"
            raw_args = spec._get("args")
            if raw_args is not None:
                if not isinstance(raw_args, dict):
                    raise spec.error("args", "must be a table of keyword arguments")
                args = dict(raw_args)
            spec.reject_unknown()
        else:
            raise table.error(key, "must be a dotted path or a {path, args} table")
        if not _HOOK_PATH.match(path):
            raise table.error(key, "must be a dotted path like 'package.module:factory'")
        specs.append(HookSpec(path, tuple(args.items())))
    return tuple(specs)


def _mapping(
    table: Table, base: Path, env: Mapping[str, str], source: str, prefix: str
) -> MappingConfig:
    hc = table.req_str("hc").strip("/")
    why = _hc_name(hc)
    if why:
        raise table.error("hc", why)
    target = table.req_str("target")
    _check_target(table, target)
    device = device_from_table(table, base, env)
    device_id: str | None = None
    if device is not None:
        key_name = ""
        device_id, key = device
    else:
        key_name = table.req_str("key_name")
        if not _KEY_NAME.match(key_name):
            raise table.error("key_name", "letters, digits, '.', '_' and '-' only (at most 256)")
        key = _key(table, base, env)
    d = MappingConfig(hc="", target="", key_name="", key=Secret(""))
    mapping = MappingConfig(
        hc=hc,
        target=target,
        key_name=key_name,
        key=key,
        device_id=device_id,
        connections=table.get_int("connections", d.connections, minimum=1, maximum=MAX_CONNECTIONS),
        max_streams=table.get_int("max_streams", d.max_streams, minimum=1, maximum=1_000_000),
        connect_timeout=table.get_float(
            "connect_timeout", d.connect_timeout, minimum=0.1, maximum=600
        ),
        request_timeout=table.get_float(
            "request_timeout", d.request_timeout, minimum=0.1, maximum=3600
        ),
        max_target_connections=table.get_int(
            "max_target_connections", d.max_target_connections, minimum=1, maximum=100_000
        ),
        udp_idle_timeout=table.get_float(
            "udp_idle_timeout", d.udp_idle_timeout, minimum=0.1, maximum=86_400
        ),
        allow_headers=_allow_headers(table),
        hooks=_hooks(table, source, prefix),
    )
    scheme = urlsplit(target).scheme
    if table.has("udp_idle_timeout") and scheme != "udp":
        raise table.error("udp_idle_timeout", "only applies to a udp:// target")
    if table.has("max_target_connections") and scheme not in ("http", "https"):
        raise table.error("max_target_connections", "only applies to an http(s):// target")
    table.reject_unknown()
    return mapping


def _env_overrides(data: dict[str, object], env: Mapping[str, str]) -> dict[str, object]:
    merged = dict(data)
    for key, kind in _ENV_OVERRIDES.items():
        name = "HYBRIDRELAY_" + (key if key == "agent_id" else f"agent_{key}").upper()
        raw = env.get(name)
        if raw is None:
            continue
        if kind is float:
            try:
                merged[key] = float(raw)
            except ValueError as exc:
                raise ConfigError("<environment>", name, "must be a number") from exc
        else:
            merged[key] = raw
    return merged


def _relays(top: Table) -> tuple[str, ...]:
    if top.has("relay") and top.has("relays"):
        raise top.error("relays", "give relay or relays, not both")
    if top.has("relays"):
        relays = top.str_list("relays")
        if not relays:
            raise top.error("relays", "must list at least one relay URL")
        for i, url in enumerate(relays):
            why = _relay_url(url)
            if why:
                raise top.error(f"relays[{i}]", why)
        normalized = [url.rstrip("/") for url in relays]
        for url in normalized:
            if normalized.count(url) > 1:
                raise top.error("relays", f"{url!r} is listed twice")
        return tuple(normalized)
    single = top.get_str("relay")
    if not single:
        raise top.error("relay", "is required (or relays = [...])")
    why = _relay_url(single)
    if why:
        raise top.error("relay", why)
    return (single.rstrip("/"),)


def load_agent_config(
    path: str | Path, env: Mapping[str, str] | None = None, *, hostname: str | None = None
) -> AgentConfig:
    """Load, complete, validate and freeze an agent config file.

    Args:
        path: The TOML file.
        env: Where ``key_env`` variables and ``HYBRIDRELAY_AGENT_*`` overrides are read
            (default: ``os.environ``).
        hostname: The default ``agent_id`` (default: ``socket.gethostname()``).

    Returns:
        The frozen config.

    Raises:
        ConfigError: The file is unreadable, not TOML, or breaks a rule; names the
            file, the key and the reason.
    """
    env = os.environ if env is None else env
    raw = load_toml(path)
    return unknown_keys_first(
        raw, AGENT_SCHEMA, str(path), lambda: _agent_config(path, raw, env, hostname)
    )


# Every key each table knows (unknown_keys_first), and which name files.
AGENT_SCHEMA: Final = Schema.of(
    "relay",
    "relays",
    "agent_id",
    "ping_interval",
    "drain_timeout",
    "status",
    "allow_public_status",
    "rendezvous_hosts",
    "max_message_size",
    "max_bad_control_messages",
    "log_level",
    ca_file=Field.FILE,
    mappings=Schema.of(
        "hc",
        "target",
        "key_name",
        "key",
        "key_env",
        "connections",
        "max_streams",
        "connect_timeout",
        "request_timeout",
        "max_target_connections",
        "udp_idle_timeout",
        "device_id",
        "device_key",
        "device_key_env",
        key_file=Field.FILE,
        device_key_file=Field.FILE,
        allow_headers=Field.FREE,
        hooks=Schema.of("path", args=Field.FREE),
    ),
)


def _agent_config(
    path: str | Path, raw: dict[str, object], env: Mapping[str, str], hostname: str | None
) -> AgentConfig:
    source = str(path)
    base = Path(path).parent
    data = _env_overrides(raw, env)
    top = Table(data, path=source, prefix="")
    relays = _relays(top)
    agent_id = top.get_str("agent_id")
    if agent_id is not None and not _AGENT_ID.match(agent_id):
        raise top.error(
            "agent_id", "letters, digits, '.', '_' and '-' only, starting with a letter or digit"
        )
    allow_public = top.get_bool("allow_public_status", False)
    status_text = top.get_str("status")
    status: tuple[str, int] | None = None
    if status_text:
        try:
            status = parse_status_address(status_text, allow_public=allow_public)
        except ValueError as exc:
            raise top.error("status", str(exc)) from exc
    ca_file = top.get_file("ca_file")
    rendezvous_hosts = _rendezvous_hosts(top)
    max_message_size = top.get_int(
        "max_message_size", DEFAULT_MAX_SIZE, minimum=CONTROL_MESSAGE_LIMIT, maximum=1 << 30
    )
    max_bad_control_messages = top.get_int(
        "max_bad_control_messages", DEFAULT_MAX_BAD_MESSAGES, minimum=1, maximum=1_000_000
    )
    log_level = top.get_str("log_level")
    if log_level is not None and log_level.lower() not in _LOG_LEVELS:
        raise top.error("log_level", "must be one of " + ", ".join(_LOG_LEVELS))
    d = AgentConfig(relays=(), mappings=())
    ping_interval = top.get_float("ping_interval", d.ping_interval, minimum=0.1, maximum=3600)
    drain_timeout = top.get_float("drain_timeout", d.drain_timeout, maximum=3600)
    if not top.has("mappings"):
        raise top.error("mappings", "is required: at least one [[mappings]] table")
    mappings = [
        _mapping(t, base, env, source, f"mappings[{i}]")
        for i, t in enumerate(top.tables("mappings"))
    ]
    if not mappings:
        raise top.error("mappings", "is required: at least one [[mappings]] table")
    top.reject_unknown()
    seen: dict[str, int] = {}
    for i, m in enumerate(mappings):
        folded = m.hc.lower()
        if folded in seen:
            # One Listener per hybrid connection: the relay would spread senders over
            # both mappings' channels, and their listener ids would collide.
            raise top.error(
                f"mappings[{i}].hc",
                f"{m.hc!r} is already mapped by mappings[{seen[folded]}]",
            )
        seen[folded] = i
    completed = agent_id or _default_agent_id(hostname)
    return AgentConfig(
        relays=relays,
        mappings=tuple(mappings),
        agent_id=completed,
        ping_interval=ping_interval,
        drain_timeout=drain_timeout,
        status=status,
        allow_public_status=allow_public,
        ca_file=ca_file,
        rendezvous_hosts=rendezvous_hosts,
        max_message_size=max_message_size,
        max_bad_control_messages=max_bad_control_messages,
        log_level=log_level.lower() if log_level else None,
        source=source,
    )


def _default_agent_id(hostname: str | None) -> str:
    name = (hostname if hostname is not None else socket.gethostname()).split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("-._")[:128]
    return cleaned or "agent"
