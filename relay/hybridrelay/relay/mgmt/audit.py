"""The audit trail of the management API: one line per write, never a secret.

Each write (PUT, PATCH, POST, DELETE) under ``/$mgmt/v1`` logs exactly one INFO
line ``mgmt_write`` on the ``hybridrelay.relay.audit`` logger, whatever its outcome:
refusals are included (401 and routing refusals 404/405 have ``who="-"``; a 403
names the caller the token proved).
The fields are who (``sas:{rule}``, ``jwt:{subject}`` or ``-``), what
(``method``, ``resource``: the request path, without the query), ``status``,
``error`` (the error code of a refusal, e.g. ``PreconditionFailed``, else ``-``) and
``peer``; the time is the record's own. Request bodies, keys and tokens never
reach this logger: the resource path carries names only.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from hybridrelay.logs import peer_text

__all__ = ["AUDIT", "WRITE_METHODS", "audit_write"]

AUDIT: Final = "hybridrelay.relay.audit"
WRITE_METHODS: Final = frozenset({"PUT", "PATCH", "POST", "DELETE"})

log = logging.getLogger(AUDIT)


def _peer(request: web.Request) -> str:
    return peer_text(request.transport.get_extra_info("peername") if request.transport else None)


def audit_write(
    request: web.Request, *, who: str | None, status: int, error: str | None = None
) -> None:
    """Log one write to the management API (a no-op for reads)."""
    if request.method not in WRITE_METHODS:
        return
    log.info(
        "mgmt_write",
        extra={
            "who": who or "-",
            "method": request.method,
            "resource": request.path,
            "status": status,
            "error": error or "-",
            "peer": _peer(request),
        },
    )
