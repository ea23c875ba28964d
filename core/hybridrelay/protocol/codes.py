"""Close codes, statuses and limits of the Hybrid Connections protocol (HC Part 1 §7, §9)."""

from __future__ import annotations

from enum import IntEnum
from typing import Final

__all__ = [
    "CONTROL_MESSAGE_LIMIT",
    "INLINE_BODY_LIMIT",
    "INLINE_HEADERS_LIMIT",
    "MAX_LISTENERS_PER_HC",
    "RENDEZVOUS_TIMEOUT_S",
    "CloseCode",
    "fits_inline",
]


class CloseCode(IntEnum):
    """WebSocket close codes (RFC 6455 §7.4.1) with their meaning in HC §7."""

    NORMAL = 1000  # listener (or sender) shut the socket down
    GOING_AWAY = 1001  # sender shut down, entity deleted/disabled, relay draining
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never on the wire
    ABNORMAL = 1006  # never on the wire: the TCP connection dropped
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008  # token expired or renewal refused
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011  # service error, peer vanished
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


CONTROL_MESSAGE_LIMIT: Final = 64 * 1024  # NET's control-channel receive buffer (HC §3)
INLINE_BODY_LIMIT: Final = 64 * 1024  # larger HTTP bodies go over rendezvous (HC §4)
INLINE_HEADERS_LIMIT: Final = 32 * 1024  # header block cap on the control channel (HC §9)
RENDEZVOUS_TIMEOUT_S: Final = 30.0  # accept/request address validity (HC §2.4)
MAX_LISTENERS_PER_HC: Final = 25  # HC §9


def fits_inline(body_length: int | None) -> bool:
    """Whether an HTTP body of this size travels on the control channel (HC §4).

    The one place the inline-vs-rendezvous rule is decided: the relay asks it of a
    request body, the listener of a response body. A body of unknown size (chunked,
    streamed) never goes inline; it goes over a rendezvous socket.

    Args:
        body_length: The body's size in bytes, or None when it is not known up front.
    """
    return body_length is not None and body_length <= INLINE_BODY_LIMIT
