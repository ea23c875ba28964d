"""``hybridrelay check --config FILE``: is this relay, agent or forwarder config right?

Like ``frpc verify``: parse the file, tell its kind (from its tables, or ``--kind``),
validate it the way ``relay serve``, ``listen --config`` or ``forward --config``
would, resolve and open every file it names (TLS certificate and key, CA bundles,
key files), and print a short summary of what it found on stdout (exit 0). Mistakes
print one line each on stderr and exit 2: every unknown key and every unusable file
at once, then the first other mistake the loader finds (it stops there).

``--probe`` also asks the relay whether the token and the hybrid connection of each
mapping or binding would be accepted (``hybridrelay.probe``); a relay config probes
its own public URL for its hybrid connections. A refused token or an unknown hybrid
connection exits 2, an unreachable relay 1.

The config is read with the process environment, as the real command would read it
(``HYBRIDRELAY_*`` overrides, ``key_env`` variables): run it where the service runs.
Components are imported when a check runs (core never imports them at module level).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from hybridrelay.config import Schema, file_problems, load_toml, suggest, unknown_keys
from hybridrelay.errors import ConfigError, MultiConfigError, UnavailableError
from hybridrelay.protocol.sas import Rights, SasTokenProvider, TokenProvider

if TYPE_CHECKING:
    from hybridrelay.client.config import ForwardConfig
    from hybridrelay.listener.config import AgentConfig
    from hybridrelay.probe import ProbeResult
    from hybridrelay.relay.config import RelayConfig

__all__ = ["KINDS", "add_check_parser", "check_config", "detect_kind", "run_check"]

Kind = Literal["relay", "agent", "forwarder"]
KINDS: Final[tuple[Kind, ...]] = ("relay", "agent", "forwarder")
# The tables (or arrays of tables) only one kind has; "relay" counts only as a table.
_MARKERS: Final[Mapping[Kind, tuple[str, ...]]] = {
    "relay": ("relay", "rules", "hybrid_connections", "jwt_issuers", "webhooks", "cluster"),
    "agent": ("mappings",),
    "forwarder": ("bindings",),
}
PROBE_TIMEOUT: Final = 10.0


def add_check_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``check`` to ``sub`` (the root argparse subparsers action)."""
    check: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="validate a relay, agent or forwarder config file (and optionally probe the relay)",
        description="Parse and validate a relay, agent or forwarder config as the real command"
        " would, open every file it names, and print what it found (exit 0). Each mistake is one"
        " line on stderr (exit 2). Relative paths in the file resolve against its directory.",
    )
    check.add_argument("--config", metavar="FILE", required=True, help="the TOML file to check")
    check.add_argument(
        "--kind",
        choices=KINDS,
        help="the config's kind (default: told by its tables: [relay]/[[rules]],"
        " [[mappings]] or [[bindings]])",
    )
    check.add_argument(
        "--probe",
        action="store_true",
        help="also ask the relay whether each hybrid connection and token would be accepted"
        " (needs the relay running; unreachable: exit 1)",
    )
    return check


def detect_kind(data: Mapping[str, object], path: str) -> Kind:
    """The kind whose own tables ``data`` has.

    Raises:
        ConfigError: No kind or several kinds fit; the reason says to give ``--kind``.
    """
    found: list[Kind] = []
    for kind, markers in _MARKERS.items():
        for key in markers:
            value = data.get(key)
            if value is not None and (kind != "relay" or key != "relay" or isinstance(value, dict)):
                found.append(kind)
                break
    if len(found) == 1:
        return found[0]
    if found:
        raise _kind_error(path, f"has tables of {' and '.join(found)} configs")
    near = ""
    tables = {m for markers in _MARKERS.values() for m in markers}
    for key in data:
        hint = "" if key in tables else suggest(key, sorted(tables))
        if hint:
            near = f"; {key!r}{hint}"
            break
    raise _kind_error(path, f"has no [relay], [[rules]], [[mappings]] or [[bindings]] table{near}")


def _kind_error(path: str, why: str) -> ConfigError:
    return ConfigError(
        path,
        "",
        f"cannot tell a relay, agent or forwarder config: {why}; give --kind relay|agent|forwarder",
    )


@dataclass(frozen=True, slots=True)
class _Probe:
    where: str  # the config key the probed values come from
    relay: str
    hc: str
    tokens: TokenProvider | None
    action: Literal["connect", "listen"]
    ssl_context: ssl.SSLContext | None


@dataclass(frozen=True, slots=True)
class Checked:
    """A config that passed: its kind, the summary lines and what ``--probe`` would ask."""

    kind: Kind
    summary: list[str]
    probes: list[_Probe]


def _schema(kind: Kind) -> Schema:
    if kind == "relay":
        from hybridrelay.relay.config import RELAY_SCHEMA

        return RELAY_SCHEMA
    if kind == "agent":
        from hybridrelay.listener.config import AGENT_SCHEMA

        return AGENT_SCHEMA
    from hybridrelay.client.config import FORWARD_SCHEMA

    return FORWARD_SCHEMA


def _load(kind: Kind, path: str, env: Mapping[str, str]) -> Checked:
    if kind == "relay":
        from hybridrelay.relay.config import load_relay_config, refuse_placeholder_keys

        relay = load_relay_config(path, env)
        refuse_placeholder_keys(relay)  # relay serve refuses them too
        _relay_tls(relay)
        return Checked(kind, _relay_summary(relay), _relay_probes(relay))
    if kind == "agent":
        from hybridrelay.listener.config import load_agent_config

        agent = load_agent_config(path, env)
        _ca_bundle(agent.source, "ca_file", agent.ca_file)
        return Checked(kind, _agent_summary(agent), _agent_probes(agent))
    from hybridrelay.client.config import load_forward_config

    forward = load_forward_config(path, env)
    _ca_bundle(forward.source, "ca_file", forward.ca_file)
    return Checked(kind, _forward_summary(forward), _forward_probes(forward))


def _relay_tls(config: RelayConfig) -> None:
    """Load the certificate, key and client CAs as serving would (a bad PEM, a key that
    does not fit the certificate)."""
    s = config.relay
    if not (s.tls_cert and s.tls_key):
        return
    from hybridrelay.relay.serve import tls_context

    try:
        tls_context(
            s.tls_cert, s.tls_key, client_cert=s.client_cert, client_ca_file=s.client_ca_file
        )
    except ConfigError as exc:
        raise ConfigError(config.source, exc.key, exc.reason) from exc


def _ca_bundle(source: str, key: str, path: str | None) -> None:
    if path is None:
        return
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(source, key, f"{path} is not a PEM CA bundle: {exc}") from exc


def check_config(
    path: str, kind: Kind | None = None, env: Mapping[str, str] | None = None
) -> Checked:
    """Check one config file.

    Returns:
        What was found.

    Raises:
        ConfigError: A single mistake (the file is unreadable, not TOML, of no kind).
        MultiConfigError: Every mistake found: unknown keys, unusable files, then the
            loader's first other one.
    """
    env = os.environ if env is None else env
    data = load_toml(path)
    kind = kind or detect_kind(data, path)
    try:
        return _load(kind, path, env)
    except MultiConfigError as exc:
        found = list(exc.errors)
    except ConfigError as exc:
        found = [exc]
    # The loader stopped at its first mistake: look for the others it would have met.
    # (A file it loads has no unknown key and no unusable file; it has the last word.)
    schema = _schema(kind)
    files = file_problems(data, schema, path=path)
    if kind == "relay":  # a [relay] path the environment overrides is not the one used
        files = [
            f for f in files if f"HYBRIDRELAY_{f.key.removeprefix('relay.').upper()}" not in env
        ]
    problems = [*unknown_keys(data, schema, path=path), *files, *found]
    # The loader may report again what the scans found (the first unknown key, a file).
    unique: dict[tuple[str, str, str], ConfigError] = {}
    for problem in problems:
        unique.setdefault((problem.path, problem.key, problem.reason), problem)
    raise MultiConfigError(list(unique.values()))


# -- summaries: what was found, never a key ---------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _rights(rights: Rights) -> str:
    return "+".join(r.name.title() for r in Rights if r in rights and r.name) or "none"


def _relay_summary(config: RelayConfig) -> list[str]:
    from hybridrelay.relay.config import complete

    s = complete(config).relay
    shown_host = f"[{s.host}]" if ":" in s.host else s.host
    lines = [f"relay config {config.source}: OK"]
    tls = f", TLS {s.tls_cert}" if s.tls_cert else ", no TLS (ws://)"
    if s.client_cert != "none":
        tls += f", client certificates {s.client_cert} (CAs {s.client_ca_file})"
    if config.relay.port == 0 and not config.relay.public_url:
        lines.append(f"  listens on {shown_host}, any free port{tls}")
    else:
        lines.append(f"  listens on {shown_host}:{s.port}{tls}; public URL {s.public_url}")
    if config.cluster is not None:
        redis = config.cluster.redis_url.split("@")[-1].split("://")[-1]  # no password
        lines.append(f"  store: Redis {redis} (prefix {config.cluster.prefix})")
    else:
        lines.append(f"  store: SQLite in {Path(s.data_dir)}")
    rules = ", ".join(f"{r.name} ({_rights(r.rights)})" for r in config.rules)
    lines.append(
        f"  {_plural(len(config.rules), 'namespace rule')}" + (f": {rules}" if rules else "")
    )
    hcs = ", ".join(hc.name for hc in config.hybrid_connections)
    lines.append(
        f"  {_plural(len(config.hybrid_connections), 'hybrid connection')}"
        + (f": {hcs}" if hcs else "")
        + (" (others created on first listen)" if s.auto_create else "")
    )
    if config.jwt_issuers or config.webhooks:
        lines.append(
            f"  {_plural(len(config.jwt_issuers), 'JWT issuer')},"
            f" {_plural(len(config.webhooks), 'webhook')}"
        )
    return lines


def _agent_summary(config: AgentConfig) -> list[str]:
    lines = [
        f"agent config {config.source}: OK",
        f"  agent {config.agent_id} -> {', '.join(config.relays)}"
        + (f" (CA {config.ca_file})" if config.ca_file else ""),
    ]
    if config.status is not None:
        host, port = config.status
        lines.append(f"  status on {host}:{port}")
    for m in config.mappings:
        channels = _plural(m.connections, "connection")
        who = f"device {m.device_id}" if m.device_id is not None else f"rule {m.key_name}"
        lines.append(f"  mapping {m.hc} -> {m.target} ({who}, {channels})")
    return lines


def _forward_summary(config: ForwardConfig) -> list[str]:
    lines = [
        f"forwarder config {config.source}: OK",
        f"  relay {config.relay}" + (f" (CA {config.ca_file})" if config.ca_file else ""),
    ]
    for b in config.bindings:
        local = f"{b.host}:{b.port}" if b.transport == "tcp" else f"udp://{b.host}:{b.port}"
        who = (
            f"device {b.device_id}"
            if b.device_id is not None
            else f"rule {b.key_name}"
            if b.key_name
            else "anonymous"
        )
        lines.append(f"  binding {local} -> {b.hc} ({who})")
    return lines


# -- probes --------------------------------------------------------------------------------


def _agent_probes(config: AgentConfig) -> list[_Probe]:
    ctx = ssl.create_default_context(cafile=config.ca_file) if config.ca_file else None
    return [
        _Probe(f"mappings[{i}]", relay, m.hc, m.token_provider(), "listen", ctx)
        for relay in config.relays
        for i, m in enumerate(config.mappings)
    ]


def _forward_probes(config: ForwardConfig) -> list[_Probe]:
    ctx = ssl.create_default_context(cafile=config.ca_file) if config.ca_file else None
    found: list[_Probe] = []
    for i, b in enumerate(config.bindings):
        found.append(
            _Probe(f"bindings[{i}]", config.relay, b.hc, b.token_provider(), "connect", ctx)
        )
    return found


def _relay_probes(config: RelayConfig) -> list[_Probe]:
    """Each configured hybrid connection, listened on at the relay's own public URL with
    the first rule that may listen (the entity's own first)."""
    from hybridrelay.relay.config import complete

    if config.relay.port == 0 and not config.relay.public_url:
        return []  # any free port: nothing to dial
    url = complete(config).relay.public_url
    ctx: ssl.SSLContext | None = None
    if config.relay.tls_cert:
        # The relay's certificate may be private or self-signed: trust it for this probe.
        ctx = ssl.create_default_context(cafile=config.relay.tls_cert)
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    found: list[_Probe] = []
    for i, hc in enumerate(config.hybrid_connections):
        rule = next((r for r in (*hc.rules, *config.rules) if Rights.LISTEN in r.rights), None)
        tokens = SasTokenProvider(rule.name, rule.key.value) if rule else None
        found.append(_Probe(f"hybrid_connections[{i}]", url, hc.name, tokens, "listen", ctx))
    return found


async def _run_probes(probes: list[_Probe]) -> list[ProbeResult]:
    from hybridrelay.probe import probe_relay

    return list(
        await asyncio.gather(
            *(
                probe_relay(
                    p.relay,
                    p.hc,
                    token_provider=p.tokens,
                    action=p.action,
                    ssl_context=p.ssl_context,
                    timeout=PROBE_TIMEOUT,
                )
                for p in probes
            )
        )
    )


def _probe(checked: Checked, path: str, out: Callable[[str], None]) -> None:
    """Probe each mapping, binding or hybrid connection; print a line each.

    Raises:
        MultiConfigError: The relay refused a token or knows no such hybrid connection.
        UnavailableError: A relay could not be reached (nothing about the config is known).
    """
    from hybridrelay.probe import ProbeOutcome

    probes = checked.probes
    if not probes:
        out("  probe: nothing to probe (no hybrid connection, or port 0 without public_url)")
        return
    # A listener without a SAS rule (JWT or device listeners only) has nothing to show.
    for p in probes:
        if p.action == "listen" and p.tokens is None:
            out(f"  probe {p.where}: {p.hc}: not probed (no SAS rule may listen on it)")
    probes = [p for p in probes if p.action != "listen" or p.tokens is not None]
    results = asyncio.run(_run_probes(probes))
    mistakes: list[ConfigError] = []
    unreachable: list[str] = []
    for p, r in zip(probes, results, strict=True):
        target = f"{p.hc} at {p.relay} ({p.action})"
        if r.ok:
            online = (
                f", {_plural(r.listeners, 'listener')} online" if r.listeners is not None else ""
            )
            out(f"  probe {p.where}: {target}: accepted{online}")
        elif r.fatal:
            mistakes.append(ConfigError(path, p.where, f"{target}: {r.outcome.value}: {r.detail}"))
        elif r.outcome is ProbeOutcome.UNSUPPORTED:
            out(f"  probe {p.where}: {target}: cannot tell ({r.detail})")
        else:
            unreachable.append(f"{p.where}: {target}: {r.outcome.value}: {r.detail}")
    if mistakes:
        raise MultiConfigError(mistakes)
    if unreachable:
        raise UnavailableError("probe " + "; ".join(unreachable))


def run_check(args: argparse.Namespace) -> None:
    """``hybridrelay check``: the summary on stdout; mistakes raise (the CLI prints them)."""
    path = str(args.config)
    checked = check_config(path, args.kind)

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    for line in checked.summary:
        out(line)
    if args.probe:
        _probe(checked, path, out)
