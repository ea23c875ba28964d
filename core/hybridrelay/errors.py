"""The one exception tree of hybridrelay.

Every error the relay, listener or client raises on purpose derives from
:class:`HybridRelayError`. Each class carries the HTTP status a relay answers a
handshake with (``http_status``), the WebSocket close code it closes an open
socket with (``close_code``) and the Azure-style error code used in JSON error
bodies (``error_code``); the values follow the protocol doc, Part 1 §7.
``relay/middleware.py`` is the only place that turns them into responses. An error
raised because a limit against hostile peers was hit names it (``limit``, a key of
docs/security.md's table), and the middleware counts it in
``hybridrelay_limit_refusals{limit}``.

    HybridRelayError
    ├── ConfigError(path, key, reason)
    │   └── MultiConfigError(errors)       several at once (every unknown key of a file)
    ├── ProtocolError                      400 / 1002
    │   ├── InvalidAddressError            400
    │   ├── InvalidMessageError            400 / 1002
    │   │   └── UnknownMessageKindError    a well-formed message of a kind this side does not know
    │   └── PayloadTooBigError             413 / 1009
    ├── AuthError                          401 (TokenMissingOrInvalid)
    │   ├── TokenExpiredError              401 / 1008
    │   ├── TokenLifetimeError             401 / 1008: se beyond max_token_lifetime
    │   └── ForbiddenError                 403
    ├── EntityNotFoundError                404
    ├── QuotaExceededError                 403
    ├── ListenerConflictError              409
    ├── NoListenerError                    404 (WebSocket) / 502 (HTTP mode)
    ├── RendezvousError                    403
    ├── RejectedError(status, description) listener's own status
    ├── UpstreamTimeoutError               504
    ├── BadGatewayError                    502
    ├── UnavailableError                   503 (Retry-After when retrying helps)
    ├── RequestTimeoutError                408: a sender's head or body stalled
    ├── RateLimitedError                   429 + Retry-After: a per-source cap
    ├── HandshakeError(status, reason)     a non-101 answer seen by a WebSocket client
    ├── ConnectionClosedError(code, reason)
    ├── ValidationError(field, reason)     400 (ArgumentInvalid): a management input is invalid
    ├── ConflictError                      409: exists already, config-owned, concurrent change
    └── PreconditionFailedError            412: If-Match names another etag

An error raised because a limit against hostile peers was hit names that limit
(``limit``, the config key in docs/security.md) and may say when a retry can
succeed (``retry_after``, seconds); the middleware counts the one and sends the
other as ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

__all__ = [
    "AuthError",
    "BadGatewayError",
    "ConfigError",
    "ConflictError",
    "ConnectionClosedError",
    "EntityNotFoundError",
    "ForbiddenError",
    "HandshakeError",
    "HeadersTooLargeError",
    "HybridRelayError",
    "InvalidAddressError",
    "InvalidMessageError",
    "ListenerConflictError",
    "MethodNotAllowedError",
    "MultiConfigError",
    "NoListenerError",
    "PayloadTooBigError",
    "PreconditionFailedError",
    "ProtocolError",
    "QuotaExceededError",
    "RateLimitedError",
    "RejectedError",
    "RendezvousError",
    "RequestTimeoutError",
    "TokenExpiredError",
    "TokenLifetimeError",
    "UnavailableError",
    "UnknownMessageKindError",
    "UpstreamTimeoutError",
    "ValidationError",
]


class HybridRelayError(Exception):
    """Base class of every error hybridrelay raises on purpose."""

    http_status: ClassVar[int] = 500
    close_code: ClassVar[int] = 1011
    error_code: ClassVar[str] = "InternalServerError"
    # The limit against hostile peers (its docs/security.md name) this refusal enforces,
    # if any: a subclass may fix it, a raise may name it. And seconds until a retry may
    # succeed, if known (Retry-After).
    limit: str | None = None
    retry_after: int | None = None

    def __init__(
        self, *args: object, limit: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(*args)
        if limit is not None:
            self.limit = limit
        if retry_after is not None:
            self.retry_after = retry_after


class ConfigError(HybridRelayError):
    """A configuration file or option is invalid."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        where = f"{path}: " if path else ""
        what = f"{key}: " if key else ""
        super().__init__(f"{where}{what}{reason}")


class MultiConfigError(ConfigError):
    """Several config mistakes found at once; ``errors`` holds each (at least one).

    It reads as its first error (path, key, reason, str), so a caller that expects a
    single ConfigError still sees a sensible one; the CLI prints every line.
    """

    def __init__(self, errors: list[ConfigError]) -> None:
        if not errors:
            raise ValueError("MultiConfigError needs at least one error")
        first = errors[0]
        super().__init__(first.path, first.key, first.reason)
        self.errors = tuple(errors)


class ProtocolError(HybridRelayError):
    """The peer broke the wire protocol."""

    http_status = 400
    close_code = 1002
    error_code = "BadRequest"


class InvalidAddressError(ProtocolError):
    """A ``/$hc/...`` URL, its query or an entity path is malformed."""


class InvalidMessageError(ProtocolError):
    """A control-channel message is not one valid single-key JSON object."""


class UnknownMessageKindError(InvalidMessageError):
    """A single-key JSON object whose key names no message kind of HC §3.

    Its own class so that a listener can tell a kind added by a newer relay (dropped,
    forward compatibility) from a broken message (counted towards closing the channel).
    """


class PayloadTooBigError(ProtocolError):
    """A message or header block is larger than the limit for its place."""

    http_status = 413
    close_code = 1009
    error_code = "PayloadTooLarge"


class MethodNotAllowedError(ProtocolError):
    """An HTTP sender used a method the relay does not relay (``CONNECT``)."""

    http_status = 405
    error_code = "MethodNotAllowed"


class HeadersTooLargeError(ProtocolError):
    """An HTTP request's headers are over what the control channel carries (HC §9)."""

    http_status = 431
    error_code = "RequestHeaderFieldsTooLarge"
    limit = "inline_headers_limit"  # HC §9: 32 KiB of headers on the control channel


class AuthError(HybridRelayError):
    """The token is missing, malformed, badly signed or from an unknown rule."""

    http_status = 401
    close_code = 1008
    error_code = "TokenMissingOrInvalid"


class TokenExpiredError(AuthError):
    """The token's ``se`` lies in the past (beyond the grace period)."""


class TokenLifetimeError(AuthError):
    """The token's expiry lies further ahead than ``max_token_lifetime`` allows.

    A leaked token should not stay good for years: the relay caps how far ahead a
    token it accepts may expire, whoever signed it.
    """

    limit = "max_token_lifetime"


class ForbiddenError(AuthError):
    """The token is valid but lacks the right or the scope for this action."""

    http_status = 403
    error_code = "Forbidden"


class EntityNotFoundError(HybridRelayError):
    """No hybrid connection matches the path."""

    http_status = 404
    error_code = "EndpointNotFound"


class QuotaExceededError(HybridRelayError):
    """A limit such as the listeners per hybrid connection is reached."""

    http_status = 403
    error_code = "QuotaExceeded"


class ListenerConflictError(HybridRelayError):
    """A listener with the same sb-hc-id is connected and takeover is off."""

    http_status = 409
    error_code = "Conflict"


class NoListenerError(HybridRelayError):
    """No listener is online for the hybrid connection (HC §7: 404 for WebSocket senders)."""

    http_status = 404
    error_code = "EndpointNotFound"


class RendezvousError(HybridRelayError):
    """A rendezvous address is unknown, already used or expired."""

    http_status = 403
    error_code = "RendezvousInvalid"


class RejectedError(HybridRelayError):
    """The listener rejected the sender with its own status and description."""

    error_code = "Rejected"

    def __init__(self, status: int, description: str) -> None:
        self.status = status
        self.description = description
        super().__init__(f"rejected by the listener: {status} {description}")


class UpstreamTimeoutError(HybridRelayError):
    """The listener did not answer in time."""

    http_status = 504
    error_code = "GatewayTimeout"


class BadGatewayError(HybridRelayError):
    """The listener (or its target) failed after it was chosen."""

    http_status = 502
    error_code = "BadGateway"


class UnavailableError(HybridRelayError):
    """The relay takes no new work right now (draining, overloaded)."""

    http_status = 503
    close_code = 1001
    error_code = "ServiceUnavailable"


class RequestTimeoutError(HybridRelayError):
    """A sender's request head or body stalled longer than the relay waits (RFC 9110 §15.5.9)."""

    http_status = 408
    close_code = 1008
    error_code = "RequestTimeout"


class RateLimitedError(HybridRelayError):
    """A source address is over its share (connections or requests per second)."""

    http_status = 429
    close_code = 1008
    error_code = "TooManyRequests"


class HandshakeError(HybridRelayError):
    """A WebSocket opening handshake got a non-101 answer (seen by clients)."""

    def __init__(
        self, status: int, reason: str, body: str = "", *, headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.reason = reason
        self.body = body  # an excerpt: the first few KiB at most
        self.headers: Mapping[str, str] = headers or {}  # names in lower case
        detail = f": {body}" if body else ""
        super().__init__(f"handshake failed with HTTP {status} {reason}{detail}")


class ConnectionClosedError(HybridRelayError):
    """The WebSocket connection closed; carries the close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed: {code} {reason}".rstrip())


class ValidationError(HybridRelayError):
    """A management input is invalid: a bad deviceId, an oversized field, a bad page token."""

    http_status = 400
    error_code = "ArgumentInvalid"

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class ConflictError(HybridRelayError):
    """The write conflicts with the stored state: the entity exists, or the config owns it."""

    http_status = 409
    error_code = "Conflict"


class PreconditionFailedError(HybridRelayError):
    """An ``If-Match`` etag does not match the stored entity's etag."""

    http_status = 412
    error_code = "PreconditionFailed"
