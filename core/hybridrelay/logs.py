"""Logger names, key=value and JSON formatters, per-connection adapters, URL redaction.

Messages are snake_case events; details go in ``extra=`` and are rendered as
``key=value`` pairs by default or as one JSON object per line. Secrets never
reach a log line: URLs pass through :func:`redact_url`, and keys are
:class:`~hybridrelay.config.Secret` objects.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, Literal

__all__ = [
    "ACCESS",
    "BRIDGE",
    "CLIENT",
    "LISTENER",
    "RELAY",
    "ConnectionLogger",
    "configure_logging",
    "host_port",
    "peer_text",
    "redact_url",
]

RELAY: Final = "hybridrelay.relay"
ACCESS: Final = "hybridrelay.relay.access"
LISTENER: Final = "hybridrelay.listener"
CLIENT: Final = "hybridrelay.client"
BRIDGE: Final = "hybridrelay.bridge"

_SECRET_PARAM = re.compile(r"(?i)((?:^|[?&;])(?:sb-hc-token|sig|sb-hc-rdv|token)=)[^&;#]*")


def redact_url(url: str) -> str:
    """Replace the values of token-like query parameters with ``***``."""
    return _SECRET_PARAM.sub(r"\1***", url)


def host_port(host: str, port: int | str) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:8080``) as in a URL."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_text(peername: object) -> str:
    """A socket's ``peername`` for a log line: ``host:port`` / ``[addr]:port``, never a tuple.

    IPv4 gives ``(host, port)``, IPv6 ``(host, port, flowinfo, scope_id)``; a Unix socket's
    peer is a path (often empty), and an unknown peer is None: ``-`` then.
    """
    if isinstance(peername, tuple) and len(peername) >= 2:
        return host_port(str(peername[0]), str(peername[1]))
    if isinstance(peername, str | bytes) and peername:
        return peername if isinstance(peername, str) else peername.decode("utf-8", "replace")
    return "-"


# Attributes every LogRecord has; anything else came in through extra=.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


# A log line never carries a control character raw: C0 (CR and LF forge lines, ESC starts
# terminal escape sequences), DEL and C1 (0x9B is a one-byte CSI). Peers put them into
# paths, headers and ids; every rendered value is escaped, in both formats.
# Values holding these, or any character str.isprintable() refuses, are written as JSON
# strings, whose ensure_ascii escaping covers C0, DEL, C1 and everything beyond ASCII (a
# backslash is quoted too, so that a raw one is never read as an escape).
_KV_QUOTE: Final = frozenset(' "=\\')
_PLAIN_KEY: Final = re.compile(r"[A-Za-z0-9_.-]+")


def _kv(value: object) -> str:
    text = str(value)
    # isprintable() is False for every control character, and also for lone surrogates,
    # line/paragraph separators and bidi overrides, which garble a line as well.
    if not text or not text.isprintable() or not _KV_QUOTE.isdisjoint(text):
        return json.dumps(text)
    return text


def _key(name: str) -> str:
    # extra= keys come from our code, but a peer-chosen key would be a forging lever too.
    return name if _PLAIN_KEY.fullmatch(name) else json.dumps(name)


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info logger=... event=... key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_kv(record.getMessage())}",
        ]
        parts.extend(f"{_key(k)}={_kv(v)}" for k, v in _extras(record).items())
        if record.exc_info:
            parts.append(f"exc={_kv(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        # ensure_ascii (the default) escapes every control character, keys included.
        return json.dumps(doc, default=str)


def configure_logging(level: str = "info", fmt: Literal["kv", "json"] = "kv") -> None:
    """Install one stderr handler on the root logger with the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log would repeat ours and print raw query strings.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class ConnectionLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds the connection's context (conn, hc, listener, tracking_id) to every record."""

    def __init__(self, logger: logging.Logger, context: Mapping[str, object]) -> None:
        super().__init__(logger, dict(context))

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs
