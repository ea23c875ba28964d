"""RelayConfig: the ``[relay]``, ``[[rules]]`` and ``[[hybrid_connections]]`` schema.

``[[jwt_issuers]]`` adds the identity providers whose JWT bearer tokens the
relay accepts besides SAS (issue 5; see ``jwt_auth.py``). ``[[webhooks]]`` adds
the URLs that lifecycle events are POSTed to (issue 5; see ``mgmt/events.py``).

Parsed, completed, validated, then frozen (style §3.6). ``HYBRIDRELAY_{KEY}``
environment variables override the ``[relay]`` keys (``HYBRIDRELAY_PORT=9000``).
Relative paths written in the file (``tls_cert``, ``tls_key``, ``client_ca_file``,
``data_dir``, JWT key files) resolve against the file's directory and the files must
be readable (an error names the key and the OS's reason); paths from the environment
resolve against the working directory. Unknown keys are reported first
(:data:`RELAY_SCHEMA`).
Without a file, :func:`development_config` gives the embedded default: one
namespace rule with a fresh random key, hybrid connections created on first
listen.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from hybridrelay.config import (
    Field,
    Schema,
    Secret,
    Table,
    load_toml,
    readable_file,
    resolve_path,
    unknown_keys_first,
)
from hybridrelay.errors import ConfigError
from hybridrelay.protocol.codes import (
    CONTROL_MESSAGE_LIMIT,
    MAX_LISTENERS_PER_HC,
    RENDEZVOUS_TIMEOUT_S,
)
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.jwt_auth import (
    ALGORITHMS,
    JwtIssuerConfig,
    JwtKey,
    KeyFileError,
    load_jwks_file,
    load_public_keys,
)

__all__ = [
    "DEV_RULE_NAME",
    "RELAY_SCHEMA",
    "WEBHOOK_EVENTS",
    "ClientCertMode",
    "ClusterConfig",
    "HybridConnectionConfig",
    "JwtIssuerConfig",
    "RelayConfig",
    "RelaySettings",
    "RuleConfig",
    "WebhookConfig",
    "development_config",
    "load_relay_config",
    "placeholder_keys",
    "refuse_placeholder_keys",
    "validate_entity_name",
]

DEV_RULE_NAME = "RootManageSharedAccessKey"
_ENTITY_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")
MAX_RULES_PER_SCOPE = 12  # HC §8.5
ClientCertMode = Literal["none", "optional", "required"]
_CLIENT_CERT_MODES: Final[Mapping[str, ClientCertMode]] = {
    "none": "none",
    "optional": "optional",
    "required": "required",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleConfig:
    name: str
    key: Secret
    secondary_key: Secret | None = None
    rights: Rights


@dataclass(frozen=True, slots=True, kw_only=True)
class HybridConnectionConfig:
    name: str
    requires_client_authorization: bool = True
    # None: not declared; True/False: the HC serves HTTP-mode senders or not (issue 3).
    http: bool | None = None
    max_listeners: int = MAX_LISTENERS_PER_HC
    request_timeout: float | None = None  # HTTP mode; None: the relay-wide value
    rules: tuple[RuleConfig, ...] = ()


# The lifecycle event types (opType) of ``mgmt/events.py``; a webhook may filter on them.
# tests/integration/test_mgmt_events.py checks that it names every one the hub publishes.
WEBHOOK_EVENTS = (
    "createDeviceIdentity",
    "updateDeviceIdentity",
    "disableDeviceIdentity",
    "enableDeviceIdentity",
    "regenerateDeviceKeys",
    "deleteDeviceIdentity",
    "createHybridConnection",
    "updateHybridConnection",
    "disableHybridConnection",
    "enableHybridConnection",
    "deleteHybridConnection",
    "createAuthorizationRule",
    "updateAuthorizationRule",
    "regenerateAuthorizationRuleKey",
    "deleteAuthorizationRule",
    "createCertificate",
    "updateCertificate",
    "generateCertificateVerificationCode",
    "verifyCertificate",
    "deleteCertificate",
    "startJob",
    "completeJob",
    "failJob",
    "listenerOnline",
    "listenerOffline",
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    """One ``[[webhooks]]`` table: where lifecycle events are POSTed (issue 5).

    ``header_name``/``header_value`` (TOML ``secret_header`` and ``secret``) are sent
    with every delivery so the receiver can tell the relay from anyone else; the
    value never reaches a log. ``events`` filters on opType (empty: all). A delivery
    is tried up to ``max_attempts`` times with full-jitter exponential backoff
    between ``retry_base_delay`` and ``retry_max_delay`` seconds.
    """

    url: str
    header_name: str | None = None
    header_value: Secret | None = None
    events: tuple[str, ...] = ()
    max_attempts: int = 5
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    timeout: float = 10.0
    queue_size: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # completed from host/port when empty
    # ``workers`` relay processes share ``port`` (SO_REUSEPORT) and the [cluster] Redis;
    # each also serves on its own port, worker_port + index (0: a free one), which it
    # advertises as its rendezvous address (docs/scaling.md, "Workers").
    workers: int = 1
    worker_port: int = 0
    # This process's own address for rendezvous when it is one of several workers (set by
    # serve.run, never by config); empty: public_url.
    rendezvous_url: str = ""
    tls_cert: str | None = None
    tls_key: str | None = None
    data_dir: str = ".hybridrelay"
    auto_create: bool = False  # create hybrid connections on first listen (dev default)
    max_listeners_per_hc: int = MAX_LISTENERS_PER_HC
    ping_interval: float = 30.0
    token_grace: float = 300.0
    rendezvous_timeout: float = RENDEZVOUS_TIMEOUT_S
    request_timeout: float = 60.0  # HTTP mode: response header deadline and body idle limit
    close_timeout: float = 10.0
    max_pending_rendezvous: int = 10_000
    # With check_token_host, a token's host (its sr, or a device token's) must be one of
    # the relay's own public names: public_url's host or one of public_hosts (other names
    # the same relay or cluster is reached by). Never the request's Host header, which
    # the sender chooses.
    check_token_host: bool = False
    public_hosts: tuple[str, ...] = ()  # lower-case host names, no ports
    drain_timeout: float = 10.0
    # A listener reconnecting with the sb-hc-id of a connected one replaces it at once.
    listener_takeover: bool = True
    # TLS client certificates of devices (issue 5, device_auth.py): "none", "optional"
    # or "required"; client_ca_file is the PEM bundle of device CA certificates (and of
    # the self-signed certificates of thumbprint devices) the handshake trusts.
    client_cert: ClientCertMode = "none"
    client_ca_file: str | None = None
    # Seconds between looks at the TLS files' inode/mtime/size (tls_reload.py): a renewed
    # certificate is served within two intervals, no restart. 0: only SIGHUP reloads.
    tls_reload_interval: float = 60.0
    # Limits against hostile peers (issue 11). docs/security.md has the one table of them:
    # default, what the peer sees when it is hit, and the metric that counts it
    # (hybridrelay_limit_refusals{limit=...}). The defaults are far above what a single
    # IoT gateway behind NAT ever needs.
    handshake_timeout: float = 10.0  # the TLS handshake; then the first request head (408)
    # An idle keep-alive connection (its last response sent, no next request head yet) is
    # closed after this long, as nginx does (75 s); longer than clients' own pool timeouts.
    keepalive_timeout: float = 75.0
    body_idle_timeout: float = 30.0  # HTTP mode: longest silence in a sender's body (408)
    max_connections_per_ip: int = 2000  # concurrent TCP connections per source address (429)
    handshake_rate_per_ip: float = 200.0  # sustained requests/s per source address (429)
    handshake_burst_per_ip: int = 1000  # ... with this many at once
    # Source networks the per-IP caps above do not apply to. Loopback and private networks
    # by default: there the source is a proxy, ingress or load balancer in front of the
    # relay (every deployment in deploy/), or a co-located agent, i.e. everyone behind it;
    # capping it would cap them all, and per-client limits belong on that proxy. Anonymous
    # internet traffic reaching the relay directly comes from public addresses.
    per_ip_limits_exempt: tuple[str, ...] = (
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
    )
    max_pending_per_hc: int = 1000  # senders + HTTP requests waiting on one entity (503)
    max_queued_control_frames: int = 64  # control frames queued to one leg (then not read)
    max_token_lifetime: float = 366 * 86_400.0  # a token's se further ahead: 401; 0: off
    # How long a listener's control channel may take to take a message the relay sends
    # (an accept, a request, a pong): a listener that stops reading would hold the
    # sender, and the channel's reader, for ever. Then the channel is cut.
    control_send_timeout: float = 10.0
    # The largest message a listener may send on its control channel. JSON messages stay
    # under HC's 64 KiB anyway (control_message_limit); what can be larger is an inline
    # response body (HC says at most 64 KiB, larger ones should come over rendezvous,
    # but listeners are tolerated up to this). Larger: the channel closes with 1009.
    max_control_message_size: int = 1 << 20
    # Bytes buffered per direction of a relayed stream (a spliced WebSocket leg's write
    # buffer, an HTTP-mode response body) before the relay stops reading the other side:
    # memory per stream against throughput on long, fast links. Backpressure, no refusal.
    stream_buffer_size: int = 256 * 1024
    # aiohttp's request-head parser: the longest request line or header line (bytes),
    # and the most header lines in one head; larger heads get 400 before any handler
    # runs. 8190 is aiohttp's (and about nginx's 8k) default; big cookies or JWTs in
    # headers may need more.
    max_head_line_size: int = 8190
    max_headers: int = 128
    # A management request body (JSON documents, a CA certificate), 413 beyond. Device
    # imports stream to a file instead and have max_import_size.
    max_management_body_size: int = 1 << 20
    max_import_size: int = 256 * 1024 * 1024  # an import job's body (413)
    max_running_jobs: int = 4  # import/export jobs running at once (403 QuotaExceeded)
    # Verified tokens remembered (least recently used first out): a token pushed out is
    # verified again on its next use, so this trades CPU for memory, nothing else.
    token_cache_size: int = 4096
    # Management event streams (/$mgmt/v1/events): events kept for Last-Event-ID resumes,
    # and events one subscriber may fall behind before it is dropped ("SubscriberTooSlow").
    event_history: int = 1000
    event_subscriber_queue: int = 256
    # Device search (GET /$mgmt/v1/devices?contains=...): devices one page examines at
    # most, so a search over 100k devices answers as fast as one over ten (a short page
    # with a continuation token says "searched this far").
    device_search_scan: int = 10_000
    # Per-device timelines (GET /$mgmt/v1/devices/{id}/timeline): entries kept per
    # device (the oldest dropped first) and devices with a timeline on this node (the
    # device heard from least recently forgotten first).
    device_timeline_entries: int = 50
    device_timeline_devices: int = 10_000
    # Start even when a rule key is a placeholder of a shipped example (deploy/compose's
    # demo only; the relay logs a warning). Off: such a key refuses the start (exit 2).
    allow_placeholder_keys: bool = False
    # The dashboard (/$dashboard/): how long a login lasts (no renewal: log in again), how
    # many sessions this node holds at once (a login beyond: 429), and failed logins one
    # address may make per minute (beyond: 429 until the minute is over).
    dashboard_session_ttl: float = 1800.0
    max_dashboard_sessions: int = 1000
    dashboard_login_failures: int = 5
    # A login's JSON body (a key or a JWT): far below max_management_body_size, since
    # anyone who reaches the dashboard's address may post one.
    dashboard_login_body_size: int = 64 * 1024
    # Who logs in read-only: "sas:<rule>" or "jwt:<subject>" (everyone else with Manage
    # is an operator).
    dashboard_viewers: tuple[str, ...] = ()
    # The HTTP inspector (off per hybrid connection until an operator turns it on):
    # requests kept per hybrid connection (a ring: the oldest goes), bytes kept of each
    # request and response body, and hybrid connections inspected at once on this node.
    inspector_requests: int = 50
    inspector_body_size: int = 4096
    max_inspected_hcs: int = 16
    # Serve /metrics (and /healthz, /readyz) on this HOST:PORT of its own, plain HTTP, and
    # no longer on the public port: what the relay counts is for its operator, not for
    # the internet. None: /metrics stays on the public port, as before.
    metrics_listen: tuple[str, int] | None = None
    # Where the dashboard (/$dashboard/: its page, login, cookie and API door) is served:
    # HOST:PORT, an origin of its own, plain HTTP unless the relay has TLS. Not the public
    # origin by default: pages that listeners serve through HTTP mode come from the public
    # origin, and a page's script there could use an operator's dashboard session.
    # "public": the public port's origin anyway (only when no listener serves HTML a
    # browser runs, or with a proxy that splits the origins; logged as a warning).
    # "off": no dashboard. Port 0: a free port, named in the ready line.
    dashboard_listen: tuple[str, int] | Literal["public", "off"] = ("127.0.0.1", 0)
    # Further names the dashboard's address answers to (a tunnel's, a proxy's), besides its
    # listen address and, on loopback, the loopback names: any other Host header gets a
    # 421 (DNS rebinding: a page whose name was re-pointed at the dashboard's address).
    dashboard_hosts: tuple[str, ...] = ()
    # Hybrid connections given their own hc="..." label in the per-entity metrics; the
    # rest share hc="_other", so the exposition stays bounded however many there are.
    max_metrics_hc_labels: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    relay: RelaySettings = field(default_factory=RelaySettings)
    rules: tuple[RuleConfig, ...] = ()
    hybrid_connections: tuple[HybridConnectionConfig, ...] = ()
    jwt_issuers: tuple[JwtIssuerConfig, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    cluster: ClusterConfig | None = None
    source: str = "<defaults>"

    def hybrid_connection(self, name: str) -> HybridConnectionConfig | None:
        for hc in self.hybrid_connections:
            if hc.name.lower() == name.lower():
                return hc
        return None


def validate_entity_name(name: str) -> str | None:
    """Return why ``name`` is not a valid hybrid connection name, or None."""
    if not name or len(name) > 260:
        return "must be 1 to 260 characters"
    for segment in name.split("/"):
        if not _ENTITY_SEGMENT.match(segment):
            return (
                "segments separated by '/' must start with a letter or digit and contain "
                "only letters, digits, '.', '_' and '-'"
            )
    if name.split("/")[0].lower() in {"$hc", "$mgmt", "healthz", "readyz", "metrics"}:
        return "collides with a reserved path"
    return None


def _rule(table: Table) -> RuleConfig:
    name = table.req_str("name")
    if not _RULE_NAME.match(name):
        raise table.error("name", "letters, digits, '.', '_' and '-' only (at most 256)")
    key = table.req_str("key")
    if len(key) < 16:
        raise table.error("key", "must be at least 16 characters")
    secondary = table.get_str("secondary_key")
    if secondary is not None and len(secondary) < 16:
        raise table.error("secondary_key", "must be at least 16 characters")
    names = table.str_list("rights", ("Listen", "Send"))
    if not names:
        raise table.error("rights", "must list at least one of Listen, Send, Manage")
    try:
        rights = Rights.parse(names)
    except ValueError as exc:
        raise table.error("rights", str(exc)) from exc
    table.reject_unknown()
    return RuleConfig(
        name=name,
        key=Secret(key),
        secondary_key=Secret(secondary) if secondary else None,
        rights=rights,
    )


def _check_unique_rules(rules: list[RuleConfig], table: Table, key: str) -> None:
    if len(rules) > MAX_RULES_PER_SCOPE:
        raise table.error(key, f"at most {MAX_RULES_PER_SCOPE} rules per scope")
    names = [r.name.lower() for r in rules]
    for name in names:
        if names.count(name) > 1:
            raise table.error(key, f"rule {name!r} is defined twice")


def _hybrid_connection(table: Table, default_max: int) -> HybridConnectionConfig:
    name = table.req_str("name").strip("/")
    why = validate_entity_name(name)
    if why:
        raise table.error("name", why)
    rules = [_rule(t) for t in table.tables("rules")]
    _check_unique_rules(rules, table, "rules")
    http_value = table._get("http")
    if http_value is not None and not isinstance(http_value, bool):
        raise table.error("http", "must be true or false")
    hc = HybridConnectionConfig(
        name=name,
        requires_client_authorization=table.get_bool("requires_client_authorization", True),
        http=http_value,
        max_listeners=table.get_int("max_listeners", default_max, minimum=1, maximum=10_000),
        request_timeout=(
            table.get_float("request_timeout", 60.0, minimum=0.1, maximum=3600)
            if table.has("request_timeout")
            else None
        ),
        rules=tuple(rules),
    )
    table.reject_unknown()
    return hc


# Claims a rights claim must not shadow: the registered ones (RFC 7519 §4.1) and
# the scope claims, which are read as "hc:{right}:{pattern}" strings.
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope", "scp"})


def _audiences(table: Table) -> tuple[str, ...]:
    value = table._get("audience")
    if value is None:
        raise table.error("audience", "is required")
    values = [value] if isinstance(value, str) else value
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, str) and v for v in values)
    ):
        raise table.error("audience", "must be a non-empty string or list of strings")
    return tuple(values)


def _jwt_algorithms(table: Table) -> tuple[str, ...]:
    names = table.str_list("algorithms", ALGORITHMS)
    if not names:
        raise table.error("algorithms", "must list at least one of RS256, ES256")
    for name in names:
        if name.lower() == "none":
            raise table.error("algorithms", "'none' is never accepted")
        if name.upper().startswith("HS"):
            raise table.error(
                "algorithms", f"{name!r}: shared-secret (HMAC) algorithms are not accepted"
            )
        if name not in ALGORITHMS:
            raise table.error("algorithms", f"unsupported {name!r} (RS256 and ES256 only)")
    return tuple(dict.fromkeys(names))


def _jwt_keys(table: Table, base_dir: Path) -> tuple[str, tuple[JwtKey, ...]]:
    paths = table.str_list("public_keys") if table.has("public_keys") else None
    jwks_file = table.get_str("jwks_file")
    if table.get_str("jwks_url") is not None:
        raise table.error(
            "jwks_url",
            "fetching a JWKS over the network is not implemented yet; "
            "download it and set jwks_file instead",
        )
    if paths is not None and jwks_file is not None:
        raise table.error("public_keys", "give either public_keys or jwks_file, not both")
    try:
        if paths is not None:
            if not paths:
                raise table.error("public_keys", "must list at least one PEM file")
            return "public_keys", load_public_keys(base_dir / p for p in paths)
        if jwks_file:
            return "jwks_file", load_jwks_file(base_dir / jwks_file)
    except KeyFileError as exc:
        raise table.error("public_keys" if paths is not None else "jwks_file", str(exc)) from exc
    raise table.error("public_keys", "one of public_keys or jwks_file is required")


def _jwt_issuer(table: Table, base_dir: Path) -> JwtIssuerConfig:
    issuer = table.req_str("issuer")
    audiences = _audiences(table)
    key_field, keys = _jwt_keys(table, base_dir)
    algorithms = _jwt_algorithms(table)
    usable = tuple(k for k in keys if k.algorithm in algorithms)
    if not usable:
        raise table.error(
            key_field,
            f"no key fits the algorithms {', '.join(algorithms)} (RSA for RS256, "
            "EC P-256 for ES256)",
        )
    leeway = table.get_float("leeway", 30.0, maximum=300.0)
    rights_claim = table.get_str("rights_claim", "hc") or ""
    if not rights_claim:
        raise table.error("rights_claim", "must not be empty")
    if rights_claim in _RESERVED_CLAIMS:
        raise table.error("rights_claim", f"{rights_claim!r} is a registered or scope claim")
    table.reject_unknown()
    return JwtIssuerConfig(
        issuer=issuer,
        audiences=audiences,
        keys=usable,
        algorithms=algorithms,
        leeway=leeway,
        rights_claim=rights_claim,
    )


def _jwt_issuers(top: Table, base_dir: Path) -> tuple[JwtIssuerConfig, ...]:
    issuers = [_jwt_issuer(t, base_dir) for t in top.tables("jwt_issuers")]
    seen: set[str] = set()
    for issuer in issuers:
        if issuer.issuer in seen:
            raise top.error("jwt_issuers", f"issuer {issuer.issuer!r} is defined twice")
        seen.add(issuer.issuer)
    return tuple(issuers)


def _webhook(table: Table) -> WebhookConfig:
    url = table.req_str("url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise table.error("url", "must be an http:// or https:// URL with a host")
    header_name = table.get_str("secret_header")
    secret = table.get_str("secret")
    if (header_name is None) != (secret is None):
        raise table.error("secret_header", "secret_header and secret go together")
    if header_name is not None and not _HEADER_NAME.match(header_name):
        raise table.error("secret_header", "must be an HTTP header name")
    if secret is not None and (not secret or not all(31 < ord(c) < 127 for c in secret)):
        raise table.error("secret", "must be visible ASCII text")
    events = table.str_list("events")
    for event in events:
        if event not in WEBHOOK_EVENTS:
            raise table.error("events", f"{event!r} is not one of {', '.join(WEBHOOK_EVENTS)}")
    base = table.get_float("retry_base_delay", 0.5, minimum=0.0, maximum=3600.0)
    cap = table.get_float("retry_max_delay", 30.0, minimum=0.0, maximum=3600.0)
    if cap < base:
        raise table.error("retry_max_delay", "must not be less than retry_base_delay")
    webhook = WebhookConfig(
        url=url,
        header_name=header_name,
        header_value=Secret(secret) if secret is not None else None,
        events=events,
        max_attempts=table.get_int("max_attempts", 5, minimum=1, maximum=100),
        retry_base_delay=base,
        retry_max_delay=cap,
        timeout=table.get_float("timeout", 10.0, minimum=0.1, maximum=300.0),
        queue_size=table.get_int("queue_size", 1000, minimum=1, maximum=1_000_000),
    )
    table.reject_unknown()
    return webhook


_ENV_TYPES: Final[Mapping[str, type]] = {
    "host": str,
    "port": int,
    "public_url": str,
    "workers": int,
    "worker_port": int,
    "tls_cert": str,
    "tls_key": str,
    "data_dir": str,
    "auto_create": bool,
    "max_listeners_per_hc": int,
    "ping_interval": float,
    "token_grace": float,
    "rendezvous_timeout": float,
    "request_timeout": float,
    "close_timeout": float,
    "max_pending_rendezvous": int,
    "check_token_host": bool,
    "public_hosts": list,
    "drain_timeout": float,
    "listener_takeover": bool,
    "client_cert": str,
    "client_ca_file": str,
    "tls_reload_interval": float,
    "handshake_timeout": float,
    "keepalive_timeout": float,
    "body_idle_timeout": float,
    "max_connections_per_ip": int,
    "handshake_rate_per_ip": float,
    "handshake_burst_per_ip": int,
    "per_ip_limits_exempt": tuple,
    "max_pending_per_hc": int,
    "max_queued_control_frames": int,
    "max_token_lifetime": float,
    "control_send_timeout": float,
    "max_control_message_size": int,
    "stream_buffer_size": int,
    "max_head_line_size": int,
    "max_headers": int,
    "max_management_body_size": int,
    "max_import_size": int,
    "max_running_jobs": int,
    "token_cache_size": int,
    "event_history": int,
    "event_subscriber_queue": int,
    "device_search_scan": int,
    "device_timeline_entries": int,
    "device_timeline_devices": int,
    "allow_placeholder_keys": bool,
    "dashboard_session_ttl": float,
    "max_dashboard_sessions": int,
    "dashboard_login_failures": int,
    "dashboard_login_body_size": int,
    "dashboard_viewers": list,
    "inspector_requests": int,
    "inspector_body_size": int,
    "max_inspected_hcs": int,
    "metrics_listen": str,
    "dashboard_listen": str,
    "dashboard_hosts": list,
    "max_metrics_hc_labels": int,
}


def _env_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered not in {"1", "0", "true", "false", "yes", "no"}:
        raise ValueError(raw)
    return lowered in {"1", "true", "yes"}


def _env_overrides(data: dict[str, object], env: Mapping[str, str]) -> dict[str, object]:
    merged = dict(data)
    for key, kind in _ENV_TYPES.items():
        raw = env.get(f"HYBRIDRELAY_{key.upper()}")
        if raw is None:
            continue
        name = f"HYBRIDRELAY_{key.upper()}"
        try:
            if kind is bool:
                merged[key] = _env_bool(raw)
            elif kind is list:  # comma-separated
                merged[key] = [part.strip() for part in raw.split(",") if part.strip()]
            elif kind is int:
                merged[key] = int(raw)
            elif kind is float:
                merged[key] = float(raw)
            elif kind is tuple:  # a comma-separated list: "10.0.0.0/8, ::1/128"
                merged[key] = [item.strip() for item in raw.split(",") if item.strip()]
            else:
                merged[key] = raw
        except ValueError as exc:
            noun = {bool: "true or false", int: "an integer", float: "a number"}.get(
                kind, "a string"
            )
            raise ConfigError("<environment>", name, f"must be {noun}") from exc
    return merged


def _client_cert_mode(table: Table) -> ClientCertMode:
    mode = _CLIENT_CERT_MODES.get(table.get_str("client_cert", "none") or "none")
    if mode is None:
        raise table.error("client_cert", "must be none, optional or required")
    return mode


def _public_hosts(table: Table, key: str = "public_hosts") -> tuple[str, ...]:
    hosts: list[str] = []
    for value in table.str_list(key):
        name: str | None = None
        try:
            parts = urlsplit(f"//{value}")
            _ = parts.port  # raises for a non-numeric or out-of-range port
            if not (parts.path or parts.query or parts.fragment or "@" in value):
                name = parts.hostname
        except ValueError:
            pass
        if not name:
            raise table.error(key, f"{value!r} is not a host name (host[:port])")
        hosts.append(name)
    return tuple(dict.fromkeys(hosts))


def _networks(table: Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list of CIDR networks ("10.0.0.0/8", "::1/128"; a bare address is one host)."""
    values = table.str_list(key, default)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise table.error(key, f"{value!r} is not an IP network (CIDR)") from exc
    return values


def _host_port(table: Table, key: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[v6]:PORT`` too; port 0: any free port), or None when unset."""
    text = table.get_str(key)
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise table.error(key, f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:9180")
    return host, int(port)


def _dashboard_listen(
    table: Table, default: tuple[str, int] | Literal["public", "off"]
) -> tuple[str, int] | Literal["public", "off"]:
    """``HOST:PORT``, ``"public"`` or ``"off"`` (``[relay] dashboard_listen``)."""
    text = (table.get_str("dashboard_listen") or "").strip().lower()
    if text in ("public", "off"):
        return "public" if text == "public" else "off"
    return _host_port(table, "dashboard_listen") or default


def _settings(table: Table) -> RelaySettings:
    d = RelaySettings()
    s = RelaySettings(
        host=table.get_str("host", d.host) or d.host,
        port=table.get_int("port", d.port, minimum=0, maximum=65535),
        public_url=table.get_str("public_url", "") or "",
        workers=table.get_int("workers", d.workers, minimum=1, maximum=256),
        worker_port=table.get_int("worker_port", d.worker_port, minimum=0, maximum=65535),
        tls_cert=table.get_str("tls_cert"),
        tls_key=table.get_str("tls_key"),
        data_dir=table.get_str("data_dir", d.data_dir) or d.data_dir,
        auto_create=table.get_bool("auto_create", d.auto_create),
        max_listeners_per_hc=table.get_int(
            "max_listeners_per_hc", d.max_listeners_per_hc, minimum=1, maximum=10_000
        ),
        ping_interval=table.get_float("ping_interval", d.ping_interval, minimum=0.05, maximum=3600),
        token_grace=table.get_float("token_grace", d.token_grace, maximum=86_400),
        rendezvous_timeout=table.get_float(
            "rendezvous_timeout", d.rendezvous_timeout, minimum=0.1, maximum=RENDEZVOUS_TIMEOUT_S
        ),
        request_timeout=table.get_float(
            "request_timeout", d.request_timeout, minimum=0.1, maximum=3600
        ),
        close_timeout=table.get_float("close_timeout", d.close_timeout, minimum=0.1, maximum=600),
        max_pending_rendezvous=table.get_int(
            "max_pending_rendezvous", d.max_pending_rendezvous, minimum=1, maximum=10_000_000
        ),
        check_token_host=table.get_bool("check_token_host", d.check_token_host),
        public_hosts=_public_hosts(table),
        drain_timeout=table.get_float("drain_timeout", d.drain_timeout, maximum=3600),
        listener_takeover=table.get_bool("listener_takeover", d.listener_takeover),
        client_cert=_client_cert_mode(table),
        client_ca_file=table.get_str("client_ca_file"),
        tls_reload_interval=table.get_float(
            "tls_reload_interval", d.tls_reload_interval, maximum=86_400
        ),
        handshake_timeout=table.get_float(
            "handshake_timeout", d.handshake_timeout, minimum=0.1, maximum=600
        ),
        keepalive_timeout=table.get_float(
            "keepalive_timeout", d.keepalive_timeout, minimum=0.1, maximum=3600
        ),
        body_idle_timeout=table.get_float(
            "body_idle_timeout", d.body_idle_timeout, minimum=0.1, maximum=3600
        ),
        max_connections_per_ip=table.get_int(
            "max_connections_per_ip", d.max_connections_per_ip, minimum=1, maximum=10_000_000
        ),
        handshake_rate_per_ip=table.get_float(
            "handshake_rate_per_ip", d.handshake_rate_per_ip, minimum=0.1, maximum=1e9
        ),
        handshake_burst_per_ip=table.get_int(
            "handshake_burst_per_ip", d.handshake_burst_per_ip, minimum=1, maximum=10_000_000
        ),
        per_ip_limits_exempt=_networks(table, "per_ip_limits_exempt", d.per_ip_limits_exempt),
        max_pending_per_hc=table.get_int(
            "max_pending_per_hc", d.max_pending_per_hc, minimum=1, maximum=10_000_000
        ),
        max_queued_control_frames=table.get_int(
            "max_queued_control_frames", d.max_queued_control_frames, minimum=1, maximum=100_000
        ),
        max_token_lifetime=table.get_float(
            "max_token_lifetime", d.max_token_lifetime, minimum=0.0, maximum=100 * 366 * 86_400.0
        ),
        control_send_timeout=table.get_float(
            "control_send_timeout", d.control_send_timeout, minimum=0.1, maximum=600
        ),
        max_control_message_size=table.get_int(
            "max_control_message_size",
            d.max_control_message_size,
            minimum=CONTROL_MESSAGE_LIMIT,
            maximum=1 << 30,
        ),
        stream_buffer_size=table.get_int(
            "stream_buffer_size", d.stream_buffer_size, minimum=16 * 1024, maximum=1 << 30
        ),
        max_head_line_size=table.get_int(
            "max_head_line_size", d.max_head_line_size, minimum=1024, maximum=1 << 20
        ),
        max_headers=table.get_int("max_headers", d.max_headers, minimum=16, maximum=10_000),
        max_management_body_size=table.get_int(
            "max_management_body_size",
            d.max_management_body_size,
            minimum=64 * 1024,
            maximum=1 << 30,
        ),
        max_import_size=table.get_int(
            "max_import_size", d.max_import_size, minimum=1 << 20, maximum=1 << 40
        ),
        max_running_jobs=table.get_int(
            "max_running_jobs", d.max_running_jobs, minimum=1, maximum=1000
        ),
        token_cache_size=table.get_int(
            "token_cache_size", d.token_cache_size, minimum=0, maximum=10_000_000
        ),
        event_history=table.get_int("event_history", d.event_history, minimum=0, maximum=1_000_000),
        event_subscriber_queue=table.get_int(
            "event_subscriber_queue", d.event_subscriber_queue, minimum=1, maximum=1_000_000
        ),
        device_search_scan=table.get_int(
            "device_search_scan", d.device_search_scan, minimum=100, maximum=10_000_000
        ),
        device_timeline_entries=table.get_int(
            "device_timeline_entries", d.device_timeline_entries, minimum=1, maximum=10_000
        ),
        device_timeline_devices=table.get_int(
            "device_timeline_devices", d.device_timeline_devices, minimum=0, maximum=10_000_000
        ),
        allow_placeholder_keys=table.get_bool("allow_placeholder_keys", d.allow_placeholder_keys),
        dashboard_session_ttl=table.get_float(
            "dashboard_session_ttl", d.dashboard_session_ttl, minimum=60.0, maximum=86_400.0
        ),
        max_dashboard_sessions=table.get_int(
            "max_dashboard_sessions", d.max_dashboard_sessions, minimum=1, maximum=1_000_000
        ),
        dashboard_login_failures=table.get_int(
            "dashboard_login_failures", d.dashboard_login_failures, minimum=1, maximum=10_000
        ),
        dashboard_login_body_size=table.get_int(
            "dashboard_login_body_size",
            d.dashboard_login_body_size,
            minimum=1024,
            maximum=1 << 20,
        ),
        dashboard_viewers=tuple(table.str_list("dashboard_viewers")),
        inspector_requests=table.get_int(
            "inspector_requests", d.inspector_requests, minimum=1, maximum=10_000
        ),
        inspector_body_size=table.get_int(
            "inspector_body_size", d.inspector_body_size, minimum=0, maximum=1024 * 1024
        ),
        max_inspected_hcs=table.get_int(
            "max_inspected_hcs", d.max_inspected_hcs, minimum=1, maximum=10_000
        ),
        metrics_listen=_host_port(table, "metrics_listen"),
        dashboard_listen=_dashboard_listen(table, d.dashboard_listen),
        dashboard_hosts=_public_hosts(table, "dashboard_hosts"),
        max_metrics_hc_labels=table.get_int(
            "max_metrics_hc_labels", d.max_metrics_hc_labels, minimum=0, maximum=1_000_000
        ),
    )
    table.reject_unknown()
    if (s.tls_cert is None) != (s.tls_key is None):
        raise table.error("tls_cert", "tls_cert and tls_key must be given together")
    if s.client_cert != "none" and s.tls_cert is None:
        raise table.error("client_cert", "client certificates need TLS (tls_cert and tls_key)")
    if s.client_cert != "none" and not s.client_ca_file:
        raise table.error("client_ca_file", "required when client_cert is optional or required")
    if s.public_url:
        parts = urlsplit(s.public_url)
        try:
            _ = parts.port  # raises for a non-numeric or out-of-range port
        except ValueError as exc:
            raise table.error(
                "public_url", "must look like ws://host:port or wss://host (invalid port)"
            ) from exc
        if parts.scheme not in {"ws", "wss"} or not parts.hostname or parts.query:
            raise table.error("public_url", "must look like ws://host:port or wss://host")
    return s


def complete(config: RelayConfig, bound_port: int | None = None) -> RelayConfig:
    """Fill in the public URL from host and port once the real port is known."""
    s = config.relay
    if s.public_url:
        return config
    scheme = "wss" if s.tls_cert else "ws"
    host = s.host if s.host not in {"0.0.0.0", "::", ""} else "127.0.0.1"  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    port = bound_port if bound_port is not None else s.port
    return replace(config, relay=replace(s, public_url=f"{scheme}://{host}:{port}"))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """``[cluster]``: the shared Redis that several relay nodes keep their state in.

    It selects the Redis store (hybrid connections, rules, devices, certificates, change
    events shared by every node) and the Redis cluster state (listener presence with a
    heartbeat TTL, cross-node dispatch). ``node_id`` names this node (random by default);
    each node's ``[relay] public_url`` must reach that node itself, because listeners dial
    the rendezvous address on the sender's node.
    """

    redis_url: str
    prefix: str = "default"
    node_id: str | None = None
    presence_ttl: float = 10.0


_REDIS_NAME: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _cluster(top: Table, env: Mapping[str, str]) -> ClusterConfig | None:
    table = top.table("cluster")
    # Read the file's keys even when the environment overrides them (they are known keys).
    file_url, file_node = table.get_str("redis_url"), table.get_str("node_id")
    url = env.get("HYBRIDRELAY_REDIS_URL") or file_url
    prefix = table.get_str("prefix", "default") or "default"
    node_id = env.get("HYBRIDRELAY_NODE_ID") or file_node
    presence_ttl = table.get_float("presence_ttl", 10.0, minimum=1.0, maximum=300.0)
    table.reject_unknown()
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise table.error("redis_url", "must be a redis:// or rediss:// URL")
    # They become Redis key parts and CLIENT SETNAME values: no braces (hash tags), no spaces.
    for key, value in (("prefix", prefix), ("node_id", node_id)):
        if value is not None and not _REDIS_NAME.match(value):
            raise table.error(key, "must be 1-64 letters, digits, '.', '_' or '-'")
    return ClusterConfig(redis_url=url, prefix=prefix, node_id=node_id, presence_ttl=presence_ttl)


_RULE_SCHEMA: Final = Schema.of("name", "key", "secondary_key", "rights")
# Every key each table knows (unknown_keys_first), and which name files. [relay] is
# every RelaySettings field and every key with an environment override (all of them).
_PATH_KEYS: Final[Mapping[str, Field]] = {
    "tls_cert": Field.FILE,
    "tls_key": Field.FILE,
    "client_ca_file": Field.FILE,
    "data_dir": Field.DIR,
}
RELAY_SCHEMA: Final = Schema.of(
    relay=Schema(
        {
            **dict.fromkeys((f.name for f in fields(RelaySettings)), Field.VALUE),
            **dict.fromkeys(_ENV_TYPES, Field.VALUE),
            **_PATH_KEYS,
        }
    ),
    rules=_RULE_SCHEMA,
    hybrid_connections=Schema.of(
        "name",
        "requires_client_authorization",
        "http",
        "max_listeners",
        "request_timeout",
        rules=_RULE_SCHEMA,
    ),
    jwt_issuers=Schema.of(
        "issuer",
        "audience",
        "algorithms",
        "leeway",
        "rights_claim",
        "jwks_url",
        public_keys=Field.FILES,
        jwks_file=Field.FILE,
    ),
    webhooks=Schema.of(
        "url",
        "secret_header",
        "secret",
        "events",
        "max_attempts",
        "retry_base_delay",
        "retry_max_delay",
        "timeout",
        "queue_size",
    ),
    cluster=Schema.of("redis_url", "prefix", "node_id", "presence_ttl"),
)


def _resolve_files(
    settings: RelaySettings,
    source: str | None,
    in_file: Mapping[str, object],
    env: Mapping[str, str],
) -> RelaySettings:
    """Resolve the [relay] paths and check the files can be read.

    A path written in the file is relative to the file's directory; one from the
    environment (or the built-in ``data_dir`` default) to the working directory. A
    file that cannot be read is named with its key: ``relay.tls_cert: cannot read
    /etc/tls/cert.pem: No such file or directory``.
    """
    resolved: dict[str, str | None] = {}
    for key, kind in _PATH_KEYS.items():
        value: str | None = getattr(settings, key)
        resolved[key] = value
        env_name = f"HYBRIDRELAY_{key.upper()}"
        if not value:
            continue
        if env_name in env:
            path, where = Path(value), ("<environment>", env_name)
        elif source is not None and key in in_file:
            path, where = resolve_path(source, value), (source, f"relay.{key}")
        else:
            continue  # the built-in data_dir default: the working directory's
        if kind is Field.FILE:
            why = readable_file(path)
        else:
            why = f"{path} is not a directory" if path.exists() and not path.is_dir() else None
        if why:
            raise ConfigError(*where, why)
        resolved[key] = str(path)
    return replace(
        settings,
        tls_cert=resolved["tls_cert"],
        tls_key=resolved["tls_key"],
        client_ca_file=resolved["client_ca_file"],
        data_dir=resolved["data_dir"] or settings.data_dir,
    )


def load_relay_config(path: str | Path, env: Mapping[str, str] | None = None) -> RelayConfig:
    """Load, validate and freeze a relay config file; raises ConfigError.

    Unknown keys are reported first, all at once, with did-you-mean suggestions.
    """
    env = os.environ if env is None else env
    data = load_toml(path)
    return unknown_keys_first(data, RELAY_SCHEMA, str(path), lambda: _relay_config(path, data, env))


def _relay_config(path: str | Path, data: dict[str, object], env: Mapping[str, str]) -> RelayConfig:
    top = Table(data, path=str(path), prefix="")
    relay_raw = data.get("relay", {})
    if not isinstance(relay_raw, dict):
        raise top.error("relay", "must be a table")
    top._get("relay")
    settings = _settings(Table(_env_overrides(relay_raw, env), path=str(path), prefix="relay"))
    settings = _resolve_files(settings, str(path), relay_raw, env)
    rules = [_rule(t) for t in top.tables("rules")]
    _check_unique_rules(rules, top, "rules")
    hcs = [
        _hybrid_connection(t, settings.max_listeners_per_hc)
        for t in top.tables("hybrid_connections")
    ]
    seen: set[str] = set()
    for hc in hcs:
        if hc.name.lower() in seen:
            raise top.error("hybrid_connections", f"{hc.name!r} is defined twice")
        seen.add(hc.name.lower())
    jwt_issuers = _jwt_issuers(top, Path(path).parent)
    webhooks = tuple(_webhook(t) for t in top.tables("webhooks"))
    cluster = _cluster(top, env)
    top.reject_unknown()
    if not rules and not any(hc.rules for hc in hcs) and not jwt_issuers:
        raise top.error("rules", "no SAS rule is defined; nobody could listen")
    return RelayConfig(
        relay=settings,
        rules=tuple(rules),
        hybrid_connections=tuple(hcs),
        jwt_issuers=jwt_issuers,
        webhooks=webhooks,
        cluster=cluster,
        source=str(path),
    )


# What the example configs (deploy/, docs/, README) write where a key belongs, so that a
# copied example never serves with a key that is published in this repository.
PLACEHOLDER_MARKERS: Final = ("replace-with", "change-me", "changeme", "placeholder", "...")


def placeholder_keys(config: RelayConfig) -> list[str]:
    """The config keys (``rules[0].key``, ...) whose value is an example's placeholder."""
    found: list[str] = []
    scopes: list[tuple[str, tuple[RuleConfig, ...]]] = [("rules", config.rules)]
    scopes += [
        (f"hybrid_connections[{i}].rules", hc.rules)
        for i, hc in enumerate(config.hybrid_connections)
    ]
    for prefix, rules in scopes:
        for j, rule in enumerate(rules):
            for name, secret in (("key", rule.key), ("secondary_key", rule.secondary_key)):
                lowered = secret.value.lower() if secret is not None else ""
                if any(marker in lowered for marker in PLACEHOLDER_MARKERS):
                    found.append(f"{prefix}[{j}].{name}")
    return found


def refuse_placeholder_keys(config: RelayConfig) -> list[str]:
    """Raise ConfigError for a placeholder key unless ``allow_placeholder_keys`` is set.

    Returns:
        The placeholder keys let through (only with ``allow_placeholder_keys``).

    Raises:
        ConfigError: A rule key or secondary key is an example's placeholder.
    """
    found = placeholder_keys(config)
    if found and not config.relay.allow_placeholder_keys:
        raise ConfigError(
            config.source,
            found[0],
            "is a placeholder from an example config; put a random key here "
            "(e.g. openssl rand -base64 32)",
        )
    return found


def development_config(
    env: Mapping[str, str] | None = None, *, key: str | None = None
) -> RelayConfig:
    """The embedded default: one namespace rule, HCs created on first listen.

    The rule's key is ``key``, else ``HYBRIDRELAY_DEV_KEY``, else a fresh random one
    (``hybridrelay relay serve`` passes the one kept in ``data_dir``, see dev_key.py).
    """
    env = os.environ if env is None else env
    table = Table(_env_overrides({"auto_create": True}, env), path="<defaults>", prefix="relay")
    settings = _resolve_files(_settings(table), None, {}, env)
    key = key or env.get("HYBRIDRELAY_DEV_KEY") or secrets.token_urlsafe(32)
    rule = RuleConfig(
        name=DEV_RULE_NAME, key=Secret(key), rights=Rights.LISTEN | Rights.SEND | Rights.MANAGE
    )
    return RelayConfig(relay=settings, rules=(rule,), source="<development default>")


def data_dir(config: RelayConfig) -> Path:
    return Path(config.relay.data_dir)
