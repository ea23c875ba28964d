"""``hybridrelay admin``: the management API (``/$mgmt/v1``) from the command line.

    export HYBRIDRELAY_ADMIN_RELAY=http://127.0.0.1:8080
    export HYBRIDRELAY_ADMIN_KEY_NAME=RootManageSharedAccessKey
    export HYBRIDRELAY_ADMIN_KEY=...            # or --key-env VAR / --key-file FILE
    export HYBRIDRELAY_ADMIN_CA_FILE=ca.pem     # an https relay with its own CA
    hybridrelay admin hc create sensors --max-listeners 5
    hybridrelay admin device list --table
    hybridrelay admin device disable dev-1 --reason lost

Output is JSON: one document, or one document per line for lists (``--table`` for
columns). Keys are left out of every answer unless ``--keys`` asks for them.
Exit codes: 0 done, 1 the API answered an error (status, code and message on
stderr) or the relay could not be reached, 2 usage or configuration error (an
https relay whose certificate does not verify is one: the error names the URL,
the reason and ``--ca-file`` / ``HYBRIDRELAY_ADMIN_CA_FILE``). An option given on
the command line wins over its environment variable.

This module only builds the parser and runs the commands; the HTTP calls are
:class:`hybridrelay.client.admin.AdminClient` (imported when a command runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from hybridrelay.durations import DURATION_HELP, duration_arg, parse_duration
from hybridrelay.errors import ConfigError

if TYPE_CHECKING:
    from hybridrelay.client.admin import AdminClient, Document

__all__ = ["add_admin_parser", "run_admin"]

ENV_RELAY: Final = "HYBRIDRELAY_ADMIN_RELAY"
ENV_KEY_NAME: Final = "HYBRIDRELAY_ADMIN_KEY_NAME"
ENV_KEY: Final = "HYBRIDRELAY_ADMIN_KEY"
ENV_CA_FILE: Final = "HYBRIDRELAY_ADMIN_CA_FILE"
EXIT_API: Final = 1
EXIT_CONFIG: Final = 2
_WHERE: Final = "<command line>"
_AUTH_TYPES: Final = {
    "sas": "sas",
    "x509-thumbprint": "selfSigned",
    "x509-ca": "certificateAuthority",
}
_HIDDEN_KEY_NOTE: Final = "keys are left out; add --keys to show them"
_RULE_HC_HELP: Final = "a rule of this hybrid connection (default: a namespace rule)"
# The syntax relay/store/models.py Grants checks and matches (fnmatchcase, lower-cased).
GRANT_PATTERNS_HELP: Final = (
    "PATTERN is a hybrid connection name or a pattern: * matches any run of characters,"
    " '/' included, and ? one character; case does not matter. Allowed: letters, digits,"
    " '.', '_', '-', '/', '*', '?' (no [...] sets; not first: '.', '_', '-', '/'), at most"
    " 260 characters, at most 100"
    " patterns per device. A device listens or sends only where one of its patterns"
    " matches. Quote patterns in the shell: --grant-send 'sensors/*'."
)


# --- parser ---------------------------------------------------------------------------------


def _bool_text(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError("must be true or false")


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an integer") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return value


_TAIL_HELP: Final = """\
Print the relay's lifecycle events, one JSON document per line, as they happen
(GET /$mgmt/v1/events), until Ctrl-C or --count. Every management change is an
event: devices created, updated, disabled, enabled, given new keys or deleted;
hybrid connections and SAS rules created, changed or deleted; rule keys
regenerated; CA certificates; bulk jobs; listeners coming online or going
offline. No event carries a key.

--since replays what the relay still keeps (its last [relay] event_history
events, 1,000 by default, since it started) before the live events:
  --since 0                      everything kept
  --since 42                     the events after sequenceNumber 42 (resume)
  --since 10m                    the events of the last ten minutes (1h30m, 2d...)
  --since 2026-01-31T12:00:00Z   the events at or after that time
With --count N the command ends after N events, so --since ... --count N
returns at once when the relay kept that many. Sequence numbers are a relay
node's own and start again when it restarts."""


def _since(text: str) -> tuple[str, str]:
    """``--since``: ("id", N) for a sequence number, else ("time", ISO 8601 UTC)."""
    import datetime as dt

    value = text.strip()
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return "id", str(int(value))  # plain digits: a sequenceNumber, not seconds
    with contextlib.suppress(ValueError):
        ago = dt.timedelta(seconds=parse_duration(value))
        then = dt.datetime.now(dt.UTC) - ago
        return "time", then.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    try:
        when = dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            "must be a sequence number, a duration such as 10m or an ISO 8601 time"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError("an ISO 8601 time needs a zone, e.g. Z")
    return "time", when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _common() -> argparse.ArgumentParser:
    """Connection and output options, accepted before or after the subcommand."""
    p = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    p.add_argument("--relay", metavar="URL", help=f"relay URL (env {ENV_RELAY})")
    p.add_argument(
        "--key-name", metavar="NAME", help=f"namespace rule with Manage (env {ENV_KEY_NAME})"
    )
    key = p.add_mutually_exclusive_group()
    key.add_argument(
        "--key-env", metavar="VAR", help=f"read the key from this variable (default {ENV_KEY})"
    )
    key.add_argument("--key-file", metavar="FILE", help="read the key from this file")
    p.add_argument(
        "--ca-file",
        metavar="FILE",
        help=f"trust this CA bundle for https relays (env {ENV_CA_FILE})",
    )
    p.add_argument("--table", action="store_true", help="print a table instead of JSON")
    return p


def _leaf(
    sub: Any, name: str, common: argparse.ArgumentParser, help_text: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[common], help=help_text, allow_abbrev=False
    )
    parser.set_defaults(admin_action=name)
    return parser


def _hc_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-client-auth",
        dest="client_auth",
        action="store_false",
        default=None,
        help="senders need no token",
    )
    p.add_argument(
        "--client-auth",
        dest="client_auth",
        action="store_true",
        default=None,
        help="senders need a token",
    )
    p.add_argument("--http", type=_bool_text, metavar="true|false", help="allow HTTP requests")
    p.add_argument(
        "--max-listeners", type=int, metavar="N", help="listeners it may have at once (1-10000)"
    )
    p.add_argument(
        "--request-timeout",
        type=duration_arg(),
        metavar="DURATION",
        help=f"HTTP mode: wait this long for the listener's response ({DURATION_HELP})",
    )
    p.add_argument("--metadata", metavar="TEXT", help="user metadata")
    p.add_argument("--etag", help="only while the entity still has this etag (If-Match)")


def _device_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--grant-listen",
        action="append",
        metavar="PATTERN",
        help="may listen on the hybrid connections PATTERN matches (repeatable; see below)",
    )
    p.add_argument(
        "--grant-send",
        action="append",
        metavar="PATTERN",
        help="may send to the hybrid connections PATTERN matches (repeatable; see below)",
    )
    p.add_argument("--auth", choices=sorted(_AUTH_TYPES), help="authentication type (default sas)")
    p.add_argument(
        "--primary-thumbprint",
        metavar="HEX",
        help="x509-thumbprint: SHA-1 or SHA-256 of the device's certificate",
    )
    p.add_argument(
        "--secondary-thumbprint", metavar="HEX", help="x509-thumbprint: a second certificate"
    )
    p.add_argument("--keys", action="store_true", help="show the device's keys")


def add_admin_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``admin`` and its subcommands to ``sub`` (an argparse subparsers action)."""
    common = _common()
    admin: argparse.ArgumentParser = sub.add_parser(
        "admin",
        parents=[common],
        help="manage hybrid connections, rules and devices",
        allow_abbrev=False,
    )
    groups = admin.add_subparsers(dest="admin_group", required=True)

    hc = groups.add_parser("hc", help="hybrid connections", allow_abbrev=False).add_subparsers(
        dest="admin_action", required=True
    )
    p = _leaf(hc, "list", common, "list hybrid connections")
    p.add_argument("--top", type=_page_size, metavar="N", help="page size")
    p = _leaf(hc, "show", common, "show one hybrid connection")
    p.add_argument("name", help="hybrid connection name")
    p = _leaf(hc, "create", common, "create a hybrid connection (fails when it exists)")
    p.add_argument("name", help="hybrid connection name")
    _hc_fields(p)
    p = _leaf(hc, "update", common, "change the fields given")
    p.add_argument("name", help="hybrid connection name")
    _hc_fields(p)
    p = _leaf(hc, "delete", common, "delete a hybrid connection")
    p.add_argument("name", help="hybrid connection name")
    p.add_argument("--etag", help="only while it still has this etag")
    p = _leaf(hc, "metrics", common, "its Azure-named counters on the node answering")
    p.add_argument("name", help="hybrid connection name")

    rule = groups.add_parser(
        "rule", help="SAS rules (namespace, or --hc NAME)", allow_abbrev=False
    ).add_subparsers(dest="admin_action", required=True)
    p = _leaf(rule, "list", common, "list rules (without keys)")
    p.add_argument("--hc", metavar="NAME", help=_RULE_HC_HELP)
    p = _leaf(rule, "show", common, "show one rule")
    p.add_argument("rule", help="rule name")
    p.add_argument("--hc", metavar="NAME", help=_RULE_HC_HELP)
    p.add_argument("--keys", action="store_true", help="show its keys")
    p = _leaf(rule, "create", common, "create a rule, or change its rights")
    p.add_argument("rule", help="rule name")
    p.add_argument("--rights", required=True, help="comma-separated: Listen,Send,Manage")
    p.add_argument("--hc", metavar="NAME", help=_RULE_HC_HELP)
    p.add_argument("--keys", action="store_true", help="show its keys")
    p = _leaf(rule, "delete", common, "delete a rule")
    p.add_argument("rule", help="rule name")
    p.add_argument("--hc", metavar="NAME", help=_RULE_HC_HELP)
    p = _leaf(rule, "regenerate", common, "replace a key of a rule")
    p.add_argument("rule", help="rule name")
    p.add_argument(
        "--key",
        dest="key_type",
        required=True,
        choices=("primary", "secondary"),
        help="which key gets a new random value",
    )
    p.add_argument("--hc", metavar="NAME", help=_RULE_HC_HELP)
    p.add_argument("--keys", action="store_true", help="show the new keys")

    device = groups.add_parser("device", help="devices", allow_abbrev=False).add_subparsers(
        dest="admin_action", required=True
    )
    p = _leaf(device, "list", common, "list devices")
    p.add_argument("--top", type=_page_size, metavar="N", help="page size")
    p = _leaf(device, "show", common, "show one device")
    p.add_argument("device_id", metavar="ID", help="device id")
    p.add_argument("--keys", action="store_true", help="show its keys")
    p = _leaf(device, "create", common, "create a device (fails when it exists)")
    p.add_argument("device_id", metavar="ID", help="device id")
    _device_fields(p)
    p.epilog = GRANT_PATTERNS_HELP
    p = _leaf(device, "update", common, "change grants or authentication (GET + PUT If-Match)")
    p.add_argument("device_id", metavar="ID", help="device id")
    _device_fields(p)
    p.epilog = (
        GRANT_PATTERNS_HELP + " On update, --grant-listen or --grant-send replaces that list."
    )
    p.add_argument("--etag", help="only while it still has this etag (default: the one read)")
    p = _leaf(device, "delete", common, "delete a device")
    p.add_argument("device_id", metavar="ID", help="device id")
    p.add_argument("--etag", help="only while it still has this etag")
    p = _leaf(device, "disable", common, "disable a device (cuts its live streams)")
    p.add_argument("device_id", metavar="ID", help="device id")
    p.add_argument("--reason", metavar="TEXT", help="status reason, shown with the device")
    p = _leaf(device, "enable", common, "enable a device")
    p.add_argument("device_id", metavar="ID", help="device id")
    p = _leaf(device, "search", common, "devices matching every term given (deviceId order)")
    p.add_argument("--prefix", metavar="TEXT", help="deviceId starts with this (case-sensitive)")
    p.add_argument("--contains", metavar="TEXT", help="deviceId contains this (any case)")
    p.add_argument("--status", choices=("enabled", "disabled"), help="only this status")
    p.add_argument(
        "--connection-state",
        choices=("connected", "disconnected"),
        help="only devices in this connection state",
    )
    p.add_argument("--top", type=_page_size, metavar="N", help="page size")
    p.add_argument("--keys", action="store_true", help="show the devices' keys")
    p = _leaf(device, "regenerate-key", common, "give a SAS device a new random key")
    p.add_argument("device_id", metavar="ID", help="device id")
    p.add_argument(
        "--key",
        dest="key_type",
        required=True,
        choices=("primary", "secondary"),
        help="which key gets a new random value (the other keeps working)",
    )
    p.add_argument("--keys", action="store_true", help="show the new keys")
    p = _leaf(device, "timeline", common, "its connects, disconnects and auth failures")
    p.add_argument("device_id", metavar="ID", help="device id")
    p = _leaf(device, "connection-string", common, "the connection string a device client reads")
    p.description = (
        "HostName=<relay host>;DeviceId=<id>;SharedAccessKey=<key>, with the host of --relay "
        "(the relay's public name when that is what you reach it by). It holds the key: "
        "printed on stdout only."
    )
    p.add_argument("device_id", metavar="ID", help="device id")
    p.add_argument("--secondary", action="store_true", help="with the secondary key")

    nodes = groups.add_parser(
        "nodes", help="the cluster's relay nodes", allow_abbrev=False
    ).add_subparsers(dest="admin_action", required=True)
    _leaf(nodes, "list", common, "the live nodes, the answering one first")
    p = _leaf(nodes, "drain", common, "drain a node: no new work, listeners sent elsewhere")
    p.add_argument("node_id", metavar="ID", help="node id (nodes list)")
    p = _leaf(nodes, "undrain", common, "take a drain back: the node serves again")
    p.add_argument("node_id", metavar="ID", help="node id (nodes list)")

    inspector = groups.add_parser(
        "inspector",
        help="the HTTP inspector of the node answering (HTTP-mode requests it recorded)",
        allow_abbrev=False,
    ).add_subparsers(dest="admin_action", required=True)
    for action, text in (
        ("on", "record the hybrid connection's HTTP requests"),
        ("off", "stop recording and forget what was recorded"),
        ("show", "whether it records, and its bounds"),
        ("list", "the recorded requests, newest first"),
    ):
        p = _leaf(inspector, action, common, text)
        p.add_argument("name", help="hybrid connection name")
    p = _leaf(inspector, "get", common, "one recorded request (redacted headers, capped bodies)")
    p.add_argument("name", help="hybrid connection name")
    p.add_argument("record_id", metavar="ID", help="record id (inspector list)")
    p = _leaf(inspector, "replay", common, "send a recorded request again, as a sender")
    p.add_argument("name", help="hybrid connection name")
    p.add_argument("record_id", metavar="ID", help="record id (inspector list)")
    p.add_argument("--method", help="instead of the recorded method")
    p.add_argument("--target", help="instead of the recorded path and query (same HC)")
    p.add_argument(
        "--header",
        action="append",
        metavar="NAME:VALUE",
        help="replace the recorded headers with these (repeatable)",
    )
    p.add_argument("--body", metavar="TEXT", help="instead of the recorded body (UTF-8)")

    p = groups.add_parser(
        "import",
        parents=[common],
        help="bulk import devices from a JSON Lines file (an import job)",
        allow_abbrev=False,
    )
    p.add_argument("file", metavar="FILE.jsonl", help="one device document per line")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p = groups.add_parser(
        "export",
        parents=[common],
        help="export every device (keys included) to a JSON Lines file",
        allow_abbrev=False,
    )
    p.add_argument("file", metavar="FILE.jsonl", help="written here, one device per line")
    events = groups.add_parser(
        "events", help="lifecycle events", allow_abbrev=False
    ).add_subparsers(dest="admin_action", required=True)
    p = _leaf(events, "tail", common, "print the relay's lifecycle events as JSON lines")
    p.description = _TAIL_HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="first replay the kept events after sequence number ID (0: all kept), "
        "or from a time: a duration ago (30s, 10m, 1h30m, 1d) or an ISO 8601 time",
    )
    p.add_argument(
        "--count",
        type=_count,
        metavar="N",
        help="stop after N events, replayed ones included",
    )
    return admin


# --- settings -------------------------------------------------------------------------------


def _opt(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, name, None)


def _read_key(args: argparse.Namespace) -> str:
    key_file = _opt(args, "key_file")
    if key_file:
        try:
            key = Path(key_file).read_text("utf-8").strip()
        except OSError as exc:
            raise ConfigError(key_file, "", f"cannot read key file: {exc.strerror}") from exc
        if not key:
            raise ConfigError(key_file, "", "the key file is empty")
        return key
    var = _opt(args, "key_env") or ENV_KEY
    value = os.environ.get(var, "").strip()
    if not value:
        raise ConfigError(
            "<environment>", var, "is not set (give --key-env VAR, --key-file FILE or set it)"
        )
    return value


@dataclass(frozen=True, slots=True)
class _Settings:
    """Where the relay URL and the CA bundle came from, for the errors that name them."""

    relay_from: str
    ca_file: str | None
    ca_from: str | None


def _setting(args: argparse.Namespace, name: str, flag: str, env: str) -> tuple[str, str] | None:
    """(value, where it came from): the flag wins over the environment variable."""
    value = _opt(args, name)
    if value:
        return str(value), flag
    value = os.environ.get(env, "").strip()
    return (value, env) if value else None


def _client(args: argparse.Namespace) -> tuple[AdminClient, _Settings]:
    from hybridrelay.client.admin import AdminClient

    relay = _setting(args, "relay", "--relay", ENV_RELAY)
    if relay is None:
        raise ConfigError(_WHERE, "--relay", f"is required (or set {ENV_RELAY})")
    key_name = _opt(args, "key_name") or os.environ.get(ENV_KEY_NAME)
    if not key_name:
        raise ConfigError(_WHERE, "--key-name", f"is required (or set {ENV_KEY_NAME})")
    key = _read_key(args)
    ca = _setting(args, "ca_file", "--ca-file", ENV_CA_FILE)
    context: ssl.SSLContext | None = None
    if ca is not None:
        try:
            context = ssl.create_default_context(cafile=ca[0])
        except (OSError, ssl.SSLError) as exc:
            where = _WHERE if ca[1] == "--ca-file" else "<environment>"
            raise ConfigError(where, ca[1], f"cannot load CA bundle {ca[0]}: {exc}") from exc
    try:
        client = AdminClient(relay[0], key_name, key, ssl_context=context)
    except ValueError as exc:
        raise ConfigError(_WHERE, relay[1], str(exc)) from exc
    return client, _Settings(relay[1], *(ca or (None, None)))


def _tls_failure(url: str, settings: _Settings, exc: Exception) -> str:
    """One line: the URL, why its certificate was refused, and what to do about it."""
    cert_error = getattr(exc, "certificate_error", None)
    verify_message = getattr(cert_error, "verify_message", None)
    if verify_message:
        reason = f"certificate verify failed: {verify_message}"
    else:
        reason = str(cert_error or exc)
    if "hostname" in reason.lower():
        hint = f"use a host the certificate names in the relay URL ({settings.relay_from})"
    elif settings.ca_file is None:
        hint = (
            f"pass --ca-file FILE or set {ENV_CA_FILE} to the CA that signed the relay's "
            f"certificate"
        )
    else:
        hint = (
            f"the CA bundle {settings.ca_file} (from {settings.ca_from}) did not verify it; "
            f"check that file and the relay URL (from {settings.relay_from})"
        )
    return (
        f"cannot verify the TLS certificate of {url} (from {settings.relay_from}): {reason}; {hint}"
    )


# --- output ---------------------------------------------------------------------------------

_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "hc": (
        "name",
        "listenerCount",
        "maxListeners",
        "requiresClientAuthorization",
        "http",
        "configOwned",
    ),
    "rule": ("name", "rights", "configOwned", "primaryKey", "secondaryKey"),
    "device": (
        "deviceId",
        "status",
        "connectionState",
        "authentication.type",
        "grants.listen",
        "grants.send",
    ),
    "nodes": ("id", "address", "listeners", "streams", "pendingRendezvous", "draining"),
    "inspector": ("id", "method", "target", "status", "receivedAt", "duration", "error"),
}
# Answers that are no row of their group's table (--table prints them as JSON).
_NOT_TABLES: Final = frozenset(
    {
        ("hc", "metrics"),
        ("device", "timeline"),
        ("device", "connection-string"),
        ("inspector", "on"),
        ("inspector", "off"),
        ("inspector", "show"),
        ("inspector", "get"),
        ("inspector", "replay"),
        ("nodes", "drain"),
        ("nodes", "undrain"),
    }
)


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _field(doc: Document, dotted: str) -> str:
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _print_table(group: str, docs: list[Document]) -> None:
    columns = [c for c in _COLUMNS[group] if not c.endswith("Key") or any(c in d for d in docs)]
    rows = [columns] + [[_field(d, c) for c in columns] for d in docs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        _out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _as_table(args: argparse.Namespace) -> bool:
    return bool(_opt(args, "table")) and (args.admin_group, args.admin_action) not in _NOT_TABLES


def _emit(args: argparse.Namespace, doc: Document) -> None:
    if _as_table(args):
        _print_table(args.admin_group, [doc])
    else:
        _out(json.dumps(doc, indent=2, ensure_ascii=False))


async def _emit_all(args: argparse.Namespace, docs: AsyncIterator[Document]) -> None:
    if _as_table(args):
        _print_table(args.admin_group, [d async for d in docs])
        return
    async for doc in docs:
        _out(json.dumps(doc, ensure_ascii=False))
    sys.stdout.flush()


async def _iterate(docs: Iterable[Document]) -> AsyncIterator[Document]:
    for doc in docs:
        yield doc


def _hide_rule_keys(args: argparse.Namespace, doc: Document) -> Document:
    if not _opt(args, "keys"):
        doc.pop("primaryKey", None)
        doc.pop("secondaryKey", None)
    return doc


def _hide_device_keys(args: argparse.Namespace, doc: Document) -> Document:
    auth = doc.get("authentication")
    if not _opt(args, "keys") and isinstance(auth, dict):
        keys = auth.get("symmetricKey")
        if isinstance(keys, dict) and any(keys.values()):
            auth["symmetricKey"] = {"note": _HIDDEN_KEY_NOTE}
        elif isinstance(keys, dict):
            auth.pop("symmetricKey")
    return doc


# --- commands -------------------------------------------------------------------------------


def _hc_body(args: argparse.Namespace) -> dict[str, object]:
    body: dict[str, object] = {}
    if args.client_auth is not None:
        body["requiresClientAuthorization"] = args.client_auth
    if args.http is not None:
        body["http"] = args.http
    if args.max_listeners is not None:
        body["maxListeners"] = args.max_listeners
    if args.request_timeout is not None:
        body["requestTimeout"] = args.request_timeout
    if args.metadata is not None:
        body["userMetadata"] = args.metadata
    return body


async def _hc(client: AdminClient, args: argparse.Namespace) -> None:
    from hybridrelay.client.admin import AdminApiError

    action = args.admin_action
    if action == "list":
        await _emit_all(args, client.list_hybrid_connections(page_size=args.top))
    elif action == "show":
        _emit(args, await client.get_hybrid_connection(args.name))
    elif action == "create":
        try:
            await client.get_hybrid_connection(args.name)
        except AdminApiError as exc:
            if exc.status != 404:
                raise
        else:
            raise AdminApiError(
                409, "Conflict", f"hybrid connection {args.name!r} exists (use hc update)"
            )
        doc = await client.put_hybrid_connection(args.name, _hc_body(args))
        _emit(args, doc)
    elif action == "update":
        body = _hc_body(args)
        if not body:
            raise ConfigError(_WHERE, "hc update", "give at least one field to change")
        _emit(args, await client.update_hybrid_connection(args.name, body, if_match=args.etag))
    elif action == "delete":
        await client.delete_hybrid_connection(args.name, if_match=args.etag)
    elif action == "metrics":
        _emit(args, await client.hybrid_connection_metrics(args.name))


def _rights(text: str) -> list[str]:
    names = {"listen": "Listen", "send": "Send", "manage": "Manage"}
    rights: list[str] = []
    for part in text.split(","):
        name = names.get(part.strip().lower())
        if name is None:
            raise ConfigError(_WHERE, "--rights", f"{part.strip()!r} is not Listen, Send or Manage")
        if name not in rights:
            rights.append(name)
    return rights


async def _rule(client: AdminClient, args: argparse.Namespace) -> None:
    action = args.admin_action
    if action == "list":
        rules = await client.list_rules(args.hc)
        await _emit_all(args, _iterate(_hide_rule_keys(args, r) for r in rules))
    elif action == "show":
        _emit(args, _hide_rule_keys(args, await client.get_rule(args.rule, args.hc)))
    elif action == "create":
        doc = await client.put_rule(args.rule, _rights(args.rights), args.hc)
        _emit(args, _hide_rule_keys(args, doc))
    elif action == "delete":
        await client.delete_rule(args.rule, args.hc)
    elif action == "regenerate":
        doc = await client.regenerate_key(args.rule, args.key_type, args.hc)
        _emit(args, _hide_rule_keys(args, doc))


def _device_auth(args: argparse.Namespace, current: object) -> dict[str, object] | None:
    given = args.auth or args.primary_thumbprint or args.secondary_thumbprint
    if not given:
        return None
    auth: dict[str, object] = dict(current) if isinstance(current, dict) else {}
    kind = _AUTH_TYPES[args.auth] if args.auth else str(auth.get("type") or "sas")
    auth["type"] = kind
    if kind == "sas":
        if args.primary_thumbprint or args.secondary_thumbprint:
            raise ConfigError(_WHERE, "--primary-thumbprint", "needs --auth x509-thumbprint")
        auth.pop("x509Thumbprint", None)
        return auth
    auth["symmetricKey"] = None
    if kind == "selfSigned":
        old = auth.get("x509Thumbprint")
        prints: dict[str, object] = dict(old) if isinstance(old, dict) else {}
        if args.primary_thumbprint:
            prints["primaryThumbprint"] = args.primary_thumbprint
        if args.secondary_thumbprint:
            prints["secondaryThumbprint"] = args.secondary_thumbprint
        if not prints.get("primaryThumbprint"):
            raise ConfigError(_WHERE, "--primary-thumbprint", "is required for x509-thumbprint")
        auth["x509Thumbprint"] = prints
    else:
        if args.primary_thumbprint or args.secondary_thumbprint:
            raise ConfigError(_WHERE, "--primary-thumbprint", "needs --auth x509-thumbprint")
        auth["x509Thumbprint"] = None
    return auth


def _device_changes(args: argparse.Namespace, current: Document) -> dict[str, object]:
    changes: dict[str, object] = {}
    if args.grant_listen is not None or args.grant_send is not None:
        old = current.get("grants")
        grants: dict[str, object] = dict(old) if isinstance(old, dict) else {}
        if args.grant_listen is not None:
            grants["listen"] = list(args.grant_listen)
        if args.grant_send is not None:
            grants["send"] = list(args.grant_send)
        grants.setdefault("listen", [])
        grants.setdefault("send", [])
        changes["grants"] = grants
    auth = _device_auth(args, current.get("authentication"))
    if auth is not None:
        changes["authentication"] = auth
    return changes


async def _device(client: AdminClient, args: argparse.Namespace) -> None:
    action = args.admin_action
    if action == "list":
        docs = client.list_devices(page_size=args.top)

        async def hidden() -> AsyncIterator[Document]:
            async for doc in docs:
                yield _hide_device_keys(args, doc)

        await _emit_all(args, hidden())
    elif action == "show":
        _emit(args, _hide_device_keys(args, await client.get_device(args.device_id)))
    elif action == "create":
        body = _device_changes(args, {})
        _emit(args, _hide_device_keys(args, await client.create_device(args.device_id, body)))
    elif action == "update":
        current = await client.get_device(args.device_id)
        changes = _device_changes(args, current)
        if not changes:
            raise ConfigError(_WHERE, "device update", "give at least one field to change")
        etag = args.etag or str(current.get("etag") or "*")
        doc = await client.replace_device(args.device_id, {**current, **changes}, if_match=etag)
        _emit(args, _hide_device_keys(args, doc))
    elif action == "delete":
        await client.delete_device(args.device_id, if_match=args.etag)
    elif action in ("disable", "enable"):
        reason = _opt(args, "reason") if action == "disable" else None
        doc = await client.set_device_status(
            args.device_id, "disabled" if action == "disable" else "enabled", reason=reason
        )
        _emit(args, _hide_device_keys(args, doc))
    elif action == "search":
        found = client.search_devices(
            prefix=args.prefix,
            contains=args.contains,
            status=args.status,
            connection_state=args.connection_state,
            page_size=args.top,
        )

        async def hidden_found() -> AsyncIterator[Document]:
            async for doc in found:
                yield _hide_device_keys(args, doc)

        await _emit_all(args, hidden_found())
    elif action == "regenerate-key":
        doc = await client.regenerate_device_key(args.device_id, args.key_type)
        _emit(args, _hide_device_keys(args, doc))
    elif action == "timeline":
        _emit(args, await client.device_timeline(args.device_id))
    elif action == "connection-string":
        _out(_connection_string(client, await client.get_device(args.device_id), args.secondary))


def _connection_string(client: AdminClient, device: Document, secondary: bool) -> str:
    """IoT Hub's format, as the dashboard shows it (protocol.device_sas reads it)."""
    from hybridrelay.client.admin import AdminApiError

    auth = device.get("authentication")
    keys = auth.get("symmetricKey") if isinstance(auth, dict) else None
    key = (
        keys.get("secondaryKey" if secondary else "primaryKey") if isinstance(keys, dict) else None
    )
    if not isinstance(key, str) or not key:
        raise AdminApiError(
            409, "NoSymmetricKey", f"device {device.get('deviceId')!r} has no SAS key"
        )
    host = urlsplit(client.base_url).netloc
    return f"HostName={host};DeviceId={device.get('deviceId')};SharedAccessKey={key}"


async def _nodes(client: AdminClient, args: argparse.Namespace) -> None:
    action = args.admin_action
    if action == "list":
        doc = await client.list_nodes()
        nodes = [n for n in doc.get("value") or [] if isinstance(n, dict)]
        await _emit_all(args, _iterate(nodes))
    else:
        _emit(args, await client.drain_node(args.node_id, drain=action == "drain"))


def _replay_edits(args: argparse.Namespace) -> dict[str, object]:
    edits: dict[str, object] = {}
    if args.method:
        edits["method"] = args.method
    if args.target:
        edits["target"] = args.target
    if args.header:
        pairs: list[list[str]] = []
        for text in args.header:
            name, sep, value = text.partition(":")
            if not sep or not name.strip():
                raise ConfigError(_WHERE, "--header", f"{text!r} is not NAME:VALUE")
            pairs.append([name.strip(), value.strip()])
        edits["headers"] = pairs
    if args.body is not None:
        edits["body"] = args.body
    return edits


async def _inspector(client: AdminClient, args: argparse.Namespace) -> None:
    action = args.admin_action
    if action in ("on", "off"):
        _emit(args, await client.set_inspector(args.name, enabled=action == "on"))
    elif action == "show":
        _emit(args, await client.get_inspector(args.name))
    elif action == "list":
        await _emit_all(args, _iterate(await client.list_inspected_requests(args.name)))
    elif action == "get":
        _emit(args, await client.get_inspected_request(args.name, args.record_id))
    elif action == "replay":
        edits = _replay_edits(args)
        _emit(args, await client.replay_inspected_request(args.name, args.record_id, edits))


class _ProgressBar:
    """``[#####.....]  45%  1.2/2.6 MiB`` on stderr, redrawn as bytes go out."""

    WIDTH: Final = 30

    def __init__(self) -> None:
        self._shown = -1

    def __call__(self, sent: int, total: int) -> None:
        percent = 100 if total <= 0 else min(100, sent * 100 // total)
        if percent == self._shown:
            return
        self._shown = percent
        filled = self.WIDTH * percent // 100
        bar = "#" * filled + "." * (self.WIDTH - filled)
        mib = 1024 * 1024
        sys.stderr.write(f"\r[{bar}] {percent:3d}%  {sent / mib:.1f}/{total / mib:.1f} MiB")
        sys.stderr.flush()

    def done(self) -> None:
        if self._shown >= 0:
            sys.stderr.write("\n")
            sys.stderr.flush()


async def _import(client: AdminClient, args: argparse.Namespace) -> None:
    from hybridrelay.client.admin import AdminApiError

    path = Path(args.file)
    if not await asyncio.to_thread(path.is_file):
        raise ConfigError(str(path), "", "is not a readable file")
    bar = None if args.no_progress else _ProgressBar()
    try:
        job = await client.start_import(path, progress=bar)
    finally:
        if bar is not None:
            bar.done()
    job = await client.wait_job(str(job["jobId"]))
    _emit(args, job)
    if job.get("status") != "completed":
        raise AdminApiError(500, "JobFailed", str(job.get("failureReason") or "the job failed"))
    if job.get("failed"):
        raise AdminApiError(
            400, "ImportErrors", f"{job['failed']} line(s) were refused (see errors)"
        )


async def _export(client: AdminClient, args: argparse.Namespace) -> None:
    from hybridrelay.client.admin import AdminApiError

    job = await client.wait_job(str((await client.start_export())["jobId"]))
    if job.get("status") != "completed":
        _emit(args, job)
        raise AdminApiError(500, "JobFailed", str(job.get("failureReason") or "the job failed"))
    size = await client.download_export(str(job["jobId"]), args.file)
    sys.stderr.write(f"wrote {job.get('deviceCount')} devices ({size} bytes) to {args.file}\n")
    _emit(args, job)


async def _events(client: AdminClient, args: argparse.Namespace) -> None:
    seen = 0
    since = args.since
    stream = client.events(
        last_event_id=since[1] if since is not None and since[0] == "id" else None,
        since=since[1] if since is not None and since[0] == "time" else None,
    )
    async for event in stream:
        _out(json.dumps(event, ensure_ascii=False))
        sys.stdout.flush()
        seen += 1
        if args.count is not None and seen >= args.count:
            return


_GROUPS: Final[dict[str, Callable[[AdminClient, argparse.Namespace], Awaitable[None]]]] = {
    "hc": _hc,
    "rule": _rule,
    "device": _device,
    "import": _import,
    "export": _export,
    "events": _events,
    "nodes": _nodes,
    "inspector": _inspector,
}


def run_admin(args: argparse.Namespace) -> None:
    """Run one ``admin`` command.

    Raises:
        ConfigError: Missing relay, key name or key, or a bad option (exit 2).
        SystemExit: With 1 when the API answered an error or the relay was
            unreachable; the reason is on stderr.
    """
    import aiohttp

    from hybridrelay.client.admin import AdminApiError

    client, settings = _client(args)

    async def body() -> None:
        async with client:
            await _GROUPS[args.admin_group](client, args)

    try:
        asyncio.run(body())
    except AdminApiError as exc:
        sys.stderr.write(f"hybridrelay: {exc.status} {exc.code}: {exc.message}\n")
        raise SystemExit(EXIT_API) from None
    except aiohttp.ClientConnectorCertificateError as exc:
        # Retrying cannot help: the relay is reached but not trusted (a configuration error).
        sys.stderr.write(f"hybridrelay: {_tls_failure(client.base_url, settings, exc)}\n")
        raise SystemExit(EXIT_CONFIG) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        sys.stderr.write(
            f"hybridrelay: cannot reach {client.base_url} (from {settings.relay_from}): {reason}\n"
        )
        raise SystemExit(EXIT_API) from None
