"""serve_managed(): the one entry point of every ``/$mgmt/v1`` resource handler.

Method table -> identify the caller -> require Manage -> the resource's own call object
-> the operation -> one audit line. Written once so that every resource (hybrid
connections, rules, devices, nodes, certificates, jobs, the HTTP inspector) refuses,
audits and counts the same way: a 405 names the allowed methods, a 403 is audited with
its caller, a caller that went away is audited as 499 (a store write may still have
completed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

from aiohttp import web

from hybridrelay.errors import HybridRelayError
from hybridrelay.relay.mgmt.access import Manager, identify, require_manage
from hybridrelay.relay.mgmt.audit import audit_write
from hybridrelay.relay.middleware import ACTION_KEY, error_response
from hybridrelay.relay.state import STATE

__all__ = ["method_not_allowed", "serve_managed"]

Call = TypeVar("Call")


async def serve_managed(
    request: web.Request,
    operations: Mapping[str, Callable[[Call], Awaitable[web.StreamResponse]]],
    make_call: Callable[[Manager], Awaitable[Call]],
) -> web.StreamResponse:
    """Run the operation ``request.method`` names, for a caller with the Manage right.

    ``make_call`` builds what the operation takes from the authorized manager (it may
    look the resource up and raise, e.g. a 404, which is audited like any refusal).
    """
    request[ACTION_KEY] = "mgmt"
    operation = operations.get(request.method)
    if operation is None:
        return method_not_allowed(request, sorted(operations))
    manager: Manager | None = None
    status, error = 500, "InternalServerError"
    try:
        # Identify first, then require Manage, so that a 403 is audited with its caller.
        manager = await identify(request, request.app[STATE])
        response = await operation(await make_call(require_manage(manager)))
        status, error = response.status, ""
        return response
    except HybridRelayError as exc:
        status, error = exc.http_status, exc.error_code
        raise
    except web.HTTPException as exc:  # e.g. 413 from reading an oversized body
        status, error = exc.status, "HttpError"
        raise
    except asyncio.CancelledError:
        # The client went away; a store write may still have completed.
        status, error = 499, "ClientClosedRequest"
        raise
    finally:
        audit_write(
            request, who=manager.who if manager else None, status=status, error=error or None
        )


def method_not_allowed(request: web.Request, allowed: Iterable[str]) -> web.Response:
    """405 naming the allowed methods (``Allow`` too), audited without a caller."""
    listed = ", ".join(allowed)
    audit_write(request, who=None, status=405, error="MethodNotAllowed")
    refusal = error_response(
        405, "MethodNotAllowed", f"{request.method} is not allowed here (allowed: {listed})"
    )
    refusal.headers["Allow"] = listed
    return refusal
