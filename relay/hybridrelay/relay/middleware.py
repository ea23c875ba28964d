"""The one place that turns errors into HTTP answers: status, JSON body, tracking id.

Every refusal carries a tracking id (HC §2.2: "the status description carries
a tracking id") in the body, the reason phrase and the ``TrackingId`` header,
so an operator can find the matching log line. A peer never sees a traceback.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from hybridrelay.errors import AuthError, HybridRelayError, MethodNotAllowedError, RejectedError
from hybridrelay.logs import RELAY, redact_url
from hybridrelay.relay.admission import FrontDoorProtocol
from hybridrelay.relay.device_timeline import TIMELINES, note_auth_failure
from hybridrelay.relay.metrics import RelayMetrics
from hybridrelay.relay.sources import REFUSED_SOURCES
from hybridrelay.relay.state import HC_NAME, STATE

__all__ = ["ACTION_KEY", "METRICS_KEY", "error_middleware", "error_response"]

log = logging.getLogger(RELAY)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REASON_LIMIT: Final = 200
METRICS_KEY: Final = web.AppKey("hybridrelay_metrics_for_errors", RelayMetrics)
ACTION_KEY: Final = web.RequestKey("hybridrelay_hc_action", str)


def _phrase(text: str) -> str:
    # A reason phrase is one line of visible ASCII (RFC 9112 §4).
    clean = "".join(c if 32 <= ord(c) < 127 else " " for c in text)
    return clean[:_REASON_LIMIT].strip() or "Error"


def error_response(
    status: int, code: str, message: str, *, reason: str | None = None
) -> web.Response:
    tracking_id = uuid.uuid4().hex
    body = {"error": {"code": code, "message": message, "trackingId": tracking_id}}
    return web.Response(
        status=status,
        reason=_phrase(f"{reason or message} TrackingId:{tracking_id}"),
        text=json.dumps(body),
        content_type="application/json",
        headers={"TrackingId": tracking_id},
    )


def _action(request: web.Request) -> str:
    action = request.get(ACTION_KEY)
    return action if isinstance(action, str) else "http"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "CONNECT":
        # aiohttp parses a CONNECT target as authority-form, so no route ever matches it.
        _count(request, 405)
        return error_response(405, MethodNotAllowedError.error_code, "CONNECT is not relayed")
    try:
        return await handler(request)
    except RejectedError as exc:
        status = exc.status if 400 <= exc.status <= 599 else 400
        _count(request, status)
        log.info("sender_rejected", extra={"status": status, "path": redact_url(request.path)})
        return error_response(
            status, exc.error_code, exc.description or "Rejected", reason=exc.description
        )
    except HybridRelayError as exc:
        _count(request, exc.http_status)
        timelines = request.app.get(TIMELINES)
        state = request.app.get(STATE)
        if isinstance(exc, AuthError) and timelines is not None and state is not None:
            # A registered device's refusal goes on its timeline.
            note_auth_failure(
                timelines,
                state.now,
                request,
                status=exc.http_status,
                reason=str(exc),
                hc_name=request.get(HC_NAME),
                action=_action(request),
            )
        fields: dict[str, object] = {
            "status": exc.http_status,
            "action": _action(request),
            "reason": str(exc),
            "path": redact_url(request.path),
        }
        protocol = request.protocol
        if exc.limit is not None and isinstance(protocol, FrontDoorProtocol):
            # A limit's refusals come in floods: their lines share the front door's budget.
            protocol.front_door.note("request_refused", **fields)
        else:
            log.info("request_refused", extra=fields)
        response = error_response(exc.http_status, exc.error_code, str(exc))
        _limit_refusal(request, response, exc)
        return response
    except web.HTTPException as exc:
        _count(request, exc.status)
        return error_response(exc.status, "HttpError", exc.reason)
    except (ConnectionError, TimeoutError) as exc:
        # The client went away mid-request; there is no one to answer.
        log.info("client_gone", extra={"error": type(exc).__name__, "action": _action(request)})
        raise
    except Exception:  # top level of a request: log our bug, never show it to the peer
        log.exception("internal_error", extra={"path": redact_url(request.path)})
        _count(request, 500)
        return error_response(500, "InternalServerError", "internal error")


def _limit_refusal(request: web.Request, response: web.Response, exc: HybridRelayError) -> None:
    """A refusal by a limit against hostile peers: counted, with Retry-After, 408s close."""
    if exc.limit is not None:
        metrics = request.app.get(METRICS_KEY)
        if metrics is not None:
            metrics.limit_hit(exc.limit)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    if exc.http_status == 408:
        # The sender's body stalled: the connection cannot carry another request, and
        # reading out the rest of its body (aiohttp's lingering close) only keeps it.
        response.force_close()
        protocol = request.protocol
        if isinstance(protocol, FrontDoorProtocol):
            protocol.close_without_lingering()


def _count(request: web.Request, status: int) -> None:
    metrics = request.app.get(METRICS_KEY)
    if metrics is not None:
        metrics.rejected(status, _action(request), request.get(HC_NAME))
    sources = request.app.get(REFUSED_SOURCES)
    if sources is not None and status != 404:
        # 404s are mostly senders racing a listener's start; the rest are worth a name.
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if isinstance(peer, tuple) and peer:
            sources.add(str(peer[0]))
