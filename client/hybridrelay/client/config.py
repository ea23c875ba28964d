"""The forwarder's config file (``hybridrelay forward --config forward.toml``).

    relay = "wss://relay.example.com"
    # ca_file = "/etc/hybridrelay/ca.pem"      trust this CA for wss://
    # allow_public_bind = false                 true to bind beyond loopback
    # ping_interval = 10                        keepalive on each relayed stream (s)
    # open_timeout = 30                         wait this long for the listener (s)
    # udp_idle_timeout = 60                     UDP flows end after this much silence (s)
    # udp_max_flows = 1024                      UDP peers served at once; others' datagrams drop

    [[bindings]]
    local = "127.0.0.1:11883"                   # or "udp://127.0.0.1:5683", "127.0.0.1:5683/udp"
    hc = "mqtt"
    key_name = "send-rule"
    key_env = "HYBRIDRELAY_SEND_KEY"            # or key_file = "...", or key = "..."
    # device_id = "dev-42"                      or sign as a device of the relay's registry
    # device_key_env = "DEV42_KEY"              (instead of key_name and its key), with
    #                                           device_key_file = "..." or device_key = "..."
    # headers = ["X-Device: dev-1"]             sent to the listener (connectHeaders)
    # ping_interval, open_timeout, udp_idle_timeout, udp_max_flows: per-binding overrides

Parsed, completed, validated, then frozen (style §3.6): unknown keys are errors,
every error is a :class:`~hybridrelay.errors.ConfigError` naming the file, the key
(``bindings[1].local``) and the reason. ``HYBRIDRELAY_RELAY`` overrides ``relay``.
A relative ``key_file`` (or ``device_key_file``) is relative to the config file. A
binding without ``key_name`` and key, or ``device_id`` and device key, is anonymous
(for hybrid connections that allow it).
"""

from __future__ import annotations

import ipaddress
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
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
from hybridrelay.protocol.device_sas import DeviceTokenProvider
from hybridrelay.protocol.sas import SasTokenProvider, TokenProvider

__all__ = [
    "FORWARD_SCHEMA",
    "BindingConfig",
    "ForwardConfig",
    "is_loopback",
    "load_forward_config",
    "parse_local",
]

Transport = Literal["tcp", "udp"]

# RFC 9110 token characters: what a header name may consist of.
_TOKEN_CHARS: Final = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")


@dataclass(frozen=True, slots=True, kw_only=True)
class BindingConfig:
    """One local port forwarded to one hybrid connection."""

    local: str  # as written in the file
    transport: Transport
    host: str
    port: int
    hc: str
    key_name: str | None
    key: Secret | None  # the rule's key, or the device's with device_id
    headers: Mapping[str, str]
    ping_interval: float | None
    open_timeout: float
    udp_idle_timeout: float
    udp_max_flows: int = 1024
    device_id: str | None = None  # sign as this device (device SAS) instead of a rule

    def token_provider(self) -> TokenProvider | None:
        """The device's provider, the rule's, or None for an anonymous binding."""
        if self.key is None:
            return None
        if self.device_id is not None:
            return DeviceTokenProvider(self.device_id, self.key.value)
        if self.key_name:
            return SasTokenProvider(self.key_name, self.key.value)
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardConfig:
    source: str
    relay: str
    ca_file: str | None
    allow_public_bind: bool
    bindings: tuple[BindingConfig, ...]


def parse_local(text: str) -> tuple[Transport, str, int]:
    """Parse a local binding: ``HOST:PORT``, ``tcp://HOST:PORT``, ``udp://HOST:PORT`` or
    ``HOST:PORT/udp`` (IPv6 hosts in brackets).

    Returns:
        (transport, host, port); port 0 picks a free port.

    Raises:
        ValueError: Not one of those forms; the message says why.
    """
    transport: Transport = "tcp"
    rest = text.strip()
    scheme, sep, after = rest.partition("://")
    if sep:
        if scheme.lower() not in ("tcp", "udp"):
            raise ValueError(f"unsupported scheme {scheme!r} (expected tcp:// or udp://)")
        transport = "udp" if scheme.lower() == "udp" else "tcp"
        rest = after
    else:
        for suffix, kind in (("/udp", "udp"), ("/tcp", "tcp")):
            if rest.lower().endswith(suffix):
                transport = "udp" if kind == "udp" else "tcp"
                rest = rest[: -len(suffix)]
                break
    try:
        parts = urlsplit(f"//{rest}")
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} must be HOST:PORT ({exc})") from exc
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        raise ValueError(f"{text!r} must be HOST:PORT")
    host = parts.hostname
    if not host or port is None:
        raise ValueError(f"{text!r} must be HOST:PORT")
    return transport, host, port


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_forward_config(path: str | Path, env: Mapping[str, str] | None = None) -> ForwardConfig:
    """Read, check and freeze a forwarder config file.

    Args:
        path: The TOML file.
        env: Environment for ``HYBRIDRELAY_RELAY`` and ``key_env`` (default: ``os.environ``).

    Raises:
        ConfigError: The file is unreadable or invalid; names the file, key and reason.
    """
    environ = os.environ if env is None else env
    data = load_toml(path)
    return unknown_keys_first(
        data, FORWARD_SCHEMA, str(path), lambda: _forward_config(str(path), data, environ)
    )


# Every key each table knows (unknown_keys_first), and which name files.
FORWARD_SCHEMA: Final = Schema.of(
    "relay",
    "allow_public_bind",
    "ping_interval",
    "open_timeout",
    "udp_idle_timeout",
    "udp_max_flows",
    ca_file=Field.FILE,
    bindings=Schema.of(
        "local",
        "hc",
        "key_name",
        "key",
        "key_env",
        "headers",
        "ping_interval",
        "open_timeout",
        "udp_idle_timeout",
        "udp_max_flows",
        "device_id",
        "device_key",
        "device_key_env",
        key_file=Field.FILE,
        device_key_file=Field.FILE,
    ),
)


def _forward_config(
    source: str, data: dict[str, object], environ: Mapping[str, str]
) -> ForwardConfig:
    root = Table(data, path=source, prefix="")
    file_relay = root.get_str("relay")  # read even when overridden: it is a known key
    relay = root.env_override("relay", environ) or file_relay
    if not relay:
        raise root.error("relay", "is required")
    try:
        relay_parts = urlsplit(relay)
        _ = relay_parts.port  # validates it
    except ValueError as exc:
        raise root.error("relay", f"must be a ws:// or wss:// URL ({exc})") from exc
    if relay_parts.scheme not in ("ws", "wss") or not relay_parts.hostname:
        raise root.error("relay", "must be a ws:// or wss:// URL")
    if relay_parts.query or relay_parts.fragment:
        raise root.error("relay", "must not have a query or fragment")
    if root.has("ca_file") and relay_parts.scheme != "wss":
        raise root.error("ca_file", "only applies to a wss:// relay")
    ca_file = root.get_file("ca_file")
    allow_public = root.get_bool("allow_public_bind", default=False)
    ping_default = root.get_float("ping_interval", 10.0, minimum=0.0, maximum=3600.0)
    open_default = root.get_float("open_timeout", 30.0, minimum=0.1, maximum=600.0)
    idle_default = root.get_float("udp_idle_timeout", 60.0, minimum=0.1, maximum=86400.0)
    flows_default = root.get_int("udp_max_flows", 1024, minimum=1, maximum=1_000_000)
    tables = root.tables("bindings")
    root.reject_unknown()
    if not tables:
        raise root.error("bindings", "at least one [[bindings]] table is required")

    bindings: list[BindingConfig] = []
    seen: dict[tuple[Transport, str, int], str] = {}
    defaults = _Defaults(ping_default, open_default, idle_default, flows_default)
    for index, table in enumerate(tables):
        binding = _binding(table, source, environ, allow_public, defaults)
        where = (binding.transport, binding.host, binding.port)
        if binding.port and where in seen:
            raise table.error("local", f"{binding.local} is bound twice (also {seen[where]})")
        seen[where] = f"bindings[{index}]"
        bindings.append(binding)
    return ForwardConfig(
        source=source,
        relay=relay.rstrip("/"),
        ca_file=ca_file,
        allow_public_bind=allow_public,
        bindings=tuple(bindings),
    )


@dataclass(frozen=True, slots=True)
class _Defaults:
    ping_interval: float
    open_timeout: float
    udp_idle_timeout: float
    udp_max_flows: int


def _binding(
    table: Table, source: str, env: Mapping[str, str], allow_public: bool, defaults: _Defaults
) -> BindingConfig:
    local = table.req_str("local")
    try:
        transport, host, port = parse_local(local)
    except ValueError as exc:
        raise table.error("local", str(exc)) from exc
    if not allow_public and not is_loopback(host):
        raise table.error(
            "local", f"{host} is not a loopback address; set allow_public_bind = true to bind it"
        )
    hc = table.req_str("hc").strip("/")
    if not hc:
        raise table.error("hc", "is required")
    device = device_from_table(table, Path(source).parent, env)
    device_id: str | None = None
    if device is not None:
        key_name: str | None = None
        device_id, device_key = device
        key: Secret | None = device_key
    else:
        key_name = table.get_str("key_name")
        key = _key(table, source, env)
        if key is not None and not key_name:
            raise table.error("key_name", "is required with a key")
        if key_name and key is None:
            raise table.error("key_name", "needs one of key, key_file or key_env")
    headers: dict[str, str] = {}
    for line in table.str_list("headers"):
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name or not set(name) <= _TOKEN_CHARS or "\n" in value:
            raise table.error("headers", f'{line!r} is not "Name: value"')
        headers[name] = value.strip()
    ping = table.get_float("ping_interval", defaults.ping_interval, minimum=0.0, maximum=3600.0)
    open_timeout = table.get_float(
        "open_timeout", defaults.open_timeout, minimum=0.1, maximum=600.0
    )
    idle = table.get_float(
        "udp_idle_timeout", defaults.udp_idle_timeout, minimum=0.1, maximum=86400.0
    )
    if table.has("udp_idle_timeout") and transport != "udp":
        raise table.error("udp_idle_timeout", "only applies to a udp:// binding")
    flows = table.get_int("udp_max_flows", defaults.udp_max_flows, minimum=1, maximum=1_000_000)
    if table.has("udp_max_flows") and transport != "udp":
        raise table.error("udp_max_flows", "only applies to a udp:// binding")
    table.reject_unknown()
    return BindingConfig(
        local=local,
        transport=transport,
        host=host,
        port=port,
        hc=hc,
        key_name=key_name,
        key=key,
        headers=headers,
        ping_interval=ping or None,  # 0 turns keepalive off
        open_timeout=open_timeout,
        udp_idle_timeout=idle,
        udp_max_flows=flows,
        device_id=device_id,
    )


def _key(table: Table, source: str, env: Mapping[str, str]) -> Secret | None:
    given = [k for k in ("key", "key_file", "key_env") if table.has(k)]
    if len(given) > 1:
        raise table.error(given[1], f"give only one of key, key_file and key_env (also {given[0]})")
    key = table.get_str("key")
    key_file = table.get_str("key_file")
    key_env = table.get_str("key_env")
    if key is not None:
        if not key:
            raise table.error("key", "must not be empty")
        return Secret(key)
    if key_file is not None:
        file = resolve_path(source, key_file)
        try:
            value = file.read_text("utf-8").strip()
        except OSError as exc:
            raise table.error("key_file", f"cannot read {file}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise table.error("key_file", f"{file} is not UTF-8 text") from exc
        if not value:
            raise table.error("key_file", f"{file} is empty")
        return Secret(value)
    if key_env is not None:
        value = env.get(key_env, "")
        if not value:
            raise table.error("key_env", f"environment variable {key_env} is not set")
        return Secret(value)
    return None
