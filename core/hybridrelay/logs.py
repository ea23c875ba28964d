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
    "redact_url",
]

RELAY: Final = "hybridrelay.relay"
ACCESS: Final = "hybridrelay.relay.access"
LISTENER: Final = "hybridrelay.listener"
CLIENT: Final = "hybridrelay.client"
CLUSTER: Final = "hybridrelay.cluster"
BRIDGE: Final = "hybridrelay.bridge"

_SECRET_PARAM = re.compile(r"(?i)((?:^|[?&;])(?:sb-hc-token|sig|sb-hc-rdv|token)=)[^&;#]*")


def redact_url(url: str) -> str:
    """Replace the values of token-like query parameters with ``***``."""
    return _SECRET_PARAM.sub(r"\1***", url)


# Attributes every LogRecord has; anything else came in through extra=.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


def _kv(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


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
        parts.extend(f"{k}={_kv(v)}" for k, v in _extras(record).items())
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
